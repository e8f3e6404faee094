package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestIssueKinds(t *testing.T) {
	clk := newClock()
	c := openCA(t, t.TempDir(), Options{Now: clk.Now})
	cases := map[string]struct {
		req    Request
		usages []x509.ExtKeyUsage
	}{
		"server": {serverReq(), []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
		"guest":  {guestReq(), []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}},
		"client": {clientReq(), []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
	}
	serials := make(map[string]bool)
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			iss := issue(t, c, tc.req)
			cert := iss.Cert
			if !slices.Equal(cert.ExtKeyUsage, tc.usages) {
				t.Errorf("ExtKeyUsage = %v, want %v", cert.ExtKeyUsage, tc.usages)
			}
			if cert.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("KeyUsage = %v, want digitalSignature", cert.KeyUsage)
			}
			if cert.IsCA {
				t.Error("leaf is a CA")
			}
			if cert.Subject.CommonName != tc.req.CommonName {
				t.Errorf("CN %q, want %q", cert.Subject.CommonName, tc.req.CommonName)
			}
			if !slices.Equal(cert.DNSNames, tc.req.DNSNames) {
				t.Errorf("DNSNames %v, want %v", cert.DNSNames, tc.req.DNSNames)
			}
			if fmt.Sprint(cert.IPAddresses) != fmt.Sprint(tc.req.IPs) {
				t.Errorf("IPs %v, want %v", cert.IPAddresses, tc.req.IPs)
			}
			now := clk.Now()
			if !cert.NotBefore.Equal(now.Add(-time.Minute).Truncate(time.Second)) && !cert.NotBefore.Equal(c.Certificate().NotBefore) {
				t.Errorf("NotBefore %s, want a minute before %s", cert.NotBefore, now)
			}
			if !cert.NotAfter.Equal(now.Add(tc.req.TTL).Truncate(time.Second)) {
				t.Errorf("NotAfter %s, want %s", cert.NotAfter, now.Add(tc.req.TTL))
			}
			if cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.BitLen() > 128 || cert.SerialNumber.Cmp(iss.Serial) != 0 {
				t.Errorf("serial %v (Issued.Serial %v): want positive, at most 128 bits, equal", cert.SerialNumber, iss.Serial)
			}
			if err := cert.CheckSignatureFrom(c.Certificate()); err != nil {
				t.Errorf("not signed by the CA: %v", err)
			}
			for _, u := range tc.usages {
				if err := c.Verify(cert, u); err != nil {
					t.Errorf("Verify(%v): %v", u, err)
				}
			}
			// The key is fresh P-256 and belongs to the certificate.
			pair, err := iss.TLSCertificate()
			if err != nil {
				t.Fatal(err)
			}
			k, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
			if !ok || k.Curve != elliptic.P256() {
				t.Errorf("key %T, want ECDSA P-256", pair.PrivateKey)
			}
			if ca, ok := c.key.(*ecdsa.PrivateKey); ok && ca.Equal(k) {
				t.Error("leaf key is the CA key")
			}
			// The record is on disk and in Issued.
			if !exists(filepath.Join(c.Dir(), issuedDir, serialName(iss.Serial)+".pem")) {
				t.Error("no record file")
			}
			found := false
			for _, r := range c.Issued() {
				if r.Serial.Cmp(iss.Serial) == 0 {
					found = true
					if r.Kind.String() != name || !r.NotAfter.Equal(cert.NotAfter) || r.CommonName != tc.req.CommonName {
						t.Errorf("record %+v does not match", r)
					}
				}
			}
			if !found {
				t.Error("Issued does not list the certificate")
			}
			serials[iss.Serial.String()] = true
		})
	}
	if len(serials) != len(cases) {
		t.Errorf("serials repeat: %v", serials)
	}
}

func TestIssueWrongUsageFailsVerify(t *testing.T) {
	c := openCA(t, t.TempDir(), Options{})
	s := issue(t, c, serverReq())
	if err := c.Verify(s.Cert, x509.ExtKeyUsageClientAuth); err == nil {
		t.Error("a Server certificate verified for clientAuth")
	}
	cl := issue(t, c, clientReq())
	if err := c.Verify(cl.Cert, x509.ExtKeyUsageServerAuth); err == nil {
		t.Error("a Client certificate verified for serverAuth")
	}
	if err := c.Verify(c.Certificate(), x509.ExtKeyUsageServerAuth); err == nil {
		t.Error("the CA certificate verified as a server")
	}
	other := openCA(t, t.TempDir(), Options{})
	o := issue(t, other, serverReq())
	var ua x509.UnknownAuthorityError
	if err := c.Verify(o.Cert, x509.ExtKeyUsageServerAuth); !errors.As(err, &ua) {
		t.Errorf("certificate of another CA: %v, want UnknownAuthorityError", err)
	}
}

func TestIssueValidation(t *testing.T) {
	c := openCA(t, t.TempDir(), Options{})
	many := make([]string, 101)
	for i := range many {
		many[i] = fmt.Sprintf("h%d.example.org", i)
	}
	cases := map[string]struct {
		edit func(r *Request)
		want string // a substring of the error: the field
	}{
		"no kind":          {func(r *Request) { r.Kind = 0 }, "Request.Kind"},
		"bad kind":         {func(r *Request) { r.Kind = 9 }, "Request.Kind"},
		"empty CN":         {func(r *Request) { r.CommonName = "" }, "Request.CommonName is empty"},
		"control in CN":    {func(r *Request) { r.CommonName = "web\x00server" }, "Request.CommonName"},
		"invalid UTF-8 CN": {func(r *Request) { r.CommonName = "web\xffserver" }, "UTF-8"},
		"long CN":          {func(r *Request) { r.CommonName = strings.Repeat("a", 65) }, "shorten it"},
		"empty DNS":        {func(r *Request) { r.DNSNames = []string{"a.example", ""} }, "Request.DNSNames[1]"},
		"trailing dot":     {func(r *Request) { r.DNSNames = []string{"a.example."} }, "trailing dot"},
		"wildcard":         {func(r *Request) { r.DNSNames = []string{"*.example.org"} }, "wildcard"},
		"underscore":       {func(r *Request) { r.DNSNames = []string{"a_b.example.org"} }, "letters, digits and '-'"},
		"space":            {func(r *Request) { r.DNSNames = []string{"a b.example.org"} }, "Request.DNSNames[0]"},
		"hyphen edge":      {func(r *Request) { r.DNSNames = []string{"-a.example.org"} }, "'-'"},
		"empty label":      {func(r *Request) { r.DNSNames = []string{"a..example.org"} }, "empty label"},
		"long label":       {func(r *Request) { r.DNSNames = []string{strings.Repeat("a", 64) + ".org"} }, "more than 63"},
		"long name":        {func(r *Request) { r.DNSNames = []string{strings.Repeat("abcdefg.", 32) + "org"} }, "253"},
		"duplicate DNS":    {func(r *Request) { r.DNSNames = []string{"a.example.org", "A.example.org"} }, "repeats DNSNames[0]"},
		"bad IP":           {func(r *Request) { r.IPs = []net.IP{{1, 2, 3}} }, "Request.IPs[0]"},
		"unspecified IP":   {func(r *Request) { r.IPs = []net.IP{net.IPv4zero} }, "unspecified"},
		"duplicate IP":     {func(r *Request) { r.IPs = []net.IP{net.ParseIP("192.0.2.1"), net.IPv4(192, 0, 2, 1).To4()} }, "repeats IPs[0]"},
		"too many SANs":    {func(r *Request) { r.DNSNames = many }, "more than 100"},
		"server no SAN":    {func(r *Request) { r.DNSNames, r.IPs = nil, nil }, "at least one DNS name or IP"},
		"zero TTL":         {func(r *Request) { r.TTL = 0 }, "Request.TTL"},
		"negative TTL":     {func(r *Request) { r.TTL = -time.Hour }, "Request.TTL"},
		"TTL over 5y":      {func(r *Request) { r.TTL = MaxTTL + time.Hour }, "5 years"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			req := serverReq()
			tc.edit(&req)
			_, err := c.Issue(req)
			if !errors.Is(err, ErrInvalidRequest) {
				t.Fatalf("Issue: %v, want ErrInvalidRequest", err)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), ";") {
				t.Errorf("error %q should name %q and a fix after ';'", err, tc.want)
			}
		})
	}
	if n := len(c.Issued()); n != 0 {
		t.Errorf("%d records after only invalid requests", n)
	}
	// The bounds themselves are allowed.
	ok := clientReq()
	ok.DNSNames = many[:MaxSANs]
	ok.TTL = MaxTTL
	issue(t, c, ok)
}

func TestIssueNotPastCAExpiry(t *testing.T) {
	clk := newClock()
	c := openCA(t, t.TempDir(), Options{Validity: 48 * time.Hour, Now: clk.Now})
	req := clientReq()
	req.TTL = 72 * time.Hour
	_, err := c.Issue(req)
	if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), "after the CA certificate expires") {
		t.Fatalf("Issue past CA expiry: %v", err)
	}
	req.TTL = 47 * time.Hour
	iss := issue(t, c, req)
	if iss.Cert.NotAfter.After(c.Certificate().NotAfter) {
		t.Error("leaf outlives the CA")
	}
	clk.Add(49 * time.Hour)
	req.TTL = time.Hour
	if _, err := c.Issue(req); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("Issue by an expired CA: %v", err)
	}
}

func TestIssuedKeyPEMRoundTrip(t *testing.T) {
	c := openCA(t, t.TempDir(), Options{})
	iss := issue(t, c, guestReq())
	// What a guest receives over the wire: the two PEM blobs.
	dir := t.TempDir()
	cp, kp := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeFile(t, cp, iss.CertPEM, 0o644)
	writeFile(t, kp, iss.KeyPEM, 0o600)
	if _, err := tls.LoadX509KeyPair(cp, kp); err != nil {
		t.Fatalf("tls.LoadX509KeyPair: %v", err)
	}
	bad := &Issued{CertPEM: iss.CertPEM, KeyPEM: issue(t, c, guestReq()).KeyPEM, Serial: big.NewInt(1)}
	if _, err := bad.TLSCertificate(); err == nil {
		t.Error("TLSCertificate accepted a key that does not belong to the certificate")
	}
	if _, err := os.Stat(filepath.Join(c.Dir(), issuedDir, serialName(iss.Serial)+".pem")); err != nil {
		t.Error(err)
	}
}
