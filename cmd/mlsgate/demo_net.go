package main

import (
	"bufio"
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

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
	https  []*http.Server
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

// labelPort is the TCP port a server listens on for a label: one labeled
// listener per label, so that the browser's socket of a label connects to
// the server's socket of the same label.
func labelPort(l label.Label) int {
	h := fnv.New32a()
	h.Write([]byte(l.String()))
	return 8000 + int(h.Sum32()%1000)
}

// secCtx is the SELinux context of a label for an application's type.
func secCtx(typ string, l label.Label) string {
	return "system_u:system_r:" + typ + ":" + l.Secrecy.String()
}

// startServers creates a namespace per server of the applications, with
// labeled ESP transport SAs between the host and the server at each of the
// server's labels, and an HTTP server on a labeled TCP socket per label
// (see servePages). guestNet is the prefix the guests live in.
func startServers(apps []*policystore.Application, guestNet netip.Prefix, host *xfrm.Handle) ([]*demoServer, func(), error) {
	var servers []*demoServer
	cleanup := func() {
		for _, s := range servers {
			for _, h := range s.https {
				h.Close()
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
			ports := map[int]label.Label{}
			for _, l := range s.labels {
				if o, dup := ports[labelPort(l)]; dup {
					return servers, cleanup, fmt.Errorf("server %s: labels %s and %s hash to the same port %d: change one of them", srv.Name, o, l, labelPort(l))
				}
				ports[labelPort(l)] = l
			}
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
				var ln net.Listener
				err := inNS(h, func() (err error) {
					if err := sockCreate(secCtx(app.Type, l)); err != nil {
						return err
					}
					// Plain TCP: Go listens with MPTCP by default, and an
					// MPTCP listener answers from a kernel-made subflow
					// socket, not from the socket this thread labeled.
					var lc net.ListenConfig
					lc.SetMultipathTCP(false)
					ln, err = lc.Listen(context.Background(), "tcp4", netip.AddrPortFrom(addr, uint16(labelPort(l))).String())
					return err
				})
				if err != nil {
					return servers, cleanup, fmt.Errorf("server %s socket at %s: %w", srv.Name, l, err)
				}
				hs := servePages(ln, srv.Name, l)
				s.https = append(s.https, hs)
			}
		}
	}
	return servers, cleanup, nil
}

type peerKey struct{}

// servePages serves pages on ln, a TCP socket at label l. Each page names
// the server, the path, the listener's label and the peer's security
// context as the kernel gives it for the connection (SO_PEERSEC: the
// context of the SA the request arrived on), so the browser can check that
// its page came through the tunnel of its label.
func servePages(ln net.Listener, name string, l label.Label) *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		peer, _ := r.Context().Value(peerKey{}).(string)
		io.Copy(io.Discard, io.LimitReader(r.Body, 1<<16))
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "%s %s %s at %s for %s\n", name, r.Method, r.URL.Path, l, peer)
	})
	hs := &http.Server{
		Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, peerKey{}, peerContext(c))
		},
	}
	go hs.Serve(ln)
	return hs
}

// peerContext is the SELinux context of a TCP connection's peer, or
// "unlabeled".
func peerContext(c net.Conn) string {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return "unlabeled"
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return "unlabeled"
	}
	peer := "unlabeled"
	rc.Control(func(fd uintptr) {
		if s, err := unix.GetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_PEERSEC); err == nil && s != "" {
			peer = strings.TrimRight(s, "\x00")
		}
	})
	return peer
}

// fetch is one HTTP request from a socket of context ctx (none when empty)
// made in ns toward dst, for host and path, bounded by timeout. It returns
// the status and the body.
func fetch(ns netns.NsHandle, ctx string, dst netip.AddrPort, method, host, path, body string, timeout time.Duration) (int, []byte, error) {
	dial := func(c context.Context, network, _ string) (net.Conn, error) {
		var conn net.Conn
		err := inNS(ns, func() (err error) {
			if ctx != "" {
				if err := sockCreate(ctx); err != nil {
					return err
				}
			}
			var d net.Dialer
			conn, err = d.DialContext(c, "tcp4", dst.String())
			return err
		})
		return conn, err
	}
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true, Proxy: nil}}
	defer client.CloseIdleConnections()
	var rb io.Reader
	if body != "" {
		rb = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+host+path, rb)
	if err != nil {
		return 0, nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}

// tryConnect opens a TCP connection from a socket of context ctx (none
// when empty) made in ns toward dst, waiting at most timeout. It returns
// the connection when it was established, and always the number of
// segments the socket sent (SYNs and their retransmissions: TCP_INFO's
// tcpi_segs_out), or -1 when the socket could not be read.
func tryConnect(ns netns.NsHandle, ctx string, dst netip.AddrPort, timeout time.Duration) (net.Conn, int64, error) {
	fd := -1
	err := inNS(ns, func() (err error) {
		if ctx != "" {
			if err := sockCreate(ctx); err != nil {
				return err
			}
		}
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("socket at %q: %w", ctx, err)
	}
	segs := func() int64 {
		ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return -1
		}
		return int64(ti.Segs_out)
	}
	fail := func(err error) (net.Conn, int64, error) {
		n := segs()
		unix.Close(fd)
		return nil, n, err
	}
	err = unix.Connect(fd, &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()})
	if err != nil && err != unix.EINPROGRESS {
		return fail(fmt.Errorf("connect %s: %w", dst, err))
	}
	deadline := time.Now().Add(timeout)
	for left := timeout; left > 0; left = time.Until(deadline) {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(pfd, int(min(left, 100*time.Millisecond)/time.Millisecond)+1)
		if err == unix.EINTR || n == 0 {
			continue
		}
		if err != nil {
			return fail(fmt.Errorf("connect %s: poll: %w", dst, err))
		}
		soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err == nil && soerr != 0 {
			err = unix.Errno(soerr)
		}
		if err != nil {
			return fail(fmt.Errorf("connect %s: %w", dst, err))
		}
		n64 := segs()
		f := os.NewFile(uintptr(fd), "tcp "+dst.String())
		c, err := net.FileConn(f)
		f.Close()
		return c, n64, err
	}
	return fail(fmt.Errorf("connect %s: no answer in %v", dst, timeout))
}

// postOn sends one HTTP POST of body on c and reads the status.
func postOn(c net.Conn, host, body string, timeout time.Duration) (int, error) {
	c.SetDeadline(time.Now().Add(timeout))
	req, err := http.NewRequest(http.MethodPost, "http://"+host+"/upload", strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Close = true
	if err := req.Write(c); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// snmpTCP is the Tcp line of the calling thread's namespace's
// /proc/net/snmp, by name.
func snmpTCP() map[string]uint64 {
	m := map[string]uint64{}
	b, err := os.ReadFile("/proc/thread-self/net/snmp")
	if err != nil {
		return m
	}
	var head []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Tcp:" {
			continue
		}
		if head == nil {
			head = f
			continue
		}
		for i := 1; i < len(f) && i < len(head); i++ {
			var v uint64
			if _, err := fmt.Sscan(f[i], &v); err == nil {
				m[head[i]] = v
			}
		}
	}
	return m
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
