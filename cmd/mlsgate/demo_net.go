package main

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netns"

	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/policystore"
)

// The demo's network, inside one kernel: the host is the root namespace
// (the agent, the loader, the policy store); every guest the loader boots
// is a namespace behind vif<N>.0; every web server is a namespace behind
// an unmanaged veth, reached from the host through labeled IPsec of its
// own (the paper's server-side tunnel), so that the label a guest's SA
// carries is the label the server receives.

const demoServerSPIBase = 0x5000

// demoServer is one web server of an application, in its own namespace.
type demoServer struct {
	app    *policystore.Application
	srv    policystore.Server
	ns     string
	link   string     // host side of its veth
	hostIP netip.Addr // host's address on that link
	peerIP netip.Addr // the server's address on that link (next hop)
	labels []label.Label
	handle netns.NsHandle
	conns  []*net.UDPConn
}

// inNS runs fn on a fresh OS thread inside ns; the thread is discarded.
func inNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// sockCreate sets the SELinux context of sockets the (locked) thread makes.
func sockCreate(ctx string) error {
	if err := os.WriteFile("/proc/thread-self/attr/sockcreate", []byte(ctx), 0); err != nil {
		return fmt.Errorf("socket context %q: %w", ctx, err)
	}
	return nil
}

func ipRun(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// labelPort is the UDP port a server answers a label on: one labeled
// socket per label, because a datagram socket carries one context.
func labelPort(l label.Label) int {
	h := fnv.New32a()
	h.Write([]byte(l.String()))
	return 8000 + int(h.Sum32()%1000)
}

// secCtx is the SELinux context of a label for an application's type.
func secCtx(typ string, l label.Label) string {
	return "system_u:system_r:" + typ + ":" + l.Secrecy.String()
}

// serverLabels is every label a server's URLs carry in the application.
func serverLabels(app *policystore.Application, s policystore.Server) []label.Label {
	seen := map[label.Label]bool{s.DefaultLabel(): true}
	out := []label.Label{s.DefaultLabel()}
	for _, r := range app.Labels {
		if s.Range.Contains(r.Label) && !seen[r.Label] && strings.Contains(strings.ReplaceAll(r.URL, `\.`, "."), s.Hosts[0]) {
			seen[r.Label] = true
			out = append(out, r.Label)
		}
	}
	return out
}

// startServers creates a namespace per server of the applications, with
// labeled ESP transport SAs between the host and the server at each of the
// server's labels, and a labeled UDP socket per label that answers
// "<server> <path> at <label>". guestNet is the prefix the guests live in.
func startServers(apps []*policystore.Application, guestNet netip.Prefix, host *xfrm.Handle) ([]*demoServer, func(), error) {
	var servers []*demoServer
	cleanup := func() {
		for _, s := range servers {
			for _, c := range s.conns {
				c.Close()
			}
			if s.handle.IsOpen() {
				s.handle.Close()
			}
			ipRun("link", "del", s.link)
			ipRun("netns", "del", s.ns)
		}
	}
	spi := uint32(demoServerSPIBase)
	reqid := uint32(9000)
	key := []byte("mlsgate-demo-key-01!") // 20 bytes: 16 key + 4 salt
	for ai, app := range apps {
		for si, srv := range app.Servers {
			idx := ai*16 + si + 1
			s := &demoServer{app: app, srv: srv, ns: "web-" + srv.Name, link: fmt.Sprintf("web%d", idx),
				hostIP: netip.AddrFrom4([4]byte{10, 69, byte(idx), 1}), peerIP: netip.AddrFrom4([4]byte{10, 69, byte(idx), 2}),
				labels: serverLabels(app, srv)}
			servers = append(servers, s)
			addr := srv.Addresses[0]
			steps := [][]string{
				{"netns", "add", s.ns},
				{"link", "add", s.link, "type", "veth", "peer", "name", "eth0", "netns", s.ns},
				{"addr", "add", s.hostIP.String() + "/24", "dev", s.link},
				{"link", "set", s.link, "up"},
				{"route", "add", addr.String() + "/32", "via", s.peerIP.String()},
				{"-n", s.ns, "link", "set", "lo", "up"},
				{"-n", s.ns, "addr", "add", s.peerIP.String() + "/24", "dev", "eth0"},
				{"-n", s.ns, "addr", "add", addr.String() + "/32", "dev", "eth0"},
				{"-n", s.ns, "link", "set", "eth0", "up"},
				{"-n", s.ns, "route", "add", "default", "via", s.hostIP.String()},
			}
			for _, st := range steps {
				if err := ipRun(st...); err != nil {
					return servers, cleanup, err
				}
			}
			h, err := netns.GetFromName(s.ns)
			if err != nil {
				return servers, cleanup, err
			}
			s.handle = h
			sh, err := xfrm.NewHandleAt(h)
			if err != nil {
				return servers, cleanup, err
			}
			reqid++
			spd := "system_u:object_r:" + strings.TrimSuffix(app.Type, "_t") + "_spd_t:" + srv.Range.Low.Secrecy.String() + "-" + srv.Range.High.Secrecy.String()
			for _, l := range s.labels {
				ctx := secCtx(app.Type, l)
				for _, d := range []struct{ src, dst netip.Addr }{{s.hostIP, s.peerIP}, {s.peerIP, s.hostIP}} {
					st := xfrm.State{Src: d.src, Dst: d.dst, SPI: spi, Proto: xfrm.ProtoESP, Mode: xfrm.ModeTunnel, Reqid: reqid, Context: ctx,
						AEAD: &xfrm.Algo{Name: "rfc4106(gcm(aes))", Key: key, ICVBits: 128}, ReplayWindow: 32}
					spi++
					for _, hh := range []*xfrm.Handle{host, sh} {
						if err := hh.AddState(st); err != nil {
							sh.Close()
							return servers, cleanup, fmt.Errorf("server %s SA at %s: %w", srv.Name, l, err)
						}
					}
				}
			}
			srvNet := netip.PrefixFrom(addr, 32)
			tmpl := func(src, dst netip.Addr) []xfrm.Template {
				return []xfrm.Template{{Src: src, Dst: dst, Proto: xfrm.ProtoESP, Mode: xfrm.ModeTunnel, Reqid: reqid}}
			}
			pols := []struct {
				h *xfrm.Handle
				p xfrm.Policy
			}{
				// Host: toward the server (forwarded from guests) and back.
				{host, xfrm.Policy{Src: guestNet, Dst: srvNet, Dir: xfrm.DirOut, Templates: tmpl(s.hostIP, s.peerIP)}},
				{host, xfrm.Policy{Src: srvNet, Dst: guestNet, Dir: xfrm.DirFwd, Templates: tmpl(s.peerIP, s.hostIP)}},
				// Server: its end.
				{sh, xfrm.Policy{Src: srvNet, Dst: guestNet, Dir: xfrm.DirOut, Templates: tmpl(s.peerIP, s.hostIP)}},
				{sh, xfrm.Policy{Src: guestNet, Dst: srvNet, Dir: xfrm.DirIn, Templates: tmpl(s.hostIP, s.peerIP)}},
			}
			for _, p := range pols {
				p.p.Action, p.p.Priority, p.p.Context = xfrm.ActionAllow, 1000, spd
				if err := p.h.AddPolicy(p.p); err != nil {
					sh.Close()
					return servers, cleanup, fmt.Errorf("server %s policy %v: %w", srv.Name, p.p, err)
				}
			}
			sh.Close()
			for _, l := range s.labels {
				var c *net.UDPConn
				err := inNS(h, func() (err error) {
					if err := sockCreate(secCtx(app.Type, l)); err != nil {
						return err
					}
					c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: addr.AsSlice(), Port: labelPort(l)})
					return err
				})
				if err != nil {
					return servers, cleanup, fmt.Errorf("server %s socket at %s: %w", srv.Name, l, err)
				}
				s.conns = append(s.conns, c)
				go serveUDP(c, srv.Name, l)
			}
		}
	}
	return servers, cleanup, nil
}

// serveUDP answers each request with one datagram naming the page.
func serveUDP(c *net.UDPConn, name string, l label.Label) {
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			return
		}
		req := strings.TrimSpace(string(buf[:n]))
		c.WriteToUDP([]byte(fmt.Sprintf("%s: page %q at %s", name, req, l)), from)
	}
}

// exchange sends one datagram from a socket of context ctx in ns to
// addr:port and waits for the answer, a few times (the first may wait for
// ARP and for the kernel to pick its SAs).
func exchange(ns netns.NsHandle, ctx string, to netip.AddrPort, msg string) (string, error) {
	var c *net.UDPConn
	err := inNS(ns, func() (err error) {
		if ctx != "" {
			if err := sockCreate(ctx); err != nil {
				return err
			}
		}
		c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	buf := make([]byte, 2048)
	var last error
	for try := 0; try < 3; try++ {
		if _, err := c.Write([]byte(msg)); err != nil {
			last = err
			time.Sleep(300 * time.Millisecond)
			continue
		}
		c.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
		n, err := c.Read(buf)
		if err == nil {
			return string(buf[:n]), nil
		}
		last = err
	}
	if last == nil {
		last = errors.New("no answer")
	}
	return "", last
}

// dialIn dials from inside ns, for HTTP clients that talk in a guest.
func dialIn(ns netns.NsHandle) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := inNS(ns, func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}
