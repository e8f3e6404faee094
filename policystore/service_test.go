package policystore

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"path/filepath"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/policystore/ca"
)

// TestBundleForWithCA generates the analyst bundle the way VMLoad asks
// for it, with real certificates from the store's CA, and checks that
// each certificate verifies for its purpose.
func TestBundleForWithCA(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "store.db"))
	if _, err := st.SyncDir(filepath.Join("..", "examples", "analyst")); err != nil {
		t.Fatal(err)
	}
	authority, err := ca.Open(filepath.Join(t.TempDir(), "ca"), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer authority.Close()
	req := analystRequest()
	req.Issuer = CAIssuer(authority, 24*time.Hour)
	cat := &Catalog{Store: st}
	_, b1, err := cat.BundleFor(context.Background(), "analyst", req, nil, SystemPolicy{})
	if err != nil {
		t.Fatal(err)
	}
	req.SPI = counterSPI(0x5000)
	_, b2, err := cat.BundleFor(context.Background(), "analyst", req, nil, SystemPolicy{})
	if err != nil {
		t.Fatal(err)
	}
	if b2.Version <= b1.Version {
		t.Fatalf("versions %d then %d: must increase", b1.Version, b2.Version)
	}
	if len(b1.Certificates) == 0 {
		t.Fatal("no certificates")
	}
	for _, c := range b1.Certificates {
		blk, _ := pem.Decode(c.CertPEM)
		if blk == nil {
			t.Fatalf("%s: certificate is not PEM", c.Name)
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		usage := x509.ExtKeyUsageServerAuth
		if err := authority.Verify(cert, usage); err != nil {
			t.Errorf("%s (%v): %v", c.Name, c.Kind, err)
		}
		if c.Kind == CertGuest {
			if err := authority.Verify(cert, x509.ExtKeyUsageClientAuth); err != nil {
				t.Errorf("guest certificate %s cannot authenticate as a client: %v", c.Name, err)
			}
		}
	}
	// Unknown applications are refused before anything is generated.
	if _, _, err := cat.BundleFor(context.Background(), "nosuch", req, nil, SystemPolicy{}); err == nil {
		t.Fatal("bundle for an unknown application")
	}
	// A host not cleared for the application gets no bundle.
	if _, _, err := cat.BundleFor(context.Background(), "analyst", req, nil, SystemPolicy{Clearance: mustBoundsPS(t, "s0-s5/i0-i15")}); err == nil {
		t.Fatal("bundle beyond the host's clearance")
	}
}
