package updatedaemon

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/policystore/ca"
)

// rawClientTLS is a client configuration that trusts p's CA for the
// daemon and presents cert, whatever its kind: ca.ClientTLS itself refuses
// to present a certificate without clientAuth, and these tests need the
// daemon to be the one refusing.
func rawClientTLS(t *testing.T, p *pki, iss *ca.Issued) *tls.Config {
	t.Helper()
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: x509.NewCertPool()}
	cfg.RootCAs.AddCert(p.ca.Certificate())
	if iss != nil {
		cert, err := iss.TLSCertificate()
		if err != nil {
			t.Fatal(err)
		}
		// Present it even where the daemon's list of acceptable CAs does
		// not name its issuer (crypto/tls would otherwise send none).
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	}
	return cfg
}

// TestHandshakeRefusals: every client that is not the loader is refused in
// the TLS handshake, with the reason in the daemon's log, and reaches
// neither handler nor applier.
func TestHandshakeRefusals(t *testing.T) {
	p := newPKI(t)
	other, err := ca.Open(filepath.Join(t.TempDir(), "other-ca"), ca.Options{CommonName: "another CA"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	revoked := issue(t, p.ca, ca.Request{Kind: ca.Client, CommonName: DefaultLoaderName, TTL: time.Hour})
	if err := p.ca.Revoke(revoked.Serial, ca.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	crl := p.writeCRL(t, filepath.Join(t.TempDir(), "crl.pem"))
	h := startDaemon(t, p, daemonOpts{crlFile: crl})

	cases := []struct {
		name string
		tls  *tls.Config
		log  string // what the daemon's log says
	}{
		{"no client certificate", rawClientTLS(t, p, nil), "didn't provide a certificate"},
		{"certificate of another CA", rawClientTLS(t, p, issue(t, other, ca.Request{Kind: ca.Client, CommonName: DefaultLoaderName, TTL: time.Hour})), "unknown authority"},
		{"server certificate as client", rawClientTLS(t, p, issue(t, p.ca, ca.Request{Kind: ca.Server, CommonName: DefaultLoaderName, DNSNames: []string{"ws1.example"}, TTL: time.Hour})), "incompatible key usage"},
		{"another guest's certificate", rawClientTLS(t, p, issue(t, p.ca, ca.Request{Kind: ca.Guest, CommonName: "vm8", IPs: []net.IP{net.IPv4(10, 70, 0, 8)}, TTL: time.Hour})), `client certificate "vm8" is not the loader's`},
		{"client certificate of another name", rawClientTLS(t, p, issue(t, p.ca, ca.Request{Kind: ca.Client, CommonName: "intruder", TTL: time.Hour})), `client certificate "intruder" is not the loader's`},
		{"revoked loader certificate", rawClientTLS(t, p, revoked), "client certificate is revoked by the CRL"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cl := &Client{TLS: c.tls, Timeout: 5 * time.Second}
			defer cl.CloseIdleConnections()
			if c.tls.GetClientCertificate == nil {
				// The Client refuses to go without a certificate; the
				// daemon is asked directly.
				_, err := cl.Status(ctxT(t), h.addr)
				wantCode(t, err, ErrTLS)
				conn, err := tls.Dial("tcp", h.addr, &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: c.tls.RootCAs, ServerName: "127.0.0.1"})
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := conn.Read(make([]byte, 1)); err == nil || !strings.Contains(err.Error(), "remote error") {
					t.Errorf("read without a certificate: %v, want the daemon's alert", err)
				}
			} else {
				_, err := cl.Push(ctxT(t), h.addr, analystBundle(t, nil, 1, 0x4000))
				wantCode(t, err, ErrTLS)
				if !strings.Contains(err.Error(), h.addr) || !strings.Contains(err.Error(), "refused the TLS handshake") {
					t.Errorf("error %q should name the address and the refusal", err)
				}
			}
			h.waitLog(t, c.log)
		})
	}
	if got := h.fake.Calls(); len(got) != 0 {
		t.Errorf("a refused client reached the applier: %q", got)
	}
	// The loader itself gets in.
	if _, err := h.client.Push(ctxT(t), h.addr, analystBundle(t, nil, 1, 0x4000)); err != nil {
		t.Fatalf("the loader: %v", err)
	}
}

// TestCRLFollowsTheFile: a revocation published after the daemon started
// takes effect at the next handshake; an older CRL put back, a damaged one
// or an expired one refuses everyone.
func TestCRLFollowsTheFile(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now }
	p := newPKI(t)
	crl := p.writeCRL(t, filepath.Join(t.TempDir(), "crl.pem"))
	oldCRL, err := os.ReadFile(crl)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(VerifierConfig{CAPEM: p.ca.CertPEM(), CRLFile: crl, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	state := func(iss *ca.Issued) tls.ConnectionState {
		return tls.ConnectionState{PeerCertificates: []*x509.Certificate{iss.Cert}, VerifiedChains: [][]*x509.Certificate{{iss.Cert, p.ca.Certificate()}}}
	}
	if err := v.VerifyConnection(state(p.loader)); err != nil {
		t.Fatalf("the loader before revocation: %v", err)
	}

	if err := p.ca.Revoke(p.loader.Serial, ca.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	p.writeCRL(t, crl)
	if err := v.VerifyConnection(state(p.loader)); !errors.Is(err, ErrRevoked) {
		t.Fatalf("the loader after revocation: %v, want ErrRevoked", err)
	}

	fresh := issue(t, p.ca, ca.Request{Kind: ca.Client, CommonName: DefaultLoaderName, TTL: time.Hour})
	if err := v.VerifyConnection(state(fresh)); err != nil {
		t.Fatalf("a new loader certificate: %v", err)
	}
	writeFileAtomic(t, crl, oldCRL)
	if err := v.VerifyConnection(state(fresh)); err == nil || !strings.Contains(err.Error(), "an older CRL was put in place") {
		t.Errorf("older CRL: %v", err)
	}
	writeFileAtomic(t, crl, []byte("garbage"))
	if err := v.VerifyConnection(state(fresh)); err == nil || !strings.Contains(err.Error(), "not a CRL") {
		t.Errorf("damaged CRL: %v", err)
	}
	p.writeCRL(t, crl)
	if err := v.VerifyConnection(state(fresh)); err != nil {
		t.Fatalf("a fresh CRL again: %v", err)
	}
	now = now.Add(ca.DefaultCRLValidity + time.Minute)
	fresh.Cert.NotAfter = now.Add(time.Hour) // only the CRL is to be out of date
	if err := v.VerifyConnection(state(fresh)); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired CRL: %v", err)
	}
}

func TestVerifierRefusesBadCRL(t *testing.T) {
	p := newPKI(t)
	other, err := ca.Open(filepath.Join(t.TempDir(), "other-ca"), ca.Options{CommonName: "another CA"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	foreign, err := other.CRL()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cases := map[string]struct {
		data []byte
		want string
	}{
		"another CA's CRL": {foreign, "not by the daemon's CA"},
		"a certificate":    {p.ca.CertPEM(), "not an X509 CRL"},
		"garbage":          {[]byte("garbage"), "not a CRL"},
	}
	for name, c := range cases {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		if err := os.WriteFile(path, c.data, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := NewVerifier(VerifierConfig{CAPEM: p.ca.CertPEM(), CRLFile: path}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error naming %q", name, err, c.want)
		}
	}
	if _, err := NewVerifier(VerifierConfig{CAPEM: p.ca.CertPEM(), CRLFile: filepath.Join(dir, "missing")}); err == nil {
		t.Error("a missing CRL file was accepted")
	}
	if _, err := NewVerifier(VerifierConfig{CAPEM: p.guest.CertPEM}); err == nil || !strings.Contains(err.Error(), "not a CA certificate") {
		t.Errorf("a leaf as CA: %v", err)
	}
}

func TestServerTLSWantsAGuestCertificate(t *testing.T) {
	p := newPKI(t)
	v, err := NewVerifier(VerifierConfig{CAPEM: p.ca.CertPEM()})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := p.loader.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ServerTLS(cert, v); err == nil || !strings.Contains(err.Error(), "lacks serverAuth") {
		t.Errorf("a Client certificate as the daemon's: %v", err)
	}
	other, err := ca.Open(filepath.Join(t.TempDir(), "other-ca"), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	foreign, err := issue(t, other, ca.Request{Kind: ca.Guest, CommonName: "vm7", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, TTL: time.Hour}).TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ServerTLS(foreign, v); err == nil || !strings.Contains(err.Error(), "does not verify against the CA") {
		t.Errorf("another CA's certificate as the daemon's: %v", err)
	}
}

// TestClientRefusesAnImpostor: a daemon whose certificate is not from the
// loader's CA gets no bundle.
func TestClientRefusesAnImpostor(t *testing.T) {
	p := newPKI(t)
	other, err := ca.Open(filepath.Join(t.TempDir(), "other-ca"), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	fake, err := issue(t, other, ca.Request{Kind: ca.Guest, CommonName: "vm7", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, TTL: time.Hour}).TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{fake}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 1024)
		n, _ := c.Read(buf)
		got <- buf[:n]
	}()
	cl := &Client{TLS: p.ca.ClientTLS(p.loader, ""), Timeout: 5 * time.Second}
	_, err = cl.Push(ctxT(t), ln.Addr().String(), analystBundle(t, nil, 1, 0x4000))
	wantCode(t, err, ErrTLS)
	if !strings.Contains(err.Error(), "guest's certificate was refused") {
		t.Errorf("error %q should say the guest's certificate was refused", err)
	}
	if data := <-got; len(data) > 0 {
		t.Errorf("the impostor read %d bytes", len(data))
	}
}

func TestIdentityFromCert(t *testing.T) {
	p := newPKI(t)
	bundleCert := issue(t, p.ca, ca.Request{Kind: ca.Guest, CommonName: "vm7.analyst", IPs: []net.IP{net.ParseIP("::ffff:10.70.0.7"), net.ParseIP("fd00::7")}, TTL: time.Hour})
	id, err := IdentityFromCert(bundleCert.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if id.String() != "vm7 at 10.70.0.7, fd00::7" {
		t.Errorf("identity %s", id)
	}
	noIP := issue(t, p.ca, ca.Request{Kind: ca.Guest, CommonName: "vm7", DNSNames: []string{"vm7.example"}, TTL: time.Hour})
	if _, err := IdentityFromCert(noIP.Cert); err == nil || !strings.Contains(err.Error(), "--guest-addr") {
		t.Errorf("certificate without IP: %v", err)
	}
}
