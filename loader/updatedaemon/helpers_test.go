package updatedaemon

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/policystore/ca"
)

// testGuest is the guest every test daemon is: the name and address its
// bundles are generated for. The daemon itself listens on loopback with a
// certificate for 127.0.0.1.
var (
	testGuestName = "vm7"
	testGuestAddr = netip.MustParseAddr("10.70.0.7")
	testHostAddr  = netip.MustParseAddr("10.70.0.1")
)

// pki is a real policy store CA with the daemon's and the loader's
// certificates.
type pki struct {
	ca     *ca.CA
	guest  *ca.Issued // the daemon's Guest certificate: CN vm7, IP 127.0.0.1
	loader *ca.Issued // the loader's Client certificate: CN mlsgate-loader
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	c, err := ca.Open(filepath.Join(t.TempDir(), "ca"), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &pki{
		ca:     c,
		guest:  issue(t, c, ca.Request{Kind: ca.Guest, CommonName: testGuestName, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, TTL: time.Hour}),
		loader: issue(t, c, ca.Request{Kind: ca.Client, CommonName: DefaultLoaderName, TTL: time.Hour}),
	}
}

func issue(t *testing.T, c *ca.CA, req ca.Request) *ca.Issued {
	t.Helper()
	iss, err := c.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

// writeCRL writes the CA's current CRL to a file and returns its path.
func (p *pki) writeCRL(t *testing.T, path string) string {
	t.Helper()
	crl, err := p.ca.CRL()
	if err != nil {
		t.Fatal(err)
	}
	writeFileAtomic(t, path, crl)
	return path
}

func writeFileAtomic(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// syncBuffer is a log destination safe for the server's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// harness is a running daemon on loopback with a fake applier, and a client
// holding the loader's certificate.
type harness struct {
	d        *Daemon
	fake     *FakeApplier
	addr     string
	client   *Client
	errLog   *syncBuffer
	stateDir string
}

type daemonOpts struct {
	stateDir string
	crlFile  string
	fake     *FakeApplier
	onPush   func(remote string, rep *Report, err error)
}

// guestServerTLS is the daemon's TLS configuration with the guest's
// certificate, trusting the test CA (and its CRL in crlFile, if set).
func (p *pki) guestServerTLS(t *testing.T, crlFile string) (*tls.Config, *Verifier) {
	t.Helper()
	v, err := NewVerifier(VerifierConfig{CAPEM: p.ca.CertPEM(), CRLFile: crlFile})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := p.guest.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	tc, err := ServerTLS(cert, v)
	if err != nil {
		t.Fatal(err)
	}
	return tc, v
}

func startDaemon(t *testing.T, p *pki, o daemonOpts) *harness {
	t.Helper()
	if o.stateDir == "" {
		o.stateDir = filepath.Join(t.TempDir(), "state")
	}
	if o.fake == nil {
		o.fake = &FakeApplier{}
	}
	tc, v := p.guestServerTLS(t, o.crlFile)
	errLog := &syncBuffer{}
	cfg := Config{
		TLS:      tc,
		Identity: Identity{Name: testGuestName, Addrs: []netip.Addr{testGuestAddr}},
		StateDir: o.stateDir,
		Applier:  o.fake,
		ErrorLog: log.New(errLog, "", 0),
		OnPush:   o.onPush,
	}
	if o.crlFile != "" {
		cfg.InstallCRL = v.InstallCRL
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- d.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := d.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	h := &harness{d: d, fake: o.fake, addr: ln.Addr().String(), errLog: errLog, stateDir: o.stateDir}
	h.client = &Client{TLS: p.ca.ClientTLS(p.loader, ""), Timeout: 10 * time.Second}
	t.Cleanup(h.client.CloseIdleConnections)
	return h
}

// waitLog waits until the server's error log contains want.
func (h *harness) waitLog(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(h.errLog.String(), want) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("server log lacks %q:\n%s", want, h.errLog.String())
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// analystBundle generates the analyst example's bundle for the test guest,
// with certificates from p's CA (so it carries server keys, which Push
// must strip) and SPIs from spiBase.
func analystBundle(t *testing.T, p *pki, version uint64, spiBase uint32) *policystore.Bundle {
	t.Helper()
	app, err := policystore.LoadFile("../../examples/analyst/analyst.yaml")
	if err != nil {
		t.Fatal(err)
	}
	next := spiBase
	req := policystore.BundleRequest{
		Guest: testGuestName, GuestAddr: testGuestAddr, HostAddr: testHostAddr,
		MapperUpstream: "http://10.70.0.1:7070",
		SPI:            func() (uint32, error) { next++; return next - 1, nil },
		Version:        version,
		Now:            time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC),
	}
	if p != nil {
		req.Issuer = policystore.CAIssuer(p.ca, time.Hour)
	}
	b, err := policystore.GenerateBundle(app, req, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.States) == 0 || len(b.Policies) == 0 || b.MapperPolicy == "" {
		t.Fatalf("the analyst bundle lacks SAs, policies or a mapper policy: %d %d %q", len(b.States), len(b.Policies), b.MapperPolicy)
	}
	return b
}

func wantCode(t *testing.T, err error, sentinel error) *Error {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("error %v, want %v", err, sentinel)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %T is not *Error", err)
	}
	return e
}
