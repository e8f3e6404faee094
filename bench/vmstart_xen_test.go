package bench

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/loader"
)

// TestVMStartXenJob is the dom0 side of the Xen measurement: MeasureVMStart
// boots the dom0 image with this test binary and runs this test with
// MLSGATE_BENCH_VMSTART_XEN_JOB set. Elsewhere it has nothing to do.
func TestVMStartXenJob(t *testing.T) {
	job := os.Getenv(xenJobEnv)
	if job == "" {
		t.Skip("the dom0 side of MeasureVMStart's Xen measurement; runs only inside the dom0 image")
	}
	if err := runXenJob(context.Background(), job); err != nil {
		t.Fatal(err)
	}
}

// TestFormatVMStartXenColumn: a Xen column gets its cells in Table 1,
// the ready pool's row included, beside the paper's numbers, and the
// report names it emulated when it ran under TCG.
func TestFormatVMStartXenColumn(t *testing.T) {
	run := func(sc, how string, acquire time.Duration) LoadRun {
		r := LoadRun{Scenario: sc, How: how, Version: 1, Steps: []loader.Step{{Name: "resolve", Duration: time.Millisecond}, {Name: "acquire", Duration: acquire}, {Name: StepFirstAnswer, Duration: 40 * time.Millisecond}}}
		r.split()
		return r
	}
	ready := run(ReadyPool, "ready", 160*time.Millisecond)
	ready.Unpause = 150 * time.Millisecond
	xen := &BackendStart{Backend: "xen", Where: "dom0 of Xen 4.17", Hardware: "Xen under QEMU TCG (software emulation, no KVM)",
		Scratch: []LoadRun{run(Scratch, "boot", 9*time.Second)}, Preloaded: []LoadRun{run(Preloaded, "idle", 170*time.Millisecond)},
		Ready: []LoadRun{ready}}
	xen.Medians = []LoadSummary{summarize(Scratch, xen.Scratch), summarize(Preloaded, xen.Preloaded), summarize(ReadyPool, xen.Ready)}
	netns := &BackendStart{Backend: "netns", Where: "this host", Hardware: "2 cores, no VM"}
	out := FormatVMStart(&VMStartResult{URL: "http://ws1.analyst.example/profile", Repeat: 1, Backends: []*BackendStart{netns, xen}})
	for _, want := range []string{
		"| Paper (Xen, 2008) | netns | xen |",
		"| From scratch | Configure/Load Policy | 4.90 s | — | 0.00 s |",
		"| Ready pool (issue 14) | Configure (resolve, authorize, hand-out) | — | — | 161.0 ms |",
		"Emulated figures: the xen columns ran under QEMU's TCG",
		"Not emulated: netns.",
		"| of acquire: xl unpause (Xen hand-out) | — | — | — | — | — | 150.0 |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}
