package backend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mlsgate/mlsgate/policystore/secretfile"

	"github.com/vishvananda/netns"
)

// Bounds of the loops the backends run.
const (
	// DefaultBootTimeout bounds a Boot whose context has no deadline.
	DefaultBootTimeout = 2 * time.Minute
	// pollEvery is the pace of every wait loop (links, ports, processes).
	pollEvery = 50 * time.Millisecond
	// dialTimeout bounds one connection attempt to an update daemon.
	dialTimeout = 500 * time.Millisecond
	// stopGrace is how long a stopped process has between SIGTERM and
	// SIGKILL, killWait how long it then has to disappear.
	stopGrace = 3 * time.Second
	killWait  = 2 * time.Second
)

// bounded returns ctx, with DefaultBootTimeout when it has no deadline.
func bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultBootTimeout)
}

// privateDir creates dir 0700 (with its parents), or checks that an
// existing one is this uid's and that nobody else can write it: it holds
// guests' keys and what they boot (package secretfile).
func privateDir(dir string) error {
	d, err := secretfile.Open(dir)
	if err != nil {
		return err
	}
	return d.Close()
}

// writeAtomic writes path through a temporary file in its directory that is
// renamed over it only once fill succeeded, so readers see the old file or
// the whole new one, and a failed write leaves nothing.
func writeAtomic(path string, perm fs.FileMode, fill func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	err = f.Chmod(perm)
	if err == nil {
		err = fill(f)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// writeFileAtomic is writeAtomic with fixed contents.
func writeFileAtomic(path string, data []byte, perm fs.FileMode) error {
	return writeAtomic(path, perm, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// CmdError is a host command that failed: the command line, its combined
// output and the exit error.
type CmdError struct {
	Cmd    []string
	Output string
	Err    error
}

func (e *CmdError) Error() string {
	out := strings.TrimSpace(e.Output)
	if out == "" {
		return fmt.Sprintf("%s: %v", strings.Join(e.Cmd, " "), e.Err)
	}
	return fmt.Sprintf("%s: %v: %s", strings.Join(e.Cmd, " "), e.Err, out)
}

func (e *CmdError) Unwrap() error { return e.Err }

// runCmd runs a host command and returns its combined output; a failure is a
// *CmdError.
func runCmd(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		return buf.Bytes(), &CmdError{Cmd: append([]string{name}, args...), Output: buf.String(), Err: err}
	}
	return buf.Bytes(), nil
}

// inNetns runs fn on an OS thread in the named network namespace, or in the
// caller's namespace when name is empty. The thread is never returned to Go's
// pool (the goroutine ends locked), so no other goroutine inherits the
// namespace.
func inNetns(name string, fn func() error) error {
	if name == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		h, err := netns.GetFromName(name)
		if err != nil {
			errc <- fmt.Errorf("network namespace %s: %w (create it with 'ip netns add %s')", name, err, name)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("enter network namespace %s: %w", name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// waitTCP dials addr until a connection is accepted; it gives up when ctx
// ends or failed reports the guest gone (a non-nil error).
func waitTCP(ctx context.Context, addr string, failed func() error) error {
	d := net.Dialer{Timeout: dialTimeout}
	var last error
	for {
		if err := failed(); err != nil {
			return err
		}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("update daemon at %s did not accept a connection: %w (last attempt: %v)", addr, ctx.Err(), last)
		case <-time.After(pollEvery):
		}
	}
}

// waitLink waits until the interface name exists in the caller's network
// namespace; it gives up when ctx ends or failed reports an error.
func waitLink(ctx context.Context, name string, failed func() error) error {
	for {
		if _, err := net.InterfaceByName(name); err == nil {
			return nil
		}
		if err := failed(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("interface %s did not appear: %w", name, ctx.Err())
		case <-time.After(pollEvery):
		}
	}
}

// linkExists reports whether the interface name exists in the caller's
// network namespace.
func linkExists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

// child is a process a backend started and outlives the Boot call; a
// goroutine reaps it.
type child struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once it exited
	err  error         // its exit status, valid after done
}

// startChild starts cmd in its own process group (a terminal's signals for
// the loader do not reach guests) and reaps it when it exits.
func startChild(cmd *exec.Cmd) (*child, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	go func() {
		c.err = c.cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// exited is nil while the child runs, else an error saying how it ended.
func (c *child) exited() error {
	select {
	case <-c.done:
		if c.err == nil {
			return errors.New("exited with status 0")
		}
		return c.err
	default:
		return nil
	}
}

// alive reports whether pid names a process that has not exited (a zombie
// counts as exited).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

// stopPIDs sends SIGTERM to pids, SIGKILL to those still there after
// stopGrace, and fails when any is left killWait later.
func stopPIDs(pids []int) error {
	if len(pids) == 0 {
		return nil
	}
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGTERM)
	}
	if waitGone(pids, stopGrace) {
		return nil
	}
	for _, p := range pids {
		if alive(p) {
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
	if waitGone(pids, killWait) {
		return nil
	}
	var left []string
	for _, p := range pids {
		if alive(p) {
			left = append(left, strconv.Itoa(p))
		}
	}
	return fmt.Errorf("processes %s survived SIGKILL for %v", strings.Join(left, ", "), killWait)
}

// waitGone waits up to d for every pid to exit.
func waitGone(pids []int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		gone := true
		for _, p := range pids {
			if alive(p) {
				gone = false
				break
			}
		}
		if gone {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pollEvery / 2)
	}
}

// tailFile is the last n bytes of the file at path ("" when unreadable).
func tailFile(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		f.Seek(fi.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return strings.TrimSpace(string(b))
}

// progress calls fn with a formatted line when fn is set.
func progress(fn func(string), format string, args ...any) {
	if fn != nil {
		fn(fmt.Sprintf(format, args...))
	}
}
