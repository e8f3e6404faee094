package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	deployxen "github.com/mlsgate/mlsgate/deploy/xen"
	"github.com/mlsgate/mlsgate/loader/backend"
	"github.com/mlsgate/mlsgate/loader/image"
)

// XenEmulationEnv, set in dom0's environment by the host that boots it,
// says how the Xen machine runs (e.g. "QEMU TCG, no KVM"); the Xen column's
// hardware line carries it, so an emulated figure always says so.
const XenEmulationEnv = "MLSGATE_XEN_EMULATION"

// xenJobEnv names the job file of the Xen measurement inside dom0;
// TestVMStartXenJob runs it when set.
const xenJobEnv = "MLSGATE_BENCH_VMSTART_XEN_JOB"

// InDom0 reports whether this host is a Xen dom0 with xl: the Xen column
// is measured here directly, elsewhere inside the dom0 image.
func InDom0() bool {
	b, err := os.ReadFile("/proc/xen/capabilities")
	if err != nil || !strings.Contains(string(b), "control_d") {
		return false
	}
	_, err = exec.LookPath("xl")
	return err == nil
}

// xenVifDefaults points vif-mlsgate (image.XenVifDefaults) at the agent's
// socket and the mlsgate binary for the measurement; the returned function
// puts back what was there.
func xenVifDefaults(bin, sock string) (func(), error) {
	p := image.XenVifDefaults
	old, rerr := os.ReadFile(p)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf("MLSGATE=%s\nMLSGATE_AGENT=unix:%s\nMLSGATE_VIF_WAIT=60s\n", bin, sock)
	if err := os.WriteFile(p, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("vif-mlsgate's settings %s: %w", p, err)
	}
	return func() {
		if rerr == nil {
			os.WriteFile(p, old, 0o644)
		} else {
			os.Remove(p)
		}
	}, nil
}

// serveAgentSocket serves h on a new Unix socket at path (root only) until
// the returned function is called.
func serveAgentSocket(path string, h http.Handler) (func(), error) {
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("the agent's socket for vif-mlsgate: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	return func() { srv.Close(); <-done; os.Remove(path) }, nil
}

// measureXen measures the Xen backend in this dom0: the agent on the
// guests' routed netback vifs, the loader with backend.Xen keeping
// pre-loaded and ready guests paused (their hand-out is `xl unpause`), and
// PV guests booting cfg.XenKernel with cfg.XenRamdisk, whose init starts
// the update daemon. The ramdisk is copied to dom0's /tmp first when it
// lives elsewhere (a 9p share is slow to read for every boot).
func measureXen(ctx context.Context, cfg VMStartConfig, tmp string) (*BackendStart, error) {
	kernel, ramdisk, mem := cfg.XenKernel, cfg.XenRamdisk, cfg.XenMemory
	if kernel == "" {
		kernel = image.XenGuestKernel
	}
	if ramdisk == "" {
		ramdisk = image.XenGuestRamdisk
	}
	if mem == 0 {
		mem = 192
	}
	for _, f := range []string{kernel, ramdisk} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("xen guests: %w (give VMStartConfig.XenKernel and XenRamdisk: the raw vmlinux and a ramdisk from backend.XenInitrd)", err)
		}
	}
	local := filepath.Join(tmp, "guest-initrd")
	if err := copyFile(ramdisk, local, 0o600); err != nil {
		return nil, fmt.Errorf("copy the guests' ramdisk: %w", err)
	}
	x := &backend.Xen{ConfigDir: filepath.Join(tmp, "xen"), Kernel: kernel, Ramdisk: local,
		ExtraCmdline: "console=hvc0 quiet", Memory: mem, Script: deployxen.VifScriptName,
		Progress: func(s string) { cfg.Progress("xen: %s", s) }}
	// Time every xl unpause: on Xen the hand-out of a paused guest.
	var mu sync.Mutex
	var unpaused time.Duration
	x.Run = func(ctx context.Context, name string, args ...string) ([]byte, error) {
		t0 := time.Now()
		out, err := xlRun(ctx, name, args...)
		if len(args) > 0 && args[0] == "unpause" {
			mu.Lock()
			unpaused += time.Since(t0)
			mu.Unlock()
		}
		return out, err
	}
	cfg.unpauses = func() time.Duration {
		mu.Lock()
		defer mu.Unlock()
		d := unpaused
		unpaused = 0
		return d
	}
	b, err := measureBackend(ctx, cfg, x, filepath.Join(tmp, "xen-run"))
	if err != nil {
		return nil, err
	}
	emu := os.Getenv(XenEmulationEnv)
	if emu == "" {
		emu = "hardware virtualisation or emulation not stated"
	}
	b.Where = fmt.Sprintf("dom0 of Xen %s (Debian kernel %s: agent, loader, routed netback vifs, host modules %s); guests are Xen PV domains booting the same kernel with the update daemon",
		xenVersion(ctx), kernelRelease(), map[bool]string{true: "installed with semodule", false: "compiled only"}[cfg.HostSemodule])
	b.Hardware = fmt.Sprintf("Xen under %s; dom0 %d vCPU, guest 1 vCPU, %d MiB", emu, runtime.NumCPU(), mem)
	return b, nil
}

// xlRun runs an xl command as backend.Xen does without a Run hook.
func xlRun(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		return buf.Bytes(), &backend.CmdError{Cmd: append([]string{name}, args...), Output: buf.String(), Err: err}
	}
	return buf.Bytes(), nil
}

// xenVersion is `xl info`'s xen_version.
func xenVersion(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, "xl", "info").Output()
	if err != nil {
		return "(xl info failed)"
	}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "xen_version" {
			return strings.TrimSpace(v)
		}
	}
	return "(unknown)"
}

// xenJob is what the host asks of the bench test binary in dom0.
type xenJob struct {
	Repeat  int      `json:"repeat"`
	URL     string   `json:"url"`
	APIPort uint16   `json:"api_port"`
	Apps    []string `json:"apps"`    // application files, beside the job
	Binary  string   `json:"binary"`  // name of mlsgate beside the job
	Ramdisk string   `json:"ramdisk"` // name of the guests' ramdisk beside the job
	Out     string   `json:"out"`     // name of the result beside the job
}

// measureXenInDom0 boots the dom0 image (cfg.XenImage, or the one
// image.PrepareXen makes) under QEMU and runs the Xen measurement there:
// the bench test binary (TestVMStartXenJob), mlsgate, the applications and
// the guests' ramdisk (the guest image with xen-netfront and the update
// daemon, backend.XenInitrd) go over the image's 9p share; the result
// comes back as JSON. dom0 boots with SELinux, loads the image's module
// store and installs the host's modules with semodule.
func measureXenInDom0(ctx context.Context, cfg VMStartConfig, tmp string) (*BackendStart, error) {
	x := cfg.XenImage
	if x == nil {
		var err error
		x, err = image.PrepareXen(ctx, cfg.GuestCache, image.XenOptions{VifScript: deployxen.VifScript, VifScriptName: deployxen.VifScriptName},
			progressWriter(cfg.Progress, "xen: image: "))
		if err != nil {
			return nil, fmt.Errorf("the dom0 image: %w", err)
		}
	}
	g, err := image.Prepare(ctx, cfg.GuestCache, progressWriter(cfg.Progress, "xen: guest image: "))
	if err != nil {
		return nil, fmt.Errorf("the guest image for the Xen guests: %w", err)
	}
	bin, err := os.ReadFile(cfg.Binary)
	if err != nil {
		return nil, err
	}
	ramdisk := filepath.Join(tmp, "xen-guest-initrd")
	if _, err := backend.XenInitrd(ctx, g, cfg.GuestCache, bin, backend.InitOptions{Modules: backend.XenGuestModules(g)}, ramdisk); err != nil {
		return nil, fmt.Errorf("the Xen guests' ramdisk: %w", err)
	}
	testBin := filepath.Join(tmp, "bench-xen.test")
	cfg.Progress("xen: building the bench test binary for dom0")
	if err := buildGuestBinary(ctx, "github.com/mlsgate/mlsgate/bench", testBin); err != nil {
		return nil, err
	}
	job := xenJob{Repeat: cfg.Repeat, URL: cfg.URL, APIPort: cfg.APIPort, Binary: "mlsgate", Ramdisk: "guest-initrd", Out: "xen-vmstart.json"}
	files := map[string]string{"mlsgate": cfg.Binary, "guest-initrd": ramdisk}
	apps, err := filepath.Glob(filepath.Join(cfg.AppsDir, "*.yaml"))
	if err != nil || len(apps) == 0 {
		return nil, fmt.Errorf("no application files (*.yaml) in %s", cfg.AppsDir)
	}
	for i, a := range apps {
		name := fmt.Sprintf("app%d.yaml", i)
		files[name] = a
		job.Apps = append(job.Apps, name)
	}
	jb, _ := json.Marshal(job)
	jobFile := filepath.Join(tmp, "xen-job.json")
	if err := os.WriteFile(jobFile, jb, 0o644); err != nil {
		return nil, err
	}
	files["job.json"] = jobFile
	emu := "QEMU TCG (software emulation, no KVM): 2 vCPUs, 1024 MiB, dom0 512 MiB"
	cfg.Progress("xen: booting Xen %s and dom0 under QEMU TCG (minutes)", x.XenVersion)
	res, err := x.Run(ctx, image.XenRunOptions{
		Binary: testBin, Args: []string{"-test.run", "^TestVMStartXenJob$", "-test.v", "-test.count", "1", "-test.timeout", "40m"},
		Files: files, Env: map[string]string{xenJobEnv: "job.json", XenEmulationEnv: emu}, Timeout: 45 * time.Minute,
		Progress: progressWriter(cfg.Progress, "xen: dom0: "), Cmdline: image.XenSELinuxArg,
	})
	if err != nil {
		return nil, fmt.Errorf("dom0: %w", err)
	}
	out, ok := res.Files[job.Out]
	if res.ExitCode != 0 || !ok {
		return nil, fmt.Errorf("the Xen measurement in dom0 failed (exit %d):\n%s", res.ExitCode, tail(res.Output, 3000))
	}
	var b BackendStart
	if err := json.Unmarshal([]byte(out), &b); err != nil {
		return nil, fmt.Errorf("dom0's result: %w", err)
	}
	return &b, nil
}

// runXenJob is the dom0 side of measureXenInDom0: it loads the image's
// SELinux module store (so the host's modules are installed with
// semodule), measures the Xen backend and writes the result beside the
// job.
func runXenJob(ctx context.Context, jobName string) error {
	dir := os.Getenv("XENDOM0_JOB")
	if dir == "" {
		return errors.New("XENDOM0_JOB is not set: this job runs only in the dom0 image")
	}
	var job xenJob
	b, err := os.ReadFile(filepath.Join(dir, jobName))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &job); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "vmstart-xen-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	apps := filepath.Join(tmp, "apps")
	if err := os.MkdirAll(apps, 0o755); err != nil {
		return err
	}
	for _, a := range job.Apps {
		if err := copyFile(filepath.Join(dir, a), filepath.Join(apps, a), 0o644); err != nil {
			return err
		}
	}
	bin := filepath.Join(tmp, "mlsgate")
	if err := copyFile(filepath.Join(dir, job.Binary), bin, 0o755); err != nil {
		return err
	}
	semod := false
	if err := LoadDom0Policy(ctx); err != nil {
		fmt.Printf("host modules will be compiled only: %v\n", err)
	} else {
		semod = true
	}
	cfg := VMStartConfig{Backends: []string{"xen"}, Repeat: job.Repeat, URL: job.URL, APIPort: job.APIPort, AppsDir: apps, Binary: bin,
		XenRamdisk: filepath.Join(dir, job.Ramdisk), HostSemodule: semod,
		Progress: func(f string, a ...any) { fmt.Printf(time.Now().Format("15:04:05.000 ")+f+"\n", a...) }}
	r, err := MeasureVMStart(ctx, cfg)
	if err != nil {
		return err
	}
	out, err := json.Marshal(r.Backends[0])
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, job.Out), out, 0o644)
}

// LoadDom0Policy loads the dom0 image's SELinux module store into the
// running kernel (load_policy), so that semodule installs the host's
// modules into the policy in force. It fails where the kernel has no
// SELinux (boot dom0 with image.XenSELinuxArg) or the image no store.
func LoadDom0Policy(ctx context.Context) error {
	fs, err := os.ReadFile("/proc/filesystems")
	if err != nil || !bytes.Contains(fs, []byte("selinuxfs")) {
		return errors.New("the kernel runs no SELinux (boot dom0 with " + image.XenSELinuxArg + ")")
	}
	if _, err := os.Stat("/sys/fs/selinux/enforce"); err != nil {
		os.MkdirAll("/sys/fs/selinux", 0o755)
		if out, err := exec.CommandContext(ctx, "mount", "-t", "selinuxfs", "selinuxfs", "/sys/fs/selinux").CombinedOutput(); err != nil {
			return fmt.Errorf("mount selinuxfs: %v: %s", err, out)
		}
	}
	if out, err := exec.CommandContext(ctx, "load_policy").CombinedOutput(); err != nil {
		return fmt.Errorf("load_policy (the store /etc/selinux/config names): %v: %s", err, out)
	}
	return nil
}
