package loader

import (
	"context"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/selinux"
)

// TestGuestModulesCompiledOnTheHost: the loader refuses a bundle whose
// guest module does not compile (guests without SELinux no longer compile
// them), and compiles a module text once.
func TestGuestModulesCompiledOnTheHost(t *testing.T) {
	if _, err := exec.LookPath("checkmodule"); err != nil {
		t.Skip("needs checkmodule and semodule_package: run 'make deps-selinux'")
	}
	good := selinux.Module{Name: "mlsgate_probe", Target: selinux.TargetGuest, TE: "module mlsgate_probe 1.0;\nrequire { type unlabeled_t; }\n"}
	bad := good
	bad.TE = "module mlsgate_probe 1.0;\nthis is not a policy\n"
	var c moduleChecks
	ctx := context.Background()
	if err := c.check(ctx, &policystore.Bundle{Modules: []selinux.Module{good}}); err != nil {
		t.Fatalf("a module that compiles: %v", err)
	}
	err := c.check(ctx, &policystore.Bundle{Modules: []selinux.Module{good, bad}})
	if err == nil || !strings.Contains(err.Error(), "does not compile") || !strings.Contains(err.Error(), "checkmodule") {
		t.Fatalf("a module that does not compile: %v", err)
	}
	if c.done.Len() != 2 {
		t.Fatalf("%d module texts remembered, want 2", c.done.Len())
	}
	// The next bundle's module: another version stamp, the same module.
	next := good
	next.TE = "# bundle version 7\nmodule mlsgate_probe 1.7;\nrequire { type unlabeled_t; }\n"
	if err := c.check(ctx, &policystore.Bundle{Modules: []selinux.Module{next}}); err != nil || c.done.Len() != 2 {
		t.Fatalf("the next version of a module: %v, %d texts remembered (want it found, 2)", err, c.done.Len())
	}
	other := good
	other.TE = "module mlsgate_probe 1.0;\nrequire { type unlabeled_t; type nosuch_t; }\n"
	if moduleDigest(other) == moduleDigest(good) {
		t.Fatal("a module with other statements has the same digest")
	}
	// Host modules are the host side's business.
	host := bad
	host.Target = selinux.TargetHost
	if err := c.check(ctx, &policystore.Bundle{Modules: []selinux.Module{host}}); err != nil {
		t.Fatalf("a host module: %v", err)
	}
}

// TestModuleDigestAcrossBundles: two bundles of an application, for two
// guests at two versions, have modules of one digest, so the second
// configuration compiles nothing.
func TestModuleDigestAcrossBundles(t *testing.T) {
	r := newRig(t, policystore.SystemPolicy{})
	e, _ := r.l.catalog.Store.Get("analyst")
	var ds [][32]byte
	for i, g := range []string{"vm5", "vm6"} {
		req := policystore.BundleRequest{Guest: g, GuestAddr: netip.AddrFrom4([4]byte{10, 71, byte(5 + i), 2}), HostAddr: netip.AddrFrom4([4]byte{10, 71, byte(5 + i), 1}),
			MapperUpstream: "http://10.71.5.1:7443", Version: uint64(3 + i), Now: time.Now()}
		n := uint32(0x1000 + 100*i)
		req.SPI = func() (uint32, error) { n++; return n, nil }
		b, err := policystore.GenerateBundle(e.App, req, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range b.Modules {
			if m.Target == selinux.TargetGuest {
				ds = append(ds, moduleDigest(m))
			}
		}
	}
	if len(ds) != 2 || ds[0] != ds[1] {
		t.Fatalf("guest module digests %x: want one module per bundle, equal", ds)
	}
}
