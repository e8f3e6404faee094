package ca

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
)

// ServerTLS returns a TLS configuration for a server that presents iss (a
// Guest certificate for the update daemon, or a Server one) and demands a
// client certificate from this CA with the clientAuth usage: the loader's.
// TLS 1.3 only. Every handshake, including resumed sessions, checks the
// client against the CA's current revocations and clock, so Revoke takes
// effect for new connections at once.
//
// If iss is nil, unparsable or not usable for serverAuth, every handshake
// fails with an error saying so.
func (c *CA) ServerTLS(iss *Issued) *tls.Config {
	cfg := &tls.Config{
		MinVersion:       tls.VersionTLS13,
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        c.pool,
		Time:             c.opts.Now,
		VerifyConnection: c.verifyPeer(x509.ExtKeyUsageClientAuth),
	}
	cert, err := ownCert(iss, x509.ExtKeyUsageServerAuth, "ServerTLS")
	if err != nil {
		cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, err }
	} else {
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg
}

// ClientTLS returns a TLS configuration for a client (the loader) that
// presents iss and accepts only a server whose certificate chains to this
// CA, not to the system roots, carries serverAuth, names serverName (a DNS
// name or IP of the server's certificate; leave it empty only when dialing
// with tls.Dial, which fills it in from the address) and is not revoked.
// TLS 1.3 only.
//
// iss may be nil for a client that presents no certificate; a server made
// by ServerTLS rejects it. If iss is unparsable or not usable for
// clientAuth, every handshake fails with an error saying so.
func (c *CA) ClientTLS(iss *Issued, serverName string) *tls.Config {
	cfg := &tls.Config{
		MinVersion:       tls.VersionTLS13,
		RootCAs:          c.pool,
		ServerName:       serverName,
		Time:             c.opts.Now,
		VerifyConnection: c.verifyPeer(x509.ExtKeyUsageServerAuth),
	}
	if iss == nil {
		return cfg
	}
	cert, err := ownCert(iss, x509.ExtKeyUsageClientAuth, "ClientTLS")
	if err != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return nil, err }
	} else {
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg
}

// ownCert turns iss into the certificate a TLS endpoint presents, checking
// that it has the usage the endpoint's role needs.
func ownCert(iss *Issued, usage x509.ExtKeyUsage, fn string) (tls.Certificate, error) {
	if iss == nil {
		return tls.Certificate{}, fmt.Errorf("ca: %s was given no certificate; pass the Issued of a Server or Guest certificate", fn)
	}
	cert, err := iss.TLSCertificate()
	if err != nil {
		return tls.Certificate{}, err
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return tls.Certificate{}, fmt.Errorf("ca: %s: %w", fn, err)
		}
	}
	if !slices.Contains(cert.Leaf.ExtKeyUsage, usage) {
		return tls.Certificate{}, fmt.Errorf("ca: %s: certificate %q lacks %s; pass a certificate of a kind that has it", fn, cert.Leaf.Subject.CommonName, usageName(usage))
	}
	return cert, nil
}

// verifyPeer returns a tls.Config.VerifyConnection that checks the peer's
// leaf against the CA's revocations and clock. crypto/tls calls it after
// chain verification on full handshakes and also on resumed sessions,
// where the chain is not verified again.
func (c *CA) verifyPeer(usage x509.ExtKeyUsage) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("ca: peer presented no certificate")
		}
		return c.checkLeaf(cs.PeerCertificates[0], usage)
	}
}
