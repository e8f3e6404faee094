package ca

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// RFC 5280 CRLReason codes accepted by Revoke. 7 is unassigned and 8
// (removeFromCRL) belongs to delta CRLs, which this CA does not publish.
const (
	ReasonUnspecified          = 0
	ReasonKeyCompromise        = 1
	ReasonCACompromise         = 2
	ReasonAffiliationChanged   = 3
	ReasonSuperseded           = 4
	ReasonCessationOfOperation = 5
	ReasonCertificateHold      = 6
	ReasonPrivilegeWithdrawn   = 9
	ReasonAACompromise         = 10
)

// Sentinel errors of Revoke and Verify.
var (
	// ErrUnknownSerial: no certificate with that serial was issued here.
	ErrUnknownSerial = errors.New("no certificate with this serial was issued by this CA")
	// ErrRevoked: the certificate was revoked.
	ErrRevoked = errors.New("certificate is revoked")
)

// revocation is the content of revoked/<serial>.json.
type revocation struct {
	Serial    string    `json:"serial"`
	Reason    int       `json:"reason"`
	RevokedAt time.Time `json:"revoked_at"`
}

// validReason reports whether r is a CRLReason Revoke accepts.
func validReason(r int) bool {
	return r >= ReasonUnspecified && r <= ReasonAACompromise && r != 7 && r != 8
}

// Revoke revokes the certificate with the given serial and records the
// revocation durably before returning: from then on Verify and the TLS
// configurations reject it, and every later CRL lists it. reason is an RFC
// 5280 CRLReason (the Reason constants). Revoking a revoked certificate
// again changes nothing and returns nil; revocation cannot be undone.
func (c *CA) Revoke(serial *big.Int, reason int) error {
	if serial == nil || serial.Sign() <= 0 {
		return fmt.Errorf("ca: Revoke: serial %v is not a positive number; pass Issued.Serial or Record.Serial", serial)
	}
	if !validReason(reason) {
		return fmt.Errorf("ca: Revoke: reason %d is not a CRLReason this CA uses; use one of the ca.Reason constants (0-6, 9, 10)", reason)
	}
	name := serialName(serial)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.release == nil {
		return ErrClosed
	}
	if _, ok := c.records[name]; !ok {
		return fmt.Errorf("ca: Revoke %s: %w; list the issued serials with Issued", name, ErrUnknownSerial)
	}
	if _, ok := c.revoked[name]; ok {
		return nil
	}
	rv := revocation{Serial: name, Reason: reason, RevokedAt: c.opts.Now().UTC().Truncate(time.Second)}
	b, err := json.MarshalIndent(rv, "", "  ")
	if err != nil {
		return fmt.Errorf("ca: encode revocation: %w", err)
	}
	if err := writeFileAtomic(c.path(revokedDir), name+".json", append(b, '\n'), 0o644); err != nil {
		return err
	}
	c.revoked[name] = rv
	return nil
}

// Revoked reports whether the certificate with this serial was revoked.
func (c *CA) Revoked(serial *big.Int) bool {
	if serial == nil {
		return false
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	_, ok := c.revoked[serialName(serial)]
	return ok
}

// CRL returns a new certificate revocation list, PEM "X509 CRL", signed by
// the CA and listing every revoked certificate. Each call uses the next CRL
// number, which is stored before the CRL is returned, so numbers only grow,
// across restarts and crashes too (a crash may skip a number, never repeat
// one). NextUpdate is ThisUpdate plus Options.CRLValidity.
func (c *CA) CRL() ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.release == nil {
		return nil, ErrClosed
	}
	entries := make([]x509.RevocationListEntry, 0, len(c.revoked))
	for _, rv := range c.revoked {
		serial, _ := new(big.Int).SetString(rv.Serial, 16)
		entries = append(entries, x509.RevocationListEntry{
			SerialNumber:   serial,
			RevocationTime: rv.RevokedAt,
			ReasonCode:     rv.Reason,
		})
	}
	slices.SortFunc(entries, func(a, b x509.RevocationListEntry) int { return a.SerialNumber.Cmp(b.SerialNumber) })
	number := new(big.Int).Add(c.crlNumber, big.NewInt(1))
	now := c.opts.Now()
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		RevokedCertificateEntries: entries,
		Number:                    number,
		ThisUpdate:                now,
		NextUpdate:                now.Add(c.opts.CRLValidity),
	}, c.cert, c.key)
	if err != nil {
		return nil, fmt.Errorf("ca: sign CRL: %w", err)
	}
	if err := writeFileAtomic(c.dir, crlNumberFile, []byte(number.String()+"\n"), 0o644); err != nil {
		return nil, err
	}
	c.crlNumber = number
	return pem.EncodeToMemory(&pem.Block{Type: pemCRL, Bytes: der}), nil
}

// Verify checks that cert chains to this CA (and to nothing else), is
// valid at the CA's clock, carries the extended key usage usage and is not
// revoked.
func (c *CA) Verify(cert *x509.Certificate, usage x509.ExtKeyUsage) error {
	if cert == nil {
		return errors.New("ca: Verify: no certificate given")
	}
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots:       c.pool,
		CurrentTime: c.opts.Now(),
		KeyUsages:   []x509.ExtKeyUsage{usage},
	}); err != nil {
		return fmt.Errorf("ca: certificate %q (serial %s): %w", cert.Subject.CommonName, serialName(cert.SerialNumber), err)
	}
	return c.checkLeaf(cert, usage)
}

// checkLeaf does the checks on a leaf that chain verification leaves out
// or that must be repeated when a TLS session is resumed: the usage is
// listed explicitly (not merely allowed by an absent extension), the
// certificate is valid now, and it is not revoked.
func (c *CA) checkLeaf(cert *x509.Certificate, usage x509.ExtKeyUsage) error {
	id := fmt.Sprintf("certificate %q (serial %s)", cert.Subject.CommonName, serialName(cert.SerialNumber))
	if !slices.Contains(cert.ExtKeyUsage, usage) {
		return fmt.Errorf("ca: %s lacks the extended key usage this role needs (%s); issue one of a kind that has it", id, usageName(usage))
	}
	now := c.opts.Now()
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return fmt.Errorf("ca: %s is valid from %s to %s, not at %s; issue a new one",
			id, cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if c.Revoked(cert.SerialNumber) {
		return fmt.Errorf("ca: %s: %w; issue a new one", id, ErrRevoked)
	}
	return nil
}

// usageName names an extended key usage for messages.
func usageName(u x509.ExtKeyUsage) string {
	switch u {
	case x509.ExtKeyUsageServerAuth:
		return "serverAuth"
	case x509.ExtKeyUsageClientAuth:
		return "clientAuth"
	}
	return fmt.Sprintf("ExtKeyUsage(%d)", int(u))
}

// loadState reads the records, revocations and CRL number.
func (c *CA) loadState() error {
	if err := c.loadRecords(); err != nil {
		return err
	}
	if err := c.loadRevocations(); err != nil {
		return err
	}
	path := c.path(crlNumberFile)
	b, err := readOptional(path)
	if err != nil || b == nil {
		return err
	}
	n, ok := new(big.Int).SetString(strings.TrimSpace(string(b)), 10)
	if !ok || n.Sign() < 0 {
		return fmt.Errorf("ca: %s does not hold a CRL number; restore it from backup, or write a decimal number above that of every CRL published so far", path)
	}
	c.crlNumber = n
	return nil
}

// serialFiles lists the <hex serial><ext> files in dir, skipping
// temporaries and files with other extensions.
func serialFiles(dir, ext string) (map[string]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("ca: read %s: %w", dir, err)
	}
	out := make(map[string]string)
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, tempPrefix) || !strings.HasSuffix(n, ext) || e.IsDir() {
			continue
		}
		out[strings.TrimSuffix(n, ext)] = filepath.Join(dir, n)
	}
	return out, nil
}

// loadRecords reads issued/*.pem.
func (c *CA) loadRecords() error {
	files, err := serialFiles(c.path(issuedDir), ".pem")
	if err != nil {
		return err
	}
	const fix = "restore it from backup, or move it out of the directory if that certificate was never handed out"
	for name, path := range files {
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("ca: read %s: %w", path, err)
		}
		block, rest := pem.Decode(b)
		if block == nil || block.Type != pemCertificate || len(bytes.TrimSpace(rest)) != 0 {
			return fmt.Errorf("ca: %s is not one PEM certificate (corrupt?); %s", path, fix)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return fmt.Errorf("ca: %s: %v; %s", path, err, fix)
		}
		if serialName(cert.SerialNumber) != name {
			return fmt.Errorf("ca: %s holds serial %s, not the one in its name; rename it to %s.pem", path, serialName(cert.SerialNumber), serialName(cert.SerialNumber))
		}
		if !bytes.Equal(cert.RawIssuer, c.cert.RawSubject) {
			return fmt.Errorf("ca: %s was issued by %q, not by this CA; %s", path, cert.Issuer.CommonName, fix)
		}
		rec, ok := recordOf(cert)
		if !ok {
			return fmt.Errorf("ca: %s has extended key usages %v that match no kind; %s", path, cert.ExtKeyUsage, fix)
		}
		c.records[name] = rec
	}
	return nil
}

// loadRevocations reads revoked/*.json. A revocation whose record is
// missing is kept: losing a record must not un-revoke a certificate.
func (c *CA) loadRevocations() error {
	files, err := serialFiles(c.path(revokedDir), ".json")
	if err != nil {
		return err
	}
	const fix = "restore it from backup; do not delete it, that would un-revoke the certificate"
	for name, path := range files {
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("ca: read %s: %w", path, err)
		}
		var rv revocation
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rv); err != nil {
			return fmt.Errorf("ca: %s: %v; %s", path, err, fix)
		}
		serial, ok := new(big.Int).SetString(rv.Serial, 16)
		if !ok || serial.Sign() <= 0 || serialName(serial) != name {
			return fmt.Errorf("ca: %s holds serial %q, not the one in its name; %s", path, rv.Serial, fix)
		}
		if !validReason(rv.Reason) || rv.RevokedAt.IsZero() {
			return fmt.Errorf("ca: %s has reason %d and time %s, which are not valid; %s", path, rv.Reason, rv.RevokedAt, fix)
		}
		c.revoked[name] = rv
	}
	return nil
}
