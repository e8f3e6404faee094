package updatedaemon

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// DefaultLoaderName is the common name the daemon requires of the client
// certificate unless VerifierConfig.LoaderName names another: the loader's
// Client certificate is issued under it.
const DefaultLoaderName = "mlsgate-loader"

// ErrRevoked is matched by the handshake error of a client whose
// certificate the CRL lists.
var ErrRevoked = errors.New("client certificate is revoked")

// VerifierConfig says whom the daemon accepts as its client.
type VerifierConfig struct {
	// CAPEM is the policy store's CA certificate (ca.pem); more than one
	// CERTIFICATE block is accepted, for a CA being rolled over.
	CAPEM []byte
	// CRLFile is a PEM (or DER) CRL signed by that CA; "" means no
	// revocation checking. The file is read again whenever it changes.
	CRLFile string
	// LoaderName is the common name the client certificate must carry;
	// "" means DefaultLoaderName.
	LoaderName string
	// Now is the clock for certificate and CRL validity; nil means time.Now.
	Now func() time.Time
}

// Verifier decides at every TLS handshake whether the client is the loader.
// It is safe for concurrent use.
type Verifier struct {
	cas     []*x509.Certificate
	pool    *x509.CertPool
	name    string
	crlFile string
	now     func() time.Time

	mu    sync.Mutex
	stamp crlStamp
	crl   *crlInfo // the last good CRL; nil before the first
	err   error    // why the current file cannot be used; nil when it can
}

// crlStamp tells whether the CRL file changed since it was read.
type crlStamp struct {
	size    int64
	modTime time.Time
}

// crlInfo is what the verifier keeps of a CRL.
type crlInfo struct {
	raw        []byte // as given (PEM or DER)
	number     *big.Int
	nextUpdate time.Time
	revoked    map[string]bool // serial, lower-case hex
}

// NewVerifier parses the CA certificates and, if a CRL file is named, reads
// and checks it: a CRL that is missing, unparsable or not signed by the CA
// is an error here rather than a refusal of every client later.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	v := &Verifier{name: cfg.LoaderName, crlFile: cfg.CRLFile, now: cfg.Now, pool: x509.NewCertPool()}
	if v.name == "" {
		v.name = DefaultLoaderName
	}
	if v.now == nil {
		v.now = time.Now
	}
	rest := cfg.CAPEM
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CA certificate: %w; give the policy store's ca.pem", err)
		}
		if !c.IsCA {
			return nil, fmt.Errorf("CA certificate %q is not a CA certificate; give the policy store's ca.pem, not a leaf", c.Subject.CommonName)
		}
		v.cas = append(v.cas, c)
		v.pool.AddCert(c)
	}
	if len(v.cas) == 0 {
		return nil, errors.New("no CA certificate: give the policy store's ca.pem (PEM CERTIFICATE)")
	}
	if v.crlFile != "" {
		if err := v.refreshCRL(); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// Pool returns the CA certificates as a pool, for tls.Config.ClientCAs.
func (v *Verifier) Pool() *x509.CertPool { return v.pool }

// LoaderName is the common name the verifier requires.
func (v *Verifier) LoaderName() string { return v.name }

// VerifyConnection is a tls.Config.VerifyConnection for the daemon's side.
// crypto/tls has already checked the chain against Pool with the clientAuth
// usage; this checks the rest: that there was a verified chain at all, the
// usage and validity again (also on a resumed session), the loader's name,
// and revocation.
func (v *Verifier) VerifyConnection(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the client presented no certificate; the loader must present its Client certificate from the policy store's CA")
	}
	if len(cs.VerifiedChains) == 0 {
		return errors.New("the client certificate was not verified against the CA; configure the daemon's TLS with ServerTLS")
	}
	leaf := cs.PeerCertificates[0]
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return fmt.Errorf("client certificate %q lacks the clientAuth usage; the loader needs a Client certificate", leaf.Subject.CommonName)
	}
	now := v.now()
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return fmt.Errorf("client certificate %q is valid from %s to %s, not at %s; issue the loader a new one", leaf.Subject.CommonName,
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if leaf.Subject.CommonName != v.name {
		return fmt.Errorf("client certificate %q is not the loader's (the daemon accepts only %q); push with the loader's Client certificate, or start the daemon with --loader-name", leaf.Subject.CommonName, v.name)
	}
	return v.checkRevoked(leaf)
}

// checkRevoked looks the certificate up in the current CRL, reading the
// file again if it changed. Without a usable CRL (unreadable, expired,
// older than the last one) every client is refused: a revocation the
// daemon cannot see must not let a revoked loader in.
func (v *Verifier) checkRevoked(leaf *x509.Certificate) error {
	if v.crlFile == "" {
		return nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.refreshCRLLocked(); err != nil {
		return err
	}
	if v.crl.revoked[leaf.SerialNumber.Text(16)] {
		return fmt.Errorf("client certificate %q (serial %s): %w by the CRL %s", leaf.Subject.CommonName, leaf.SerialNumber.Text(16), ErrRevoked, v.crlFile)
	}
	if !v.crl.nextUpdate.IsZero() && v.now().After(v.crl.nextUpdate) {
		return fmt.Errorf("the CRL %s expired at %s; install a fresh one from the policy store (ca.CA.CRL) in its place", v.crlFile, v.crl.nextUpdate.UTC().Format(time.RFC3339))
	}
	return nil
}

func (v *Verifier) refreshCRL() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.refreshCRLLocked()
}

// refreshCRLLocked reads the CRL file if its size or modification time
// changed. A file that cannot be used sets v.err, which refuses clients
// until the file is fixed.
func (v *Verifier) refreshCRLLocked() error {
	fi, err := os.Stat(v.crlFile)
	if err != nil {
		v.err = fmt.Errorf("CRL %s: %w; install the policy store's CRL there or start the daemon without --crl", v.crlFile, err)
		v.stamp = crlStamp{}
		return v.err
	}
	st := crlStamp{size: fi.Size(), modTime: fi.ModTime()}
	if st == v.stamp && v.crl != nil {
		return v.err
	}
	data, err := os.ReadFile(v.crlFile)
	if err != nil {
		v.err = fmt.Errorf("CRL %s: %w", v.crlFile, err)
		return v.err
	}
	info, err := v.parseCRL(data)
	if err == nil && v.crl != nil && info.number.Cmp(v.crl.number) < 0 {
		err = fmt.Errorf("its number %s is below that of the CRL read before (%s): an older CRL was put in place; install the newest", info.number, v.crl.number)
	}
	v.stamp = st
	if err != nil {
		v.err = fmt.Errorf("CRL %s: %w", v.crlFile, err)
		return v.err
	}
	v.crl, v.err = info, nil
	return nil
}

// InstallCRL makes data (a PEM or DER CRL of the CA, such as a pushed
// bundle's) the verifier's CRL: it is checked against the CA, must not be
// older than the CRL in use (a lower number is refused; the same number
// changes nothing), and replaces the --crl file atomically, so that a
// restart reads it too. Without a CRL file it is refused: start the daemon
// with --crl.
func (v *Verifier) InstallCRL(data []byte) error {
	if v.crlFile == "" {
		return errors.New("the daemon runs without --crl, so it has nowhere to keep a CRL; start it with --crl")
	}
	// The CRL in use, byte for byte (most pushes carry it): nothing to
	// check or change (its signature was checked when it was read).
	v.mu.Lock()
	same := v.refreshCRLLocked() == nil && v.crl != nil && bytes.Equal(v.crl.raw, data)
	v.mu.Unlock()
	if same {
		return nil
	}
	info, err := v.parseCRL(data)
	if err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	_ = v.refreshCRLLocked() // the file may have changed under us
	if v.crl != nil {
		switch info.number.Cmp(v.crl.number) {
		case -1:
			return fmt.Errorf("CRL number %s is below the one in use (%s); push the CA's newest CRL", info.number, v.crl.number)
		case 0:
			return nil
		}
	}
	if err := replaceFile(v.crlFile, data, 0o644); err != nil {
		return fmt.Errorf("install the CRL in %s: %w", v.crlFile, err)
	}
	return v.refreshCRLLocked()
}

// replaceFile replaces path with data atomically, with mode perm.
func replaceFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// parseCRL parses a PEM or DER CRL and checks that one of the CA
// certificates signed it.
func (v *Verifier) parseCRL(data []byte) (*crlInfo, error) {
	der := data
	if blk, _ := pem.Decode(data); blk != nil {
		if blk.Type != "X509 CRL" {
			return nil, fmt.Errorf("PEM block %q is not an X509 CRL; give the file the policy store's CRL wrote", blk.Type)
		}
		der = blk.Bytes
	}
	rl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("not a CRL: %w", err)
	}
	var signer *x509.Certificate
	for _, c := range v.cas {
		if bytes.Equal(c.RawSubject, rl.RawIssuer) {
			signer = c
			break
		}
	}
	if signer == nil {
		return nil, fmt.Errorf("issued by %q, not by the daemon's CA; give the CRL of the CA in --ca", rl.Issuer.CommonName)
	}
	if err := rl.CheckSignatureFrom(signer); err != nil {
		return nil, fmt.Errorf("signature does not verify against the CA: %w", err)
	}
	info := &crlInfo{raw: bytes.Clone(data), number: rl.Number, nextUpdate: rl.NextUpdate, revoked: map[string]bool{}}
	if info.number == nil {
		info.number = new(big.Int)
	}
	for _, e := range rl.RevokedCertificateEntries {
		info.revoked[e.SerialNumber.Text(16)] = true
	}
	return info, nil
}

// ServerTLS is the daemon's TLS configuration: TLS 1.3 only, cert as its
// own certificate, and a client certificate required and checked by v at
// every handshake, a resumed one included (crypto/tls calls
// VerifyConnection on resumption too, and checks the session's chain
// against ClientCAs and the clock again; v then checks the name, validity
// and the current CRL, so a revoked loader is refused on a resumed session
// as on a full one).
//
// Session tickets are on: the loader's first request after a push (its
// connection closed) resumes the push's session and skips the certificate
// signatures and chain checks, which are most of a handshake's cost on an
// emulated CPU; the key exchange (hybrid post-quantum) is done again, as
// TLS 1.3 resumption in crypto/tls always does (psk_dhe_ke). A ticket is
// bound to the certificate the daemon presented when it issued it: a
// daemon given another certificate (rotated, or another guest's) never
// resumes a session made under the old one, even with the same ticket keys.
func ServerTLS(cert tls.Certificate, v *Verifier) (*tls.Config, error) {
	if len(cert.Certificate) == 0 {
		return nil, errors.New("the daemon has no certificate; give its Guest certificate and key (--cert, --key)")
	}
	leaf := cert.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("daemon certificate: %w", err)
		}
	}
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
		return nil, fmt.Errorf("daemon certificate %q lacks serverAuth; issue the guest a Guest certificate", leaf.Subject.CommonName)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: v.pool, CurrentTime: v.now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return nil, fmt.Errorf("daemon certificate %q does not verify against the CA the daemon trusts: %w; the loader would refuse it", leaf.Subject.CommonName, err)
	}
	cfg := &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{cert},
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        v.pool,
		Time:             v.now,
		VerifyConnection: v.VerifyConnection,
		NextProtos:       []string{"http/1.1"},
	}
	bindTickets(cfg, cert.Certificate[0])
	return cfg, nil
}

// ticketBinding prefixes the Extra entry that binds a session ticket to
// the daemon's certificate.
const ticketBinding = "mlsgate-updated-cert:"

// bindTickets makes cfg's session tickets carry the SHA-256 of own (the
// daemon's certificate, DER) and resume only while cfg presents it. The
// tickets are encrypted with cfg's own ticket keys (crypto/tls's, made at
// random per process and rotated), so cfg must be the configuration that
// serves (http.Server's clone shares them).
func bindTickets(cfg *tls.Config, own []byte) {
	sum := sha256.Sum256(own)
	tag := append([]byte(ticketBinding), sum[:]...)
	cfg.WrapSession = func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		ss.Extra = append(ss.Extra, tag)
		return cfg.EncryptTicket(cs, ss)
	}
	cfg.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		ss, err := cfg.DecryptTicket(identity, cs)
		if err != nil || ss == nil {
			return nil, err
		}
		if !slices.ContainsFunc(ss.Extra, func(e []byte) bool { return bytes.Equal(e, tag) }) {
			return nil, nil // made under another certificate: a full handshake
		}
		return ss, nil
	}
}
