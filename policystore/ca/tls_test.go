package ca

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// result is what both ends of one TLS connection saw.
type result struct {
	server, client error
	resumed        bool
}

func (r result) ok() bool { return r.server == nil && r.client == nil }

// handshake runs one TLS connection over 127.0.0.1 and sends two bytes from
// the server to the client. With TLS 1.3 a client may finish its handshake
// before the server rejects the client's certificate, so the client's error
// may surface only at the read.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) result {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		s := tls.Server(conn, serverCfg)
		if err := s.Handshake(); err != nil {
			done <- err
			return
		}
		_, err = s.Write([]byte("ok"))
		done <- err
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	cl := tls.Client(conn, clientCfg)
	var r result
	r.client = cl.Handshake()
	if r.client == nil {
		buf := make([]byte, 2)
		if _, r.client = io.ReadFull(cl, buf); r.client == nil && string(buf) != "ok" {
			r.client = fmt.Errorf("read %q, want \"ok\"", buf)
		}
		r.resumed = cl.ConnectionState().DidResume
	}
	cl.Close()
	r.server = <-done
	return r
}

// tlsFixture is a CA with a guest (update daemon) and a loader certificate.
type tlsFixture struct {
	clk           *clock
	ca            *CA
	guest, loader *Issued
	name          string // the guest's DNS name
}

func newTLSFixture(t *testing.T) *tlsFixture {
	clk := newClock()
	c := openCA(t, t.TempDir(), Options{Now: clk.Now})
	return &tlsFixture{
		clk:    clk,
		ca:     c,
		guest:  issue(t, c, guestReq()),
		loader: issue(t, c, clientReq()),
		name:   guestReq().DNSNames[0],
	}
}

func TestTLSMutualAuth(t *testing.T) {
	f := newTLSFixture(t)
	r := handshake(t, f.ca.ServerTLS(f.guest), f.ca.ClientTLS(f.loader, f.name))
	if !r.ok() {
		t.Fatalf("handshake: server %v, client %v", r.server, r.client)
	}
	// By IP SAN too.
	r = handshake(t, f.ca.ServerTLS(f.guest), f.ca.ClientTLS(f.loader, "127.0.0.1"))
	if !r.ok() {
		t.Fatalf("handshake by IP: server %v, client %v", r.server, r.client)
	}
	// A guest certificate also works as a client (guest to dom0 service).
	r = handshake(t, f.ca.ServerTLS(f.guest), f.ca.ClientTLS(issue(t, f.ca, guestReq()), f.name))
	if !r.ok() {
		t.Fatalf("guest as client: server %v, client %v", r.server, r.client)
	}
	cfg := f.ca.ServerTLS(f.guest)
	if cfg.MinVersion != tls.VersionTLS13 || cfg.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Errorf("server config: MinVersion %x, ClientAuth %v", cfg.MinVersion, cfg.ClientAuth)
	}
	if cc := f.ca.ClientTLS(f.loader, f.name); cc.MinVersion != tls.VersionTLS13 || cc.RootCAs == nil || cc.InsecureSkipVerify {
		t.Error("client config must pin this CA and TLS 1.3")
	}
}

func TestTLSServerRejectsClient(t *testing.T) {
	f := newTLSFixture(t)
	other := openCA(t, t.TempDir(), Options{})
	foreign := issue(t, other, clientReq())
	webServer := issue(t, f.ca, serverReq())

	expiring := clientReq()
	expiring.TTL = time.Hour
	expired := issue(t, f.ca, expiring)

	revoked := issue(t, f.ca, clientReq())
	if err := f.ca.Revoke(revoked.Serial, ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}

	// rawClient presents iss without ClientTLS's own check, as an
	// attacker's client would.
	rawClient := func(iss *Issued) *tls.Config {
		pair, err := iss.TLSCertificate()
		if err != nil {
			t.Fatal(err)
		}
		cfg := f.ca.ClientTLS(nil, f.name)
		cfg.Certificates = []tls.Certificate{pair}
		return cfg
	}
	var unknownCA x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	cases := map[string]struct {
		client  *tls.Config
		advance time.Duration
		check   func(error) bool
	}{
		"no certificate": {f.ca.ClientTLS(nil, f.name), 0, func(err error) bool {
			return err != nil && strings.Contains(err.Error(), "certificate")
		}},
		"another CA": {f.ca.ClientTLS(foreign, f.name), 0, func(err error) bool { return errors.As(err, &unknownCA) }},
		"revoked":    {f.ca.ClientTLS(revoked, f.name), 0, func(err error) bool { return errors.Is(err, ErrRevoked) }},
		"expired": {f.ca.ClientTLS(expired, f.name), 2 * time.Hour, func(err error) bool {
			return errors.As(err, &invalid) && invalid.Reason == x509.Expired
		}},
		"server cert as client": {rawClient(webServer), 0, func(err error) bool {
			return errors.As(err, &invalid) && invalid.Reason == x509.IncompatibleUsage
		}},
	}
	for _, name := range []string{"no certificate", "another CA", "revoked", "server cert as client", "expired"} {
		tc := cases[name]
		t.Run(name, func(t *testing.T) {
			f.clk.Add(tc.advance)
			r := handshake(t, f.ca.ServerTLS(f.guest), tc.client)
			if r.ok() {
				t.Fatal("handshake succeeded")
			}
			if !tc.check(r.server) {
				t.Errorf("server error %v (%T) is not the expected rejection", r.server, r.server)
			}
			if r.client == nil {
				t.Error("client did not see the rejection")
			}
		})
	}
	// The loader's own certificate still works after all that (the clock
	// moved two hours; the loader's TTL is a day).
	if r := handshake(t, f.ca.ServerTLS(f.guest), f.ca.ClientTLS(f.loader, f.name)); !r.ok() {
		t.Errorf("loader rejected: server %v, client %v", r.server, r.client)
	}
}

func TestTLSClientRejectsServer(t *testing.T) {
	f := newTLSFixture(t)
	other := openCA(t, t.TempDir(), Options{})
	foreignGuest := issue(t, other, guestReq())
	revokedGuest := issue(t, f.ca, guestReq())
	if err := f.ca.Revoke(revokedGuest.Serial, ReasonCessationOfOperation); err != nil {
		t.Fatal(err)
	}
	// A Client certificate that names the guest, so that only its usage
	// is wrong.
	clientNamed := clientReq()
	clientNamed.DNSNames = []string{f.name}
	namedLoader := issue(t, f.ca, clientNamed)
	// rawServer presents iss without ServerTLS's own check.
	rawServer := func(iss *Issued) *tls.Config {
		pair, err := iss.TLSCertificate()
		if err != nil {
			t.Fatal(err)
		}
		cfg := f.ca.ServerTLS(f.guest)
		cfg.Certificates = []tls.Certificate{pair}
		return cfg
	}
	var unknownCA x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	var host x509.HostnameError
	cases := map[string]struct {
		server *tls.Config
		name   string
		check  func(error) bool
	}{
		"another CA": {f.ca.ServerTLS(foreignGuest), f.name, func(err error) bool { return errors.As(err, &unknownCA) }},
		"revoked":    {f.ca.ServerTLS(revokedGuest), f.name, func(err error) bool { return errors.Is(err, ErrRevoked) }},
		"wrong name": {f.ca.ServerTLS(f.guest), "guest8.mlsgate.test", func(err error) bool { return errors.As(err, &host) }},
		"client cert as server": {rawServer(namedLoader), f.name, func(err error) bool {
			return errors.As(err, &invalid) && invalid.Reason == x509.IncompatibleUsage
		}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			r := handshake(t, tc.server, f.ca.ClientTLS(f.loader, tc.name))
			if !tc.check(r.client) {
				t.Errorf("client error %v (%T) is not the expected rejection", r.client, r.client)
			}
			if r.server == nil {
				t.Error("server did not see the failure")
			}
		})
	}
}

func TestTLSHelpersRefuseWrongOwnCertificate(t *testing.T) {
	f := newTLSFixture(t)
	web := issue(t, f.ca, serverReq())
	// A Server certificate cannot act as the loader, nor a Client one as
	// a server: the helpers fail the handshake locally, saying why.
	r := handshake(t, f.ca.ServerTLS(f.guest), f.ca.ClientTLS(web, f.name))
	if r.client == nil || !strings.Contains(r.client.Error(), "lacks clientAuth") {
		t.Errorf("ClientTLS with a Server certificate: client error %v", r.client)
	}
	r = handshake(t, f.ca.ServerTLS(f.loader), f.ca.ClientTLS(f.loader, f.name))
	if r.server == nil || !strings.Contains(r.server.Error(), "lacks serverAuth") {
		t.Errorf("ServerTLS with a Client certificate: server error %v", r.server)
	}
	r = handshake(t, f.ca.ServerTLS(nil), f.ca.ClientTLS(f.loader, f.name))
	if r.server == nil || !strings.Contains(r.server.Error(), "no certificate") {
		t.Errorf("ServerTLS(nil): server error %v", r.server)
	}
	broken := &Issued{CertPEM: f.loader.CertPEM, KeyPEM: []byte("garbage")}
	r = handshake(t, f.ca.ServerTLS(f.guest), f.ca.ClientTLS(broken, f.name))
	if r.client == nil || !strings.Contains(r.client.Error(), "KeyPEM") {
		t.Errorf("ClientTLS with a broken key: client error %v", r.client)
	}
}

// TestTLSRevocationOnResumption shows that a session resumed from a ticket
// is checked against the live revocation list, although TLS does not
// verify the chain again then.
func TestTLSRevocationOnResumption(t *testing.T) {
	f := newTLSFixture(t)
	server := f.ca.ServerTLS(f.guest) // one config: one ticket key
	client := f.ca.ClientTLS(f.loader, f.name)
	client.ClientSessionCache = tls.NewLRUClientSessionCache(4)

	if r := handshake(t, server, client); !r.ok() || r.resumed {
		t.Fatalf("first handshake: server %v, client %v, resumed %v", r.server, r.client, r.resumed)
	}
	if r := handshake(t, server, client); !r.ok() || !r.resumed {
		t.Fatalf("second handshake should resume: server %v, client %v, resumed %v", r.server, r.client, r.resumed)
	}
	if err := f.ca.Revoke(f.loader.Serial, ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	r := handshake(t, server, client)
	if !errors.Is(r.server, ErrRevoked) {
		t.Errorf("resumption after revocation: server %v, want ErrRevoked", r.server)
	}
}
