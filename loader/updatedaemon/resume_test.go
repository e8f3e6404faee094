package updatedaemon

import (
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/policystore/ca"
)

// reconnect closes the client's kept connections and asks for the status
// on a new one, as the bench's first answer does.
func (h *harness) reconnect(t *testing.T) (*Status, error) {
	t.Helper()
	h.client.CloseIdleConnections()
	return h.client.Status(ctxT(t), h.addr)
}

// TestFirstAnswerResumesThePushSession: the first request after the
// loader's connection to a guest closed resumes that connection's TLS
// session instead of signing and verifying both certificates again.
func TestFirstAnswerResumesThePushSession(t *testing.T) {
	p := newPKI(t)
	h := startDaemon(t, p, daemonOpts{})
	if err := h.client.Connect(ctxT(t), h.addr); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.Push(ctxT(t), h.addr, analystBundle(t, p, 1, 0xc0000100)); err != nil {
		t.Fatal(err)
	}
	st, err := h.reconnect(t)
	if err != nil {
		t.Fatal(err)
	}
	if st.Applied == nil || st.Applied.Version != 1 {
		t.Errorf("status after resumption: %+v, want bundle v1", st.Applied)
	}
	if d, r := h.client.dials.Load(), h.client.resumed.Load(); d != 2 || r != 1 {
		t.Errorf("%d connections, %d of them resumed; want 2, the second resumed", d, r)
	}
}

// TestResumptionRefusesARevokedLoader: a loader certificate revoked after
// the session was made is refused on the resumed session too (the
// daemon's VerifyConnection reads the CRL at every handshake).
func TestResumptionRefusesARevokedLoader(t *testing.T) {
	p := newPKI(t)
	crl := p.writeCRL(t, filepath.Join(t.TempDir(), "crl.pem"))
	h := startDaemon(t, p, daemonOpts{crlFile: crl})
	h.resumeOnce(t)
	if err := p.ca.Revoke(p.loader.Serial, ca.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	p.writeCRL(t, crl)
	_, err := h.reconnect(t)
	if !errors.Is(err, ErrTLS) {
		t.Fatalf("status with a revoked loader certificate on a resumed session: %v, want a TLS refusal", err)
	}
	h.waitLog(t, "revoked")
	// The client's side of a resumed handshake ends before the daemon
	// checks the session's certificate (crypto/tls does it after sending
	// its Finished), so the refused connection counts as resumed: the
	// refusal came on a resumed session, not on a full handshake.
	if r := h.client.resumed.Load(); r != 2 {
		t.Errorf("%d connections resumed, want 2 (the refused one too)", r)
	}
}

// TestResumptionRefusesARevokedGuest: the loader does not resume a
// session with a guest whose certificate was revoked since (its
// VerifyConnection checks the CA's revocations at every handshake).
func TestResumptionRefusesARevokedGuest(t *testing.T) {
	p := newPKI(t)
	h := startDaemon(t, p, daemonOpts{})
	h.resumeOnce(t)
	if err := p.ca.Revoke(p.guest.Serial, ca.ReasonCessationOfOperation); err != nil {
		t.Fatal(err)
	}
	_, err := h.reconnect(t)
	if !errors.Is(err, ErrTLS) || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("status from a guest whose certificate was revoked: %v, want a TLS refusal naming the revocation", err)
	}
	if r := h.client.resumed.Load(); r != 1 {
		t.Errorf("%d connections resumed, want still 1", r)
	}
}

// TestResumptionNotAcrossDaemonCertificates: a session made with the
// daemon presenting one certificate is not resumed once it presents
// another (rotated, or another guest at the same address), even where the
// ticket keys are the same; with the same certificate it is.
func TestResumptionNotAcrossDaemonCertificates(t *testing.T) {
	p := newPKI(t)
	v, err := NewVerifier(VerifierConfig{CAPEM: p.ca.CertPEM()})
	if err != nil {
		t.Fatal(err)
	}
	rotated := issue(t, p.ca, ca.Request{Kind: ca.Guest, CommonName: testGuestName, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, TTL: time.Hour})
	keys := [][32]byte{{1, 2, 3}}
	server := func(iss *ca.Issued) *tls.Config {
		cert, err := iss.TLSCertificate()
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := ServerTLS(cert, v)
		if err != nil {
			t.Fatal(err)
		}
		cfg.SetSessionTicketKeys(keys)
		return cfg
	}
	client := p.ca.ClientTLS(p.loader, "127.0.0.1")
	client.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	// handshake serves one connection with cfg and returns what the
	// client saw.
	handshake := func(cfg *tls.Config) tls.ConnectionState {
		t.Helper()
		ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		served := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				_, err = c.Write([]byte{1}) // after the handshake and its tickets
				c.Close()
			}
			served <- err
		}()
		c, err := tls.Dial("tcp", ln.Addr().String(), client)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Read(make([]byte, 1)); err != nil { // reads the tickets too
			t.Fatal(err)
		}
		if err := <-served; err != nil {
			t.Fatal(err)
		}
		return c.ConnectionState()
	}
	if cs := handshake(server(p.guest)); cs.DidResume {
		t.Fatal("the first connection resumed")
	}
	if cs := handshake(server(p.guest)); !cs.DidResume {
		t.Fatal("same certificate, same ticket keys: not resumed (the test needs resumption to work)")
	}
	cs := handshake(server(rotated))
	if cs.DidResume {
		t.Error("a session made under the daemon's old certificate was resumed under its new one")
	}
	if got := cs.PeerCertificates[0].SerialNumber; got.Cmp(rotated.Serial) != 0 {
		t.Errorf("the client saw certificate %s, want the new one %s", got.Text(16), rotated.Serial.Text(16))
	}
}

// TestNewRefusesUnboundTickets: a TLS configuration that resumes sessions
// without binding them to the daemon's certificate is refused.
func TestNewRefusesUnboundTickets(t *testing.T) {
	p := newPKI(t)
	tc, _ := p.guestServerTLS(t, "")
	tc.WrapSession, tc.UnwrapSession = nil, nil
	_, err := New(Config{TLS: tc, Identity: Identity{Name: testGuestName, Addrs: []netip.Addr{testGuestAddr}}, StateDir: t.TempDir(), Applier: &FakeApplier{}})
	if err == nil || !strings.Contains(err.Error(), "binding") {
		t.Errorf("New with unbound session tickets: %v, want a refusal", err)
	}
}

// resumeOnce connects and reconnects, so that the client holds a session
// the daemon resumed once.
func (h *harness) resumeOnce(t *testing.T) {
	t.Helper()
	if err := h.client.Connect(ctxT(t), h.addr); err != nil {
		t.Fatal(err)
	}
	if _, err := h.reconnect(t); err != nil {
		t.Fatal(err)
	}
	if r := h.client.resumed.Load(); r != 1 {
		t.Fatalf("%d connections resumed before the revocation, want 1 (the test needs a session to resume)", r)
	}
}
