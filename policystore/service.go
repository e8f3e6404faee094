package policystore

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/mlsgate/mlsgate/policystore/ca"
)

// CAIssuer plugs the policy store's certificate authority into bundle
// generation: a key and certificate per web server (CertServer, for
// authenticating the IPsec peers) and per guest (CertGuest, which the
// update daemon inside the guest presents to the loader), valid for ttl.
func CAIssuer(c *ca.CA, ttl time.Duration) Issuer {
	return func(kind CertKind, cn string, dns []string, ips []netip.Addr) ([]byte, []byte, error) {
		k := ca.Server
		if kind == CertGuest {
			k = ca.Guest
		}
		req := ca.Request{Kind: k, CommonName: cn, DNSNames: dns, TTL: ttl}
		for _, a := range ips {
			req.IPs = append(req.IPs, net.IP(a.AsSlice()))
		}
		iss, err := c.Issue(req)
		if err != nil {
			return nil, nil, err
		}
		return iss.CertPEM, iss.KeyPEM, nil
	}
}

// BundleFor is the policy store's answer to VMLoad (the paper's section
// 3.2): the named application (fetched from the authority if need be),
// a bundle generated for one guest with the next version number, and the
// compliance check of that bundle against the host's system policy. A
// bundle that fails the check is never returned. req.Version is set here.
func (c *Catalog) BundleFor(ctx context.Context, appName string, req BundleRequest, t *Templates, sys SystemPolicy) (*Application, *Bundle, error) {
	app, err := c.App(ctx, appName)
	if err != nil {
		return nil, nil, err
	}
	v, err := c.Store.NextVersion(app.Name)
	if err != nil {
		return nil, nil, fmt.Errorf("bundle version for %q: %w", app.Name, err)
	}
	req.Version = v
	b, err := GenerateBundle(app, req, t)
	if err != nil {
		return nil, nil, err
	}
	if err := CheckBundle(app, b, sys); err != nil {
		return nil, nil, err
	}
	return app, b, nil
}
