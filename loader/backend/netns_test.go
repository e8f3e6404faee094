package backend

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/loader"
)

// Guest ids of the privileged netns tests: high, so they do not meet the
// namespaces of other packages' tests (mlsg-vm<N> names are host-wide).
const (
	nsVM4    = 60007
	nsVM6    = 60008
	nsVMMute = 60009
	nsVMDead = 60010
	nsVMTerm = 60011
)

func TestPrivilegedNetnsBoot(t *testing.T) {
	requirePrivileged(t)
	bin := buildStandin(t)
	hostNS := newHostNS(t)
	state := t.TempDir()
	var mu sync.Mutex
	var lines []string
	n := &Netns{HostNS: hostNS, Binary: bin, StateDir: state, Progress: func(s string) {
		mu.Lock()
		lines = append(lines, s)
		mu.Unlock()
		t.Log(s)
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	spec4, pool4 := testSpec(t, nsVM4, "10.70.0.7", "10.70.0.1", 24)
	spec6, pool6 := testSpec(t, nsVM6, "fd70:8::8", "fd70:8::1", 64)
	var guests []*loader.Guest
	for _, sp := range []loader.BootSpec{spec4, spec6} {
		start := time.Now()
		g, err := n.Boot(ctx, sp)
		if err != nil {
			t.Fatalf("Boot vm%d: %v", sp.VM, err)
		}
		t.Logf("netns boot vm%d (%s): %v from Boot to the daemon answering", sp.VM, sp.Addr, time.Since(start))
		t.Cleanup(func() { n.Destroy(context.Background(), g) })
		guests = append(guests, g)
	}

	for i, c := range []struct {
		spec loader.BootSpec
		pool *x509.CertPool
	}{{spec4, pool4}, {spec6, pool6}} {
		g := guests[i]
		sp := c.spec
		want := loader.Guest{
			VM: sp.VM, Name: sp.Name, Backend: "netns", Interface: IfName(sp.VM), Addr: sp.Addr, HostAddr: sp.HostAddr,
			HostLL: HostLinkLocal, MAC: loader.GuestMAC(sp.VM),
			UpdatedAddr: UpdatedAddr(sp), Handle: NetnsName(sp.VM), Template: "analyst",
		}
		if *g != want {
			t.Errorf("Boot vm%d = %+v, want %+v", sp.VM, *g, want)
		}
		flags, addrs, err := ipAddrs(t, hostNS, g.Interface)
		if err != nil {
			t.Fatalf("host side of vm%d: %v", sp.VM, err)
		}
		if hp := prefixArg(sp.HostAddr, sp.PrefixLen); !contains(addrs, hp) || !contains(flags, "UP") {
			t.Errorf("%s in %s: flags %v addresses %v, want UP with %s", g.Interface, hostNS, flags, addrs, hp)
		}
		if lls := linkLocals(addrs); len(lls) != 1 || lls[0] != "fe80::1/64" {
			t.Errorf("%s in %s: link-local addresses %v, want fe80::1/64 alone", g.Interface, hostNS, lls)
		}
		if mac := linkMAC(t, g.Handle, "eth0"); mac != g.MAC {
			t.Errorf("eth0 in %s has MAC %s, Guest.MAC says %s", g.Handle, mac, g.MAC)
		}
		flags, addrs, err = ipAddrs(t, g.Handle, "eth0")
		if err != nil {
			t.Fatalf("guest side of vm%d: %v", sp.VM, err)
		}
		if gp := prefixArg(sp.Addr, sp.PrefixLen); !contains(addrs, gp) || !contains(flags, "UP") {
			t.Errorf("eth0 in %s: flags %v addresses %v, want UP with %s", g.Handle, flags, addrs, gp)
		}
		var greeting string
		err = inNetns(hostNS, func() (err error) {
			greeting, err = greet(ctx, g.UpdatedAddr, c.pool)
			return err
		})
		if err != nil {
			t.Fatalf("TLS to vm%d's daemon at %s from %s: %v", sp.VM, g.UpdatedAddr, hostNS, err)
		}
		if want := "standin " + g.UpdatedAddr + " key-mode=0600"; greeting != want {
			t.Errorf("vm%d greets %q, want %q", sp.VM, greeting, want)
		}
		credDir := filepath.Join(state, "vm"+strconv.Itoa(int(sp.VM)), "creds")
		if fi, err := os.Stat(credDir); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("credentials directory %s: %v %v, want mode 0700", credDir, fi.Mode(), err)
		}
	}
	// A running guest cannot be booted twice.
	if _, err := n.Boot(ctx, spec4); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("second Boot of vm%d: %v, want a namespace-exists error", spec4.VM, err)
	}

	for _, g := range guests {
		pid := daemonPID(t, lines, g.VM)
		if err := n.Destroy(ctx, g); err != nil {
			t.Fatalf("Destroy vm%d: %v", g.VM, err)
		}
		assertGone(t, hostNS, state, g.VM, pid)
		if err := n.Destroy(ctx, g); err != nil {
			t.Errorf("second Destroy vm%d: %v", g.VM, err)
		}
	}
}

// TestPrivilegedNetnsBootFailures: a daemon that never answers, one that
// exits at once and one that ignores SIGTERM; each failed Boot leaves
// nothing behind.
func TestPrivilegedNetnsBootFailures(t *testing.T) {
	requirePrivileged(t)
	bin := buildStandin(t)
	hostNS := newHostNS(t)
	state := t.TempDir()
	var mu sync.Mutex
	var lines []string
	record := func(s string) {
		mu.Lock()
		lines = append(lines, s)
		mu.Unlock()
	}

	t.Run("never answers", func(t *testing.T) {
		n := &Netns{HostNS: hostNS, Binary: bin, StateDir: state, Progress: record,
			UpdatedArgs: func(sp loader.BootSpec, certDir string) []string {
				return append(DaemonArgs(UpdatedAddr(sp), certDir, filepath.Join(state, "unused")), "--mute")
			}}
		sp, _ := testSpec(t, nsVMMute, "10.70.9.9", "10.70.9.1", 24)
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := n.Boot(ctx, sp)
		took := time.Since(start)
		if err == nil || !strings.Contains(err.Error(), "did not accept a connection") || !strings.Contains(err.Error(), "10.70.9.9:7444") {
			t.Fatalf("Boot with a mute daemon: %v, want a timeout naming 10.70.9.9:7444", err)
		}
		if took > 1500*time.Millisecond+stopGrace+killWait {
			t.Errorf("Boot with a mute daemon took %v past its 1.5 s context", took)
		}
		t.Logf("mute daemon: Boot failed after %v: %v", took, err)
		assertGone(t, hostNS, state, sp.VM, daemonPID(t, lines, sp.VM))
	})

	t.Run("exits at once", func(t *testing.T) {
		n := &Netns{HostNS: hostNS, Binary: bin, StateDir: state,
			UpdatedArgs: func(sp loader.BootSpec, certDir string) []string {
				return DaemonArgs(UpdatedAddr(sp), filepath.Join(certDir, "missing"), state)
			}}
		sp, _ := testSpec(t, nsVMDead, "10.70.10.10", "10.70.10.1", 24)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		start := time.Now()
		_, err := n.Boot(ctx, sp)
		if err == nil || !strings.Contains(err.Error(), "exit status 1") || !strings.Contains(err.Error(), "no such file") {
			t.Fatalf("Boot with a failing daemon: %v, want its exit status and its log", err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("Boot noticed the dead daemon only after %v", took)
		}
		assertGone(t, hostNS, state, sp.VM, 0)
	})

	t.Run("ignores SIGTERM", func(t *testing.T) {
		n := &Netns{HostNS: hostNS, Binary: bin, StateDir: state, Progress: record,
			UpdatedArgs: func(sp loader.BootSpec, certDir string) []string {
				return append(DaemonArgs(UpdatedAddr(sp), certDir, filepath.Join(state, "unused")), "--ignore-term")
			}}
		sp, _ := testSpec(t, nsVMTerm, "10.70.11.11", "10.70.11.1", 24)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		g, err := n.Boot(ctx, sp)
		if err != nil {
			t.Fatal(err)
		}
		pid := daemonPID(t, lines, sp.VM)
		start := time.Now()
		if err := n.Destroy(ctx, g); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		if took := time.Since(start); took < stopGrace || took > stopGrace+killWait+2*time.Second {
			t.Errorf("Destroy of a daemon that ignores SIGTERM took %v, want SIGKILL after %v", took, stopGrace)
		}
		assertGone(t, hostNS, state, sp.VM, pid)
	})
}

// daemonPID finds the daemon's pid in the Progress lines of vm.
func daemonPID(t *testing.T, lines []string, vm uint32) int {
	t.Helper()
	prefix := "vm" + strconv.Itoa(int(vm)) + ": daemon pid "
	for _, l := range lines {
		if rest, ok := strings.CutPrefix(l, prefix); ok {
			pid, err := strconv.Atoi(strings.Fields(rest)[0])
			if err == nil {
				return pid
			}
		}
	}
	t.Fatalf("no %q progress line in %q", prefix, lines)
	return 0
}

// assertGone checks that nothing of guest vm is left: its namespace, its
// host end in hostNS, its files under state and its daemon (pid, when not 0).
func assertGone(t *testing.T, hostNS, state string, vm uint32, pid int) {
	t.Helper()
	if nsExists(NetnsName(vm)) {
		t.Errorf("namespace %s is still there", NetnsName(vm))
	}
	if _, _, err := ipAddrs(t, hostNS, IfName(vm)); err == nil {
		t.Errorf("%s is still in %s", IfName(vm), hostNS)
	}
	if _, err := os.Stat(filepath.Join(state, "vm"+strconv.Itoa(int(vm)))); !os.IsNotExist(err) {
		t.Errorf("state of vm%d is still there: %v", vm, err)
	}
	if pid != 0 && alive(pid) {
		t.Errorf("daemon pid %d of vm%d still runs", pid, vm)
	}
}

// TestDaemonSettingsOnlyFromFlags: a netns guest's update daemon runs on
// the host's filesystem with the loader's environment; neither the host's
// /etc/mlsgate/updated.yaml nor an MLSGATE_ variable of the loader's may
// set anything of it.
func TestDaemonSettingsOnlyFromFlags(t *testing.T) {
	args := DaemonArgs("10.71.0.7:7071", "/creds", "/state")
	i := slices.Index(args, "--config")
	if i < 0 || i+1 >= len(args) || args[i+1] != "" {
		t.Fatalf("daemon args %q: want --config \"\" (no file)", args)
	}
	env := daemonEnv([]string{"PATH=/usr/bin", "MLSGATE_UPDATED_LISTEN=0.0.0.0:7071", "MLSGATE_LOADER_STATE_DIR=/x", "HOME=/root", "XMLSGATE_Y=1"})
	if want := []string{"PATH=/usr/bin", "HOME=/root", "XMLSGATE_Y=1"}; !slices.Equal(env, want) {
		t.Errorf("daemon environment %q, want %q", env, want)
	}
}
