package kerneltests

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/kernel-tests/xendom0"
	"github.com/mlsgate/mlsgate/loader/backend"
	"github.com/mlsgate/mlsgate/loader/image"
)

// XenDemo is what a Xen demo run in dom0 needs from the host: the dom0
// image, the guest image and the files the job carries.
type XenDemo struct {
	Dom0  *xendom0.Image
	Guest *image.Image
	Opts  xendom0.RunOptions
}

// xenDemoMemory is QEMU's RAM for the demo: dom0's 512 MiB and three
// guests (the browser, an idle one in the pool, the osint guest).
const xenDemoMemory = 1408

// PrepareXenDemo builds (or finds cached) the dom0 and guest images and
// writes the demo's job: the static mlsgate at bin (run in dom0 as
// `mlsgate demo --inside --backend xen`), the applications of appsDir, the
// guests' demo initramfs (backend.XenInitrd with the demo probe: the update
// daemon, the SELinux store, xen-netfront) and the MLS policy dom0 loads.
func PrepareXenDemo(ctx context.Context, t *testing.T, bin, appsDir, work string) (*XenDemo, error) {
	dom0, err := xendom0.Prepare(ctx, "", &lineLog{t: t})
	if err != nil {
		return nil, err
	}
	guest, err := image.Prepare(ctx, "", &lineLog{t: t})
	if err != nil {
		return nil, err
	}
	if guest.KernelRelease != dom0.KernelRelease {
		return nil, errors.New("the guest image's kernel " + guest.KernelRelease + " is not dom0's " + dom0.KernelRelease + " (the guests boot dom0's copy, " + xendom0.GuestKernel + "): rebuild the Xen image")
	}
	exe, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	var mods []string
	for _, m := range guest.Modules {
		if !slices.Contains([]string{"virtio_pci", "9pnet_virtio", "9p"}, m) {
			mods = append(mods, m)
		}
	}
	ramdisk := filepath.Join(work, "guest-demo.cpio")
	if _, err := backend.XenInitrd(ctx, guest, "", exe, backend.InitOptions{Modules: mods, SELinux: true, DemoProbe: true}, ramdisk); err != nil {
		return nil, err
	}
	files := map[string]string{"guest-demo.cpio": ramdisk, "policy.33": guest.Policy}
	apps, _ := filepath.Glob(filepath.Join(appsDir, "*.yaml"))
	if len(apps) == 0 {
		return nil, errors.New("no *.yaml application in " + appsDir)
	}
	for _, a := range apps {
		files[filepath.Base(a)] = a
	}
	return &XenDemo{Dom0: dom0, Guest: guest, Opts: xendom0.RunOptions{
		Binary: bin,
		Args: []string{"demo", "--inside", "--backend", "xen", "--apps", ".", "--xen-kernel", xendom0.GuestKernel,
			"--xen-ramdisk", "guest-demo.cpio", "--load-policy", "policy.33"},
		Files: files, Cmdline: "security=selinux", Memory: xenDemoMemory,
	}}, nil
}

// TestPrivilegedXenDemo runs the paper's analyst scenario on real Xen: Xen
// 4.17 with Debian's kernel as dom0 under QEMU (TCG), where `mlsgate demo
// --backend xen` runs the agent, the policy store, the host mapper, the web
// servers behind labeled IPsec and VMLoad with backend.Xen, whose guests are
// Xen PV domains (xen-netfront, the update daemon, SELinux MLS from the
// image's store) on routed netback vifs. Every flow of the netns demo runs
// there, driven in each domain by the demo probe over its PV console, and
// is checked for its result and its enforcer from the fast path's reason
// counters on the vifs (the demo fails itself when one is not as the
// applications require; the test checks the table too).
func TestPrivilegedXenDemo(t *testing.T) {
	requirePrivileged(t)
	if testing.Short() {
		t.Skip("boots Xen, dom0 and three PV guests under QEMU; run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*xenTimeout)
	defer cancel()
	start := time.Now()
	work := t.TempDir()
	bin := filepath.Join(work, "mlsgate")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/mlsgate/mlsgate/cmd/mlsgate")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build a static mlsgate: %v\n%s", err, out)
	}
	xd, err := PrepareXenDemo(ctx, t, bin, "../examples/analyst", work)
	if errors.Is(err, image.ErrMissingTools) {
		t.Skipf("no Xen VM: %v", err)
	}
	if err != nil {
		t.Fatalf("prepare the Xen demo: %v", err)
	}
	t.Logf("images and the guests' demo initramfs ready in %.1fs (Xen %s, kernel %s)", time.Since(start).Seconds(), xd.Dom0.XenVersion, xd.Dom0.KernelRelease)
	progress := &lineLog{t: t, prefix: "dom0: "}
	xd.Opts.Progress, xd.Opts.Timeout = progress, xenTimeout
	res, err := xd.Dom0.Run(ctx, xd.Opts)
	progress.flush()
	if err != nil {
		t.Fatalf("dom0 run: %v", err)
	}
	t.Logf("Xen demo under QEMU TCG: dom0 boot %.1fs, demo %.1fs, QEMU %.1fs, test %.1fs; init: %s",
		res.BootDuration.Seconds(), res.RunDuration.Seconds(), res.Wall.Seconds(), time.Since(start).Seconds(), strings.ReplaceAll(res.Boot, "\n", ", "))
	if res.ExitCode != 0 {
		if l := res.Files["demo-log.log"]; l != "" {
			var denied []string
			for _, line := range strings.Split(l, "\n") {
				if strings.Contains(line, `"denied"`) || strings.Contains(line, `"xen backend"`) {
					denied = append(denied, line)
				}
			}
			t.Logf("the agent's denial events and the backend's steps:\n%s", strings.Join(denied, "\n"))
		}
		for name, s := range res.Files {
			if strings.HasPrefix(name, "guest-") {
				if c := crashLines(s, 15); c != "" {
					t.Logf("%s holds a crash report:\n%s", name, c)
				}
				t.Logf("%s:\n%s", name, lastLines(s, 25))
			}
		}
		t.Logf("xl dmesg ends:\n%s\ndom0 dmesg ends:\n%s", lastLines(res.Files["xl-dmesg"], 15), lastLines(res.Files["dmesg"], 15))
		t.Fatalf("the Xen demo failed in dom0 (exit %d); console ends:\n%s", res.ExitCode, lastLines(res.Serial, 20))
	}
	text := res.Output
	i := strings.Index(text, "Flows")
	if i < 0 {
		t.Fatalf("the Xen demo printed no flow table:\n%s", text)
	}
	table := text[i:]
	if !strings.Contains(text, "guests are Xen PV domains") {
		t.Errorf("the demo did not say it ran on Xen")
	}
	if !regexp.MustCompile(`(?m)^All \d+ flows carried or stopped by the enforcer their applications require\.$`).MatchString(table) {
		t.Errorf("the demo did not report every flow checked against its enforcer")
	}
	checkFlows(t, table, analystFlows)
	// Each guest's SELinux refused the application's type before its
	// bundle's module was installed, and took it after.
	checkFlows(t, table, []wantFlow{
		{"labeled socket before the bundle's SELinux module", "s0/i5", "refused", "guest SELinux"},
		{"labeled socket after the bundle's SELinux module", "s0/i5", "delivered", "guest SELinux"},
		{"labeled socket before the bundle's SELinux module", "s0/i0", "refused", "guest SELinux"},
		{"labeled socket after the bundle's SELinux module", "s0/i0", "delivered", "guest SELinux"},
	})
	if !regexp.MustCompile(`(?m)^read feed page\s+\S+ \(osint\).*delivered`).MatchString(table) {
		t.Errorf("the osint guest did not read the feed")
	}
}
