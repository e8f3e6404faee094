package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/backend"
	"github.com/mlsgate/mlsgate/policystore"
)

// The demo on Xen: the same scenario (runScenario: agent, policy store,
// host mapper, web servers behind labeled IPsec, VMLoad, the flows and
// their checks, the report), with VMLoad booting the guests as Xen PV
// domains through backend.Xen (routed vifs, `xl create -p`, declared to the
// agent, attached, unpaused) and the flows driven inside each domain by the
// demo probe over its PV console (consoleGuest). It runs in dom0.

// xenDemoOptions are the demo's backend flags.
type xenDemoOptions struct {
	Backend string // netns or xen
	// Kernel and Ramdisk are the dom0 paths of the guests' kernel and of
	// a demo initramfs (backend.XenInitrd with InitOptions.DemoProbe).
	Kernel, Ramdisk string
	Memory          int    // guest RAM, MiB
	Policy          string // an MLS policy dom0 loads before the demo (the harness's dom0 has none)
	ProbeWait       time.Duration
	// BootWait bounds a guest's boot (backend.DefaultBootTimeout is too
	// short for Xen under TCG on a loaded host).
	BootWait time.Duration
}

func (xo *xenDemoOptions) flags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&xo.Backend, "backend", "netns", "where guests run: netns (network namespaces) or xen (Xen PV domains; run in dom0, or make demo-xen)")
	f.StringVar(&xo.Kernel, "xen-kernel", "", "--backend xen: the guests' kernel in dom0 (a raw vmlinux boots fastest)")
	f.StringVar(&xo.Ramdisk, "xen-ramdisk", "", "--backend xen: the guests' demo initramfs in dom0 (update daemon, SELinux store, xen-netfront, the demo probe)")
	f.IntVar(&xo.Memory, "xen-memory", 256, "--backend xen: each guest's RAM in MiB")
	f.StringVar(&xo.Policy, "load-policy", "", "--backend xen: load this binary SELinux MLS policy into dom0's kernel first (the harness's dom0 boots without one)")
	f.MarkHidden("load-policy")
	xo.ProbeWait = 90 * time.Second
	f.DurationVar(&xo.BootWait, "xen-boot-wait", 5*time.Minute, "--backend xen: how long a guest's boot may take (xl create to the update daemon answering)")
}

// backend is the Xen backend of the demo: the guests' vifs routed by
// vif-mlsgate, their consoles on hvc0 (where the probe answers).
func (xo xenDemoOptions) backend(exe, agentSock, configDir string, log *slog.Logger) (*backend.Xen, error) {
	if xo.Kernel == "" || xo.Ramdisk == "" {
		return nil, errors.New("--backend xen needs --xen-kernel and --xen-ramdisk: the guests' kernel and the demo initramfs (backend.XenInitrd with the demo probe) in dom0")
	}
	for _, p := range []string{xo.Kernel, xo.Ramdisk} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("--backend xen: %w", err)
		}
	}
	return &backend.Xen{
		ConfigDir: configDir, Kernel: xo.Kernel, Ramdisk: xo.Ramdisk, Memory: xo.Memory,
		// SELinux in the guest: the init loads the image's policy store,
		// the update daemon installs the bundle's module with semodule.
		ExtraCmdline: "console=hvc0 quiet lsm=lockdown,yama,selinux,bpf",
		Script:       backend.DefaultXenScript,
		Progress:     func(line string) { log.Info("xen backend", "step", line) },
	}, nil
}

// runXenDemo runs the scenario with Xen guests. It must run in dom0.
// inside says the dom0 is the test harness's (kernel-tests/xendom0): the
// demo then readies it as a dom0 of a real install would be (an SELinux
// MLS policy in the kernel, bpffs, vif-mlsgate's settings pointing at the
// demo's agent). Paths relative to the job directory of that harness
// ($XENDOM0_JOB) are resolved there.
func runXenDemo(ctx context.Context, out io.Writer, apps string, inside bool, xo xenDemoOptions) error {
	caps, _ := os.ReadFile("/proc/xen/capabilities")
	if !strings.Contains(string(caps), "control_d") {
		return errors.New("--backend xen runs in a Xen dom0 (/proc/xen/capabilities says control_d), and this is not one: `make demo-xen` boots Xen 4.17 and a Debian dom0 under QEMU and runs it there")
	}
	if inside {
		if job := os.Getenv("XENDOM0_JOB"); job != "" {
			for _, p := range []*string{&apps, &xo.Ramdisk, &xo.Policy} {
				if *p != "" && !filepath.IsAbs(*p) {
					*p = filepath.Join(job, *p)
				}
			}
		}
		if xo.Policy != "" {
			if err := loadSELinuxPolicy(xo.Policy); err != nil {
				return err
			}
		}
		if err := mountBPFFS(); err != nil {
			return err
		}
	}
	if why := kernelLacks(); why != "" {
		return fmt.Errorf("dom0's kernel %s: the host side of the demo (labeled IPsec toward the web servers) needs both", why)
	}
	fmt.Fprintln(out, "Running the demo in Xen's dom0: guests are Xen PV domains booted by VMLoad (xl), on routed netback vifs.")
	if inside {
		fmt.Fprintln(out, "(Xen 4.17 and dom0 run under QEMU with software emulation (TCG): times below are emulated, not native.)")
	}
	return runScenario(ctx, out, apps, xo)
}

// vifDefaults writes vif-mlsgate's settings so that it declares vifs to
// the demo's agent, and returns the function that removes them. An
// operator's own settings are never overwritten.
func vifDefaults(exe, agentSock string) (func(), error) {
	const path = "/etc/default/mlsgate-vif"
	if _, err := os.Stat(path); err == nil {
		return nil, fmt.Errorf("%s exists: the demo runs its own agent and would need vif-mlsgate to reach it; run the demo in a dom0 without an mlsgate install (make demo-xen)", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	defaults := fmt.Sprintf("MLSGATE=%s\nMLSGATE_AGENT=unix:%s\nMLSGATE_VIF_WAIT=60s\n", exe, agentSock)
	if err := os.WriteFile(path, []byte(defaults), 0o644); err != nil {
		return nil, fmt.Errorf("vif-mlsgate's settings: %w", err)
	}
	return func() { os.Remove(path) }, nil
}

// loadSELinuxPolicy loads the binary policy at path into the kernel
// (permissive), as the guest images' init does: the kernel must have been
// booted with SELinux among its LSMs.
func loadSELinuxPolicy(path string) error {
	const fs = "/sys/fs/selinux"
	if _, err := os.Stat(fs + "/load"); err != nil {
		if err := unix.Mount("selinuxfs", fs, "selinuxfs", 0, ""); err != nil {
			return fmt.Errorf("mount selinuxfs on %s: %w (boot dom0 with lsm=lockdown,yama,selinux,bpf)", fs, err)
		}
	}
	pol, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--load-policy: %w", err)
	}
	f, err := os.OpenFile(fs+"/load", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	// The policy must reach the kernel in one write.
	n, err := f.Write(pol)
	f.Close()
	if err != nil || n != len(pol) {
		return fmt.Errorf("load the SELinux policy %s into dom0's kernel: wrote %d of %d bytes: %v", path, n, len(pol), err)
	}
	return os.WriteFile(fs+"/enforce", []byte("0"), 0)
}

// mountBPFFS mounts bpffs on /sys/fs/bpf unless one is there.
func mountBPFFS() error {
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	os.MkdirAll("/sys/fs/bpf", 0o700)
	if err := unix.Mount("bpffs", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs on /sys/fs/bpf: %w", err)
	}
	return nil
}

// socketsBefore records, for the guest g a backend just booted (no bundle
// has reached it yet: the loader pushes one only after Boot returns),
// whether a socket of each application's type can be created there. The
// guest's policy store has the project's base policy alone, so none can.
func (s *scenario) socketsBefore(g *loader.Guest, apps []*policystore.Application) error {
	start := time.Now()
	d, err := s.guest(g)
	if err != nil {
		return err
	}
	res := map[string]error{}
	for _, a := range apps {
		res[a.Type] = d.Socket(secCtx(a.Type, a.Guest.Low))
	}
	s.driversMu.Lock()
	s.beforeModules[g.VM] = res
	s.beforeTook[g.VM] = time.Since(start)
	s.driversMu.Unlock()
	return nil
}

// modules records two flows for guest g of app: a socket of the
// application's type before its bundle's SELinux module reached the guest
// (refused by the guest kernel's SELinux: the type is unknown) and after
// (created). Together they show that the module the update daemon
// installed with semodule, not the image, made the application's labeled
// sockets possible.
func (s *scenario) modules(g *loader.Guest, app *policystore.Application) {
	ctx := secCtx(app.Type, app.Guest.Low)
	from := g.Name + " (" + app.Name + ")"
	s.driversMu.Lock()
	before, ok := s.beforeModules[g.VM][app.Type]
	booted := s.beforeModules[g.VM] != nil
	took := s.beforeTook[g.VM]
	s.driversMu.Unlock()
	f := flow{What: "labeled socket before the bundle's SELinux module", From: from, To: "guest kernel", Label: app.Guest.Low.String(),
		Want: expect{"refused", enforcer{Kind: byGuestSELinux}}, By: byGuestSELinux}
	switch {
	case !booted || !ok:
		f.Result, f.Detail = "error", fmt.Sprintf("no check of %s's sockets was made when %s booted", app.Type, g.Name)
	case before == nil:
		f.Result, f.Detail = "delivered", fmt.Sprintf("a socket of %s was created before any bundle: the image's policy already knows the type", ctx)
	default:
		f.Result, f.Detail = "refused", before.Error()
	}
	s.record(f, observed{})
	fmt.Fprintf(s.out, "    (%s; checked during the guest's boot, which it lengthened by %v)\n", f.Detail, took.Round(time.Millisecond))
	f = flow{What: "labeled socket after the bundle's SELinux module", From: from, To: "guest kernel", Label: app.Guest.Low.String(),
		Want: expect{"delivered", enforcer{Kind: byGuestSELinux}}, By: byGuestSELinux}
	d, err := s.guest(g)
	if err == nil {
		err = d.Socket(ctx)
	}
	if err != nil {
		f.Result, f.Detail = "refused", err.Error()
	} else {
		f.Result = "delivered"
	}
	s.record(f, observed{})
}
