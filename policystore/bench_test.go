package policystore

import (
	"flag"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/policystore/ca"
)

// BenchmarkGenerateBundle is the policy store's share of the configuration
// phase: templates rendered, XFRM decoded and validated, mapper policy
// parsed (no certificates, no checkmodule).
func BenchmarkGenerateBundle(b *testing.B) {
	app := analystApp(b)
	req := analystRequest()
	req.Issuer = nil
	for b.Loop() {
		req.SPI = counterSPI(0x4000)
		if _, err := GenerateBundle(app, req, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCheckBundle is the compliance check of the analyst bundle.
func BenchmarkCheckBundle(b *testing.B) {
	app := analystApp(b)
	req := analystRequest()
	req.Issuer = nil
	bun, err := GenerateBundle(app, req, nil)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := CheckBundle(app, bun, SystemPolicy{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkResolve resolves a URL among the analyst applications and 5,000
// others: the index, not a scan.
func BenchmarkResolve(b *testing.B) {
	apps := analystApps(b)
	for i := range 5000 {
		a := mustApp(b, "app"+string(rune('a'+i%26))+itoa(i))
		apps = append(apps, a)
	}
	ix, err := NewIndex(apps)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := ix.Resolve("http://ws1.analyst.example/profile/7"); err != nil {
			b.Fatal(err)
		}
	}
}

func itoa(i int) string {
	const digits = "0123456789"
	if i < 10 {
		return digits[i : i+1]
	}
	return itoa(i/10) + digits[i%10:i%10+1]
}

// BenchmarkCatalogAuthorityMiss is one application fetched from an
// authority on loopback and cached (the store's write included).
func BenchmarkCatalogAuthorityMiss(b *testing.B) {
	st, err := OpenStore(filepath.Join(b.TempDir(), "a.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	if _, err := st.SyncDir(filepath.Join("..", "examples", "analyst")); err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(Handler(&Catalog{Store: st}, time.Minute))
	defer srv.Close()
	local, err := OpenStore(filepath.Join(b.TempDir(), "l.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer local.Close()
	cat := &Catalog{Store: local, Authority: &AuthorityClient{BaseURL: srv.URL}}
	for b.Loop() {
		if _, err := local.InvalidateAll(); err != nil {
			b.Fatal(err)
		}
		if _, err := cat.Resolve(b.Context(), "http://ws1.analyst.example/"); err != nil {
			b.Fatal(err)
		}
	}
}

var bundleStep = flag.Bool("bundlestep", false, "time bundle generation with the CA's certificates (as the loader's bundle step did) against without")

// TestBundleStepTimes times the analyst bundle's generation with
// certificates from a CA on disk (a key, a signature and a record written
// with two fsyncs per certificate: three servers and the guest) against
// the same without certificates, as the loader's bundle step now makes
// it. It only reports (median of 21, and the ratio); run it with
// -bundlestep.
func TestBundleStepTimes(t *testing.T) {
	if !*bundleStep {
		t.Skip("a measurement: run with -bundlestep")
	}
	authority, err := ca.Open(filepath.Join(t.TempDir(), "ca"), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer authority.Close()
	app := analystApp(t)
	median := func(issuer Issuer) time.Duration {
		var ds []time.Duration
		for range 21 {
			req := analystRequest()
			req.Issuer = issuer
			req.SPI = counterSPI(0x4000)
			t0 := time.Now()
			if _, err := GenerateBundle(app, req, nil); err != nil {
				t.Fatal(err)
			}
			ds = append(ds, time.Since(t0))
		}
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	with, without := median(CAIssuer(authority, time.Hour)), median(nil)
	t.Logf("bundle with the CA's 4 certificates: median %v; without: %v (%.1f%% of it)", with, without, 100*float64(without)/float64(with))
}
