package assemble

import (
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/policystore/ca"
)

const (
	// CertTTL is the lifetime of the loader's and the guests' certificates.
	CertTTL = 30 * 24 * time.Hour
	// CRLValidity is the lifetime of each CRL the loader publishes: longer
	// than CertTTL, so that a guest that received a CRL at its boot never
	// holds an expired one while its own certificate is valid.
	CRLValidity = CertTTL + 24*time.Hour
	// LoaderName is the common name of the loader's client certificate.
	LoaderName = "mlsgate-loader"
	// CRLFile is the name of the published CRL under Setup.StateDir.
	CRLFile = "crl.pem"
)

// certLife is the certificate lifecycle of the loader's CA: guests'
// certificates are revoked when they are torn down, earlier loader
// certificates when a new one is issued, and the CRL is republished.
type certLife struct {
	ca      *ca.CA
	crlPath string

	mu  sync.Mutex
	crl []byte // the last CRL published
}

// publish signs a new CRL and writes it to crlPath (0644: it is public).
func (c *certLife) publish() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	crl, err := c.ca.CRL()
	if err != nil {
		return fmt.Errorf("publish CRL: %w", err)
	}
	if err := writePublic(c.crlPath, crl); err != nil {
		return fmt.Errorf("publish CRL: %w", err)
	}
	c.crl = crl
	return nil
}

// current is the CRL last published.
func (c *certLife) current() ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.crl == nil {
		return nil, errors.New("no CRL published yet")
	}
	return append([]byte(nil), c.crl...), nil
}

// revokeGuest revokes every unrevoked Guest certificate issued for g (its
// name and address) and republishes the CRL.
func (c *certLife) revokeGuest(g *loader.Guest) error {
	var errs []error
	n := 0
	for _, r := range c.ca.Issued() {
		if r.Kind != ca.Guest || r.Revoked || r.CommonName != g.Name || !hasIP(r, g.Addr) {
			continue
		}
		if err := c.ca.Revoke(r.Serial, ca.ReasonCessationOfOperation); err != nil {
			errs = append(errs, fmt.Errorf("revoke %s's certificate %s: %w", g.Name, r.Serial.Text(16), err))
			continue
		}
		n++
	}
	if n > 0 {
		errs = append(errs, c.publish())
	}
	return errors.Join(errs...)
}

// supersedeLoaders revokes every loader certificate but keep.
func (c *certLife) supersedeLoaders(keep *big.Int) error {
	for _, r := range c.ca.Issued() {
		if r.Kind != ca.Client || r.Revoked || r.CommonName != LoaderName || r.Serial.Cmp(keep) == 0 {
			continue
		}
		if err := c.ca.Revoke(r.Serial, ca.ReasonSuperseded); err != nil {
			return fmt.Errorf("revoke the earlier loader certificate %s: %w", r.Serial.Text(16), err)
		}
	}
	return nil
}

// liveGuestAddrs are the addresses named by Guest certificates that are
// valid now and not revoked.
func (c *certLife) liveGuestAddrs() map[netip.Addr]bool {
	now := time.Now()
	live := map[netip.Addr]bool{}
	for _, r := range c.ca.Issued() {
		if r.Kind != ca.Guest || r.Revoked || now.After(r.NotAfter) {
			continue
		}
		for _, ip := range r.IPs {
			if a, ok := netip.AddrFromSlice(ip); ok {
				live[a.Unmap()] = true
			}
		}
	}
	return live
}

func hasIP(r ca.Record, a netip.Addr) bool {
	for _, ip := range r.IPs {
		if b, ok := netip.AddrFromSlice(ip); ok && b.Unmap() == a {
			return true
		}
	}
	return false
}

// writePublic replaces path with data atomically (a reader sees the old
// or the new file, never a part), mode 0644.
func writePublic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
