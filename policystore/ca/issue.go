package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Limits on a Request.
const (
	// MaxTTL is the longest lifetime Issue grants.
	MaxTTL = 5 * 365 * 24 * time.Hour
	// MaxSANs is the most subject alternative names (DNS names and IPs
	// together) in one certificate.
	MaxSANs = 100
	// maxCommonName is RFC 5280's upper bound on a common name.
	maxCommonName = 64
)

// ErrInvalidRequest is wrapped by every error Issue returns for a bad
// Request.
var ErrInvalidRequest = errors.New("invalid certificate request")

// Kind is the role a certificate is issued for; it fixes the extended key
// usages.
type Kind uint8

// The kinds of certificate. The zero Kind is invalid, so that a Request
// must choose one.
const (
	// Server is a web server or other IPsec peer of the host: serverAuth.
	Server Kind = iota + 1
	// Guest is a guest VM: its update daemon is a TLS server the loader
	// connects to, and it is an IPsec peer of its host: serverAuth and
	// clientAuth.
	Guest
	// Client is the loader, the TLS client of update daemons: clientAuth.
	Client
)

// String returns "server", "guest" or "client".
func (k Kind) String() string {
	switch k {
	case Server:
		return "server"
	case Guest:
		return "guest"
	case Client:
		return "client"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// ExtKeyUsage returns the extended key usages a certificate of kind k
// carries, or nil for an invalid kind.
func (k Kind) ExtKeyUsage() []x509.ExtKeyUsage {
	switch k {
	case Server:
		return []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	case Guest:
		return []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	case Client:
		return []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	return nil
}

// kindOf recovers the kind of a certificate this CA issued from its
// extended key usages.
func kindOf(cert *x509.Certificate) (Kind, bool) {
	for _, k := range []Kind{Server, Guest, Client} {
		if slices.Equal(cert.ExtKeyUsage, k.ExtKeyUsage()) && len(cert.UnknownExtKeyUsage) == 0 {
			return k, true
		}
	}
	return 0, false
}

// Request asks Issue for a certificate.
type Request struct {
	// Kind is the certificate's role: Server, Guest or Client.
	Kind Kind
	// CommonName names the holder (at most 64 printable characters). Peers
	// check DNSNames and IPs, not the common name.
	CommonName string
	// DNSNames are host names the holder answers to, without wildcards or
	// a trailing dot. Server and Guest certificates need at least one
	// DNS name or IP.
	DNSNames []string
	// IPs are addresses the holder answers on.
	IPs []net.IP
	// TTL is the certificate's lifetime from now, at most MaxTTL and not
	// past the CA's own expiry.
	TTL time.Duration
}

// Issued is a new certificate and its private key. The key exists only
// here: the CA does not keep it.
type Issued struct {
	// Cert is the parsed certificate.
	Cert *x509.Certificate
	// CertPEM is the certificate, PEM "CERTIFICATE".
	CertPEM []byte
	// KeyPEM is the private key, PEM "PRIVATE KEY" (PKCS#8, ECDSA P-256).
	KeyPEM []byte
	// Serial is the certificate's serial number.
	Serial *big.Int
}

// TLSCertificate returns the certificate and key in the form crypto/tls
// uses.
func (iss *Issued) TLSCertificate() (tls.Certificate, error) {
	if iss == nil {
		return tls.Certificate{}, errors.New("ca: no Issued certificate given; pass the result of Issue")
	}
	cert, err := tls.X509KeyPair(iss.CertPEM, iss.KeyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ca: Issued certificate and key: %w; pass CertPEM and KeyPEM exactly as Issue returned them", err)
	}
	return cert, nil
}

// Record describes one issued certificate, as the CA keeps it.
type Record struct {
	// Serial is the certificate's serial number.
	Serial *big.Int
	// Kind is the role it was issued for.
	Kind Kind
	// CommonName, DNSNames and IPs are its subject and alternative names.
	CommonName string
	DNSNames   []string
	IPs        []net.IP
	// NotBefore and NotAfter bound its validity.
	NotBefore, NotAfter time.Time
	// Revoked tells whether it was revoked, and if so RevokedAt and
	// Reason (an RFC 5280 CRLReason) say when and why.
	Revoked   bool
	RevokedAt time.Time
	Reason    int
}

// recordOf builds the record of a certificate this CA issued.
func recordOf(cert *x509.Certificate) (*Record, bool) {
	k, ok := kindOf(cert)
	if !ok {
		return nil, false
	}
	return &Record{
		Serial:     new(big.Int).Set(cert.SerialNumber),
		Kind:       k,
		CommonName: cert.Subject.CommonName,
		DNSNames:   slices.Clone(cert.DNSNames),
		IPs:        cloneIPs(cert.IPAddresses),
		NotBefore:  cert.NotBefore,
		NotAfter:   cert.NotAfter,
	}, true
}

// cloneIPs deep-copies a list of addresses.
func cloneIPs(ips []net.IP) []net.IP {
	if ips == nil {
		return nil
	}
	out := make([]net.IP, len(ips))
	for i, ip := range ips {
		out[i] = slices.Clone(ip)
	}
	return out
}

// serialName is the name a serial number has in files and maps: lower-case
// hex without leading zeros.
func serialName(serial *big.Int) string { return serial.Text(16) }

// Issue creates a key and a certificate for it, signed by the CA, and
// records the certificate in the CA directory before returning it.
func (c *CA) Issue(req Request) (*Issued, error) {
	if err := req.validate(); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca: generate key: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("ca: encode key: %w", err)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.release == nil {
		return nil, ErrClosed
	}
	now := c.opts.Now()
	if !now.Before(c.cert.NotAfter) {
		return nil, fmt.Errorf("ca: the CA certificate expired at %s; move %s aside and open a new CA", c.cert.NotAfter.UTC().Format(time.RFC3339), c.dir)
	}
	notBefore := now.Add(-backdate)
	if notBefore.Before(c.cert.NotBefore) {
		notBefore = c.cert.NotBefore
	}
	notAfter := now.Add(req.TTL)
	if notAfter.After(c.cert.NotAfter) {
		return nil, fmt.Errorf("ca: %w: Request.TTL %s would end at %s, after the CA certificate expires at %s; use a TTL of at most %s",
			ErrInvalidRequest, req.TTL, notAfter.UTC().Format(time.RFC3339), c.cert.NotAfter.UTC().Format(time.RFC3339),
			c.cert.NotAfter.Sub(now).Truncate(time.Second))
	}
	var serial *big.Int
	for serial == nil {
		s, err := randomSerial()
		if err != nil {
			return nil, err
		}
		_, used := c.records[serialName(s)]
		_, usedR := c.revoked[serialName(s)]
		if !used && !usedR && s.Cmp(c.cert.SerialNumber) != 0 {
			serial = s
		}
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: req.CommonName},
		DNSNames:              req.DNSNames,
		IPAddresses:           req.IPs,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           req.Kind.ExtKeyUsage(),
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		return nil, fmt.Errorf("ca: sign certificate for %q: %w", req.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse new certificate: %w", err)
	}
	rec, ok := recordOf(cert)
	if !ok {
		return nil, fmt.Errorf("ca: new certificate for %q has unexpected key usages %v", req.CommonName, cert.ExtKeyUsage)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der})
	if err := writeFileAtomic(c.path(issuedDir), serialName(serial)+".pem", certPEM, 0o644); err != nil {
		return nil, err
	}
	c.records[serialName(serial)] = rec
	return &Issued{
		Cert:    cert,
		CertPEM: certPEM,
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: keyDER}),
		Serial:  new(big.Int).Set(serial),
	}, nil
}

// Issued returns the records of all certificates issued, revoked ones
// included, oldest first.
func (c *CA) Issued() []Record {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]Record, 0, len(c.records))
	for name, r := range c.records {
		rec := *r
		rec.Serial = new(big.Int).Set(r.Serial)
		rec.DNSNames = slices.Clone(r.DNSNames)
		rec.IPs = cloneIPs(r.IPs)
		if rv, ok := c.revoked[name]; ok {
			rec.Revoked, rec.RevokedAt, rec.Reason = true, rv.RevokedAt, rv.Reason
		}
		out = append(out, rec)
	}
	slices.SortFunc(out, func(a, b Record) int {
		if c := a.NotBefore.Compare(b.NotBefore); c != 0 {
			return c
		}
		return a.Serial.Cmp(b.Serial)
	})
	return out
}

// validate checks a Request; its errors wrap ErrInvalidRequest and name
// the field and the fix.
func (r *Request) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("ca: %w: "+format, append([]any{ErrInvalidRequest}, args...)...)
	}
	if r.Kind.ExtKeyUsage() == nil {
		return bad("Request.Kind %d is not a kind; use ca.Server, ca.Guest or ca.Client", uint8(r.Kind))
	}
	if err := checkCommonName("Request.CommonName", r.CommonName); err != nil {
		return bad("%v", err)
	}
	if n := len(r.DNSNames) + len(r.IPs); n > MaxSANs {
		return bad("Request has %d alternative names (DNSNames plus IPs), more than %d; split them over several certificates", n, MaxSANs)
	}
	if (r.Kind == Server || r.Kind == Guest) && len(r.DNSNames)+len(r.IPs) == 0 {
		return bad("a %s certificate for %q needs at least one DNS name or IP for peers to check; fill in Request.DNSNames or Request.IPs", r.Kind, r.CommonName)
	}
	seen := make(map[string]int)
	for i, name := range r.DNSNames {
		if err := checkDNSName(name); err != nil {
			return bad("Request.DNSNames[%d] %q %s", i, name, err)
		}
		key := strings.ToLower(name)
		if j, dup := seen[key]; dup {
			return bad("Request.DNSNames[%d] %q repeats DNSNames[%d]; list each name once", i, name, j)
		}
		seen[key] = i
	}
	seenIP := make(map[string]int)
	for i, ip := range r.IPs {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			return bad("Request.IPs[%d] has %d bytes, not 4 or 16; build it with net.ParseIP", i, len(ip))
		}
		if ip.IsUnspecified() {
			return bad("Request.IPs[%d] %s is the unspecified address; give the address the holder is reached on", i, ip)
		}
		key := string(ip.To16())
		if j, dup := seenIP[key]; dup {
			return bad("Request.IPs[%d] %s repeats IPs[%d]; list each address once", i, ip, j)
		}
		seenIP[key] = i
	}
	switch {
	case r.TTL <= 0:
		return bad("Request.TTL is %s; give a positive lifetime, such as 720h", r.TTL)
	case r.TTL > MaxTTL:
		return bad("Request.TTL %s is longer than the maximum %s (5 years); issue a shorter certificate and renew it", r.TTL, MaxTTL)
	}
	return nil
}

// checkCommonName checks a subject common name given in field.
func checkCommonName(field, cn string) error {
	switch {
	case cn == "":
		return fmt.Errorf("%s is empty; name the server, guest or loader the certificate is for", field)
	case len(cn) > maxCommonName:
		return fmt.Errorf("%s is %d bytes long, more than RFC 5280's %d; shorten it", field, len(cn), maxCommonName)
	case !utf8.ValidString(cn):
		return fmt.Errorf("%s %q is not valid UTF-8; re-encode it", field, cn)
	}
	for i, r := range cn {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("%s %q has the unprintable character %U at byte %d; remove it", field, cn, r, i)
		}
	}
	return nil
}

// checkDNSName checks a host name (RFC 1123 labels); the error completes
// the sentence "DNSNames[i] "name" ...".
func checkDNSName(name string) error {
	switch {
	case name == "":
		return errors.New("is empty; remove it")
	case len(name) > 253:
		return fmt.Errorf("is %d bytes long, more than DNS allows (253); shorten it", len(name))
	case strings.HasSuffix(name, "."):
		return errors.New("ends with '.'; drop the trailing dot")
	case strings.Contains(name, "*"):
		return errors.New("is a wildcard; certificates are issued for single hosts, so list each host name")
	}
	for label := range strings.SplitSeq(name, ".") {
		switch {
		case label == "":
			return errors.New("has an empty label (\"..\" or a leading dot); remove it")
		case len(label) > 63:
			return fmt.Errorf("has the label %q of %d bytes, more than 63; shorten it", label, len(label))
		case label[0] == '-' || label[len(label)-1] == '-':
			return fmt.Errorf("has the label %q, which starts or ends with '-'; remove the hyphen", label)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("has the character %q in label %q; host names use letters, digits and '-' only", r, label)
			}
		}
	}
	return nil
}
