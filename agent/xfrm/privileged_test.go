package xfrm

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The privileged tests run against this machine's kernel, each in a fresh
// network namespace (XFRM state is per namespace). On the development
// kernel they cover policies, events and the no-ESP error; SAs with ESP and
// SELinux contexts are tested in the guest kernel
// (kernel-tests/inguest/xfrm_test.go).

// requireRoot is the one gate of the privileged tests.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN for XFRM and network namespaces)")
	}
}

// newNetNS creates a network namespace and returns a handle to it,
// leaving the calling thread where it was. If the thread cannot return, it
// stays locked and the runtime discards it with the test's goroutine.
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

func newHandle(t *testing.T, ns netns.NsHandle) *Handle {
	t.Helper()
	h, err := NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// contextsKept reports whether this kernel keeps XFRM security contexts:
// only with SELinux active. Without it they are accepted and dropped.
func contextsKept() bool {
	_, err := os.Stat("/sys/fs/selinux/enforce")
	return err == nil
}

// expectFromKernel is what a dump should return for p on this kernel.
func expectFromKernel(p Policy) Policy {
	if !contextsKept() {
		p.Context = ""
	}
	return p
}

func samePolicy(a, b Policy) bool {
	a.Index, b.Index = 0, 0
	return reflect.DeepEqual(a, b)
}

func nextEvent(t *testing.T, ch <-chan Event, kinds ...Kind) Event {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("event channel closed waiting for %v", kinds)
			}
			if slices.Contains(kinds, ev.Kind) {
				return ev
			}
			t.Logf("skipping %s", ev)
		case <-timeout:
			t.Fatalf("no %v event within 5s", kinds)
		}
	}
}

// testPolicies are labeled policies with templates in both families, and
// the catch-all blocks behind them.
func testPolicies() []Policy {
	guest := netip.MustParseAddr("10.70.0.7")
	ps := []Policy{
		{
			Src: netip.MustParsePrefix("10.70.0.7/32"), Dst: netip.MustParsePrefix("10.70.1.1/32"),
			Dir: DirOut, Priority: 1000, Context: "system_u:object_r:analyst_spd_t:s6-s15",
			Templates: []Template{{Src: guest, Dst: netip.MustParseAddr("10.70.0.1"), Proto: ProtoESP, Mode: ModeTunnel, Reqid: 1}},
		},
		{
			Src: netip.MustParsePrefix("10.70.1.1/32"), Dst: netip.MustParsePrefix("10.70.0.7/32"),
			Dir: DirIn, Priority: 1000, Context: "system_u:object_r:analyst_spd_t:s6-s15",
			Templates: []Template{{Src: netip.MustParseAddr("10.70.0.1"), Dst: guest, Proto: ProtoESP, Mode: ModeTunnel, Reqid: 1}},
		},
		{
			Src: netip.MustParsePrefix("fd00::7/128"), Dst: netip.MustParsePrefix("fd00:1::/64"),
			Proto: unix.IPPROTO_TCP, DstPort: 443,
			Dir: DirOut, Priority: 1000, Context: "system_u:object_r:analyst_spd_t:s0-s5",
			Templates: []Template{{Proto: ProtoESP, Mode: ModeTransport, Reqid: 2}},
		},
	}
	return append(ps, CatchAllBlock(guest, 2000)...)
}

// TestPrivilegedPolicies adds labeled policies with templates, reads them
// back, watches the events, deletes them and watches again.
func TestPrivilegedPolicies(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t)
	h := newHandle(t, ns)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := Subscribe(ctx, ns)
	if err != nil {
		t.Fatal(err)
	}

	want := testPolicies()
	for _, p := range want {
		if err := h.AddPolicy(p); err != nil {
			t.Fatal(err)
		}
		ev := nextEvent(t, events, NewPolicy)
		// The kernel's notifications carry no context.
		noCtx := p
		noCtx.Context = ""
		if !samePolicy(*ev.Policy, noCtx) {
			t.Errorf("event %s\nwant %v", ev, noCtx)
		}
	}
	if err := h.AddPolicy(want[0]); !errors.Is(err, unix.EEXIST) {
		t.Errorf("adding a policy twice: %v, want EEXIST", err)
	}

	got, err := h.Policies()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("dumped %d policies, added %d: %v", len(got), len(want), got)
	}
	for _, w := range want {
		w = expectFromKernel(w)
		i := slices.IndexFunc(got, func(g Policy) bool { return samePolicy(g, w) })
		if i < 0 {
			t.Errorf("not dumped: %v\ndump: %v", w, got)
			continue
		}
		if got[i].Index == 0 {
			t.Errorf("kernel gave %v no index", got[i])
		}
	}
	t.Logf("contexts kept by this kernel: %v", contextsKept())

	// Update changes the priority in place.
	up := want[0]
	up.Priority = 900
	if err := h.UpdatePolicy(up); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, events, UpdPolicy); ev.Policy.Priority != 900 {
		t.Errorf("update event %s", ev)
	}

	for _, p := range want {
		if err := h.DeletePolicy(p); err != nil {
			t.Fatal(err)
		}
		ev := nextEvent(t, events, DelPolicy)
		noCtx := p
		noCtx.Context = ""
		if p.Src == up.Src && p.Dst == up.Dst && p.Dir == up.Dir {
			noCtx.Priority = up.Priority
		}
		if !samePolicy(*ev.Policy, noCtx) {
			t.Errorf("delete event %s\nwant %v", ev, noCtx)
		}
	}
	if err := h.DeletePolicy(want[0]); !errors.Is(err, unix.ENOENT) {
		t.Errorf("deleting a deleted policy: %v, want ENOENT", err)
	}
	if got, err := h.Policies(); err != nil || len(got) != 0 {
		t.Errorf("after deletion: %v, %v", got, err)
	}

	if err := h.AddPolicy(want[0]); err != nil {
		t.Fatal(err)
	}
	nextEvent(t, events, NewPolicy)
	if err := h.FlushPolicies(); err != nil {
		t.Fatal(err)
	}
	nextEvent(t, events, FlushPolicy)
	if got, err := h.Policies(); err != nil || len(got) != 0 {
		t.Errorf("after flush: %v, %v", got, err)
	}
	// Flushing an empty SA table succeeds (the kernel announces only
	// flushes that deleted something).
	if err := h.FlushStates(0); err != nil {
		t.Error(err)
	}
}

// TestPrivilegedDeleteByContext: with contexts kept, two policies that
// differ only in context are two entries and each deletes separately.
// Without them, the second add collides with the first.
func TestPrivilegedDeleteByContext(t *testing.T) {
	requireRoot(t)
	h := newHandle(t, newNetNS(t))
	a := testPolicies()[0]
	b := a
	b.Context = "system_u:object_r:analyst_spd_t:s0-s5"
	if err := h.AddPolicy(a); err != nil {
		t.Fatal(err)
	}
	err := h.AddPolicy(b)
	if !contextsKept() {
		if !errors.Is(err, unix.EEXIST) {
			t.Fatalf("second policy differing only in a dropped context: %v, want EEXIST", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := h.DeletePolicy(b); err != nil {
		t.Fatal(err)
	}
	got, err := h.Policies()
	if err != nil || len(got) != 1 || got[0].Context != a.Context {
		t.Errorf("after deleting by context: %v, %v", got, err)
	}
}

// TestPrivilegedIPXfrm reads policies written by ip-xfrm(8), an
// independent encoder of the same messages.
func TestPrivilegedIPXfrm(t *testing.T) {
	requireRoot(t)
	ip, err := exec.LookPath("ip")
	if err != nil {
		t.Skip("no ip(8) to compare with")
	}
	ns := newNetNS(t)
	h := newHandle(t, ns)
	// ip runs in the namespace through a bind mount of its handle.
	name := fmt.Sprintf("mlsgate-xfrm-%d", os.Getpid())
	if err := os.MkdirAll("/run/netns", 0o755); err != nil {
		t.Fatal(err)
	}
	path := "/run/netns/" + name
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	t.Cleanup(func() { unix.Unmount(path, unix.MNT_DETACH); os.Remove(path) })
	if err := unix.Mount(fmt.Sprintf("/proc/self/fd/%d", int(ns)), path, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind the namespace for ip: %v", err)
	}
	run := func(args ...string) {
		t.Helper()
		out, err := exec.Command(ip, append([]string{"-n", name, "xfrm"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	run("policy", "add", "src", "10.70.0.7/32", "dst", "10.70.1.0/24", "proto", "tcp", "dport", "443",
		"dir", "out", "priority", "1000", "ctx", "system_u:object_r:analyst_spd_t:s6-s15",
		"tmpl", "src", "10.70.0.7", "dst", "10.70.0.1", "proto", "esp", "reqid", "5", "mode", "tunnel",
		"tmpl", "proto", "ah", "reqid", "6", "mode", "transport", "level", "use")
	run("policy", "add", "src", "::/0", "dst", "fd00::7/128", "dir", "fwd", "action", "block", "priority", "7")
	want := []Policy{
		expectFromKernel(Policy{
			Src: netip.MustParsePrefix("10.70.0.7/32"), Dst: netip.MustParsePrefix("10.70.1.0/24"),
			Proto: unix.IPPROTO_TCP, DstPort: 443, Dir: DirOut, Priority: 1000,
			Context: "system_u:object_r:analyst_spd_t:s6-s15",
			Templates: []Template{
				{Src: netip.MustParseAddr("10.70.0.7"), Dst: netip.MustParseAddr("10.70.0.1"), Proto: ProtoESP, Mode: ModeTunnel, Reqid: 5},
				{Proto: ProtoAH, Mode: ModeTransport, Reqid: 6, Optional: true},
			},
		}),
		{Src: netip.MustParsePrefix("::/0"), Dst: netip.MustParsePrefix("fd00::7/128"), Dir: DirFwd, Action: ActionBlock, Priority: 7},
	}
	got, err := h.Policies()
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range want {
		if !slices.ContainsFunc(got, func(g Policy) bool { return samePolicy(g, w) }) {
			t.Errorf("ip's policy not read as\n%v\ndump: %v", w, got)
		}
	}
	// And ip deletes what this package wrote.
	mine := testPolicies()[0]
	if err := h.AddPolicy(mine); err != nil {
		t.Fatal(err)
	}
	run("policy", "delete", "src", "10.70.0.7/32", "dst", "10.70.1.1/32", "dir", "out", "ctx", mine.Context)
	if got, _ := h.Policies(); slices.ContainsFunc(got, func(g Policy) bool { return g.Dst == mine.Dst }) {
		t.Errorf("ip could not delete this package's policy: %v", got)
	}
}

// TestPrivilegedNoESP: on a kernel without the ESP transform, adding an ESP
// SA fails with ErrNoESP, or ErrNoAlgorithm when the cipher is missing too
// (the kernel checks algorithms first).
func TestPrivilegedNoESP(t *testing.T) {
	requireRoot(t)
	h := newHandle(t, newNetNS(t))
	s := State{
		Src: netip.MustParseAddr("10.70.0.7"), Dst: netip.MustParseAddr("10.70.0.1"),
		SPI: 0x4001, Proto: ProtoESP, Mode: ModeTunnel, Reqid: 1, Context: "system_u:system_r:analyst_t:s6",
		Auth:  &Algo{Name: "hmac(sha256)", Key: key[:16], TruncBits: 128},
		Crypt: &Algo{Name: "cbc(aes)", Key: key[:16]},
	}
	err := h.AddState(s)
	if err == nil {
		t.Cleanup(func() { h.DeleteState(s.Dst, s.SPI, s.Proto) })
		states, derr := h.States()
		if derr != nil || len(states) != 1 || states[0].SPI != s.SPI {
			t.Errorf("this kernel has ESP; dump after add: %v, %v", states, derr)
		}
		t.Skip("this kernel has the ESP transform; the in-guest tests cover SAs")
	}
	if !errors.Is(err, ErrNoESP) || !errors.Is(err, unix.EPROTONOSUPPORT) {
		t.Fatalf("ESP SA with cbc(aes)+hmac(sha256): %v, want ErrNoESP", err)
	}
	t.Logf("as a caller sees it: %v", err)

	s.Auth, s.Crypt = nil, nil
	s.AEAD = &Algo{Name: "rfc4106(gcm(aes))", Key: key, ICVBits: 128}
	err = h.AddState(s)
	if !errors.Is(err, ErrNoAlgorithm) && !errors.Is(err, ErrNoESP) {
		t.Fatalf("ESP SA with rfc4106(gcm(aes)): %v, want ErrNoAlgorithm or ErrNoESP", err)
	}
	t.Logf("as a caller sees it: %v", err)

	// The SA table is empty and reads as such; deleting reports ESRCH.
	if states, err := h.States(); err != nil || len(states) != 0 {
		t.Errorf("states: %v, %v", states, err)
	}
	if err := h.DeleteState(s.Dst, s.SPI, s.Proto); !errors.Is(err, unix.ESRCH) {
		t.Errorf("deleting a missing SA: %v, want ESRCH", err)
	}
	if _, err := h.GetState(s.Dst, s.SPI, s.Proto); !errors.Is(err, unix.ESRCH) {
		t.Errorf("getting a missing SA: %v, want ESRCH", err)
	}
	if n, err := h.DeleteStatesByReqid(1); n != 0 || err != nil {
		t.Errorf("delete by reqid: %d, %v", n, err)
	}
}

// TestPrivilegedResync overruns a subscription: a 1-slot channel nobody
// reads and a small socket buffer. Once read, it must report a Resync.
func TestPrivilegedResync(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t)
	h := newHandle(t, ns)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := subscribe(ctx, ns, 4096, 1)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 500 {
		p := Policy{
			Src: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 32),
			Dst: netip.MustParsePrefix("10.2.0.1/32"), Dir: DirOut, Priority: 10,
		}
		if err := h.AddPolicy(p); err != nil {
			t.Fatal(err)
		}
	}
	ev := nextEvent(t, events, Resync)
	if !errors.Is(ev.Err, unix.ENOBUFS) {
		t.Errorf("resync for %v, want ENOBUFS", ev.Err)
	}
	t.Logf("%s", ev)
}

// TestPrivilegedSubscribeEnds: the channel closes soon after the context
// ends, with the reader blocked in the kernel.
func TestPrivilegedSubscribeEnds(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	events, err := Subscribe(ctx, newNetNS(t))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // let the reader block
	cancel()
	select {
	case ev, ok := <-events:
		if ok {
			t.Fatalf("event after cancel: %s", ev)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("channel still open 2s after cancel")
	}
}

// TestPrivilegedNamespaces: a handle in one namespace does not see another's
// policies, and a handle opened without a namespace works where the caller
// is.
func TestPrivilegedNamespaces(t *testing.T) {
	requireRoot(t)
	a, b := newHandle(t, newNetNS(t)), newHandle(t, newNetNS(t))
	if err := a.AddPolicy(testPolicies()[0]); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Policies(); err != nil || len(got) != 0 {
		t.Errorf("other namespace sees %v, %v", got, err)
	}
	if got, err := a.Policies(); err != nil || len(got) != 1 {
		t.Errorf("own namespace sees %v, %v", got, err)
	}
}
