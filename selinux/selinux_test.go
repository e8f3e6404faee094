package selinux_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/selinux"
)

func analystModules(t *testing.T) []selinux.Module {
	t.Helper()
	app, err := policystore.LoadFile("../examples/analyst/analyst.yaml")
	if err != nil {
		t.Fatal(err)
	}
	next := uint32(0xc0000000)
	b, err := policystore.GenerateBundle(app, policystore.BundleRequest{
		Guest: "vm7", GuestAddr: netip.MustParseAddr("10.70.0.7"), HostAddr: netip.MustParseAddr("10.70.0.1"),
		MapperUpstream: "http://10.70.0.1:7070", SPI: func() (uint32, error) { next++; return next, nil }, Version: 1, Now: time.Now(),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b.Modules
}

func TestSELinuxInstall(t *testing.T) {
	mods := analystModules(t)
	if _, err := mods[0].Package(context.Background(), t.TempDir()); errors.Is(err, selinux.ErrNoToolchain) {
		t.Skip(err)
	}
	fs := t.TempDir()
	var calls []string
	s := selinux.SELinux{FS: fs, Semodule: true, Run: func(_ context.Context, name string, args ...string) ([]byte, error) {
		calls = append(calls, name+" "+strings.Join(args, " "))
		return nil, nil
	}}
	// Not active: compiled, reported, not loaded.
	rep, err := s.Install(context.Background(), mods, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Loaded || !strings.Contains(rep.Note, "not active") || len(rep.Modules) != len(mods) || len(calls) != 0 {
		t.Fatalf("inactive: %+v, calls %v", rep, calls)
	}
	// Active: one semodule transaction with every package.
	if err := os.WriteFile(filepath.Join(fs, "enforce"), []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Active, but the running policy is not declared to come from the
	// store: semodule would replace it whole, so nothing is installed.
	notStore := s
	notStore.Semodule = false
	rep, err = notStore.Install(context.Background(), mods, t.TempDir())
	if err != nil || rep.Loaded || !strings.Contains(rep.Note, "--semodule") || len(calls) != 0 {
		t.Fatalf("active, policy not from the store: %+v %v, calls %v", rep, err, calls)
	}
	rep, err = s.Install(context.Background(), mods, t.TempDir())
	if err != nil || !rep.Loaded || len(calls) != 1 || strings.Count(calls[0], " -i ") != len(mods) || !strings.HasPrefix(calls[0], "semodule -i ") {
		t.Fatalf("active: %+v %v, calls %v", rep, err, calls)
	}
	if err := s.Remove(context.Background(), "mlsgate_analyst_host"); err != nil || calls[1] != "semodule -r mlsgate_analyst_host" {
		t.Fatalf("remove: %v %v", err, calls)
	}
	// A module the toolchain refuses is an error, active or not.
	bad := append([]selinux.Module(nil), mods...)
	bad[0].TE += "\nallow undeclared_t self:file read;\n"
	if _, err := s.Install(context.Background(), bad, t.TempDir()); err == nil || !strings.Contains(err.Error(), "checkmodule") {
		t.Fatalf("broken module: %v", err)
	}
}

// TestSELinuxRefusesModuleNamedOtherwise: semodule installs a package under
// the name its module statement gives, not the bundle's Name. A module
// whose statement names another (the store's "base", or another
// application's module) would replace that one and escape the removal
// that undoes a failed push, which goes by Name. It is refused before
// semodule runs.
func TestSELinuxRefusesModuleNamedOtherwise(t *testing.T) {
	mods := analystModules(t)
	if _, err := mods[0].Package(context.Background(), t.TempDir()); errors.Is(err, selinux.ErrNoToolchain) {
		t.Skip(err)
	}
	fs := t.TempDir()
	if err := os.WriteFile(filepath.Join(fs, "enforce"), []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	var calls []string
	s := selinux.SELinux{FS: fs, Semodule: true, Run: func(_ context.Context, name string, args ...string) ([]byte, error) {
		calls = append(calls, name+" "+strings.Join(args, " "))
		return nil, nil
	}}
	for _, other := range []string{"base", "mlsgate_osint"} {
		bad := append([]selinux.Module(nil), mods...)
		bad[0].TE = strings.Replace(bad[0].TE, "module "+bad[0].Name+" ", "module "+other+" ", 1)
		if bad[0].TE == mods[0].TE {
			t.Fatalf("module %s has no 'module %s' statement to rename", mods[0].Name, mods[0].Name)
		}
		_, err := s.Install(context.Background(), bad, t.TempDir())
		if err == nil || !strings.Contains(err.Error(), other) {
			t.Errorf("module %s declaring itself %s: %v, want a refusal naming both", bad[0].Name, other, err)
		}
	}
	if len(calls) != 0 {
		t.Errorf("semodule ran: %q", calls)
	}
}

// TestSELinuxUpdateOneTransaction: the modules a bundle drops leave in the
// semodule call that installs its own; the ones it carries are not removed.
func TestSELinuxUpdateOneTransaction(t *testing.T) {
	mods := analystModules(t)
	if _, err := mods[0].Package(context.Background(), t.TempDir()); errors.Is(err, selinux.ErrNoToolchain) {
		t.Skip(err)
	}
	fs := t.TempDir()
	if err := os.WriteFile(filepath.Join(fs, "enforce"), []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	var calls []string
	s := selinux.SELinux{FS: fs, Semodule: true, Run: func(_ context.Context, name string, args ...string) ([]byte, error) {
		calls = append(calls, name+" "+strings.Join(args, " "))
		return nil, nil
	}}
	rep, err := s.Update(context.Background(), mods[:1], []string{"old_a", mods[0].Name, "old_a", "old_b"}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) != 1 || !strings.HasPrefix(calls[0], "semodule -r old_a -r old_b -i ") || strings.Contains(calls[0], "-r "+mods[0].Name) {
		t.Errorf("calls %q: want one semodule removing old_a and old_b and installing %s", calls, mods[0].Name)
	}
	if !rep.Loaded || strings.Join(rep.Removed, ",") != "old_a,old_b" {
		t.Errorf("report %+v", rep)
	}
	// Only removals: still one call.
	calls = nil
	if _, err := s.Update(context.Background(), nil, []string{"old_a"}, t.TempDir()); err != nil || len(calls) != 1 || calls[0] != "semodule -r old_a" {
		t.Errorf("removal only: %v, calls %q", err, calls)
	}
}
