package kerneltests

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/agent/api"
	"github.com/mlsgate/mlsgate/label"
)

// agentEnv is one agent under test: the mlsgate binary run as a process in
// a named network namespace ("the host"), its pins on a bpffs mounted for
// the test, its API on a Unix socket the test reaches from outside the
// namespace, and a guest namespace behind vif7.0.
type agentEnv struct {
	t         *testing.T
	bin       string
	dir       string
	pins      string
	sock      string
	hostNS    string
	guestNS   string
	cmd       *exec.Cmd
	log       *bytes.Buffer
	client    *http.Client
	exited    chan struct{}
	startedAt time.Time
	// listen is the agent's TCP address ("" none); extraArgs and env are
	// added to its command line and environment.
	listen    string
	extraArgs []string
	env       []string
	// args are added to the agent's command line (they win over the
	// defaults start passes).
	args []string
}

var (
	agentBinOnce sync.Once
	agentBin     string
	agentBinErr  error
)

// buildAgent builds the mlsgate binary once per test run, into the test
// binary's own temporary directory (removed by TestMain).
func buildAgent(t *testing.T) string {
	t.Helper()
	agentBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mlsgate-bin-")
		if err != nil {
			agentBinErr = err
			return
		}
		agentBin = filepath.Join(dir, "mlsgate")
		out, err := exec.Command("go", "build", "-o", agentBin, "github.com/mlsgate/mlsgate/cmd/mlsgate").CombinedOutput()
		if err != nil {
			agentBinErr = fmt.Errorf("go build mlsgate: %v\n%s", err, out)
		}
	})
	if agentBinErr != nil {
		t.Fatal(agentBinErr)
	}
	return agentBin
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func newAgentEnv(t *testing.T) *agentEnv {
	requirePrivileged(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip: make deps-kernel")
	}
	e := &agentEnv{t: t, bin: buildAgent(t), dir: t.TempDir()}
	id := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano()%100000)
	e.hostNS, e.guestNS = "mlsg-h-"+id, "mlsg-g-"+id
	// A bpffs of the test's own, outside /sys: 'ip netns exec' remounts
	// /sys, but other mounts stay shared, so every agent process of the
	// test sees the same pins.
	bpffs := filepath.Join(e.dir, "bpffs")
	if err := os.Mkdir(bpffs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpffs", bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	e.pins = filepath.Join(bpffs, "mlsgate")
	e.sock = filepath.Join(e.dir, "agent.sock")
	e.client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", e.sock)
	}}}
	run(t, "ip", "netns", "add", e.hostNS)
	run(t, "ip", "netns", "add", e.guestNS)
	t.Cleanup(func() {
		e.kill()
		exec.Command("ip", "netns", "del", e.guestNS).Run()
		exec.Command("ip", "netns", "del", e.hostNS).Run()
		exec.Command(e.bin, "agent", "cleanup", "--pin-dir", e.pins).Run()
		unix.Unmount(bpffs, unix.MNT_DETACH)
	})
	run(t, "ip", "-n", e.hostNS, "link", "set", "lo", "up")
	run(t, "ip", "-n", e.guestNS, "link", "set", "lo", "up")
	return e
}

// start runs the agent and waits (bounded) until it is ready.
func (e *agentEnv) start() {
	t := e.t
	t.Helper()
	e.log = &bytes.Buffer{}
	e.cmd = exec.Command("ip", append([]string{"netns", "exec", e.hostNS, e.bin, "agent", "--config", "",
		"--state-dir", filepath.Join(e.dir, "state"), "--pin-dir", e.pins, "--listen", e.listen, "--socket", e.sock,
		"--interfaces", "vif*", "--spi-slots", "1024", "--event-rate", "5", "--log-format", "json"}, e.extraArgs...)...)
	e.cmd.Env = append(os.Environ(), e.env...)
	e.cmd.Args = append(e.cmd.Args, e.args...)
	e.cmd.Stdout, e.cmd.Stderr = e.log, e.log
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.exited = make(chan struct{})
	go func(c *exec.Cmd, done chan struct{}) { c.Wait(); close(done) }(e.cmd, e.exited)
	e.startedAt = time.Now()
	// Bounded, and generous: loading and verifying the programs on a
	// loaded two-core machine has taken more than 5 s.
	for range 1200 {
		var st agent.Status
		if e.get("/v1/status", &st) == nil && st.Ready {
			return
		}
		select {
		case <-e.exited:
			t.Fatalf("agent exited:\n%s", e.log)
		case <-time.After(25 * time.Millisecond):
		}
	}
	t.Fatalf("agent not ready within 30 s:\n%s", e.log)
}

// kill sends SIGKILL, as a crash would; nothing runs in the agent after it.
func (e *agentEnv) kill() {
	if e.cmd == nil || e.cmd.Process == nil {
		return
	}
	e.cmd.Process.Signal(syscall.SIGKILL)
	// 'ip netns exec' execs the agent, so the process is the agent.
	<-e.exited
	e.cmd = nil
}

func (e *agentEnv) get(path string, out any) error {
	_, err := api.New("unix:"+e.sock, 5*time.Second).Do(context.Background(), "GET", path, nil, out)
	return err
}

func (e *agentEnv) put(path string, in any) {
	e.t.Helper()
	if _, err := api.New("unix:"+e.sock, 5*time.Second).Do(context.Background(), "PUT", path, in, nil); err != nil {
		e.t.Fatal(err)
	}
}

func (e *agentEnv) status() agent.Status {
	e.t.Helper()
	var st agent.Status
	if err := e.get("/v1/status", &st); err != nil {
		e.t.Fatalf("status: %v\n%s", err, e.log)
	}
	return st
}

// vif creates vif7.0 in the host namespace with its peer eth0 in the
// guest's, addressed 10.70.0.1 and 10.70.0.7 (plus 10.70.0.99, a source
// the guest does not own).
func (e *agentEnv) vif() {
	run(e.t, "ip", "-n", e.hostNS, "link", "add", "vif7.0", "type", "veth", "peer", "name", "eth0", "address", agentGuestMAC, "netns", e.guestNS)
	run(e.t, "ip", "-n", e.hostNS, "addr", "add", "10.70.0.1/24", "dev", "vif7.0")
	run(e.t, "ip", "-n", e.hostNS, "link", "set", "vif7.0", "up")
	run(e.t, "ip", "-n", e.guestNS, "addr", "add", "10.70.0.7/24", "dev", "eth0")
	run(e.t, "ip", "-n", e.guestNS, "addr", "add", "10.70.0.99/24", "dev", "eth0")
	run(e.t, "ip", "-n", e.guestNS, "link", "set", "eth0", "up")
}

func guestSpec(t *testing.T) agent.GuestSpec {
	r, err := label.ParseBounds("s0-s15/i0-i10")
	if err != nil {
		t.Fatal(err)
	}
	return agent.GuestSpec{Interface: "vif7.0", VM: 7, App: 1, Range: r, Addr4: netip.MustParseAddr("10.70.0.7"), AllowUnlabeled: true,
		HostAddr4: netip.MustParseAddr("10.70.0.1"), MAC: agentGuestMAC}
}

// agentGuestMAC is the guest's eth0 address, declared to the agent: ARP
// from the guest for 10.70.0.1 is control only with it.
const agentGuestMAC = "02:6d:6c:00:00:07"

func TestPrivilegedAgentAttachDetach(t *testing.T) {
	e := newAgentEnv(t)
	e.start()
	e.put("/v1/guests/vif7.0", guestSpec(t))
	created := time.Now()
	e.vif()
	var attachedAfter time.Duration
	for range 500 {
		st := e.status()
		if len(st.Guests) == 1 && st.Guests[0].Attached {
			attachedAfter = time.Since(created)
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if attachedAfter == 0 {
		t.Fatalf("vif7.0 not attached:\n%+v\n%s", e.status(), e.log)
	}
	t.Logf("vif7.0 attached %v after it was created (the bound is 1 s)", attachedAfter.Round(time.Millisecond))
	if attachedAfter > time.Second {
		t.Errorf("attached after %v; the agent must attach within 1 s", attachedAfter)
	}
	links, _ := filepath.Glob(filepath.Join(e.pins, "links", "*"))
	if len(links) != 2 {
		t.Fatalf("pinned links %v, want ingress and egress", links)
	}
	run(t, "ip", "-n", e.hostNS, "link", "del", "vif7.0")
	for range 500 {
		st := e.status()
		links, _ = filepath.Glob(filepath.Join(e.pins, "links", "*"))
		if !st.Guests[0].Present && !st.Guests[0].Attached && len(links) == 0 && st.Maps.Vifs == 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("not detached cleanly after the interface went: %+v, links %v\n%s", e.status(), links, e.log)
}

// udpIn creates a UDP socket inside a named namespace. It goes through
// inNS, which brings its thread back home: a thread left locked in the
// namespace would be discarded by the runtime, and a child the test
// started from that thread with Pdeathsig (the agent) would die with it.
func udpIn(t *testing.T, nsName string, laddr netip.AddrPort) int {
	t.Helper()
	var fd int
	inNS(t, nsName, func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			err = unix.Bind(fd, &unix.SockaddrInet4{Addr: laddr.Addr().As4(), Port: int(laddr.Port())})
		}
		return err
	})
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// TestPrivilegedAgentKill kills the agent with SIGKILL while allowed and
// denied traffic flows, restarts it, and counts: every allowed packet
// arrived, no denied packet did, and the pinned counters say the same.
func TestPrivilegedAgentKill(t *testing.T) {
	e := newAgentEnv(t)
	e.start()
	e.vif()
	e.put("/v1/guests/vif7.0", guestSpec(t))
	all, _ := label.ParseBounds("s0-s15/i0-i15")
	e.put("/v1/peers", []agent.PeerSpec{{Prefix: netip.MustParsePrefix("10.70.0.1/32"), Range: all, Kind: 3}})
	for range 400 {
		if st := e.status(); len(st.Guests) == 1 && st.Guests[0].Attached && st.Maps.Peers == 1 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}

	rx := udpIn(t, e.hostNS, netip.MustParseAddrPort("10.70.0.1:5000"))
	good := udpIn(t, e.guestNS, netip.MustParseAddrPort("10.70.0.7:0"))
	spoof := udpIn(t, e.guestNS, netip.MustParseAddrPort("10.70.0.99:0"))
	dst := &unix.SockaddrInet4{Addr: [4]byte{10, 70, 0, 1}, Port: 5000}

	var received, leaked atomic.Int64
	stopRx := make(chan struct{})
	rxDone := make(chan struct{})
	go func() {
		defer close(rxDone)
		buf := make([]byte, 64)
		tv := unix.Timeval{Usec: 50000}
		unix.SetsockoptTimeval(rx, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		for {
			select {
			case <-stopRx:
				return
			default:
			}
			n, from, err := unix.Recvfrom(rx, buf, 0)
			if err != nil || n == 0 {
				continue
			}
			if sa, ok := from.(*unix.SockaddrInet4); ok && sa.Addr == [4]byte{10, 70, 0, 7} {
				received.Add(1)
			} else {
				leaked.Add(1)
			}
		}
	}()

	// Traffic flows in the background: one allowed and one denied packet
	// every millisecond, bounded.
	var sent atomic.Int64
	stopTx := make(chan struct{})
	txDone := make(chan struct{})
	go func() {
		defer close(txDone)
		for i := 0; i < 100000; i++ {
			select {
			case <-stopTx:
				return
			default:
			}
			if unix.Sendto(good, []byte("allowed"), 0, dst) == nil && unix.Sendto(spoof, []byte("denied"), 0, dst) == nil {
				sent.Add(1)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	waitSent := func(n int64) {
		for range 2000 {
			if sent.Load() >= n {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Fatalf("only %d pairs sent", sent.Load())
	}

	waitSent(200)
	e.kill()
	killedAt := sent.Load()
	waitSent(killedAt + 300) // the agent is dead: the pins enforce
	e.start()
	restartedAt := sent.Load()
	waitSent(restartedAt + 200)
	close(stopTx)
	<-txDone
	time.Sleep(200 * time.Millisecond) // let the last packets land
	close(stopRx)
	<-rxDone

	n := sent.Load()
	t.Logf("%d allowed and %d denied packets sent: %d before the kill, %d while no agent ran, %d after the restart",
		n, n, killedAt, restartedAt-killedAt, n-restartedAt)
	if got := received.Load(); got != n {
		t.Errorf("%d allowed packets arrived, %d were sent: allowed traffic was dropped", got, n)
	}
	if got := leaked.Load(); got != 0 {
		t.Errorf("%d denied packets (spoofed source) arrived", got)
	}
	st := e.status()
	in := st.Counters["ingress"]
	if in["allow_default"] != uint64(n) || in["deny_spoofed"] != uint64(n) {
		t.Errorf("pinned counters: allow_default %d, deny_spoofed %d; want %d each (%v)", in["allow_default"], in["deny_spoofed"], n, in)
	}
	// What a scraper sees: lint-clean, with the same counts.
	resp, err := e.client.Get("http://agent/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	probs, err := promlint.New(bytes.NewReader(body)).Lint()
	if err != nil || len(probs) > 0 {
		t.Errorf("/metrics does not lint: %v %v", probs, err)
	}
	for _, want := range []string{
		fmt.Sprintf(`mlsgate_packets_total{direction="ingress",reason="deny_spoofed"} %d`, n),
		fmt.Sprintf(`mlsgate_packets_total{direction="ingress",reason="allow_default"} %d`, n),
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if !strings.Contains(e.log.String(), `"mode":"updated"`) {
		t.Errorf("the restarted agent did not swap its programs into the pinned links:\n%s", e.log)
	}
}

// TestMain removes the binary buildAgent built. With attackHelperEnv set,
// the binary is the attack suite's unprivileged helper instead.
func TestMain(m *testing.M) {
	if os.Getenv(clientEnv) != "" {
		os.Exit(httpClientMain())
	}
	if os.Getenv(attackHelperEnv) != "" {
		os.Exit(attackHelper(os.Args[1:]))
	}
	code := m.Run()
	if agentBin != "" {
		os.RemoveAll(filepath.Dir(agentBin))
	}
	os.Exit(code)
}
