package inguest

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	goselinux "github.com/opencontainers/selinux/go-selinux"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/loader/updatedaemon"
	"github.com/mlsgate/mlsgate/mapper"
	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/policystore/ca"
	"github.com/mlsgate/mlsgate/selinux"
)

// The guest the bundles of TestGuestSemoduleBundle are generated for.
var (
	smGuest     = "vm-semodule"
	smGuestAddr = netip.MustParseAddr("10.70.0.7")
	smHostAddr  = netip.MustParseAddr("10.70.0.1")
)

// testPolicy is the policy the init loaded (guestvm.PolicySource), which
// the test puts back when it ends.
const testPolicy = "/etc/guestvm/policy.33"

// TestGuestSemoduleBundle shows that a labeled flow works because the
// bundle's SELinux module was installed. The kernel runs the base of the
// image's module store (load_policy), which declares no application. The
// application's type, taken from a bundle the policy store generates for
// examples/analyst, is then unknown: the kernel refuses the context and a
// socket cannot be created with it. The update daemon, with the production
// applier, installs the bundle's module with semodule; a first push that
// fails at the XFRM step removes it again; a good push leaves it in, and
// two sockets labeled with the SA's context exchange a datagram; a later
// push that brings a second module and fails removes that module and puts
// the applied version's back. SELinux is permissive during the test: the
// base gives the unconfined test runner no rule on the module's socket
// types, and what is tested here is the policy's content, not its rules.
func TestGuestSemoduleBundle(t *testing.T) {
	requireGuest(t)
	if !goselinux.GetEnabled() {
		t.Fatal("SELinux is not enabled in the guest (the init loads the test policy)")
	}
	examples := os.Getenv("MLSGATE_EXAMPLES")
	if examples == "" {
		t.Skip("MLSGATE_EXAMPLES (the examples directory in the share) is not set; TestPrivilegedGuestKernel sets it")
	}
	app, err := policystore.LoadFile(filepath.Join(examples, "analyst", "analyst.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	mode := goselinux.EnforceMode()
	if err := goselinux.SetEnforceMode(goselinux.Permissive); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Put the test policy back for the tests that follow.
		pol, err := os.ReadFile(testPolicy)
		if err == nil {
			err = os.WriteFile("/sys/fs/selinux/load", pol, 0)
		}
		if err != nil {
			t.Errorf("reload the test policy %s: %v", testPolicy, err)
		}
		if err := goselinux.SetEnforceMode(mode); err != nil {
			t.Errorf("restore the enforce mode %d: %v", mode, err)
		}
	})
	if out, err := exec.Command("/usr/sbin/load_policy").CombinedOutput(); err != nil {
		t.Fatalf("load_policy (the module store's base): %v: %s", err, out)
	}

	// The daemon, as the guest runs it, in a namespace of its own.
	ns := newNetNS(t, "semod")
	h, err := xfrm.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	m, err := mapper.New(mapper.Config{})
	if err != nil {
		t.Fatal(err)
	}
	var semoduleTimes []time.Duration
	sel := selinux.SELinux{Semodule: true, Run: func(ctx context.Context, name string, args ...string) ([]byte, error) {
		start := time.Now()
		out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
		semoduleTimes = append(semoduleTimes, time.Since(start))
		t.Logf("%s %s: %v in %.2fs", name, strings.Join(args, " "), err, time.Since(start).Seconds())
		return out, err
	}}
	d := newDaemon(t, &updatedaemon.SystemApplier{Mapper: m, XFRM: h, SELinux: sel, WorkDir: t.TempDir()})

	spi := uint32(0x6100)
	bundle := func(version uint64) *policystore.Bundle {
		t.Helper()
		b, err := policystore.GenerateBundle(app, policystore.BundleRequest{
			Guest: smGuest, GuestAddr: smGuestAddr, HostAddr: smHostAddr,
			MapperUpstream: "http://10.70.0.1:7070",
			SPI:            func() (uint32, error) { spi++; return spi, nil },
			Version:        version, Now: time.Now(),
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return b.GuestPart()
	}
	// failing makes the XFRM step fail after the modules: the kernel
	// refuses an SA context whose type no module declares.
	failing := func(b *policystore.Bundle) *policystore.Bundle {
		b.States[0].Context = strings.Replace(b.States[0].Context, ":"+app.Type+":", ":nosuch_t:", 1)
		return b
	}

	v1 := bundle(1)
	if len(v1.Modules) != 1 || len(v1.States) == 0 {
		t.Fatalf("the analyst guest bundle has %d modules and %d SAs, want 1 module and SAs", len(v1.Modules), len(v1.States))
	}
	appCtx := v1.States[0].Context
	if !strings.Contains(appCtx, ":"+app.Type+":") {
		t.Fatalf("the SA context %q does not carry the application's type %s", appCtx, app.Type)
	}
	modName := v1.Modules[0].Name

	// Before: the type is unknown, no socket can carry it.
	wantUnknown(t, ns, appCtx, "before any push")

	// A push that fails after the modules takes them out again.
	rep, err := d.Apply(context.Background(), failing(v1))
	if !errors.Is(err, updatedaemon.ErrApplyFailed) || rep == nil || !strings.HasPrefix(rep.Failed, "XFRM") {
		t.Fatalf("push with a bad SA context: %+v, %v; want a failure at the XFRM step", rep, err)
	}
	if !rep.Modules.Loaded || !slices.Contains(rep.RolledBack, "SELinux modules: "+modName+" removed") {
		t.Errorf("failed push: modules %+v, rolled back %q, not rolled back %q", rep.Modules, rep.RolledBack, rep.NotRolledBack)
	}
	wantUnknown(t, ns, appCtx, "after the failed push")

	// The good push: the module is installed, the flow is delivered.
	v2 := bundle(2)
	rep, err = d.Apply(context.Background(), v2)
	if err != nil {
		t.Fatalf("push v2: %v", err)
	}
	if !rep.Modules.Loaded || rep.Modules.Note != selinux.NoteInstalled || !slices.Equal(rep.Modules.Modules, []string{modName}) {
		t.Errorf("v2 modules report %+v, want %s installed (%q)", rep.Modules, modName, selinux.NoteInstalled)
	}
	t.Logf("v2 applied in %.2fs: modules %q (%s), %d SAs and %d policies added",
		rep.Took.Seconds(), rep.Modules.Modules, rep.Modules.Note, len(rep.XFRM.StatesAdded), len(rep.XFRM.PoliciesAdded))
	if err := goselinux.SecurityCheckContext(appCtx); err != nil {
		t.Fatalf("after the push the kernel still refuses %s: %v", appCtx, err)
	}
	if err := labeledFlow(ns, appCtx); err != nil {
		t.Fatalf("after the push: %v", err)
	}

	// A later push with a second module fails: that module goes, v2's
	// stays (reinstalled in the same transaction).
	v3 := bundle(3)
	const extraType = "analyst_extra_t"
	v3.Modules = append(v3.Modules, selinux.Module{
		Name: "mlsgate_extra", Target: selinux.TargetGuest,
		TE: "module mlsgate_extra 1.0;\nrequire { role system_r; }\ntype " + extraType + ";\nrole system_r types " + extraType + ";\n",
	})
	extraCtx := "system_u:system_r:" + extraType + ":s4"
	rep, err = d.Apply(context.Background(), failing(v3))
	if !errors.Is(err, updatedaemon.ErrApplyFailed) || rep == nil {
		t.Fatalf("push v3 with a bad SA context: %+v, %v", rep, err)
	}
	for _, want := range []string{"SELinux modules: mlsgate_extra removed", "SELinux modules: " + modName + " of v2 restored"} {
		if !slices.Contains(rep.RolledBack, want) {
			t.Errorf("v3 rolled back %q, not rolled back %q: want %q", rep.RolledBack, rep.NotRolledBack, want)
		}
	}
	wantUnknown(t, ns, extraCtx, "after the failed v3")
	if err := goselinux.SecurityCheckContext(appCtx); err != nil {
		t.Errorf("after the failed v3 the kernel refuses v2's %s: %v", appCtx, err)
	}
	if err := labeledFlow(ns, appCtx); err != nil {
		t.Errorf("after the failed v3: %v", err)
	}
	if st := d.Status(); st.Applied == nil || st.Applied.Version != 2 {
		t.Errorf("applied version after v3 failed: %+v, want 2", st.Applied)
	}
	t.Logf("semodule calls took %v", semoduleTimes)
}

// newDaemon makes an update daemon for smGuest with a CA of its own.
func newDaemon(t *testing.T, ap updatedaemon.Applier) *updatedaemon.Daemon {
	t.Helper()
	c, err := ca.Open(filepath.Join(t.TempDir(), "ca"), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	iss, err := c.Issue(ca.Request{Kind: ca.Guest, CommonName: smGuest, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := iss.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	v, err := updatedaemon.NewVerifier(updatedaemon.VerifierConfig{CAPEM: c.CertPEM()})
	if err != nil {
		t.Fatal(err)
	}
	tc, err := updatedaemon.ServerTLS(cert, v)
	if err != nil {
		t.Fatal(err)
	}
	d, err := updatedaemon.New(updatedaemon.Config{TLS: tc, Identity: updatedaemon.Identity{Name: smGuest, Addrs: []netip.Addr{smGuestAddr}}, StateDir: t.TempDir(), Applier: ap})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// wantUnknown checks that the kernel refuses ctx and that no socket can
// be created with it.
func wantUnknown(t *testing.T, ns netns.NsHandle, ctx, when string) {
	t.Helper()
	if err := goselinux.SecurityCheckContext(ctx); err == nil {
		t.Errorf("%s: the kernel accepts %s; its type must be unknown", when, ctx)
	}
	err := inNetNS(ns, func() error {
		fd, err := labeledSocket(ctx)
		if err == nil {
			unix.Close(fd)
		}
		return err
	})
	if err == nil || !errors.Is(err, unix.EINVAL) {
		t.Errorf("%s: a socket labeled %s: %v, want EINVAL", when, ctx, err)
	}
}

// labeledSocket creates a UDP socket with the SELinux context ctx on the
// calling thread, which must be locked, as the demo's servers do
// (setsockcreatecon, socket, setsockcreatecon back).
func labeledSocket(ctx string) (int, error) {
	if err := goselinux.SetSocketLabel(ctx); err != nil {
		return -1, err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if rerr := goselinux.SetSocketLabel(""); rerr != nil && err == nil {
		unix.Close(fd)
		return -1, rerr
	}
	return fd, err
}

// labeledFlow sends a datagram between two sockets labeled ctx over the
// namespace's loopback and checks that it arrives and that the receiving
// socket carries ctx.
func labeledFlow(ns netns.NsHandle, ctx string) error {
	return inNetNS(ns, func() error {
		rx, err := labeledSocket(ctx)
		if err != nil {
			return err
		}
		defer unix.Close(rx)
		tx, err := labeledSocket(ctx)
		if err != nil {
			return err
		}
		defer unix.Close(tx)
		lo := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
		if err := unix.Bind(rx, lo); err != nil {
			return err
		}
		sa, err := unix.Getsockname(rx)
		if err != nil {
			return err
		}
		if err := unix.SetsockoptTimeval(rx, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5}); err != nil {
			return err
		}
		got, err := goselinux.FileLabel("/proc/thread-self/fd/" + strconv.Itoa(rx))
		if err != nil || got != ctx {
			return errors.New("the receiving socket is labeled " + got + ", want " + ctx)
		}
		msg := []byte("labeled by " + ctx)
		if err := unix.Sendto(tx, msg, 0, sa); err != nil {
			return err
		}
		buf := make([]byte, 256)
		n, _, err := unix.Recvfrom(rx, buf, 0)
		if err != nil {
			return errors.Join(errNoReply, err)
		}
		if string(buf[:n]) != string(msg) {
			return errors.New("received " + string(buf[:n]))
		}
		return nil
	})
}
