package guestvm

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/policystore"
)

// TestStoreTakesTheAnalystModule builds the guest's module store offline
// and installs into it the guest module the policy store generates for
// examples/analyst, as the update daemon does in the guest: the base must
// satisfy every require of the module, and must not itself know the
// application's types.
func TestStoreTakesTheAnalystModule(t *testing.T) {
	base := BasePolicySource()
	if base != BasePolicySource() {
		t.Fatal("BasePolicySource is not deterministic")
	}
	for _, app := range PolicyApplications {
		if strings.Contains(base, app+"_t") {
			t.Errorf("the base policy declares %s_t: the application's types must come from its module", app)
		}
	}
	for _, tool := range []string{"checkmodule", "semodule_package", "semodule"} {
		if _, err := findTool(tool); err != nil {
			t.Skipf("%v (apt-get install checkpolicy semodule-utils policycoreutils)", err)
		}
	}
	ctx := context.Background()
	root := t.TempDir()
	if err := BuildStore(ctx, root); err != nil {
		t.Fatal(err)
	}
	app, err := policystore.LoadFile("../../examples/analyst/analyst.yaml")
	if err != nil {
		t.Fatal(err)
	}
	next := uint32(0x7000)
	b, err := policystore.GenerateBundle(app, policystore.BundleRequest{
		Guest: "vm1", GuestAddr: netip.MustParseAddr("10.70.0.2"), HostAddr: netip.MustParseAddr("10.70.0.1"),
		MapperUpstream: "http://10.70.0.1:7070", SPI: func() (uint32, error) { next++; return next, nil },
		Version: 1, Now: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	g := b.GuestPart()
	if len(g.Modules) == 0 {
		t.Fatal("the analyst bundle has no guest module")
	}
	pol := filepath.Join(root, "etc/selinux", StoreName, "policy/policy.33")
	before, err := os.ReadFile(pol)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"-p", root, "-s", StoreName, "-n"}
	for _, m := range g.Modules {
		pp, err := m.Package(ctx, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		args = append(args, "-i", pp)
	}
	if err := run(ctx, "", nil, "semodule", args...); err != nil {
		t.Fatalf("the store refuses the analyst guest module: %v", err)
	}
	after, err := os.ReadFile(pol)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) <= len(before) {
		t.Errorf("policy.33 has %d bytes with the module, %d without: the module added nothing", len(after), len(before))
	}
}

// TestStageSELinux stages what a dom0 or guest initramfs needs to install
// modules: the programs with their libraries and a writable store.
func TestStageSELinux(t *testing.T) {
	for _, u := range SELinuxUserland {
		if _, err := findTool(u.Name); err != nil {
			t.Skipf("%v (apt-get install %s)", err, strings.Join(Packages, " "))
		}
	}
	stage, work := t.TempDir(), t.TempDir()
	if err := StageSELinux(context.Background(), stage, work); err != nil {
		t.Fatal(err)
	}
	want := []string{"etc/selinux/config", "etc/selinux/semanage.conf", "etc/selinux/" + StoreName + "/policy/policy.33", "var/lib/selinux/" + StoreName + "/active"}
	for _, u := range SELinuxUserland {
		want = append(want, strings.TrimPrefix(u.Path, "/"))
	}
	for _, f := range want {
		if _, err := os.Stat(filepath.Join(stage, f)); err != nil {
			t.Errorf("staged tree lacks %s: %v", f, err)
		}
	}
	// The libraries semodule needs came along.
	libs, _ := filepath.Glob(filepath.Join(stage, "lib/x86_64-linux-gnu/libsemanage.so*"))
	libs2, _ := filepath.Glob(filepath.Join(stage, "usr/lib/x86_64-linux-gnu/libsemanage.so*"))
	if len(libs)+len(libs2) == 0 {
		t.Error("staged tree lacks libsemanage")
	}
}
