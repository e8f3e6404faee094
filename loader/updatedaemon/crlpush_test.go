package updatedaemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/policystore/ca"
)

// TestPushedCRLRevokesAnOldLoader: a daemon started with --crl installs
// the CRL a bundle carries, so a loader certificate revoked after the
// guest booted (a superseded loader, a stolen key) is refused from then
// on; an older CRL or one of another CA refuses the bundle and changes
// nothing.
func TestPushedCRLRevokesAnOldLoader(t *testing.T) {
	p := newPKI(t)
	crlFile := p.writeCRL(t, filepath.Join(t.TempDir(), "crl.pem"))
	oldCRL, _ := os.ReadFile(crlFile)
	h := startDaemon(t, p, daemonOpts{crlFile: crlFile})
	if _, err := h.client.Push(ctxT(t), h.addr, analystBundle(t, p, 1, 0xc0000100)); err != nil {
		t.Fatalf("the loader's first push: %v", err)
	}

	// A new loader; the old one's certificate is revoked.
	fresh := issue(t, p.ca, ca.Request{Kind: ca.Client, CommonName: DefaultLoaderName, TTL: time.Hour})
	if err := p.ca.Revoke(p.loader.Serial, ca.ReasonSuperseded); err != nil {
		t.Fatal(err)
	}
	crl, err := p.ca.CRL()
	if err != nil {
		t.Fatal(err)
	}
	newLoader := &Client{TLS: p.ca.ClientTLS(fresh, ""), Timeout: 10 * time.Second}
	defer newLoader.CloseIdleConnections()

	// The CRL the daemon already holds, again: nothing to do.
	same := analystBundle(t, p, 2, 0xc0000200)
	same.CRL = oldCRL
	if _, err := newLoader.Push(ctxT(t), h.addr, same); err != nil {
		t.Fatalf("a bundle with the CRL in use: %v", err)
	}
	other := newPKI(t)
	foreign, err := other.ca.CRL()
	if err != nil {
		t.Fatal(err)
	}
	bad := analystBundle(t, p, 3, 0xc0000300)
	bad.CRL = foreign
	if _, err := newLoader.Push(ctxT(t), h.addr, bad); err == nil || !strings.Contains(err.Error(), "CRL") {
		t.Fatalf("a bundle with another CA's CRL: %v, want a refusal naming the CRL", err)
	}

	b := analystBundle(t, p, 4, 0xc0000400)
	b.CRL = crl
	if _, err := newLoader.Push(ctxT(t), h.addr, b); err != nil {
		t.Fatalf("the new loader's push with the CRL: %v", err)
	}
	if got, _ := os.ReadFile(crlFile); string(got) != string(crl) {
		t.Fatal("the pushed CRL was not installed in the --crl file")
	}
	h.client.CloseIdleConnections()
	if _, err := h.client.Push(ctxT(t), h.addr, analystBundle(t, p, 5, 0xc0000500)); err == nil {
		t.Fatal("the revoked loader certificate still pushes after the CRL reached the daemon")
	}
	h.waitLog(t, "revoked")

	back := analystBundle(t, p, 6, 0xc0000600)
	back.CRL = oldCRL
	if _, err := newLoader.Push(ctxT(t), h.addr, back); err == nil || !strings.Contains(err.Error(), "below the one in use") {
		t.Fatalf("a bundle with an older CRL: %v, want refused", err)
	}
	if got, _ := os.ReadFile(crlFile); string(got) != string(crl) {
		t.Fatal("an older CRL replaced the installed one")
	}
}
