package indom0

import (
	"bytes"
	"context"
	"encoding/json"
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
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/kernel-tests/xendom0"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/backend"
)

// spoofAddr is an address a guest adds to its eth0 without being entitled
// to it.
var spoofAddr = netip.MustParseAddr("10.99.0.99")

// link is guest vm's address and the host's end of its own routed link:
// 10.99.<vm>.2 and 10.99.<vm>.1 (the first address of its /24, where
// vif-mlsgate puts the host's end).
func link(vm uint32) (guest, host netip.Addr) {
	return netip.AddrFrom4([4]byte{10, 99, byte(vm), 2}), netip.AddrFrom4([4]byte{10, 99, byte(vm), 1})
}

// consoleDir is where xenconsoled logs the guests' consoles.
const consoleDir = "/var/log/xen/console"

// requireDom0 skips unless the test runs in xendom0's dom0.
func requireDom0(t *testing.T) {
	t.Helper()
	if os.Getenv("MLSGATE_IN_DOM0") != "1" {
		t.Skip("runs only inside the Xen dom0 (MLSGATE_IN_DOM0=1); as root on the host: go test -run PrivilegedXen ./kernel-tests/")
	}
}

// dom0Agent is the static mlsgate binary running as the agent in dom0, its
// pins on a bpffs of the test's own outside /sys, its API on a Unix socket.
type dom0Agent struct {
	t      *testing.T
	client *http.Client
	log    *syncBuf
	sock   string
	stop   func() // kills the agent; its pinned programs keep enforcing
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func startAgent(t *testing.T) *dom0Agent {
	t.Helper()
	bin := filepath.Join(os.Getenv("XENDOM0_JOB"), "mlsgate")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("the mlsgate binary: %v (the host passes it as RunOptions.Files[\"mlsgate\"])", err)
	}
	dir := t.TempDir()
	bpffs := filepath.Join(dir, "bpffs")
	if err := os.Mkdir(bpffs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpffs", bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	sock := filepath.Join(dir, "agent.sock")
	a := &dom0Agent{t: t, log: &syncBuf{}, sock: sock}
	a.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	cmd := exec.Command(bin, "agent", "--config", "", "--state-dir", filepath.Join(dir, "state"),
		"--pin-dir", filepath.Join(bpffs, "mlsgate"), "--listen", "", "--socket", sock,
		"--interfaces", "vif*", "--spi-slots", "1024", "--event-rate", "5")
	cmd.Stdout, cmd.Stderr = a.log, a.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	a.stop = func() { cmd.Process.Signal(syscall.SIGKILL); <-exited }
	// vif-mlsgate declares hand-made guests to this agent.
	defaults := fmt.Sprintf("MLSGATE=%s\nMLSGATE_AGENT=unix:%s\nMLSGATE_VIF_WAIT=60s\n", bin, sock)
	os.MkdirAll(filepath.Dir(xendom0.VifDefaults), 0o755)
	if err := os.WriteFile(xendom0.VifDefaults, []byte(defaults), 0o644); err != nil {
		t.Fatalf("vif-mlsgate's settings: %v", err)
	}
	t.Cleanup(func() {
		os.Remove(xendom0.VifDefaults)
		a.stop()
		unix.Unmount(bpffs, unix.MNT_DETACH)
		if t.Failed() {
			t.Logf("agent log:\n%s", a.log)
		}
	})
	start := time.Now()
	for range 1200 { // the verifier takes seconds under TCG
		if st, err := a.status(); err == nil && st.Ready {
			t.Logf("agent ready %v after start", time.Since(start).Round(time.Millisecond))
			return a
		}
		select {
		case <-exited:
			t.Fatalf("agent exited:\n%s", a.log)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("agent not ready after 60 s:\n%s", a.log)
	return nil
}

func (a *dom0Agent) status() (agent.Status, error) {
	var st agent.Status
	resp, err := a.client.Get("http://agent/v1/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return st, fmt.Errorf("%s: %s", resp.Status, b)
	}
	return st, json.Unmarshal(b, &st)
}

func (a *dom0Agent) put(path string, v any) {
	a.t.Helper()
	if err := a.tryPut(path, v); err != nil {
		a.t.Fatal(err)
	}
}

func (a *dom0Agent) tryPut(path string, v any) error {
	b, _ := json.Marshal(v)
	req, _ := http.NewRequest("PUT", "http://agent"+path, bytes.NewReader(b))
	resp, err := a.client.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("PUT %s: %s %s", path, resp.Status, body)
	}
	return nil
}

// waitStatus polls, bounded by limit, until cond holds, and returns when.
func (a *dom0Agent) waitStatus(what string, limit time.Duration, cond func(agent.Status) bool) (agent.Status, time.Time) {
	a.t.Helper()
	var st agent.Status
	var err error
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if st, err = a.status(); err == nil && cond(st) {
			return st, time.Now()
		}
		time.Sleep(20 * time.Millisecond)
	}
	a.t.Fatalf("%s: not reached within %v: %+v (%v)", what, limit, st, err)
	return st, time.Time{}
}

func guestOf(st agent.Status, iface string) (agent.GuestStatus, bool) {
	for _, g := range st.Guests {
		if g.Interface == iface {
			return g, true
		}
	}
	return agent.GuestStatus{}, false
}

// echoCounter counts the ICMP echo requests reaching dom0, by source
// address, with the time of the first from each; a raw socket sees a copy of
// every one the stack receives.
type echoCounter struct {
	mu    sync.Mutex
	count map[netip.Addr]int
	first map[netip.Addr]time.Time
}

func countEchoes(t *testing.T) *echoCounter {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		t.Fatalf("raw ICMP socket: %v", err)
	}
	tv := unix.Timeval{Usec: 100000}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	c := &echoCounter{count: map[netip.Addr]int{}, first: map[netip.Addr]time.Time{}}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil || n < 28 || buf[0]>>4 != 4 {
				continue
			}
			ihl := int(buf[0]&0xf) * 4
			if n < ihl+8 || buf[ihl] != 8 { // echo request
				continue
			}
			src := netip.AddrFrom4([4]byte(buf[12:16]))
			c.mu.Lock()
			if c.count[src] == 0 {
				c.first[src] = time.Now()
			}
			c.count[src]++
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() { close(stop); <-done; unix.Close(fd) })
	return c
}

func (c *echoCounter) get(a netip.Addr) (int, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.count[a], c.first[a]
}

// waitEchoes waits, bounded, until n echo requests from a arrived.
func (c *echoCounter) waitEchoes(t *testing.T, a netip.Addr, n int, limit time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if got, _ := c.get(a); got >= n {
			return time.Now()
		}
		time.Sleep(10 * time.Millisecond)
	}
	got, _ := c.get(a)
	t.Fatalf("%d echo requests from %s within %v, want %d", got, a, limit, n)
	return time.Time{}
}

// guestConsole is the time the guest's console first showed marker, polled.
func guestConsole(name, marker string) bool {
	b, err := os.ReadFile(filepath.Join(consoleDir, "guest-"+name+".log"))
	return err == nil && bytes.Contains(b, []byte(marker))
}

// xenBackend is the loader's Xen backend as dom0-in-QEMU needs it: the
// guest payload xendom0 packs and mlsgate's hotplug script, which routes
// each vif. As the loader does, it declares each guest to the agent once its
// domid is known (application 1, plain traffic allowed, its link: address,
// host-side address, MAC) and waits until the agent reports the vif
// attached; only then does Boot unpause the guest. The guests run no update
// daemon, so Ready waits only for the vif.
func xenBackend(t *testing.T, ag *dom0Agent, progress func(string)) *backend.Xen {
	return &backend.Xen{
		XL: "/usr/sbin/xl", ConfigDir: filepath.Join(t.TempDir(), "xen"),
		Kernel: xendom0.GuestKernel, Ramdisk: xendom0.GuestRamdisk,
		ExtraCmdline: "console=hvc0 quiet xendom0.spoof=" + spoofAddr.String(),
		Memory:       96, Script: xendom0.VifScript,
		Created: func(_ context.Context, g *loader.Guest) error {
			return ag.tryPut("/v1/guests/"+g.Interface, guestSpecOf(t, g))
		},
		Attached: func(ctx context.Context, g *loader.Guest) error {
			for ctx.Err() == nil {
				if st, err := ag.status(); err == nil && loader.StatusAttached(st, g.Interface) {
					return nil
				}
				time.Sleep(20 * time.Millisecond)
			}
			return ctx.Err()
		},
		Ready: func(ctx context.Context, g *loader.Guest) error {
			for ctx.Err() == nil {
				if _, err := os.Stat("/sys/class/net/" + g.Interface); err == nil {
					return nil
				}
				time.Sleep(20 * time.Millisecond)
			}
			return fmt.Errorf("%s did not appear: %w", g.Interface, ctx.Err())
		},
		Progress: progress,
	}
}

func spec(vm uint32, addr, host netip.Addr) loader.BootSpec {
	return loader.BootSpec{
		VM: vm, Name: fmt.Sprintf("mlsg-vm%d", vm), Addr: addr, HostAddr: host,
		PrefixLen: 24, UpdatedPort: 7444,
	}
}

func guestSpec(t *testing.T, domid uint32, addr netip.Addr) agent.GuestSpec {
	r, err := label.ParseBounds("s0-s15/i0-i10")
	if err != nil {
		t.Fatal(err)
	}
	return agent.GuestSpec{Interface: backend.IfName(domid), VM: domid, App: 1, Range: r, Addr4: addr, AllowUnlabeled: true}
}

// guestSpecOf is guestSpec with the link Boot reports: host-side address
// and MAC.
func guestSpecOf(t *testing.T, g *loader.Guest) agent.GuestSpec {
	s := guestSpec(t, g.VM, g.Addr)
	s.HostAddr4, s.MAC = g.HostAddr, g.MAC
	return s
}

// phases prints a start-up split into phases, each from the previous mark.
func phases(t *testing.T, title string, t0 time.Time, marks []mark) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "%s (Xen 4.17 + dom0 under QEMU TCG, software emulation: not hardware figures):", title)
	prev := t0
	for _, m := range marks {
		if m.at.IsZero() {
			fmt.Fprintf(&b, "\n  %-42s (not seen)", m.name)
			continue
		}
		fmt.Fprintf(&b, "\n  %-42s +%6.3fs  (at %6.3fs)", m.name, m.at.Sub(prev).Seconds(), m.at.Sub(t0).Seconds())
		prev = m.at
	}
	t.Log(b.String())
}

type mark struct {
	name string
	at   time.Time
}

func counters(st agent.Status, r string) int { return int(st.Counters["ingress"][r]) }
