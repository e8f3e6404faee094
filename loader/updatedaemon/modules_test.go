package updatedaemon

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/mlsgate/mlsgate/mapper"
	"github.com/mlsgate/mlsgate/selinux"
)

// semoduleRecorder is a selinux.SELinux whose SELinux is active (a fake
// selinuxfs) and whose semodule calls are recorded, not run.
type semoduleRecorder struct {
	mu    sync.Mutex
	calls []string
}

func (r *semoduleRecorder) selinux(t *testing.T) selinux.SELinux {
	fs := t.TempDir()
	if err := os.WriteFile(filepath.Join(fs, "enforce"), []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	return selinux.SELinux{FS: fs, Semodule: true, Run: func(_ context.Context, name string, args ...string) ([]byte, error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		// Module packages are named by their file, in a fresh directory.
		for i, a := range args {
			if strings.HasSuffix(a, ".pp") {
				args[i] = filepath.Base(a)
			}
		}
		r.calls = append(r.calls, name+" "+strings.Join(args, " "))
		return nil, nil
	}}
}

func (r *semoduleRecorder) Calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls...)
}

// TestFailedPushRemovesItsModules: a push whose modules semodule installed
// and that fails at a later step must not leave them in the policy. The
// modules define the application's types; left installed, they let the
// guest label sockets and SAs for a bundle the daemon reports as not
// applied. A first push has nothing to put back: its modules are removed.
// A later push puts the applied version's modules back and removes those
// only it brought, in one semodule transaction.
func TestFailedPushRemovesItsModules(t *testing.T) {
	if _, err := (selinux.Module{Name: "probe", TE: "module probe 1.0;\n"}).Package(context.Background(), t.TempDir()); errors.Is(err, selinux.ErrNoToolchain) {
		t.Skip(err)
	}
	p := newPKI(t)
	rec := &semoduleRecorder{}
	// No mapper: the step after the modules fails.
	ap := &SystemApplier{SELinux: rec.selinux(t), WorkDir: t.TempDir()}
	cert, err := p.guest.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(VerifierConfig{CAPEM: p.ca.CertPEM()})
	if err != nil {
		t.Fatal(err)
	}
	tc, err := ServerTLS(cert, v)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{TLS: tc, Identity: Identity{Name: testGuestName, Addrs: []netip.Addr{testGuestAddr}}, StateDir: t.TempDir(), Applier: ap})
	if err != nil {
		t.Fatal(err)
	}
	b := analystBundle(t, nil, 1, 0x4000).GuestPart()
	rep, err := d.Apply(ctxT(t), b)
	if !errors.Is(err, ErrApplyFailed) || rep == nil || !strings.HasPrefix(rep.Failed, "label-mapper policy") {
		t.Fatalf("push without a mapper: %+v, %v; want a failure at the mapper step", rep, err)
	}
	calls := rec.Calls()
	if len(calls) != 2 || calls[0] != "semodule -i mlsgate_analyst.pp" || calls[1] != "semodule -r mlsgate_analyst" {
		t.Errorf("semodule calls %q: want the install, then the removal of mlsgate_analyst", calls)
	}
	if !slices.Contains(rep.RolledBack, "SELinux modules: mlsgate_analyst removed") || len(rep.NotRolledBack) != 0 {
		t.Errorf("rolled back %q, not rolled back %q", rep.RolledBack, rep.NotRolledBack)
	}
}

// TestFailedPushRestoresPreviousModules: after v1 is applied, a v2 that
// brings v1's module in a new version and a second module, and fails at
// the XFRM step, is undone in one semodule call: the second module
// removed, v1's module reinstalled.
func TestFailedPushRestoresPreviousModules(t *testing.T) {
	if _, err := (selinux.Module{Name: "probe", TE: "module probe 1.0;\n"}).Package(context.Background(), t.TempDir()); errors.Is(err, selinux.ErrNoToolchain) {
		t.Skip(err)
	}
	p := newPKI(t)
	rec := &semoduleRecorder{}
	m, err := mapper.New(mapper.Config{})
	if err != nil {
		t.Fatal(err)
	}
	// No XFRM handle: a bundle with SAs or policies fails at that step.
	ap := &SystemApplier{Mapper: m, SELinux: rec.selinux(t), WorkDir: t.TempDir(), ContextsKept: func() bool { return true }}
	cert, err := p.guest.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(VerifierConfig{CAPEM: p.ca.CertPEM()})
	if err != nil {
		t.Fatal(err)
	}
	tc, err := ServerTLS(cert, v)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{TLS: tc, Identity: Identity{Name: testGuestName, Addrs: []netip.Addr{testGuestAddr}}, StateDir: t.TempDir(), Applier: ap})
	if err != nil {
		t.Fatal(err)
	}
	v1 := analystBundle(t, nil, 1, 0x4000).GuestPart()
	v1.States, v1.Policies = nil, nil
	if rep, err := d.Apply(ctxT(t), v1); err != nil || !rep.Modules.Loaded || rep.Modules.Note != selinux.NoteInstalled {
		t.Fatalf("v1: %+v, %v", rep, err)
	}
	v2 := analystBundle(t, nil, 2, 0x4000).GuestPart()
	v2.Modules = append(v2.Modules, selinux.Module{Name: "mlsgate_extra", Target: selinux.TargetGuest,
		TE: "module mlsgate_extra 1.0;\nrequire { role system_r; }\ntype extra_t;\nrole system_r types extra_t;\n"})
	rep, err := d.Apply(ctxT(t), v2)
	if !errors.Is(err, ErrApplyFailed) || !strings.HasPrefix(rep.Failed, "XFRM") {
		t.Fatalf("v2 without an XFRM handle: %+v, %v", rep, err)
	}
	want := []string{
		"semodule -i mlsgate_analyst.pp",
		"semodule -i mlsgate_analyst.pp -i mlsgate_extra.pp",
		"semodule -r mlsgate_extra -i mlsgate_analyst.pp",
	}
	if got := rec.Calls(); !slices.Equal(got, want) {
		t.Errorf("semodule calls %q, want %q", got, want)
	}
	for _, w := range []string{"SELinux modules: mlsgate_extra removed", "SELinux modules: mlsgate_analyst of v1 restored"} {
		if !slices.Contains(rep.RolledBack, w) {
			t.Errorf("rolled back %q, want %q", rep.RolledBack, w)
		}
	}
	if len(rep.NotRolledBack) != 0 {
		t.Errorf("not rolled back %q", rep.NotRolledBack)
	}
}

// TestPushRemovesModulesTheBundleDrops: a bundle is the whole policy of
// the guest's application. When v2 no longer carries a module v1 brought,
// the rules of that module (and the types they grant) must leave the
// guest's policy in the same semodule transaction that installs v2's, or a
// revocation by the policy store never reaches the guest.
func TestPushRemovesModulesTheBundleDrops(t *testing.T) {
	if _, err := (selinux.Module{Name: "probe", TE: "module probe 1.0;\n"}).Package(context.Background(), t.TempDir()); errors.Is(err, selinux.ErrNoToolchain) {
		t.Skip(err)
	}
	p := newPKI(t)
	rec := &semoduleRecorder{}
	m, err := mapper.New(mapper.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ap := &SystemApplier{Mapper: m, SELinux: rec.selinux(t), WorkDir: t.TempDir(), ContextsKept: func() bool { return true }}
	cert, err := p.guest.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(VerifierConfig{CAPEM: p.ca.CertPEM()})
	if err != nil {
		t.Fatal(err)
	}
	tc, err := ServerTLS(cert, v)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{TLS: tc, Identity: Identity{Name: testGuestName, Addrs: []netip.Addr{testGuestAddr}}, StateDir: t.TempDir(), Applier: ap})
	if err != nil {
		t.Fatal(err)
	}
	v1 := analystBundle(t, nil, 1, 0x4000).GuestPart()
	v1.States, v1.Policies = nil, nil
	v1.Modules = append(v1.Modules, selinux.Module{Name: "mlsgate_extra", Target: selinux.TargetGuest,
		TE: "module mlsgate_extra 1.0;\nrequire { role system_r; }\ntype extra_t;\nrole system_r types extra_t;\n"})
	if _, err := d.Apply(ctxT(t), v1); err != nil {
		t.Fatal(err)
	}
	v2 := analystBundle(t, nil, 2, 0x4000).GuestPart()
	v2.States, v2.Policies = nil, nil
	rep, err := d.Apply(ctxT(t), v2)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"semodule -i mlsgate_analyst.pp -i mlsgate_extra.pp",
		"semodule -r mlsgate_extra -i mlsgate_analyst.pp",
	}
	if got := rec.Calls(); !slices.Equal(got, want) {
		t.Errorf("semodule calls %q, want %q", got, want)
	}
	if !slices.Equal(rep.Modules.Removed, []string{"mlsgate_extra"}) {
		t.Errorf("v2 modules report %+v: want mlsgate_extra removed", rep.Modules)
	}
}
