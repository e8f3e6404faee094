package indom0

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	goselinux "github.com/opencontainers/selinux/go-selinux"

	"github.com/mlsgate/mlsgate/bench"
)

// hostTypeContext is a context of the analyst application's SA type, which
// only the host module of its bundle (mlsgate_analyst_host) declares.
const hostTypeContext = "system_u:system_r:analyst_t:s4"

// TestXenVMStartSemodule measures the paper's Table 1 on Xen (quick mode:
// one load per scenario) with the loader, the agent and the guests' update
// daemons all real: from scratch (`xl create -p`, vif attached, unpause,
// push), pre-loaded (an idle guest paused after its boot; the hand-out is
// `xl unpause` and the push) and ready pool (configured ahead and paused;
// the hand-out is `xl unpause` only). dom0 runs SELinux with the image's
// module store loaded, and the loader installs the host's module of each
// bundle with semodule (the loader's --semodule): before the first load the
// kernel does not know the application's SA type, after it the type is
// valid and semodule lists the module.
//
// The host passes the guests' ramdisk (backend.XenInitrd) as guest-initrd,
// the applications as *.yaml and the static mlsgate beside the test
// binary; the table goes to the log and to vmstart.md and vmstart.json in
// the job directory, which the host reads back.
func TestXenVMStartSemodule(t *testing.T) {
	requireDom0(t)
	job := os.Getenv("XENDOM0_JOB")
	ramdisk := filepath.Join(job, "guest-initrd")
	if _, err := os.Stat(ramdisk); err != nil {
		t.Skipf("no guests' ramdisk at %s: the host passes one (kernel-tests' TestPrivilegedXen does)", ramdisk)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	apps := t.TempDir()
	yamls, _ := filepath.Glob(filepath.Join(job, "*.yaml"))
	if len(yamls) == 0 {
		t.Fatalf("no application files (*.yaml) in %s", job)
	}
	for _, y := range yamls {
		b, err := os.ReadFile(y)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(apps, filepath.Base(y)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	t0 := time.Now()
	if err := bench.LoadDom0Policy(ctx); err != nil {
		t.Fatalf("load the image's SELinux store in dom0: %v", err)
	}
	if !goselinux.GetEnabled() {
		t.Fatal("load_policy succeeded but SELinux reports no policy loaded")
	}
	t.Logf("dom0 runs the image's base policy (load_policy %v), enforce=%d", time.Since(t0).Round(time.Millisecond), goselinux.EnforceMode())
	if err := goselinux.SecurityCheckContext(hostTypeContext); err == nil {
		t.Fatalf("before any load, the kernel already accepts %s: the base policy declares the application's type, so the check below proves nothing", hostTypeContext)
	}
	if out, _ := exec.Command("semodule", "-l").CombinedOutput(); strings.Contains(string(out), "mlsgate_analyst_host") {
		t.Fatalf("before any load, semodule lists mlsgate_analyst_host:\n%s", out)
	}

	r, err := bench.MeasureVMStart(ctx, bench.VMStartConfig{
		Backends: []string{"xen"}, Repeat: 1, AppsDir: apps, Binary: filepath.Join(job, "mlsgate"),
		XenRamdisk: ramdisk, HostSemodule: true, Progress: t.Logf,
	})
	if err != nil {
		t.Fatalf("vmstart on Xen: %v", err)
	}
	b := r.Backends[0]
	for _, sc := range []struct {
		name string
		runs []bench.LoadRun
		how  string
	}{{bench.Scratch, b.Scratch, "boot"}, {bench.Preloaded, b.Preloaded, "idle"}, {bench.ReadyPool, b.Ready, "ready"}} {
		if len(sc.runs) != 1 || sc.runs[0].How != sc.how || sc.runs[0].Version == 0 {
			t.Errorf("%s: runs %+v, want one whose guest came by %q with a bundle version", sc.name, sc.runs, sc.how)
		}
	}
	if !strings.Contains(b.Where, "installed with semodule") {
		t.Errorf("the Xen column says %q: the host's modules must be installed with semodule here", b.Where)
	}

	if err := goselinux.SecurityCheckContext(hostTypeContext); err != nil {
		t.Errorf("after the loads, the kernel still rejects %s (%v): the host module was not loaded", hostTypeContext, err)
	}
	out, err := exec.Command("semodule", "-l").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "mlsgate_analyst_host") {
		t.Errorf("semodule -l after the loads (%v) does not list mlsgate_analyst_host:\n%s", err, out)
	}

	table := bench.FormatVMStart(r)
	t.Logf("Table 1 with the Xen column:\n%s", table)
	if err := bench.WriteVMStart(job, r); err != nil {
		t.Errorf("write the table beside the job: %v", err)
	}
}
