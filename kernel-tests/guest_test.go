package kerneltests

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/kernel-tests/guestvm"
)

// inguestPkg holds the tests that run inside the guest.
const inguestPkg = "github.com/mlsgate/mlsgate/kernel-tests/inguest"

// guestTimeout bounds one guest boot; the guest's own go test gives up a
// minute earlier, with the stacks of what hung.
const (
	guestTimeout      = 15 * time.Minute
	guestInnerTimeout = "14m"
)

// TestPrivilegedGuestKernel runs kernel-tests/inguest inside Debian's own
// kernel under QEMU, SELinux enforcing (tests that need permissive mode
// switch it themselves): the ESP transform, XFRM with security contexts, the
// MLS policy and the fast path on a kernel without tcx, none of which the
// development kernel has.
// MLSGATE_GUEST_RUN (a -test.run pattern) selects guest tests;
// MLSGATE_GUEST_CACHE moves the image cache.
func TestPrivilegedGuestKernel(t *testing.T) {
	requirePrivileged(t)
	if testing.Short() {
		t.Skip("boots a QEMU guest (about 10 s when its image is cached); run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*guestTimeout)
	defer cancel()

	start := time.Now()
	img, err := guestvm.Prepare(ctx, "", &lineLog{t: t})
	if errors.Is(err, guestvm.ErrMissingTools) {
		t.Skipf("no guest VM: %v", err)
	}
	if err != nil {
		t.Fatalf("prepare the guest image: %v", err)
	}
	t.Logf("guest image: kernel %s (%s) from %s, ready in %.1fs", img.KernelRelease, img.PackageVersion, img.Dir, time.Since(start).Seconds())

	start = time.Now()
	bin := filepath.Join(t.TempDir(), "inguest.test")
	if err := guestvm.BuildTestBinary(ctx, inguestPkg, bin); err != nil {
		t.Fatal(err)
	}
	t.Logf("built %s in %.1fs", inguestPkg, time.Since(start).Seconds())

	args := []string{"-test.v", "-test.count=1", "-test.timeout=" + guestInnerTimeout}
	if run := os.Getenv("MLSGATE_GUEST_RUN"); run != "" {
		args = append(args, "-test.run="+run)
	}
	// The guest reads the example applications from the share (the policy
	// store runs there to make bundles for the update daemon).
	share := t.TempDir()
	if err := os.CopyFS(filepath.Join(share, "examples"), os.DirFS("../examples")); err != nil {
		t.Fatalf("copy the examples into the guest share: %v", err)
	}
	progress := &lineLog{t: t, prefix: "guest: "}
	res, err := img.Run(ctx, guestvm.RunOptions{
		Binary: bin, Args: args, Enforcing: true, Timeout: guestTimeout, Progress: progress,
		Share: share, Env: map[string]string{"MLSGATE_EXAMPLES": "/mnt/examples"},
	})
	progress.flush()
	if err != nil {
		t.Fatalf("guest run: %v", err)
	}
	t.Logf("guest (%s): boot %.2fs, tests %.2fs, QEMU %.2fs; init: %s",
		res.Accel, res.BootDuration.Seconds(), res.RunDuration.Seconds(), res.Wall.Seconds(),
		strings.ReplaceAll(res.Boot, "\n", ", "))
	checkGuestResult(t, res)
}

var (
	guestFailRE = regexp.MustCompile(`(?m)^\s*--- FAIL: (\S+)`)
	guestPassRE = regexp.MustCompile(`(?m)^\s*--- PASS: `)
)

// checkGuestResult fails t when the guest's tests failed, naming them, or
// when none passed (a guard that skips everything must not look green).
func checkGuestResult(t *testing.T, res *guestvm.Result) {
	t.Helper()
	var failed []string
	for _, m := range guestFailRE.FindAllStringSubmatch(res.Output, -1) {
		failed = append(failed, m[1])
	}
	switch {
	case res.ExitCode != 0 && len(failed) > 0:
		t.Errorf("guest tests failed: %s (exit %d)", strings.Join(failed, ", "), res.ExitCode)
	case res.ExitCode != 0:
		t.Errorf("guest test binary exited %d without a failing test (panic or timeout; see the output above); console ends:\n%s",
			res.ExitCode, lastLines(res.Serial, 20))
	case !guestPassRE.MatchString(res.Output):
		t.Errorf("no guest test passed (all skipped, or MLSGATE_GUEST_RUN=%q matches none)", os.Getenv("MLSGATE_GUEST_RUN"))
	}
}

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// crashLines is the start of the first crash report in s (a Go panic or
// fatal error, a kernel panic or OOM kill) and the n lines after it, or ""
// when s holds none: the tail of a log shows only the end of a goroutine
// dump, never why it was written.
func crashLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		for _, m := range []string{"panic:", "fatal error:", "Kernel panic", "Out of memory", "oom-kill", "SIGSEGV", "SIGQUIT"} {
			if strings.Contains(l, m) {
				return strings.Join(lines[i:min(len(lines), i+n+1)], "\n")
			}
		}
	}
	return ""
}

// lineLog writes whole lines to the test log as they come.
type lineLog struct {
	t      *testing.T
	prefix string
	mu     sync.Mutex
	buf    bytes.Buffer
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	for {
		line, err := l.buf.ReadString('\n')
		if err != nil { // incomplete: keep it for the next write
			l.buf.Reset()
			l.buf.WriteString(line)
			return len(p), nil
		}
		l.t.Log(l.prefix + strings.TrimRight(line, "\n"))
	}
}

// flush logs a last line without its newline.
func (l *lineLog) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buf.Len() > 0 {
		l.t.Log(l.prefix + l.buf.String())
		l.buf.Reset()
	}
}

func TestCrashLines(t *testing.T) {
	log := "boot\nok\nfatal error: runtime: out of memory\n\ngoroutine 1 [running]:\nmain.f()\n"
	if got := crashLines(log, 2); got != "fatal error: runtime: out of memory\n\ngoroutine 1 [running]:" {
		t.Errorf("crashLines = %q", got)
	}
	if got := crashLines("boot\nok\n", 5); got != "" {
		t.Errorf("crashLines of a clean log = %q", got)
	}
}
