package assemble

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/policystore/ca"
)

// specBackend keeps the boot specs it was given (with the guests' keys).
type specBackend struct {
	plainBackend
	mu    sync.Mutex
	specs []loader.BootSpec
}

func (b *specBackend) Boot(ctx context.Context, s loader.BootSpec) (*loader.Guest, error) {
	b.mu.Lock()
	b.specs = append(b.specs, s)
	b.mu.Unlock()
	return b.plainBackend.Boot(ctx, s)
}

// TestDestroyedGuestCertificateIsRejected: after vm2 is destroyed, a
// holder of its key (the old guest, or whoever took the key from it)
// answering as the next guest with that number must fail the loader's TLS
// check of the update daemon.
func TestDestroyedGuestCertificateIsRejected(t *testing.T) {
	b := &specBackend{}
	r, err := Start(context.Background(), setup(t, b, false))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Pool.Refill(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(b.specs) != 1 || b.specs[0].VM != 2 {
		t.Fatalf("boots %+v, want vm2", b.specs)
	}
	old := b.specs[0]
	if err := r.Pool.Remove(context.Background(), 2); err != nil {
		t.Fatal(err)
	}

	// The old guest's daemon, on loopback, presenting its certificate.
	pair, err := tls.X509KeyPair(old.UpdatedCertPEM, old.UpdatedKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	// The loader's check, for the address vm2 has in the plan.
	cfg := r.Updated.TLS.Clone()
	addr, _ := GuestAddrs(2)
	cfg.ServerName = addr.String()
	d := tls.Dialer{Config: cfg, NetDialer: &net.Dialer{Timeout: 5 * time.Second}}
	c, err := d.DialContext(context.Background(), "tcp", ln.Addr().String())
	if err == nil {
		c.Close()
		t.Fatal("the loader accepted destroyed vm2's certificate as vm2's update daemon")
	}
	t.Logf("refused: %v", err)
	for _, rec := range r.CA.Issued() {
		if rec.Kind == ca.Guest && rec.Serial.Cmp(mustSerial(t, old.UpdatedCertPEM)) == 0 && !rec.Revoked {
			t.Errorf("vm2's certificate %s is not revoked in the CA", rec.Serial.Text(16))
		}
	}
}

func mustSerial(t *testing.T, certPEM []byte) *big.Int {
	t.Helper()
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		t.Fatal("no PEM certificate")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber
}

// crlLists reports whether the PEM CRL lists serial.
func crlLists(t *testing.T, crlPEM []byte, serial *big.Int) bool {
	t.Helper()
	blk, _ := pem.Decode(crlPEM)
	if blk == nil || blk.Type != "X509 CRL" {
		t.Fatalf("not a PEM CRL: %.40q", crlPEM)
	}
	rl, err := x509.ParseRevocationList(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range rl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(serial) == 0 {
			return true
		}
	}
	return false
}

// TestRevocationIsPublished: the published CRL and the next guest's boot
// spec list a destroyed guest's certificate; a number named by a live,
// unrevoked certificate is not given out; a restart supersedes the
// loader's earlier certificate.
func TestRevocationIsPublished(t *testing.T) {
	b := &specBackend{}
	s := setup(t, b, false)
	s.PoolSize = 0
	r, err := Start(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Pool.Refill(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.Pool.Close()
	r.Close()
	s.PoolSize = 1
	r, err = Start(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cur, err := x509.ParseCertificate(r.Updated.TLS.Certificates[0].Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	var loaders []ca.Record // the earlier one first
	for _, rec := range r.CA.Issued() {
		if rec.Kind == ca.Client && rec.Serial.Cmp(cur.SerialNumber) != 0 {
			loaders = append([]ca.Record{rec}, loaders...)
		} else if rec.Kind == ca.Client {
			loaders = append(loaders, rec)
		}
	}
	if len(loaders) != 2 || !loaders[0].Revoked || loaders[1].Revoked {
		t.Fatalf("loader certificates after a restart: %+v; want the earlier revoked, the one in use not", loaders)
	}
	if err := r.Pool.Refill(context.Background()); err != nil {
		t.Fatal(err)
	}
	old := b.specs[0]
	if err := r.Pool.Remove(context.Background(), old.VM); err != nil {
		t.Fatal(err)
	}
	serial := mustSerial(t, old.UpdatedCertPEM)
	published, err := os.ReadFile(r.CRLPath)
	if err != nil {
		t.Fatal(err)
	}
	if !crlLists(t, published, serial) || !crlLists(t, published, loaders[0].Serial) {
		t.Fatalf("%s does not list the destroyed guest's and the superseded loader's certificates", r.CRLPath)
	}
	// A certificate for vm2's address that is still live (a revocation
	// that never happened): vm2's number must wait.
	a2, _ := GuestAddrs(2)
	if _, err := r.CA.Issue(ca.Request{Kind: ca.Guest, CommonName: "vm2", IPs: []net.IP{a2.AsSlice()}, TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if err := r.Pool.Refill(context.Background()); err != nil {
		t.Fatal(err)
	}
	next := b.specs[len(b.specs)-1]
	if next.VM == 2 {
		t.Fatal("vm2's number was given out while a live certificate names its address")
	}
	if !crlLists(t, next.CRLPEM, serial) {
		t.Fatalf("vm%d booted with a CRL that does not list the destroyed guest's certificate", next.VM)
	}
}

// TestLoadIssuesNoCertificateTheGuestIgnores: a load's bundle step issues
// no certificate. The guest's update daemon keeps presenting the Guest
// certificate of its boot and installs none of a bundle's, and no server
// receives the bundle's server keys: each issued certificate was a key
// generation, a signature and a durable write on the load's path, and a
// record left in the CA. The CA holds the loader's certificate and one
// Guest certificate per boot, named as the guest.
func TestLoadIssuesNoCertificateTheGuestIgnores(t *testing.T) {
	rig := newSPIRig(t, 1024)
	before := map[string]bool{}
	for _, rec := range rig.r.CA.Issued() {
		before[rec.Serial.Text(16)] = true
	}
	res := rig.load("http://ws1.analyst.example/profile")
	if res.How != "boot" {
		t.Fatalf("load: %s, want a boot", res.How)
	}
	var issued []ca.Record
	for _, rec := range rig.r.CA.Issued() {
		// The rig's stand-in daemon listens on loopback with a
		// certificate of its own (daemonBackend.Boot).
		loopback := len(rec.IPs) == 1 && rec.IPs[0].IsLoopback()
		if !before[rec.Serial.Text(16)] && !loopback {
			issued = append(issued, rec)
		}
	}
	if len(issued) != 1 {
		t.Errorf("the load issued %d certificates, want 1 (the boot's): %+v", len(issued), issued)
	}
	for _, rec := range issued {
		if rec.Kind != ca.Guest || rec.CommonName != res.Guest.Name {
			t.Errorf("the load issued %s certificate %q, want only the booted guest's (%s)", rec.Kind, rec.CommonName, res.Guest.Name)
		}
	}
}

// TestDestroyedGuestsNumberIsReused: once a served guest is destroyed (its
// certificate revoked), the next boot may take its VM number again. A
// bundle's own Guest certificate (named <guest>.<application>, never
// revoked) used to keep the number taken for the certificate's lifetime.
func TestDestroyedGuestsNumberIsReused(t *testing.T) {
	rig := newSPIRig(t, 1024)
	first := rig.load("http://ws1.analyst.example/profile")
	if err := rig.r.Pool.Remove(context.Background(), first.Guest.VM); err != nil {
		t.Fatal(err)
	}
	second := rig.load("http://ws1.analyst.example/profile")
	if second.How != "boot" || second.Guest.VM != first.Guest.VM {
		t.Errorf("after destroying vm%d the next load took vm%d by %s, want vm%d again by boot", first.Guest.VM, second.Guest.VM, second.How, first.Guest.VM)
	}
}
