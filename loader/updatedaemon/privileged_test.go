package updatedaemon

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/mapper"
	"github.com/mlsgate/mlsgate/selinux"
	"github.com/vishvananda/netns"
)

// newNetNS creates a network namespace and returns a handle to it, leaving
// the calling thread where it was. If the thread cannot return, it stays
// locked and the runtime discards it with the test's goroutine.
func newNetNS(t *testing.T) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("current network namespace: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("new network namespace: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		ns.Close()
		t.Fatalf("return to the test's network namespace: %v", err)
	}
	runtime.UnlockOSThread()
	t.Cleanup(func() { ns.Close() })
	return ns
}

// TestPrivilegedUpdatedXFRM runs the daemon's production applier against
// this machine's kernel, in a network namespace of its own: the bundle's
// labeled policies are installed, diffed against the kernel on the next
// version (one updated, one removed, one added), and a bundle with SAs on a
// kernel without ESP fails with xfrm.ErrNoESP named, leaving the previous
// version's policies and mapper policy in force (ErrNoAlgorithm on a
// kernel that lacks the SA's cipher as well). On a kernel with ESP the SA is
// installed instead. Modules are compiled with checkmodule and loaded
// only where SELinux is active.
func TestPrivilegedUpdatedXFRM(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN for XFRM and network namespaces)")
	}
	ns := newNetNS(t)
	h, err := xfrm.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	m, err := mapper.New(mapper.Config{})
	if err != nil {
		t.Fatal(err)
	}
	selinux := selinux.SELinux{}
	ap := &SystemApplier{Mapper: m, XFRM: h, SELinux: selinux, WorkDir: filepath.Join(t.TempDir(), "work")}
	contexts := selinux.Active()

	p := newPKI(t)
	tc, _ := p.guestServerTLS(t, "")
	d, err := New(Config{TLS: tc, Identity: Identity{Name: testGuestName, Addrs: []netip.Addr{testGuestAddr}}, StateDir: t.TempDir(), Applier: ap})
	if err != nil {
		t.Fatal(err)
	}

	// kernelHolds checks that the namespace's policies are exactly want.
	kernelHolds := func(t *testing.T, want []xfrm.Policy) {
		t.Helper()
		got, err := h.Policies()
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Errorf("kernel holds %d policies, want %d", len(got), len(want))
		}
		byKey := map[polKey]xfrm.Policy{}
		for _, p := range got {
			if p.Context != "" && !contexts {
				t.Errorf("policy %s kept a context on a kernel without SELinux", p)
			}
			byKey[policyKey(p, contexts)] = p
		}
		for _, pp := range want {
			w := pp
			if g, ok := byKey[policyKey(w, contexts)]; !ok || !samePolicy(g, w) {
				t.Errorf("kernel lacks policy %s (has %v)", w, g)
			}
		}
	}

	b1 := analystBundle(t, nil, 1, 0x4000).GuestPart()
	b1.States = nil
	rep, err := d.Apply(ctxT(t), b1)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.XFRM.PoliciesAdded) != len(b1.Policies) || rep.Mapper.Rules == 0 {
		t.Errorf("v1 report: %+v", rep)
	}
	if len(rep.Modules.Modules) == 0 || rep.Modules.Loaded != selinux.Active() || rep.Modules.Note == "" {
		t.Errorf("v1 modules: %+v (SELinux active: %v)", rep.Modules, selinux.Active())
	}
	kernelHolds(t, b1.Policies)

	// What the kernel reads back equals what was sent: nothing to do.
	again, err := ap.SyncXFRM(ctxT(t), setOf(b1), setOf(b1))
	if err != nil || again.Changes() != 0 || again.PoliciesUnchanged != len(b1.Policies) {
		t.Errorf("v1 over v1: %+v, %v", again, err)
	}

	b2 := analystBundle(t, nil, 2, 0x4000).GuestPart()
	b2.States = nil
	b2.Policies[0].Priority += 3
	added := b2.Policies[1]
	added.Dst = netip.MustParsePrefix("10.70.9.9/32")
	b2.Policies = append(b2.Policies[:len(b2.Policies)-1], added)
	rep, err = d.Apply(ctxT(t), b2)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.XFRM.PoliciesAdded) != 1 || len(rep.XFRM.PoliciesUpdated) != 1 || len(rep.XFRM.PoliciesRemoved) != 1 {
		t.Errorf("v2 XFRM report: %+v", rep.XFRM)
	}
	kernelHolds(t, b2.Policies)

	b3 := analystBundle(t, nil, 3, 0x4000).GuestPart()
	b3.Policies = b2.Policies
	b3.States = b3.States[:1]
	b3.MapperPolicy += "map https://v3\\.example/.* s1/i0\n"
	rep, err = d.Apply(ctxT(t), b3)
	if err == nil {
		// This kernel has ESP: the SA is there, with its reqid.
		s := b3.States[0]
		got, gerr := h.GetState(s.Dst, s.SPI, s.Proto)
		if gerr != nil || got.Reqid != s.Reqid {
			t.Errorf("SA after v3: %v, %v", got, gerr)
		}
		return
	}
	// The kernel checks the cipher before the transform, so a kernel
	// without either reports the cipher (the development kernel, which has
	// no loadable modules); one with the cipher but no ESP reports ESP.
	fix := "CONFIG_INET_ESP"
	if errors.Is(err, xfrm.ErrNoAlgorithm) {
		fix = "CONFIG_CRYPTO_GCM"
	} else if !errors.Is(err, xfrm.ErrNoESP) {
		t.Fatalf("v3 on a kernel without ESP: %v, want ErrNoESP or ErrNoAlgorithm", err)
	}
	if !errors.Is(err, ErrApplyFailed) || !strings.Contains(err.Error(), fix) || !strings.Contains(rep.Failed, "XFRM") {
		t.Errorf("v3 error %q, failed %q: should name what the kernel lacks and the fix (%s)", err, rep.Failed, fix)
	}
	t.Logf("as the loader sees it: %v", err)
	if !slices.Contains(rep.RolledBack, "label-mapper policy: analyst-v2.policy restored") {
		t.Errorf("rolled back %q", rep.RolledBack)
	}
	if m.Policy().File != "analyst-v2.policy" {
		t.Errorf("mapper policy after the failure: %s", m.Policy().File)
	}
	kernelHolds(t, b2.Policies)
	if st, _ := h.States(); len(st) != 0 {
		t.Errorf("SAs left after the failure: %v", st)
	}
	if s := d.Status(); s.Applied.Version != 2 {
		t.Errorf("applied version %d, want 2", s.Applied.Version)
	}
}
