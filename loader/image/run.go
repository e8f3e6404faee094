package image

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Defaults of RunOptions.
const (
	DefaultMemory  = 512 // MiB
	DefaultTimeout = 5 * time.Minute
)

// shareTag is the 9p mount tag the init mounts at /mnt.
const shareTag = "host0"

// probeTimeout bounds the boot that checks whether KVM runs this kernel;
// with KVM it takes well under a second. A kernel that printed nothing
// after probeSilence (it prints its first line within milliseconds) is not
// running.
const (
	probeTimeout = 20 * time.Second
	probeSilence = 2 * time.Second
)

// pollInterval is how often Run copies new output to RunOptions.Progress.
const pollInterval = 100 * time.Millisecond

// RunOptions say what one guest boot runs.
type RunOptions struct {
	// Binary is the host path of a statically linked executable
	// (BuildTestBinary makes one). Run copies it into the share.
	Binary string
	// Args are its arguments.
	Args []string
	// Share is a host directory the guest mounts at /mnt over 9p and starts
	// the binary in; Run keeps its own files under .guestvm/<job>/ there and
	// removes them afterwards. Empty means a fresh temporary directory.
	Share string
	// Enforcing puts SELinux in enforcing mode once the policy is loaded.
	Enforcing bool
	// Memory is the guest's RAM in MiB (DefaultMemory when 0).
	Memory int
	// Timeout bounds the whole boot (DefaultTimeout when 0); the context
	// passed to Run bounds it too.
	Timeout time.Duration
	// Env is added to the binary's environment, which always has
	// MLSGATE_IN_GUEST=1 and MLSGATE_GUEST_ENFORCING=0 or 1.
	Env map[string]string
	// Progress, when set, receives the binary's output while it runs.
	Progress io.Writer
}

// Result is what one boot produced.
type Result struct {
	Output       string        // the binary's standard output and error
	ExitCode     int           // its exit status
	Serial       string        // the guest's console, for diagnostics
	Boot         string        // the init's report: failed modules, policy state
	Accel        string        // "kvm" or "tcg"
	BootDuration time.Duration // kernel start to the binary's start (guest clock)
	RunDuration  time.Duration // the binary's run (guest clock)
	Wall         time.Duration // QEMU's whole run (host clock)
}

// Run boots the image and runs opts.Binary in it as described by opts. An
// error means the binary did not run to its end (QEMU failed, the timeout or
// ctx ended the boot, or the guest never wrote an exit code; the error quotes
// the end of the console); a binary that fails is a Result with a non-zero
// ExitCode.
func (img *Image) Run(ctx context.Context, opts RunOptions) (*Result, error) {
	if opts.Binary == "" {
		return nil, errors.New("image: RunOptions.Binary is empty; give the path of a static binary")
	}
	if err := checkStatic(opts.Binary); err != nil {
		return nil, fmt.Errorf("guest binary %s: %w (build it with CGO_ENABLED=0, e.g. image.BuildTestBinary)", opts.Binary, err)
	}
	if opts.Memory == 0 {
		opts.Memory = DefaultMemory
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Share == "" {
		tmp, err := os.MkdirTemp("", "guestvm-share-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		opts.Share = tmp
	}
	share, err := filepath.Abs(opts.Share)
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(share); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("guest share %s is not a directory; create it or leave RunOptions.Share empty", opts.Share)
	}
	id, err := jobID()
	if err != nil {
		return nil, err
	}
	job := filepath.Join(share, ".guestvm", id)
	if err := os.MkdirAll(job, 0o755); err != nil {
		return nil, fmt.Errorf("guest share %s: %w", share, err)
	}
	defer func() {
		os.RemoveAll(job)
		os.Remove(filepath.Dir(job)) // only when no other job uses it
	}()
	if err := copyFile(opts.Binary, filepath.Join(job, "bin"), 0o755); err != nil {
		return nil, fmt.Errorf("copy the guest binary into the share: %w", err)
	}
	script := jobScript("/mnt/.guestvm/"+id+"/bin", opts)
	if err := os.WriteFile(filepath.Join(job, "job.sh"), []byte(script), 0o644); err != nil {
		return nil, err
	}

	accel := img.accelerator(ctx)
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	serial, qerr, wall, err := img.boot(ctx, bootSpec{
		accel: accel, share: share, memory: opts.Memory, cmdline: bootArgs(id, opts.Enforcing),
		output: filepath.Join(job, "output"), progress: opts.Progress,
	})
	res := &Result{Serial: serial, Accel: accel, Wall: wall}
	res.Output, res.Boot = jobReport(job)
	if ctx.Err() != nil {
		return res, fmt.Errorf("guest did not finish within %v (RunOptions.Timeout or the context); console ends:\n%s", opts.Timeout, tail(serial, 3000))
	}
	if err != nil {
		return res, fmt.Errorf("qemu: %w\n%s\nconsole ends:\n%s", err, tail(qerr, 2000), tail(serial, 3000))
	}
	exit, err := os.ReadFile(filepath.Join(job, "exit"))
	if err != nil {
		return res, fmt.Errorf("guest powered off without an exit code for its job (init failed or the kernel panicked); console ends:\n%s", tail(serial, 3000))
	}
	code, start, end, err := parseExit(string(exit))
	if err != nil {
		return res, err
	}
	res.ExitCode = code
	res.BootDuration = start
	res.RunDuration = end - start
	return res, nil
}

// jobReport reads what the init left in the job directory: the binary's
// output and the boot report (trimmed); "" for a file it did not write.
func jobReport(job string) (output, boot string) {
	if b, err := os.ReadFile(filepath.Join(job, "output")); err == nil {
		output = string(b)
	}
	if b, err := os.ReadFile(filepath.Join(job, "boot")); err == nil {
		boot = strings.TrimSpace(string(b))
	}
	return output, boot
}

// bootSpec is one QEMU run.
type bootSpec struct {
	accel    string // "kvm" or "tcg"
	share    string // exported as 9p tag shareTag; none when empty
	memory   int    // MiB
	cmdline  string
	output   string    // a file whose growth goes to progress
	progress io.Writer // may be nil
	// silent, when set, ends the run when the console is still empty after
	// this long: a /dev/kvm that cannot run the kernel spins without output.
	silent time.Duration
}

// errSilent reports a guest that printed nothing within bootSpec.silent.
var errSilent = errors.New("guest console stayed empty")

// boot runs QEMU once and returns the console, QEMU's own error output and
// how long it ran.
func (img *Image) boot(ctx context.Context, spec bootSpec) (serial, qerr string, wall time.Duration, err error) {
	qemu, err := findTool("qemu-system-x86_64")
	if err != nil {
		return "", "", 0, fmt.Errorf("%w: %v; run 'make deps-guest'", ErrMissingTools, err)
	}
	logDir, err := os.MkdirTemp("", "guestvm-serial-")
	if err != nil {
		return "", "", 0, err
	}
	defer os.RemoveAll(logDir)
	serialPath := filepath.Join(logDir, "serial.log")
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "file:" + serialPath,
		"-m", strconv.Itoa(spec.memory), "-smp", "1",
		"-kernel", img.Kernel, "-initrd", img.Initrd, "-append", spec.cmdline,
	}
	if spec.accel == "kvm" {
		args = append(args, "-accel", "kvm", "-cpu", "host")
	} else {
		args = append(args, "-accel", "tcg", "-cpu", "max")
	}
	if spec.share != "" {
		args = append(args, "-virtfs", "local,path="+spec.share+",mount_tag="+shareTag+",security_model=none,id="+shareTag)
	}
	qctx, cancel := context.WithCancel(ctx)
	defer cancel()
	silent := false
	onTick := func(start time.Time) {
		if spec.silent > 0 && !silent && time.Since(start) > spec.silent {
			if fi, serr := os.Stat(serialPath); serr != nil || fi.Size() == 0 {
				silent = true
				cancel()
			}
		}
	}
	run, err := runQEMU(qctx, qemu, args, pollInterval, onTick, spec.progress, spec.output)
	if err != nil {
		return "", "", 0, err
	}
	b, _ := os.ReadFile(serialPath)
	err = run.err
	if silent {
		err = fmt.Errorf("%w for %v", errSilent, spec.silent)
	}
	return string(b), run.stderr, run.wall, err
}

// qemuRun is how one QEMU process ended.
type qemuRun struct {
	stderr string        // QEMU's own output (stdout and stderr)
	wall   time.Duration // from start to exit
	err    error         // cmd.Wait's
}

// runQEMU runs qemu with args under ctx until it exits. Every interval it
// calls onTick (when set) with the start time, then copies the growth of
// the file output to progress (when both are set), and once more after
// the exit. The error is for a QEMU that did not start; how it ended is in
// the qemuRun.
func runQEMU(ctx context.Context, qemu string, args []string, interval time.Duration, onTick func(start time.Time), progress io.Writer, output string) (qemuRun, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, qemu, args...)
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return qemuRun{}, fmt.Errorf("start %s: %w", qemu, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var copied int64
	var werr error
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for waiting := true; waiting; {
		select {
		case werr = <-done:
			waiting = false
		case <-tick.C:
			if onTick != nil {
				onTick(start)
			}
		}
		if progress != nil && output != "" {
			copied = copyNew(progress, output, copied)
		}
	}
	return qemuRun{stderr: stderr.String(), wall: time.Since(start), err: werr}, nil
}

// copyNew writes what the file at path holds beyond offset to w and returns
// the new offset.
func copyNew(w io.Writer, path string, offset int64) int64 {
	f, err := os.Open(path)
	if err != nil {
		return offset
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return offset
	}
	n, _ := io.Copy(w, f)
	return offset + n
}

// accelerator is "kvm" when /dev/kvm boots this image, else "tcg". The
// answer is kept per image and, per host boot, in the cache directory, since
// some hosts (nested, or PVM) offer a /dev/kvm that cannot run a stock
// kernel. MLSGATE_GUEST_ACCEL=kvm or tcg overrides it.
func (img *Image) accelerator(ctx context.Context) string {
	img.accelOnce.Do(func() {
		img.accel = img.probeAccel(ctx)
	})
	return img.accel
}

func (img *Image) probeAccel(ctx context.Context) string {
	switch v := os.Getenv("MLSGATE_GUEST_ACCEL"); v {
	case "kvm", "tcg":
		return v
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "tcg"
	}
	f.Close()
	bootID, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	memo := ""
	if img.cacheDir != "" && len(bootID) > 0 {
		memo = filepath.Join(img.cacheDir, "accel-"+strings.TrimSpace(string(bootID)))
		if b, err := os.ReadFile(memo); err == nil {
			if v := strings.TrimSpace(string(b)); v == "kvm" || v == "tcg" {
				return v
			}
		}
	}
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	serial, _, _, err := img.boot(pctx, bootSpec{
		accel: "kvm", memory: 256, cmdline: "console=ttyS0 panic=-1 guestvm.probe=1", silent: probeSilence,
	})
	accel := "tcg"
	if err == nil && strings.Contains(serial, "guestvm: probe ok") {
		accel = "kvm"
	}
	if ctx.Err() == nil && memo != "" {
		writeAtomic(memo, []byte(accel+"\n"))
	}
	return accel
}

// bootArgs is the kernel command line of a job.
func bootArgs(id string, enforcing bool) string {
	e := "0"
	if enforcing {
		e = "1"
	}
	// cryptomgr.notests skips the crypto self-tests as modules register
	// their algorithms: 0.4 s under TCG.
	return "console=ttyS0 quiet panic=-1 random.trust_cpu=on cryptomgr.notests lsm=lockdown,yama,selinux,bpf " +
		"rdinit=/init guestvm.job=" + id + " guestvm.enforcing=" + e
}

// jobScript is the shell script the init runs: the environment, then the
// binary, from /mnt.
func jobScript(bin string, opts RunOptions) string {
	env := map[string]string{"MLSGATE_IN_GUEST": "1", "MLSGATE_GUEST_ENFORCING": "0"}
	if opts.Enforcing {
		env["MLSGATE_GUEST_ENFORCING"] = "1"
	}
	maps.Copy(env, opts.Env)
	var b strings.Builder
	b.WriteString("# written by guestvm.Run\n")
	for _, k := range slices.Sorted(maps.Keys(env)) {
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(env[k]))
	}
	b.WriteString("cd /mnt || exit 125\nexec " + shellQuote(bin))
	for _, a := range opts.Args {
		b.WriteString(" " + shellQuote(a))
	}
	b.WriteString("\n")
	return b.String()
}

// shellQuote quotes s for sh as one word.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// parseExit reads the init's "<code> <start> <end>" line (times are the
// guest's uptime in seconds).
func parseExit(s string) (code int, start, end time.Duration, err error) {
	f := strings.Fields(s)
	if len(f) != 3 {
		return 0, 0, 0, fmt.Errorf("guest exit record %q: want \"<code> <start> <end>\"", s)
	}
	if code, err = strconv.Atoi(f[0]); err != nil {
		return 0, 0, 0, fmt.Errorf("guest exit record %q: %w", s, err)
	}
	var secs [2]float64
	for i, v := range f[1:] {
		if secs[i], err = strconv.ParseFloat(v, 64); err != nil {
			return 0, 0, 0, fmt.Errorf("guest exit record %q: %w", s, err)
		}
	}
	return code, time.Duration(secs[0] * float64(time.Second)), time.Duration(secs[1] * float64(time.Second)), nil
}

// jobID is a fresh name for a job directory.
func jobID() (string, error) {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// BuildTestBinary compiles the tests of the package pkg (an import path, or
// a directory pattern like ./kernel-tests/inguest relative to the current
// directory) into the static binary out, for Run.
func BuildTestBinary(ctx context.Context, pkg, out string) error {
	return BuildTestBinaryIn(ctx, "", pkg, out)
}

// BuildTestBinaryIn is BuildTestBinary with the go command run in dir (""
// is the current directory), which picks the module pkg is built from.
func BuildTestBinaryIn(ctx context.Context, dir, pkg, out string) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		if root := os.Getenv("GOROOT"); root != "" {
			goTool = filepath.Join(root, "bin", "go")
		} else {
			return fmt.Errorf("build the guest tests of %s: no go command in PATH", pkg)
		}
	}
	cmd := exec.CommandContext(ctx, goTool, "test", "-c", "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go test -c %s: %w\n%s", pkg, err, tail(buf.String(), 4000))
	}
	if err := checkStatic(out); err != nil {
		return fmt.Errorf("go test -c %s: %w", pkg, err)
	}
	return nil
}
