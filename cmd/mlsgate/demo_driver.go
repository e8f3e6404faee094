package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/backend"
	"github.com/mlsgate/mlsgate/mapper"
)

// guestDriver acts inside one guest for the demo: the guest's browser, its
// label mapper, and what a compromised guest with root can do to its own
// kernel. The scenario (flows, assertions, report) is written against it
// alone, so the same code runs on network-namespace guests (nsGuest, which
// enters the namespace) and on Xen PV domains (consoleGuest, which asks the
// demo probe inside the domain over its PV console). Every method is a
// bounded, demo-specific action; there is no "run a command" verb.
type guestDriver interface {
	// Label asks the guest's own label mapper for rawURL.
	Label(rawURL string) (mapper.Answer, error)
	// Fetch is one HTTP request from a socket of SELinux context ctx
	// (none when empty) toward dst, for host and path, bounded by
	// timeout; it returns the status and the body.
	Fetch(ctx string, dst netip.AddrPort, method, host, path string, timeout time.Duration) (int, []byte, error)
	// Post opens a TCP connection from a socket of context ctx (none when
	// empty) toward dst within timeout and, once connected, sends one HTTP
	// POST of body. It returns the HTTP status (0 when none came back) and
	// always the segments the socket sent (-1 unknown), with the error.
	Post(ctx string, dst netip.AddrPort, host, body string, timeout time.Duration) (int, int64, error)
	// XFRMStat is the guest kernel's /proc/net/xfrm_stat.
	XFRMStat() (map[string]uint64, error)
	// Policies, AddPolicy and DeletePolicy act on the guest kernel's XFRM
	// policies, as a guest with root can.
	Policies() ([]xfrm.Policy, error)
	AddPolicy(p xfrm.Policy) error
	DeletePolicy(p xfrm.Policy) error
	// SendESP sends n raw ESP packets (protocol 50) carrying spi and
	// sequence number 1 toward dst, and returns how many left the socket.
	SendESP(dst netip.Addr, spi uint32, n int) (int, error)
	// Load is the guest's browser asking VMLoad for rawURL over the
	// guest's link, at api (the host's address on that link).
	Load(api netip.AddrPort, rawURL string) (*loader.Result, error)
	// Socket creates (and closes) a TCP socket of SELinux context ctx:
	// it fails while the guest kernel's policy does not know the
	// context's type.
	Socket(ctx string) error
	Close() error
}

// nsGuest is a network-namespace guest (backend.Netns), driven by entering
// its namespace; the demo probe drives its own namespace with it too.
type nsGuest struct{ ns netns.NsHandle }

var _ guestDriver = nsGuest{}

// netnsGuest opens the namespace of the netns backend's guest vm.
func netnsGuest(vm uint32) (guestDriver, error) {
	ns, err := netns.GetFromName(backend.NetnsName(vm))
	if err != nil {
		return nil, fmt.Errorf("guest vm%d's namespace %s: %w", vm, backend.NetnsName(vm), err)
	}
	return nsGuest{ns}, nil
}

func (g nsGuest) Close() error { return g.ns.Close() }

func (g nsGuest) Label(rawURL string) (mapper.Answer, error) { return guestLabel(g.ns, rawURL) }

func (g nsGuest) Fetch(ctx string, dst netip.AddrPort, method, host, path string, timeout time.Duration) (int, []byte, error) {
	return fetch(g.ns, ctx, dst, method, host, path, "", timeout)
}

func (g nsGuest) Post(ctx string, dst netip.AddrPort, host, body string, timeout time.Duration) (int, int64, error) {
	c, segs, err := tryConnect(g.ns, ctx, dst, timeout)
	if err != nil {
		return 0, segs, err
	}
	status, err := postOn(c, host, body, timeout)
	c.Close()
	return status, segs, err
}

func (g nsGuest) XFRMStat() (map[string]uint64, error) { return xfrmStatIn(g.ns), nil }

func (g nsGuest) Policies() ([]xfrm.Policy, error) {
	h, err := xfrm.NewHandleAt(g.ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	return h.Policies()
}

func (g nsGuest) AddPolicy(p xfrm.Policy) error {
	h, err := xfrm.NewHandleAt(g.ns)
	if err != nil {
		return err
	}
	defer h.Close()
	return h.AddPolicy(p)
}

func (g nsGuest) DeletePolicy(p xfrm.Policy) error {
	h, err := xfrm.NewHandleAt(g.ns)
	if err != nil {
		return err
	}
	defer h.Close()
	return h.DeletePolicy(p)
}

func (g nsGuest) SendESP(dst netip.Addr, spi uint32, n int) (int, error) {
	sent := 0
	err := inNS(g.ns, func() error {
		c, err := net.Dial("ip4:50", dst.String())
		if err != nil {
			return err
		}
		defer c.Close()
		pkt := make([]byte, 64)
		pkt[0], pkt[1], pkt[2], pkt[3] = byte(spi>>24), byte(spi>>16), byte(spi>>8), byte(spi)
		pkt[7] = 1
		for i := 0; i < n; i++ {
			if _, err := c.Write(pkt); err != nil {
				return err
			}
			sent++
		}
		return nil
	})
	return sent, err
}

func (g nsGuest) Load(api netip.AddrPort, rawURL string) (*loader.Result, error) {
	c := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{DialContext: dialIn(g.ns)}}
	// Guests must name each request (single-use, at most 64 bytes).
	id := make([]byte, 12)
	rand.Read(id)
	body, _ := json.Marshal(loader.LoadRequest{URL: rawURL, ID: hex.EncodeToString(id)})
	resp, err := c.Post("http://"+api.String()+"/v1/load", "application/json", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		var le loader.LoadError
		json.Unmarshal(b, &le)
		return nil, fmt.Errorf("%s: %s", le.Reason, le.Error)
	}
	var r loader.Result
	return &r, json.Unmarshal(b, &r)
}

func (g nsGuest) Socket(ctx string) error {
	return inNS(g.ns, func() error {
		if err := sockCreate(ctx); err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket at %s: %w", ctx, err)
		}
		return unix.Close(fd)
	})
}

// guestLabel asks the guest's label mapper, from inside the guest.
func guestLabel(ns netns.NsHandle, rawURL string) (mapper.Answer, error) {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dialIn(ns)}}
	var a mapper.Answer
	resp, err := c.Get("http://127.0.0.1:7070/v1/label?url=" + url.QueryEscape(rawURL))
	if err != nil {
		return a, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return a, fmt.Errorf("%s: %s", resp.Status, b)
	}
	return a, json.Unmarshal(b, &a)
}
