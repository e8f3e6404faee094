package kerneltests

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/mlsgate/mlsgate/bpf"
)

// waitAttached waits (bounded) until vif7.0 is attached with both links
// pinned, and returns its ifindex.
func (e *agentEnv) waitAttached() int {
	e.t.Helper()
	for range 500 {
		st := e.status()
		links, _ := filepath.Glob(filepath.Join(e.pins, "links", "*"))
		if len(st.Guests) == 1 && st.Guests[0].Attached && len(links) == 2 && st.Maps.Vifs == 1 {
			return st.Guests[0].Ifindex
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.t.Fatalf("vif7.0 never attached: %+v\n%s", e.status(), e.log)
	return 0
}

// runAgentCmd runs the mlsgate binary to completion (bounded: killed after
// 20 s) and returns its combined output and exit error.
func runAgentCmd(t *testing.T, bin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
		return out.String(), errors.New("still running after 20 s (killed)")
	}
}

// TestPrivilegedAgentSecondRefused starts a second agent on the pin
// directory of a running one, as an operator (or a unit started twice)
// would: it must exit non-zero naming the first agent's pid, and must not
// have touched the first one's links or vifs entries.
func TestPrivilegedAgentSecondRefused(t *testing.T) {
	e := newAgentEnv(t)
	e.start()
	e.vif()
	e.put("/v1/guests/vif7.0", guestSpec(t))
	e.waitAttached()
	first := e.cmd.Process.Pid

	second := exec.Command("ip", "netns", "exec", e.hostNS, e.bin, "agent", "--config", "",
		"--state-dir", filepath.Join(e.dir, "state2"), "--pin-dir", e.pins, "--listen", "", "--socket", filepath.Join(e.dir, "agent2.sock"),
		"--interfaces", "vif*", "--spi-slots", "1024")
	var out bytes.Buffer
	second.Stdout, second.Stderr = &out, &out
	second.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- second.Wait() }()
	t.Cleanup(func() {
		second.Process.Kill()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
		}
	})
	var err error
	select {
	case err = <-exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("a second agent on %s still runs after 10 s:\n%s", e.pins, out.String())
	}
	if err == nil {
		t.Fatalf("the second agent exited 0:\n%s", out.String())
	}
	t.Logf("second agent: %v\n%s", err, out.String())
	if !strings.Contains(out.String(), "pid "+strconv.Itoa(first)) || !strings.Contains(out.String(), e.pins) {
		t.Errorf("the second agent's error does not name the pin directory and the first agent (pid %d):\n%s", first, out.String())
	}
	// The first agent's guest is still enforced.
	st := e.status()
	links, _ := filepath.Glob(filepath.Join(e.pins, "links", "*"))
	if len(st.Guests) != 1 || !st.Guests[0].Attached || len(links) != 2 || st.Maps.Vifs != 1 {
		t.Errorf("after the second agent: %+v, links %v", st, links)
	}
}

// TestPrivilegedAgentCleanupRefuses runs 'agent cleanup' where it must do
// nothing: a directory that is not a bpffs (it must never rm -rf one), a
// directory that does not exist (an error, not "removed"), and the pins of
// a running agent; then, with the agent stopped, it removes the pins.
func TestPrivilegedAgentCleanupRefuses(t *testing.T) {
	e := newAgentEnv(t)

	// A plain directory shaped like a pin directory, with data in it.
	plain := filepath.Join(e.dir, "plain")
	for _, d := range []string{"maps", "links"} {
		if err := os.MkdirAll(filepath.Join(plain, d), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(plain, d, "precious"), []byte("data"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out, err := runAgentCmd(t, e.bin, "agent", "cleanup", "--pin-dir", plain)
	if err == nil || !strings.Contains(out, plain) || !strings.Contains(out, "bpffs") {
		t.Errorf("cleanup of a non-bpffs directory: %v\n%s; want a refusal naming it", err, out)
	}
	for _, d := range []string{"maps", "links"} {
		if _, err := os.Stat(filepath.Join(plain, d, "precious")); err != nil {
			t.Errorf("cleanup removed files from a non-bpffs directory: %v", err)
		}
	}

	missing := filepath.Join(e.pins, "nothing-here")
	out, err = runAgentCmd(t, e.bin, "agent", "cleanup", "--pin-dir", missing)
	if err == nil || !strings.Contains(out, "nothing pinned at "+missing) {
		t.Errorf("cleanup of a missing directory: %v\n%s; want an error saying nothing is pinned there", err, out)
	}

	e.start()
	e.vif()
	e.put("/v1/guests/vif7.0", guestSpec(t))
	e.waitAttached()
	out, err = runAgentCmd(t, e.bin, "agent", "cleanup", "--pin-dir", e.pins)
	if err == nil || !strings.Contains(out, "pid "+strconv.Itoa(e.cmd.Process.Pid)) {
		t.Errorf("cleanup while the agent runs: %v\n%s; want a refusal naming the agent's pid", err, out)
	}
	if st := e.status(); len(st.Guests) != 1 || !st.Guests[0].Attached || st.Maps.Vifs != 1 {
		t.Errorf("after a refused cleanup: %+v", st)
	}
	if links, _ := filepath.Glob(filepath.Join(e.pins, "links", "*")); len(links) != 2 {
		t.Errorf("a refused cleanup removed links: %v", links)
	}

	e.kill()
	out, err = runAgentCmd(t, e.bin, "agent", "cleanup", "--pin-dir", e.pins)
	if err != nil {
		t.Fatalf("cleanup with the agent stopped: %v\n%s", err, out)
	}
	if _, err := os.Stat(e.pins); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pins left after cleanup: %v", err)
	}
}

// TestPrivilegedAgentDriftRepaired detaches a guest's link and clears its
// vifs entry behind the running agent's back (what a second agent did
// before the pin lock): the agent notices at its drift check, re-attaches,
// rewrites the entry and counts both repairs.
func TestPrivilegedAgentDriftRepaired(t *testing.T) {
	t.Setenv("MLSGATE_AGENT_DRIFT_INTERVAL", "100ms")
	e := newAgentEnv(t)
	e.start()
	e.vif()
	e.put("/v1/guests/vif7.0", guestSpec(t))
	idx := e.waitAttached()

	vifs, err := ebpf.LoadPinnedMap(filepath.Join(e.pins, "maps", bpf.MapVifs), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer vifs.Close()
	var want bpf.FastpathVif
	if err := vifs.Lookup(uint32(idx), &want); err != nil || want.Flags == 0 {
		t.Fatalf("vifs[%d] before: %+v %v", idx, want, err)
	}
	if err := bpf.DetachPinned(e.pins, idx); err != nil {
		t.Fatal(err)
	}
	if err := vifs.Put(uint32(idx), bpf.FastpathVif{}); err != nil {
		t.Fatal(err)
	}

	var repaired bool
	var got bpf.FastpathVif
	for range 500 {
		links, _ := filepath.Glob(filepath.Join(e.pins, "links", "*"))
		vifs.Lookup(uint32(idx), &got)
		if len(links) == 2 && got == want {
			repaired = true
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !repaired {
		links, _ := filepath.Glob(filepath.Join(e.pins, "links", "*"))
		t.Fatalf("drift not repaired: links %v, vifs[%d] %+v (want %+v)\n%s", links, idx, got, want, e.log)
	}
	resp, err := e.client.Get("http://agent/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, kind := range []string{"link", "vif"} {
		prefix := fmt.Sprintf(`mlsgate_drift_repairs_total{kind="%s"} `, kind)
		i := strings.Index(string(body), prefix)
		if i < 0 {
			t.Errorf("/metrics lacks %s", prefix)
			continue
		}
		n, _ := strconv.Atoi(strings.Fields(string(body)[i+len(prefix):])[0])
		if n < 1 {
			t.Errorf("%s%d, want at least 1", prefix, n)
		}
	}
}
