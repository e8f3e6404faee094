package ca

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func mustCRL(t *testing.T, c *CA) []byte {
	t.Helper()
	b, err := c.CRL()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// parseCRL decodes a PEM CRL and checks its signature against c.
func parseCRL(t *testing.T, c *CA, b []byte) *x509.RevocationList {
	t.Helper()
	block, rest := pem.Decode(b)
	if block == nil || block.Type != "X509 CRL" || len(rest) != 0 {
		t.Fatalf("CRL is not one PEM X509 CRL block: %q", b)
	}
	crl, err := x509.ParseRevocationList(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(c.Certificate()); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	return crl
}

func listed(crl *x509.RevocationList, serial *big.Int) (x509.RevocationListEntry, bool) {
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(serial) == 0 {
			return e, true
		}
	}
	return x509.RevocationListEntry{}, false
}

func TestRevokeAndCRL(t *testing.T) {
	clk := newClock()
	dir := t.TempDir()
	c, err := Open(dir, Options{Now: clk.Now, CRLValidity: 6 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	keep := issue(t, c, guestReq())
	gone := issue(t, c, serverReq())

	crl0 := parseCRL(t, c, mustCRL(t, c))
	if len(crl0.RevokedCertificateEntries) != 0 {
		t.Errorf("CRL before any revocation lists %d entries", len(crl0.RevokedCertificateEntries))
	}
	if !crl0.NextUpdate.Equal(crl0.ThisUpdate.Add(6 * time.Hour)) {
		t.Errorf("NextUpdate %s, ThisUpdate %s; want 6h apart", crl0.NextUpdate, crl0.ThisUpdate)
	}

	if err := c.Verify(gone.Cert, x509.ExtKeyUsageServerAuth); err != nil {
		t.Fatalf("before revocation: %v", err)
	}
	if err := c.Revoke(gone.Serial, ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	if !c.Revoked(gone.Serial) || c.Revoked(keep.Serial) || c.Revoked(nil) {
		t.Error("Revoked reports the wrong certificates")
	}
	err = c.Verify(gone.Cert, x509.ExtKeyUsageServerAuth)
	if !errors.Is(err, ErrRevoked) || !strings.Contains(err.Error(), serialName(gone.Serial)) {
		t.Errorf("Verify of revoked: %v, want ErrRevoked naming the serial", err)
	}
	if err := c.Verify(keep.Cert, x509.ExtKeyUsageClientAuth); err != nil {
		t.Errorf("Verify of unrevoked: %v", err)
	}
	// Revoking again changes nothing.
	clk.Add(time.Hour)
	if err := c.Revoke(gone.Serial, ReasonSuperseded); err != nil {
		t.Errorf("second Revoke: %v", err)
	}

	crl1 := parseCRL(t, c, mustCRL(t, c))
	e, ok := listed(crl1, gone.Serial)
	if !ok || len(crl1.RevokedCertificateEntries) != 1 {
		t.Fatalf("CRL entries %v, want exactly serial %s", crl1.RevokedCertificateEntries, gone.Serial)
	}
	if e.ReasonCode != ReasonKeyCompromise {
		t.Errorf("reason %d, want %d (the first revocation's)", e.ReasonCode, ReasonKeyCompromise)
	}
	if crl1.Number.Cmp(crl0.Number) <= 0 {
		t.Errorf("CRL number %v after %v; must increase", crl1.Number, crl0.Number)
	}
	if !crl1.ThisUpdate.After(crl0.ThisUpdate) {
		t.Error("ThisUpdate did not move with the clock")
	}
	rec := c.Issued()
	for _, r := range rec {
		if r.Serial.Cmp(gone.Serial) == 0 && (!r.Revoked || r.Reason != ReasonKeyCompromise || r.RevokedAt.IsZero()) {
			t.Errorf("record of revoked cert: %+v", r)
		}
	}
	c.Close()

	// Numbers keep increasing across a restart, and the revocation
	// survives even if the record file is lost.
	if err := os.Remove(filepath.Join(dir, issuedDir, serialName(gone.Serial)+".pem")); err != nil {
		t.Fatal(err)
	}
	c2 := openCA(t, dir, Options{Now: clk.Now})
	crl2 := parseCRL(t, c2, mustCRL(t, c2))
	if crl2.Number.Cmp(crl1.Number) <= 0 {
		t.Errorf("CRL number %v after restart, previous %v", crl2.Number, crl1.Number)
	}
	if _, ok := listed(crl2, gone.Serial); !ok || !c2.Revoked(gone.Serial) {
		t.Error("revocation lost with its record")
	}
	if !crl2.NextUpdate.Equal(crl2.ThisUpdate.Add(DefaultCRLValidity)) {
		t.Errorf("default NextUpdate %s after ThisUpdate %s", crl2.NextUpdate, crl2.ThisUpdate)
	}
}

func TestRevokeErrors(t *testing.T) {
	c := openCA(t, t.TempDir(), Options{})
	iss := issue(t, c, clientReq())
	if err := c.Revoke(big.NewInt(12345), ReasonUnspecified); !errors.Is(err, ErrUnknownSerial) {
		t.Errorf("unknown serial: %v, want ErrUnknownSerial", err)
	}
	for _, s := range []*big.Int{nil, big.NewInt(0), big.NewInt(-3)} {
		if err := c.Revoke(s, ReasonUnspecified); err == nil {
			t.Errorf("Revoke(%v) succeeded", s)
		}
	}
	for _, r := range []int{-1, 7, 8, 11} {
		if err := c.Revoke(iss.Serial, r); err == nil || !strings.Contains(err.Error(), "reason") {
			t.Errorf("reason %d: %v", r, err)
		}
	}
	if c.Revoked(iss.Serial) {
		t.Error("failed Revoke calls revoked the certificate")
	}
	c.Close()
	if err := c.Revoke(iss.Serial, ReasonUnspecified); !errors.Is(err, ErrClosed) {
		t.Errorf("Revoke after Close: %v", err)
	}
	if _, err := c.CRL(); !errors.Is(err, ErrClosed) {
		t.Errorf("CRL after Close: %v", err)
	}
}

func TestVerifyExpired(t *testing.T) {
	clk := newClock()
	c := openCA(t, t.TempDir(), Options{Now: clk.Now})
	req := clientReq()
	req.TTL = time.Hour
	iss := issue(t, c, req)
	if err := c.Verify(iss.Cert, x509.ExtKeyUsageClientAuth); err != nil {
		t.Fatal(err)
	}
	clk.Add(2 * time.Hour)
	var inv x509.CertificateInvalidError
	if err := c.Verify(iss.Cert, x509.ExtKeyUsageClientAuth); !errors.As(err, &inv) || inv.Reason != x509.Expired {
		t.Errorf("Verify after expiry: %v, want x509.Expired", err)
	}
	// checkLeaf, used on resumed TLS sessions, sees the expiry too.
	if err := c.checkLeaf(iss.Cert, x509.ExtKeyUsageClientAuth); err == nil {
		t.Error("checkLeaf accepted an expired certificate")
	}
}
