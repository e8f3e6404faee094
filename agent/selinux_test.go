package agent

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
)

func analystModules(t *testing.T) []policystore.Module {
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
	if _, err := mods[0].Package(context.Background(), t.TempDir()); errors.Is(err, policystore.ErrNoToolchain) {
		t.Skip(err)
	}
	fs := t.TempDir()
	var calls []string
	s := SELinux{FS: fs, Run: func(_ context.Context, name string, args ...string) ([]byte, error) {
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
	rep, err = s.Install(context.Background(), mods, t.TempDir())
	if err != nil || !rep.Loaded || len(calls) != 1 || strings.Count(calls[0], " -i ") != len(mods) || !strings.HasPrefix(calls[0], "semodule -i ") {
		t.Fatalf("active: %+v %v, calls %v", rep, err, calls)
	}
	if err := s.Remove(context.Background(), "mlsgate_analyst_host"); err != nil || calls[1] != "semodule -r mlsgate_analyst_host" {
		t.Fatalf("remove: %v %v", err, calls)
	}
	// A module the toolchain refuses is an error, active or not.
	bad := append([]policystore.Module(nil), mods...)
	bad[0].TE += "\nallow undeclared_t self:file read;\n"
	if _, err := s.Install(context.Background(), bad, t.TempDir()); err == nil || !strings.Contains(err.Error(), "checkmodule") {
		t.Fatalf("broken module: %v", err)
	}
}
