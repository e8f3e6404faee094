package updatedaemon

import (
	"encoding/json"
	"flag"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/policystore"
)

var updateWarm = flag.Bool("update-warm", false, "regenerate testdata/warm-bundle.json from the analyst example")

// TestWarmBundle: the warm-up bundle decodes and passes a push's checks
// with this daemon's code (a format change that breaks it fails here:
// regenerate it with -update-warm), and it carries what a push's costly
// paths work on: SAs, policies, a mapper policy with rules, a module.
func TestWarmBundle(t *testing.T) {
	if *updateWarm {
		app, err := policystore.LoadFile("../../examples/analyst/analyst.yaml")
		if err != nil {
			t.Fatal(err)
		}
		next := uint32(0x100)
		b, err := policystore.GenerateBundle(app, policystore.BundleRequest{
			Guest: testGuestName, GuestAddr: testGuestAddr, HostAddr: testHostAddr, MapperUpstream: "http://10.70.0.1:7070",
			SPI:     func() (uint32, error) { next++; return next - 1, nil },
			Version: 1, Now: time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC), Rand: rand.NewChaCha8([32]byte{'w', 'a', 'r', 'm'}),
			NoCertificatesBecause: "a warm-up bundle",
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		data, err := json.Marshal(b.GuestPart())
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile("testdata/warm-bundle.json", data, 0o644); err != nil {
			t.Fatal(err)
		}
		warmBundle = data
	}
	if _, err := WarmPush(); err != nil {
		t.Fatalf("%v; regenerate the sample with go test ./loader/updatedaemon -run TestWarmBundle -update-warm", err)
	}
	var b policystore.Bundle
	if err := json.Unmarshal(warmBundle, &b); err != nil {
		t.Fatal(err)
	}
	if len(b.States) == 0 || len(b.Policies) == 0 || len(b.Modules) == 0 || b.MapperPolicy == "" || len(b.ServerKeys) > 0 {
		t.Errorf("the warm-up bundle has %d SAs, %d policies, %d modules, mapper policy %q, %d server keys: want a guest part with all but keys",
			len(b.States), len(b.Policies), len(b.Modules), b.MapperPolicy, len(b.ServerKeys))
	}
}
