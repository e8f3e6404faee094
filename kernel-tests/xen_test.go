package kerneltests

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/bench"
	"github.com/mlsgate/mlsgate/kernel-tests/guestvm"
	"github.com/mlsgate/mlsgate/kernel-tests/xendom0"
	"github.com/mlsgate/mlsgate/loader/backend"
	"github.com/mlsgate/mlsgate/loader/image"
)

// indom0Pkg holds the tests that run inside the Xen dom0.
const indom0Pkg = "github.com/mlsgate/mlsgate/kernel-tests/indom0"

// xenTimeout bounds the boot of Xen and dom0 and the tests there (3-5
// minutes under TCG on a shared 2-core host); the tests in dom0 give up a
// minute earlier, with the stacks of what hung.
const (
	xenTimeout      = 25 * time.Minute
	xenInnerTimeout = "24m"
)

// TestPrivilegedXen boots Xen 4.17 with Debian's kernel as dom0 under QEMU
// (TCG: software emulation) and runs kernel-tests/indom0 there: the static
// mlsgate agent enforcing on the routed netback vifs of PV guests that
// loader/backend.Xen creates with xl (paused until their vif is attached),
// the VM-start figures on Xen, a guest impersonating another, domains made
// by hand with deploy/xen/vif-mlsgate (declared; refused with the agent
// stopped) and an undeclared vif (denied).
// MLSGATE_GUEST_CACHE moves the image cache (Xen's is its xen folder).
func TestPrivilegedXen(t *testing.T) {
	requirePrivileged(t)
	if testing.Short() {
		t.Skip("boots Xen and dom0 under QEMU (3-5 minutes when the image is cached); run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*xenTimeout)
	defer cancel()

	start := time.Now()
	img, err := xendom0.Prepare(ctx, "", &lineLog{t: t})
	if errors.Is(err, guestvm.ErrMissingTools) {
		t.Skipf("no Xen VM: %v", err)
	}
	if err != nil {
		t.Fatalf("prepare the Xen image: %v", err)
	}
	t.Logf("Xen image: Xen %s, dom0 kernel %s, from %s, ready in %.1fs", img.XenVersion, img.KernelRelease, img.Dir, time.Since(start).Seconds())

	start = time.Now()
	dir := t.TempDir()
	bin := filepath.Join(dir, "indom0.test")
	if err := guestvm.BuildTestBinary(ctx, indom0Pkg, bin); err != nil {
		t.Fatal(err)
	}
	agentBin := filepath.Join(dir, "mlsgate")
	build := exec.CommandContext(ctx, "go", "build", "-o", agentBin, "github.com/mlsgate/mlsgate/cmd/mlsgate")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build a static mlsgate: %v\n%s", err, out)
	}
	t.Logf("built %s and a static mlsgate in %.1fs", indom0Pkg, time.Since(start).Seconds())

	// The guests of the Xen VM-start measurement run the update daemon:
	// the guest image with xen-netfront, this mlsgate and its /init.
	start = time.Now()
	gimg, err := guestvm.Prepare(ctx, "", &lineLog{t: t})
	if errors.Is(err, guestvm.ErrMissingTools) {
		t.Skipf("no guest image for the Xen guests: %v", err)
	}
	if err != nil {
		t.Fatalf("prepare the guest image: %v", err)
	}
	bin2, err := os.ReadFile(agentBin)
	if err != nil {
		t.Fatal(err)
	}
	guestRamdisk := filepath.Join(dir, "guest-initrd")
	if _, err := backend.XenInitrd(ctx, gimg, "", bin2, backend.InitOptions{Modules: backend.XenGuestModules(gimg)}, guestRamdisk); err != nil {
		t.Fatalf("the Xen guests' ramdisk: %v", err)
	}
	files := map[string]string{"mlsgate": agentBin, "guest-initrd": guestRamdisk}
	apps, _ := filepath.Glob("../examples/analyst/*.yaml")
	for _, a := range apps {
		files[filepath.Base(a)] = a
	}
	t.Logf("the Xen guests' ramdisk (update daemon) built in %.1fs", time.Since(start).Seconds())

	args := []string{"-test.v", "-test.count=1", "-test.timeout=" + xenInnerTimeout}
	if only := os.Getenv("MLSGATE_XEN_TESTS"); only != "" {
		// A developer's shortcut: only these dom0 tests (a -test.run regexp).
		args = append(args, "-test.run="+only)
		t.Logf("dom0 runs only the tests matching %q (MLSGATE_XEN_TESTS)", only)
	}
	progress := &lineLog{t: t, prefix: "dom0: "}
	res, err := img.Run(ctx, xendom0.RunOptions{
		Binary: bin, Args: args,
		Files: files, Timeout: xenTimeout, Progress: progress, Cmdline: image.XenSELinuxArg,
		Env: map[string]string{bench.XenEmulationEnv: "QEMU TCG (software emulation, no KVM): 2 vCPUs, 1024 MiB, dom0 512 MiB"},
	})
	progress.flush()
	if err != nil {
		t.Fatalf("dom0 run: %v", err)
	}
	t.Logf("Xen under QEMU TCG: dom0 boot %.2fs, tests %.2fs, QEMU %.2fs; init: %s",
		res.BootDuration.Seconds(), res.RunDuration.Seconds(), res.Wall.Seconds(), strings.ReplaceAll(res.Boot, "\n", ", "))
	if md, ok := res.Files["vmstart.md"]; ok {
		t.Logf("Table 1 with the Xen column (measured in dom0):\n%s", md)
		if d := os.Getenv("MLSGATE_BENCH_RESULTS"); d != "" {
			os.MkdirAll(d, 0o755)
			for name, out := range map[string]string{"vmstart.md": "vmstart-xen.md", "vmstart.json": "vmstart-xen.json"} {
				if err := os.WriteFile(filepath.Join(d, out), []byte(res.Files[name]), 0o644); err != nil {
					t.Error(err)
				}
			}
		}
	}
	var failed []string
	for _, m := range guestFailRE.FindAllStringSubmatch(res.Output, -1) {
		failed = append(failed, m[1])
	}
	switch {
	case res.ExitCode != 0:
		for name, s := range res.Files {
			if strings.HasPrefix(name, "guest-") {
				t.Logf("%s:\n%s", name, lastLines(s, 15))
			}
		}
		t.Logf("xl dmesg ends:\n%s", lastLines(res.Files["xl-dmesg"], 15))
		t.Errorf("dom0 tests failed: %s (exit %d); console ends:\n%s", strings.Join(failed, ", "), res.ExitCode, lastLines(res.Serial, 20))
	case !guestPassRE.MatchString(res.Output):
		t.Errorf("no dom0 test passed (all skipped?)")
	}
}
