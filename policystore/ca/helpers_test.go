package ca

import (
	"net"
	"sync"
	"testing"
	"time"
)

// clock is a settable clock for Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// openCA opens a CA in dir and closes it at the end of the test.
func openCA(t *testing.T, dir string, opts Options) *CA {
	t.Helper()
	c, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// issue issues a certificate or fails the test.
func issue(t *testing.T, c *CA, req Request) *Issued {
	t.Helper()
	iss, err := c.Issue(req)
	if err != nil {
		t.Fatalf("Issue(%+v): %v", req, err)
	}
	return iss
}

// guestReq, serverReq and clientReq are valid requests of each kind.
func guestReq() Request {
	return Request{Kind: Guest, CommonName: "guest 7", DNSNames: []string{"guest7.mlsgate.test"},
		IPs: []net.IP{net.ParseIP("127.0.0.1")}, TTL: 24 * time.Hour}
}

func serverReq() Request {
	return Request{Kind: Server, CommonName: "analyst profiles", DNSNames: []string{"profiles.example.org", "www.profiles.example.org"},
		IPs: []net.IP{net.ParseIP("192.0.2.10"), net.ParseIP("2001:db8::10")}, TTL: 90 * 24 * time.Hour}
}

func clientReq() Request {
	return Request{Kind: Client, CommonName: "vmload@dom0", TTL: 24 * time.Hour}
}
