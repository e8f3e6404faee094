package inguest

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/agent/api"
	"github.com/mlsgate/mlsgate/agent/localapi"
	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/label"
)

// The agent in the guest kernel, where ESP and SELinux are real: SAs with
// security contexts installed through agent/xfrm reach the fast path's maps
// through the agent's XFRM sync; labeled ESP from a guest namespace passes
// vif7.0 when its label is in the guest's range and is dropped when it is
// not; and packets the host decrypted (a tunnel from a web server, ended at
// the host and forwarded to the guest in clear) are judged by the label of
// the SA in their secpath.
//
//	ag (guest) eth0 10.71.0.7 ── vif7.0 10.71.0.1  ah (host, agent)  wsif 10.72.0.1 ── eth0 10.72.0.5  aw (web)

const (
	agHost  = "10.71.0.1"
	agGuest = "10.71.0.7"
	agWebGW = "10.72.0.1"
	agWeb   = "10.72.0.5"
	agSPD   = "system_u:object_r:analyst_spd_t:s0-s15"
	agReqid = 7010
	spiBase = 0xc0000000
)

func agCtx(level string) string { return "system_u:system_r:analyst_t:" + level }

// TestMain runs the agent when the test binary is started as one (see
// startAgent), and the tests otherwise.
func TestMain(m *testing.M) {
	switch {
	case os.Getenv("MLSGATE_INGUEST_AGENT") == "1":
		os.Exit(runAgent())
	case os.Getenv(envUpdated) == "1":
		os.Exit(runUpdatedProc())
	case os.Getenv(envLoader) == "1":
		os.Exit(runLoaderProc())
	}
	os.Exit(m.Run())
}

// runAgent is the agent process: the library as 'mlsgate agent' runs it,
// following this network namespace's SAs.
func runAgent() int {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	cfg := agent.DefaultConfig()
	cfg.StateDir, cfg.PinDir, cfg.Socket, cfg.Listen = os.Getenv("AGENT_STATE"), os.Getenv("AGENT_PINS"), os.Getenv("AGENT_SOCK"), ""
	cfg.SPISlots = 4096
	if p, err := strconv.ParseUint(os.Getenv("AGENT_API_PORT"), 10, 16); err == nil {
		cfg.APIPort = uint16(p) // the host reaches the guest's update daemon there
	}
	cfg.Integrity = map[string]label.Integrity{"analyst_t": 5}
	a, k, err := agent.Start(cfg, log, nil)
	if err != nil {
		log.Error("start", "error", err)
		return 1
	}
	defer k.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ln, err := localapi.Listen(cfg.Socket, "")
	if err != nil {
		log.Error("listen", "error", err)
		return 1
	}
	srv := &http.Server{Handler: a.AdminHandler()}
	ln.Protect(srv)
	go srv.Serve(ln)
	defer srv.Close()
	if err := a.Run(ctx); err != nil {
		log.Error("run", "error", err)
		return 1
	}
	return 0
}

type guestAgent struct {
	t      *testing.T
	sock   string
	client *http.Client
	cmd    *exec.Cmd
	log    *syncBuf
}

type syncBuf struct {
	mu sync.Mutex
	b  []byte
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append(s.b, p...)
	return len(p), nil
}

func (s *syncBuf) String() string { s.mu.Lock(); defer s.mu.Unlock(); return string(s.b) }

// startAgent starts this binary as the agent inside the named namespace,
// with its pins on a bpffs of the test's own ('ip netns exec' remounts /sys),
// and env added to its environment.
func startAgent(t *testing.T, ns string, env ...string) *guestAgent {
	t.Helper()
	dir := t.TempDir()
	bpffs := filepath.Join(dir, "bpffs")
	if err := os.Mkdir(bpffs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpffs", bpffs, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	g := &guestAgent{t: t, sock: filepath.Join(dir, "agent.sock"), log: &syncBuf{}}
	g.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", g.sock)
	}}}
	g.cmd = exec.Command(ipPath, "netns", "exec", ns, exe)
	g.cmd.Env = append(os.Environ(), "MLSGATE_INGUEST_AGENT=1", "AGENT_STATE="+filepath.Join(dir, "state"),
		"AGENT_PINS="+filepath.Join(bpffs, "mlsgate"), "AGENT_SOCK="+g.sock)
	g.cmd.Env = append(g.cmd.Env, env...)
	g.cmd.Stdout, g.cmd.Stderr = g.log, g.log
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { g.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		g.cmd.Process.Signal(syscall.SIGKILL)
		<-exited
		unix.Unmount(bpffs, unix.MNT_DETACH)
		if t.Failed() {
			t.Logf("agent log:\n%s", g.log)
		}
	})
	start := time.Now()
	for range 600 { // the verifier alone takes ~5 s under TCG
		if st, err := g.status(); err == nil && st.Ready {
			t.Logf("agent ready %v after start (loading the fast path under TCG)", time.Since(start).Round(time.Millisecond))
			return g
		}
		select {
		case <-exited:
			t.Fatalf("agent exited:\n%s", g.log)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("agent not ready after 30 s:\n%s", g.log)
	return nil
}

func (g *guestAgent) status() (agent.Status, error) {
	return api.New("unix:"+g.sock, 10*time.Second).Status(context.Background())
}

func (g *guestAgent) put(path string, v any) {
	g.t.Helper()
	if _, err := api.New("unix:"+g.sock, 10*time.Second).Do(context.Background(), "PUT", path, v, nil); err != nil {
		g.t.Fatal(err)
	}
}

// waitStatus polls until cond holds, bounded.
func (g *guestAgent) waitStatus(what string, cond func(agent.Status) bool) agent.Status {
	g.t.Helper()
	var st agent.Status
	var err error
	for range 1000 {
		if st, err = g.status(); err == nil && cond(st) {
			return st
		}
		time.Sleep(10 * time.Millisecond)
	}
	g.t.Fatalf("%s: not reached: %+v (%v)", what, st, err)
	return st
}

func mustBounds(t *testing.T, s string) label.Bounds {
	t.Helper()
	b, err := label.ParseBounds(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// transportPair installs, in one namespace, ESP transport SAs both ways
// between a and b at one context, with the SPIs given.
func transportPair(t *testing.T, h *xfrm.Handle, a, b string, spiAB, spiBA uint32, ctx string) {
	t.Helper()
	for _, s := range []struct {
		src, dst string
		spi      uint32
	}{{a, b, spiAB}, {b, a, spiBA}} {
		st := gcmSA(s.src, s.dst, s.spi, xfrm.ModeTransport, ctx)
		st.Reqid = agReqid
		if err := h.AddState(st); err != nil {
			t.Fatalf("SA %#x %s→%s %s: %v", s.spi, s.src, s.dst, ctx, err)
		}
	}
}

// labeledPolicies installs the SPD entries (with the catch-all block below
// them) that send a's traffic to b through the reqid's SAs.
func labeledPolicies(t *testing.T, h *xfrm.Handle, local, remote string) {
	t.Helper()
	for _, d := range []struct {
		dir      xfrm.Dir
		src, dst string
	}{{xfrm.DirOut, local, remote}, {xfrm.DirIn, remote, local}} {
		p := xfrm.Policy{
			Src: netip.PrefixFrom(addr(d.src), 32), Dst: netip.PrefixFrom(addr(d.dst), 32), Proto: unix.IPPROTO_UDP,
			Dir: d.dir, Action: xfrm.ActionAllow, Priority: 1000, Context: agSPD,
			Templates: []xfrm.Template{{Src: addr(d.src), Dst: addr(d.dst), Proto: xfrm.ProtoESP, Mode: xfrm.ModeTransport, Reqid: agReqid}},
		}
		if err := h.AddPolicy(p); err != nil {
			t.Fatalf("policy %v: %v", p, err)
		}
	}
}

// udpServe counts datagrams to addr:port in ns from a socket of context
// ctx, and echoes them.
func udpServe(t *testing.T, ns netns.NsHandle, ctx, addr string, port int) (count func() int) {
	t.Helper()
	var conn *net.UDPConn
	err := inNetNS(ns, func() error {
		if err := setSockCreate(ctx); err != nil {
			return err
		}
		var err error
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(addr), Port: port})
		return err
	})
	if err != nil {
		t.Fatalf("listen %s:%d (%s): %v", addr, port, ctx, err)
	}
	var mu sync.Mutex
	n := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			m, from, err := conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			mu.Lock()
			n++
			mu.Unlock()
			conn.WriteToUDP(buf[:m], from)
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return func() int { mu.Lock(); defer mu.Unlock(); return n }
}

// sendFrom sends n datagrams from a socket of context ctx in ns.
func sendFrom(t *testing.T, ns netns.NsHandle, ctx, to string, port, n int) {
	t.Helper()
	var conn *net.UDPConn
	err := inNetNS(ns, func() error {
		if err := setSockCreate(ctx); err != nil {
			return err
		}
		var err error
		conn, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.ParseIP(to), Port: port})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i := range n {
		conn.Write([]byte("mlsgate " + strconv.Itoa(i)))
		time.Sleep(20 * time.Millisecond)
	}
}

func TestGuestAgent(t *testing.T) {
	requireGuest(t)
	// The vif programs decide here, not SELinux; the mode is the kernel's,
	// so put it back for the tests that follow.
	orig := readTrim(t, "/sys/fs/selinux/enforce")
	t.Cleanup(func() { os.WriteFile("/sys/fs/selinux/enforce", []byte(orig), 0) })
	setEnforce(t, false)
	hostNS, guestNS := vethPair(t, "ah", "ag", "vif7.0", "eth0", agHost, agGuest)
	webNS := newNetNS(t, "aw")
	ip(t, "link", "add", "wsif", "netns", "ah", "type", "veth", "peer", "name", "eth0", "netns", "aw")
	ipBatch(t, "ah", []string{"addr", "add", agWebGW + "/24", "dev", "wsif"}, []string{"link", "set", "wsif", "up"})
	ipBatch(t, "aw", []string{"addr", "add", agWeb + "/24", "dev", "eth0"}, []string{"link", "set", "eth0", "up"},
		[]string{"route", "add", "10.71.0.0/24", "via", agWebGW})
	ipBatch(t, "ag", []string{"route", "add", "10.72.0.0/24", "via", agHost})
	if err := inNetNS(hostNS, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0)
	}); err != nil {
		t.Fatal(err)
	}

	ag := startAgent(t, "ah")
	ag.put("/v1/guests/vif7.0", agent.GuestSpec{Interface: "vif7.0", VM: 7, App: 1, Range: mustBounds(t, "s0-s9/i5-i10"), Addr4: addr(agGuest),
		HostAddr4: addr(agHost)}) // ARP between the guest and the host is control only with it
	ag.put("/v1/peers", []agent.PeerSpec{
		{Prefix: netip.MustParsePrefix(agHost + "/32"), App: 1, Range: mustBounds(t, "s0-s15/i0-i15"), Kind: 3},
		{Prefix: netip.MustParsePrefix(agWeb + "/32"), App: 1, Range: mustBounds(t, "s0-s9/i0-i15"), Kind: 1},
	})
	ag.waitStatus("vif7.0 attached", func(s agent.Status) bool { return len(s.Guests) == 1 && s.Guests[0].Attached })

	hh, err := xfrm.NewHandleAt(hostNS)
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	gh, err := xfrm.NewHandleAt(guestNS)
	if err != nil {
		t.Fatal(err)
	}
	defer gh.Close()

	t.Run("sync latency over 1000 SAs", func(t *testing.T) { agentSyncLatency(t, ag, hh) })

	// Labeled ESP between guest and host: s4 is within the guest's range,
	// s12 is not; s6 exists only in the guest's namespace, so the host has
	// no such SA and neither does the fast path.
	counts := map[string]func() int{}
	for i, lv := range []string{"s4", "s12", "s6"} {
		spiOut, spiIn := uint32(spiBase+0x800+2*i), uint32(spiBase+0x801+2*i)
		transportPair(t, gh, agGuest, agHost, spiOut, spiIn, agCtx(lv))
		if lv != "s6" {
			transportPair(t, hh, agGuest, agHost, spiOut, spiIn, agCtx(lv))
		}
		counts[lv] = udpServe(t, hostNS, agCtx(lv), agHost, 9400+i)
	}
	labeledPolicies(t, gh, agGuest, agHost)
	labeledPolicies(t, hh, agHost, agGuest)
	before := ag.waitStatus("labeled SAs synced", func(s agent.Status) bool { return s.SAs.Synced >= 4 })
	for i, lv := range []string{"s4", "s12", "s6"} {
		sendFrom(t, guestNS, agCtx(lv), agHost, 9400+i, 5)
	}
	time.Sleep(300 * time.Millisecond)
	after, _ := ag.status()
	in := func(s agent.Status, r string) int { return int(s.Counters["ingress"][r]) }
	t.Logf("arrived at the host: s4 %d, s12 %d, s6 %d of 5 each; ingress allow_labeled +%d, deny_label_range +%d, deny_unknown_sa +%d",
		counts["s4"](), counts["s12"](), counts["s6"](),
		in(after, "allow_labeled")-in(before, "allow_labeled"), in(after, "deny_label_range")-in(before, "deny_label_range"),
		in(after, "deny_unknown_sa")-in(before, "deny_unknown_sa"))
	if counts["s4"]() != 5 {
		t.Errorf("in-range labeled traffic (s4): %d of 5 arrived", counts["s4"]())
	}
	if counts["s12"]() != 0 || in(after, "deny_label_range")-in(before, "deny_label_range") != 5 {
		t.Errorf("out-of-range label s12: %d arrived, deny_label_range +%d; want 0 and +5", counts["s12"](), in(after, "deny_label_range")-in(before, "deny_label_range"))
	}
	if counts["s6"]() != 0 || in(after, "deny_unknown_sa")-in(before, "deny_unknown_sa") != 5 {
		t.Errorf("SA unknown to the host (s6): %d arrived, deny_unknown_sa +%d; want 0 and +5", counts["s6"](), in(after, "deny_unknown_sa")-in(before, "deny_unknown_sa"))
	}
	if eg := in(after, "allow_labeled") - in(before, "allow_labeled"); eg < 5 {
		t.Errorf("ingress allow_labeled +%d, want at least the 5 s4 datagrams", eg)
	}

	t.Run("secpath", func(t *testing.T) { agentSecpath(t, ag, hostNS, guestNS, webNS, hh) })
}

// agentSyncLatency adds 1000 labeled SAs through agent/xfrm in the host's
// namespace and times each from AddState returning to the agent's status
// counting it, then deletes one and sees it leave the maps.
func agentSyncLatency(t *testing.T, ag *guestAgent, hh *xfrm.Handle) {
	const n = 1000
	base, _ := ag.status()
	var mu sync.Mutex
	added := make([]time.Time, 0, n)
	seen := make([]time.Time, n)
	stop := make(chan struct{})
	pollDone := make(chan struct{})
	go func() {
		defer close(pollDone)
		got := 0
		for got < n {
			select {
			case <-stop:
				return
			default:
			}
			st, err := ag.status()
			if err == nil {
				now := time.Now()
				for got < n && got < st.SAs.Synced-base.SAs.Synced {
					seen[got] = now
					got++
				}
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	start := time.Now()
	for i := range n {
		st := gcmSA(agHost, agGuest, uint32(spiBase+0x100+i), xfrm.ModeTransport, agCtx("s"+strconv.Itoa(i%10)+":c"+strconv.Itoa(i%100)))
		st.Reqid = agReqid + 1
		if err := hh.AddState(st); err != nil {
			close(stop)
			t.Fatalf("SA %d: %v", i, err)
		}
		mu.Lock()
		added = append(added, time.Now())
		mu.Unlock()
	}
	for range 3000 {
		if st, err := ag.status(); err == nil && st.SAs.Synced-base.SAs.Synced >= n {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	<-pollDone
	var lat []time.Duration
	for i := range n {
		if seen[i].IsZero() {
			t.Fatalf("only %d of %d SAs reached the agent", i, n)
		}
		lat = append(lat, max(0, seen[i].Sub(added[i])))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("%d SAs with contexts added in %v; SA → BPF map (status poll every ~2 ms, under TCG): p50 %v, p99 %v, max %v",
		n, time.Since(start).Round(time.Millisecond), lat[n/2].Round(time.Millisecond), lat[n*99/100].Round(time.Millisecond), lat[n-1].Round(time.Millisecond))
	st, _ := ag.status()
	if st.Maps.Slots < n {
		t.Fatalf("%d SA slots in the maps, want at least %d", st.Maps.Slots, n)
	}
	// Deletion removes the entry.
	if err := hh.DeleteState(addr(agGuest), spiBase+0x100, xfrm.ProtoESP); err != nil {
		t.Fatal(err)
	}
	ag.waitStatus("deleted SA leaves the maps", func(s agent.Status) bool { return s.Maps.Slots == st.Maps.Slots-1 })
	if _, err := hh.DeleteStatesByReqid(agReqid + 1); err != nil {
		t.Fatal(err)
	}
	ag.waitStatus("all 1000 gone", func(s agent.Status) bool { return s.SAs.Synced == base.SAs.Synced })
}

// agentSecpath: the web server reaches the guest through a tunnel the host
// ends; the host forwards the decrypted datagram to the guest, and vif7.0's
// egress program judges it by the SA in its secpath: s4 passes (within the
// guest's range and the web peer's), s12 is dropped.
func agentSecpath(t *testing.T, ag *guestAgent, hostNS, guestNS, webNS netns.NsHandle, hh *xfrm.Handle) {
	wh, err := xfrm.NewHandleAt(webNS)
	if err != nil {
		t.Fatal(err)
	}
	defer wh.Close()
	got := map[string]func() int{}
	for i, lv := range []string{"s4", "s12"} {
		spi := uint32(spiBase + 0x900 + i)
		reqid := uint32(agReqid + 10 + i)
		sa := gcmSA(agWeb, agWebGW, spi, xfrm.ModeTunnel, agCtx(lv))
		sa.Reqid = reqid
		sa.Selector = &xfrm.Selector{Src: netip.PrefixFrom(addr(agWeb), 32), Dst: netip.PrefixFrom(addr(agGuest), 32), Proto: unix.IPPROTO_UDP, DstPort: uint16(9500 + i)}
		for _, h := range []*xfrm.Handle{wh, hh} {
			if err := h.AddState(sa); err != nil {
				t.Fatalf("tunnel SA %s: %v", lv, err)
			}
		}
		sel := func(dir xfrm.Dir) xfrm.Policy {
			return xfrm.Policy{
				Src: netip.PrefixFrom(addr(agWeb), 32), Dst: netip.PrefixFrom(addr(agGuest), 32), Proto: unix.IPPROTO_UDP, DstPort: uint16(9500 + i),
				Dir: dir, Action: xfrm.ActionAllow, Priority: 1000, Context: agSPD,
				Templates: []xfrm.Template{{Src: addr(agWeb), Dst: addr(agWebGW), Proto: xfrm.ProtoESP, Mode: xfrm.ModeTunnel, Reqid: reqid}},
			}
		}
		if err := wh.AddPolicy(sel(xfrm.DirOut)); err != nil {
			t.Fatalf("web out policy: %v", err)
		}
		if err := hh.AddPolicy(sel(xfrm.DirFwd)); err != nil {
			t.Fatalf("host fwd policy: %v", err)
		}
		got[lv] = udpServe(t, guestNS, "", agGuest, 9500+i)
	}
	before := ag.waitStatus("tunnel SAs synced", func(s agent.Status) bool { return s.SAs.Synced >= 6 })
	for i, lv := range []string{"s4", "s12"} {
		sendFrom(t, webNS, agCtx(lv), agGuest, 9500+i, 5)
	}
	time.Sleep(300 * time.Millisecond)
	after, _ := ag.status()
	eg := func(s agent.Status, r string) int { return int(s.Counters["egress"][r]) }
	t.Logf("web → guest through the host's tunnel: s4 %d, s12 %d of 5 arrived; egress allow_labeled +%d, deny_label_range +%d",
		got["s4"](), got["s12"](), eg(after, "allow_labeled")-eg(before, "allow_labeled"), eg(after, "deny_label_range")-eg(before, "deny_label_range"))
	if got["s4"]() != 5 {
		t.Errorf("secpath s4 (in range): %d of 5 arrived", got["s4"]())
	}
	if got["s12"]() != 0 || eg(after, "deny_label_range")-eg(before, "deny_label_range") != 5 {
		t.Errorf("secpath s12 (out of range): %d arrived, egress deny_label_range +%d; want 0 and +5", got["s12"](), eg(after, "deny_label_range")-eg(before, "deny_label_range"))
	}
}
