package loader

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/mlsgate/mlsgate/policystore"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and veth pairs")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip")
	}
}

// testNS creates a network namespace with a random name, removed at the
// end of the test.
func testNS(t *testing.T, role string) string {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	name := "lt-" + role + "-" + hex.EncodeToString(b)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// link makes a veth pair: hostDev with hostAddr in ns a, guestDev with
// guestAddr in ns b.
func link(t *testing.T, a, hostDev, hostAddr, b, guestDev, guestAddr string) {
	t.Helper()
	run(t, "ip", "-n", a, "link", "add", hostDev, "type", "veth", "peer", "name", guestDev, "netns", b)
	run(t, "ip", "-n", a, "addr", "add", hostAddr, "dev", hostDev)
	run(t, "ip", "-n", b, "addr", "add", guestAddr, "dev", guestDev)
	run(t, "ip", "-n", a, "link", "set", hostDev, "up")
	run(t, "ip", "-n", b, "link", "set", guestDev, "up")
}

// inNS runs fn on a thread in the namespace name. Sockets made by fn
// belong to that namespace for their whole life.
func inNS(t *testing.T, name string, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	h, err := netns.GetFromName(name)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: it dies with the goroutine.
		t.Fatal(err)
	}
	runtime.UnlockOSThread()
}

// nsClient is an HTTP client whose connections start in ns, from src when
// it is set.
func nsClient(t *testing.T, ns, src string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			d := net.Dialer{Timeout: 2 * time.Second}
			if src != "" {
				d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
			}
			inNS(t, ns, func() { c, err = d.DialContext(ctx, network, addr) })
			return c, err
		}}}
}

type answer struct {
	code int
	body map[string]any
	err  error
}

func postLoad(c *http.Client, to, url string) answer {
	body := fmt.Sprintf(`{"url":%q,"id":"%d"}`, url, time.Now().UnixNano())
	resp, err := c.Post("http://"+to+"/v1/load", "application/json", strings.NewReader(body))
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	var m map[string]any
	json.NewDecoder(resp.Body).Decode(&m)
	return answer{code: resp.StatusCode, body: m}
}

// TestPrivilegedGuestIdentifiedByInterface: guests A (analyst) and B
// (osint) on routed veths to a host namespace, and an untrusted namespace
// routed to the host. B takes A's address, and the host's route to that
// address points at B's link (what a gratuitous ARP does to a shared
// bridge): B asking for an analyst load must never be served as A. The
// untrusted side gets no answer on the API port at all.
func TestPrivilegedGuestIdentifiedByInterface(t *testing.T) {
	requireRoot(t)
	r := newRig(t, policystore.SystemPolicy{})
	ctx := context.Background()
	a, err := r.l.Load(ctx, Caller{Host: true}, "http://ws1.analyst.example/profile")
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.l.Load(ctx, Caller{Host: true}, "http://feed.osint.example/today")
	if err != nil {
		t.Fatal(err)
	}
	ga, gb := a.Guest, b.Guest // vm7 10.71.7.2 and vm8 10.71.8.2

	host, nsA, nsB, untrusted := testNS(t, "host"), testNS(t, "ga"), testNS(t, "gb"), testNS(t, "un")
	link(t, host, ga.Interface, ga.HostAddr.String()+"/24", nsA, "eth0", ga.Addr.String()+"/24")
	link(t, host, gb.Interface, gb.HostAddr.String()+"/24", nsB, "eth0", gb.Addr.String()+"/24")
	link(t, host, "up0", "192.0.2.1/24", untrusted, "eth0", "192.0.2.2/24")
	run(t, "ip", "-n", nsA, "route", "add", "default", "via", ga.HostAddr.String())
	run(t, "ip", "-n", nsB, "route", "add", "default", "via", gb.HostAddr.String())
	run(t, "ip", "-n", untrusted, "route", "add", "10.71.0.0/16", "via", "192.0.2.1")
	for _, k := range []string{"all", "default", ga.Interface, gb.Interface, "up0"} {
		run(t, "ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv4.conf."+strings.ReplaceAll(k, ".", "/")+".rp_filter=0")
	}

	const port = 17443
	api := &API{Loader: r.l, Pool: r.pool}
	serveGuestAPI(t, host, api, port, []Guest{ga, gb})
	analystURL := "http://ws1.analyst.example/profile"
	toA := fmt.Sprintf("%s:%d", ga.HostAddr, port)
	toB := fmt.Sprintf("%s:%d", gb.HostAddr, port)

	// A itself is served.
	if ans := postLoad(nsClient(t, nsA, ""), toA, analystURL); ans.err != nil || ans.code != 200 {
		t.Fatalf("guest A's own load: %d %v %v", ans.code, ans.body, ans.err)
	}
	// B is identified as B: osint guests may not load analyst.
	if ans := postLoad(nsClient(t, nsB, ""), toB, analystURL); ans.err != nil || ans.code != 403 || !strings.Contains(fmt.Sprint(ans.body["error"]), "vm8") {
		t.Fatalf("guest B's own load of analyst: %d %v %v; want 403 naming vm8", ans.code, ans.body, ans.err)
	}

	// B takes A's address; the host's route to it points at B's link.
	run(t, "ip", "-n", nsB, "addr", "add", ga.Addr.String()+"/32", "dev", "eth0")
	run(t, "ip", "-n", host, "route", "add", ga.Addr.String()+"/32", "dev", gb.Interface)
	for _, to := range []string{toA, toB} {
		ans := postLoad(nsClient(t, nsB, ga.Addr.String()), to, analystURL)
		if ans.err == nil && ans.code == 200 {
			t.Errorf("guest B with A's address, to %s: served as A (200 %v)", to, ans.body)
			continue
		}
		// Refused before authorization is fine; authorized as vm7 is not.
		if e := fmt.Sprint(ans.body["error"]); ans.err == nil && strings.Contains(e, "vm7 (") && strings.Contains(e, "may not load") {
			t.Errorf("guest B with A's address, to %s: identified as vm7 (%d %v)", to, ans.code, ans.body)
		}
		t.Logf("B as A to %s: %d %v %v", to, ans.code, ans.body, ans.err)
	}

	if got := refusals(t, r.l, "wrong_source"); got != 1 {
		t.Errorf("refusals for a wrong source address counted %v, want 1 (B to its own link with A's address)", got)
	}

	// The untrusted side reaches no listener on the API port.
	for _, to := range []string{toA, toB} {
		if ans := postLoad(nsClient(t, untrusted, ""), to, analystURL); ans.err == nil {
			t.Errorf("untrusted namespace to %s got an answer: %d %v", to, ans.code, ans.body)
		}
	}
}

// serveGuestAPI serves api to the guests the way the loader serves them:
// one listener per guest on its host-side address, bound to its interface.
func serveGuestAPI(t *testing.T, ns string, api *API, port uint16, guests []Guest) {
	t.Helper()
	gl := &GuestListeners{Port: port}
	for _, g := range guests {
		var err error
		inNS(t, ns, func() { err = gl.Open(g) })
		if err != nil {
			t.Fatal(err)
		}
	}
	srv := api.Server()
	gl.Serve(srv)
	t.Cleanup(func() { gl.CloseAll(); srv.Close() })
}

// serveGuestForTest serves api to guest g on loopback the way the loader
// serves guests (a listener of its own, through GuestListeners), and
// returns the base URL.
func serveGuestForTest(t *testing.T, api *API, g *Guest) string {
	t.Helper()
	gl := &GuestListeners{Listen: func(g Guest, _ uint16) (net.Listener, error) {
		return net.Listen("tcp", netip.AddrPortFrom(g.HostAddr, 0).String())
	}}
	if err := gl.Open(*g); err != nil {
		t.Fatal(err)
	}
	srv := api.Server()
	gl.Serve(srv)
	t.Cleanup(func() { gl.CloseAll(); srv.Close() })
	a, _ := gl.Addr(g.Interface)
	return "http://" + a.String()
}
