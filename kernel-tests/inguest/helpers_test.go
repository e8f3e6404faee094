package inguest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// ipPath is iproute2's ip in the guest's initramfs.
const ipPath = "/usr/sbin/ip"

// testReqid marks the XFRM states and policies the tests make.
const testReqid = "7007"

// requireGuest is the first call of every test in this package: it skips
// unless the test binary runs inside the guest VM.
func requireGuest(t testing.TB) {
	t.Helper()
	if os.Getenv("MLSGATE_IN_GUEST") != "1" {
		t.Skip("runs only inside the guest VM (MLSGATE_IN_GUEST=1); as root on the host: go test -run PrivilegedGuestKernel ./kernel-tests/")
	}
}

// wantEnforcing is the SELinux mode the host asked the guest for.
func wantEnforcing() bool { return os.Getenv("MLSGATE_GUEST_ENFORCING") == "1" }

// ipTry runs iproute2 with args and returns its combined output.
func ipTry(args ...string) (string, error) {
	out, err := exec.Command(ipPath, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// ip runs iproute2 with args and fails the test when it fails.
func ip(t testing.TB, args ...string) string {
	t.Helper()
	out, err := ipTry(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ipBatch runs iproute2 commands, one argument list each, in one process in
// the named namespace (none: the current one): under TCG each exec costs
// tens of milliseconds.
func ipBatch(t testing.TB, ns string, cmds ...[]string) {
	t.Helper()
	var b strings.Builder
	for _, c := range cmds {
		b.WriteString(strings.Join(c, " ") + "\n")
	}
	args := []string{"-batch", "-"}
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	cmd := exec.Command(ipPath, args...)
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s\ncommands:\n%s", strings.Join(args, " "), err, strings.TrimSpace(string(out)), b.String())
	}
}

// newNetNS makes a named network namespace (for ip -n) with its loopback
// up, and deletes it when the test ends.
func newNetNS(t testing.TB, name string) netns.NsHandle {
	t.Helper()
	ip(t, "netns", "add", name)
	t.Cleanup(func() { ipTry("netns", "del", name) })
	ip(t, "-n", name, "link", "set", "lo", "up")
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open network namespace %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// inNetNS runs fn on a goroutine whose thread has entered ns. The thread
// stays locked, so the runtime discards it, namespace and labels included,
// when fn returns.
func inNetNS(ns netns.NsHandle, fn func() error) error {
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

// setSockCreate sets the SELinux context of the sockets the calling thread
// creates from now on (empty: the thread's own). The thread must be locked.
// A Go program has many threads, so it cannot change its own context; the
// socket's context is what XFRM matches SAs and policies against.
func setSockCreate(ctx string) error {
	err := os.WriteFile("/proc/thread-self/attr/sockcreate", []byte(ctx), 0)
	if err != nil {
		return fmt.Errorf("set socket context %q: %w", ctx, err)
	}
	return nil
}

// readTrim reads a small file and trims white space and NULs.
func readTrim(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Trim(string(b), " \n\x00")
}

var errNoReply = errors.New("no reply")
