package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/mlsgate/mlsgate/policystore/secretfile"
)

// Defaults for Options.
const (
	// DefaultCommonName names a new CA when Options.CommonName is empty.
	DefaultCommonName = "mlsgate policy store CA"
	// DefaultValidity is the lifetime of a new CA certificate.
	DefaultValidity = 10 * 365 * 24 * time.Hour
	// DefaultCRLValidity is the time from a CRL's ThisUpdate to its
	// NextUpdate.
	DefaultCRLValidity = 24 * time.Hour

	// backdate is how far NotBefore is set in the past, so that a peer
	// whose clock runs a little behind accepts a fresh certificate.
	backdate = time.Minute
)

// PEM block types of the files this package reads and writes.
const (
	pemCertificate = "CERTIFICATE"
	pemPrivateKey  = "PRIVATE KEY"
	pemCRL         = "X509 CRL"
)

// ErrClosed is returned by the methods that write (Issue, Revoke, CRL) after
// Close.
var ErrClosed = errors.New("ca: CA is closed; Open the directory again")

// Options configure Open. The zero value is usable.
type Options struct {
	// CommonName is the subject CN of a newly created CA (default
	// DefaultCommonName). An existing CA keeps its own.
	CommonName string
	// Validity is the lifetime of a newly created CA certificate (default
	// DefaultValidity). An existing CA keeps its own.
	Validity time.Duration
	// CRLValidity is the time from ThisUpdate to NextUpdate of every CRL
	// (default DefaultCRLValidity): peers that fetch the CRL must fetch a
	// new one within it.
	CRLValidity time.Duration
	// Now is the CA's clock, for validity periods, CRL times and the
	// expiry checks of Verify and the TLS helpers (default time.Now).
	Now func() time.Time
}

// withDefaults checks o and fills in the defaults.
func (o Options) withDefaults() (Options, error) {
	if o.CommonName == "" {
		o.CommonName = DefaultCommonName
	}
	if err := checkCommonName("Options.CommonName", o.CommonName); err != nil {
		return o, fmt.Errorf("ca: %w", err)
	}
	switch {
	case o.Validity == 0:
		o.Validity = DefaultValidity
	case o.Validity < 0:
		return o, fmt.Errorf("ca: Options.Validity is %s; give a positive lifetime or 0 for the default (%s)", o.Validity, DefaultValidity)
	}
	switch {
	case o.CRLValidity == 0:
		o.CRLValidity = DefaultCRLValidity
	case o.CRLValidity < 0:
		return o, fmt.Errorf("ca: Options.CRLValidity is %s; give a positive duration or 0 for the default (%s)", o.CRLValidity, DefaultCRLValidity)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o, nil
}

// CA is a certificate authority kept in a directory. It is safe for
// concurrent use. Its methods that write need the directory lock, which
// Close gives up.
type CA struct {
	dir     string
	opts    Options
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer
	pool    *x509.CertPool

	mu        sync.RWMutex
	release   func() error // nil once closed
	records   map[string]*Record
	revoked   map[string]revocation
	crlNumber *big.Int
}

// Open loads the CA kept in dir, or creates one there if dir holds none
// (creating dir itself, mode 0700, if needed). It takes the directory's
// lock until Close: a second Open of the same directory, in this process
// or another, fails with ErrInUse.
//
// Opening checks that ca-key.pem matches ca.pem, that the key file is not
// readable by group or others, and that every record parses; a damaged
// file is an error naming it and saying how to repair it. A key without a
// certificate and without any records is a creation that was interrupted:
// Open finishes it with that key.
func Open(dir string, opts Options) (*CA, error) {
	if dir == "" {
		return nil, errors.New("ca: Open: empty directory name; pass the CA's directory, such as /var/lib/mlsgate/ca")
	}
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	dir = filepath.Clean(dir)
	if err := mkdirDurable(dir); err != nil {
		return nil, err
	}
	release, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	c := &CA{
		dir:       dir,
		opts:      o,
		release:   release,
		records:   make(map[string]*Record),
		revoked:   make(map[string]revocation),
		crlNumber: new(big.Int),
	}
	if err := c.open(); err != nil {
		release()
		return nil, err
	}
	return c, nil
}

// open does Open's work under the directory lock.
func (c *CA) open() error {
	for _, d := range []string{c.dir, c.path(issuedDir), c.path(revokedDir)} {
		if err := mkdirDurable(d); err != nil {
			return err
		}
		if err := removeTemps(d); err != nil {
			return err
		}
	}
	hasState, err := c.hasState()
	if err != nil {
		return err
	}
	certPath, keyPath := c.path(certFile), c.path(keyFile)
	haveCert, haveKey := exists(certPath), exists(keyPath)
	switch {
	case !haveCert && !haveKey && hasState:
		return fmt.Errorf("ca: %s holds issued records but no %s or %s; restore both from backup (a new CA would not match the records)", c.dir, certFile, keyFile)
	case !haveCert && !haveKey:
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return fmt.Errorf("ca: generate CA key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return fmt.Errorf("ca: encode CA key: %w", err)
		}
		// The key first, the certificate last: the certificate's presence
		// marks a complete CA.
		if err := writeFileAtomic(c.dir, keyFile, pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}), 0o600); err != nil {
			return err
		}
		if err := c.createCert(key); err != nil {
			return err
		}
	case !haveCert && hasState:
		return fmt.Errorf("ca: %s is missing but %s holds issued records; restore %s from backup", certPath, c.dir, certFile)
	case !haveCert:
		key, err := loadKey(keyPath)
		if err != nil {
			return err
		}
		if err := c.createCert(key); err != nil {
			return err
		}
	case !haveKey:
		return fmt.Errorf("ca: %s is missing while %s exists; restore the key from backup, or move %s aside to start a new CA", keyPath, certPath, c.dir)
	default:
		key, err := loadKey(keyPath)
		if err != nil {
			return err
		}
		if err := c.loadCert(key); err != nil {
			return err
		}
	}
	c.pool = x509.NewCertPool()
	c.pool.AddCert(c.cert)
	return c.loadState()
}

// path returns name inside the CA directory.
func (c *CA) path(name ...string) string {
	return filepath.Join(append([]string{c.dir}, name...)...)
}

// hasState reports whether the directory holds anything that only an
// existing CA could have written: records, revocations or a CRL number.
func (c *CA) hasState() (bool, error) {
	if exists(c.path(crlNumberFile)) {
		return true, nil
	}
	for _, d := range []string{issuedDir, revokedDir} {
		ents, err := os.ReadDir(c.path(d))
		if err != nil {
			return false, fmt.Errorf("ca: read %s: %w", c.path(d), err)
		}
		if len(ents) > 0 {
			return true, nil
		}
	}
	return false, nil
}

// createCert makes and stores the self-signed CA certificate for key.
func (c *CA) createCert(key crypto.Signer) error {
	now := c.opts.Now()
	serial, err := randomSerial()
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: c.opts.CommonName},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(c.opts.Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("ca: sign CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("ca: parse new CA certificate: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der})
	if err := writeFileAtomic(c.dir, certFile, certPEM, 0o644); err != nil {
		return err
	}
	c.cert, c.certPEM, c.key = cert, certPEM, key
	return nil
}

// loadKey reads the CA's private key.
func loadKey(path string) (crypto.Signer, error) {
	const fix = "restore it from backup, or move the directory aside to start a new CA"
	f, err := openNoFollow(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("ca: %s: %w", path, err)
	}
	if err := secretfile.CheckFile(path, st); err != nil {
		return nil, fmt.Errorf("ca: %w; consider the key exposed", err)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("ca: %s has mode %#o, readable by group or others; run chmod 600 %s (and consider the key exposed)", path, perm, path)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("ca: read %s: %w", path, err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != pemPrivateKey {
		return nil, fmt.Errorf("ca: %s holds no %q PEM block (corrupt or not a PKCS#8 key); %s", path, pemPrivateKey, fix)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("ca: %s: %v; %s", path, err, fix)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("ca: %s holds a %T, which cannot sign; %s", path, k, fix)
	}
	return signer, nil
}

// loadCert reads ca.pem and checks that it is a CA certificate for key.
func (c *CA) loadCert(key crypto.Signer) error {
	path := c.path(certFile)
	const fix = "restore it from backup, or move the directory aside to start a new CA"
	b, err := readNoFollow(path)
	if err != nil {
		return err
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != pemCertificate {
		return fmt.Errorf("ca: %s holds no %q PEM block (corrupt?); %s", path, pemCertificate, fix)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return fmt.Errorf("ca: %s: %v; %s", path, err, fix)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("ca: %s is not a CA certificate (basic constraints CA and key usage certSign needed); %s", path, fix)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		return fmt.Errorf("ca: %s is not a valid self-signed certificate: %v; %s", path, err, fix)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return fmt.Errorf("ca: %s does not match the certificate in %s; put back the key that belongs to this certificate", c.path(keyFile), path)
	}
	c.cert, c.certPEM, c.key = cert, pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: cert.Raw}), key
	return nil
}

// randomSerial returns a random serial number of 1 to 128 bits.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("ca: random serial: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// Close releases the directory lock. Issue, Revoke and CRL then fail with
// ErrClosed; Verify, Revoked, Issued and TLS configurations made earlier keep
// working on the state as it was at Close. Closing twice is harmless.
func (c *CA) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.release == nil {
		return nil
	}
	err := c.release()
	c.release = nil
	if err != nil {
		return fmt.Errorf("ca: release lock of %s: %w", c.dir, err)
	}
	return nil
}

// Dir returns the directory the CA is kept in.
func (c *CA) Dir() string { return c.dir }

// Certificate returns the CA certificate. The caller must not modify it.
func (c *CA) Certificate() *x509.Certificate { return c.cert }

// CertPEM returns the CA certificate in PEM form: what every peer that
// trusts this CA installs.
func (c *CA) CertPEM() []byte { return append([]byte(nil), c.certPEM...) }
