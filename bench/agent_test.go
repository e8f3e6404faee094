package bench

import (
	"errors"
	"flag"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/rlimit"
)

var (
	agentFull    = flag.Bool("agent.full", false, "measure the agent at 100,000 SAs and 1,000 vifs (make bench)")
	agentSoak    = flag.Duration("agent.soak", 0, "with -agent.full: churn this long at 100,000 SAs, sampling memory")
	agentProfile = flag.String("agent.heapprofile", "", "write a heap profile after the timed changes (the largest size)")
	agentSyncCPU = flag.String("agent.syncprofile", "", "write a CPU profile of the initial sync (the largest size)")
	agentRedecl  = flag.Bool("agent.redeclare", false, "time declaring every guest again, one at a time, with the agent running (the largest size)")
	agentRestart = flag.Bool("agent.restart", false, "at the end, time a restarted agent's sync over the pinned maps (the largest size)")
)

// TestPrivilegedAgentScale runs the agent over real pinned maps: in make
// test at a small size (so the harness cannot rot), with -agent.full at
// the 100,000 SAs and 1,000 vifs. It prints; it asserts only that
// everything was synced.
func TestPrivilegedAgentScale(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (bpffs mount, BPF maps): run 'sudo make test-kernel'")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	sizes := []AgentScaleConfig{{Vifs: 50, SAs: 2000, Changes: 20}}
	if *agentFull {
		sizes = []AgentScaleConfig{{Vifs: 1000, SAs: 10000, Changes: 300}, {Vifs: 1000, SAs: 100000, Changes: 300, Soak: *agentSoak, HeapProfile: *agentProfile, SyncProfile: *agentSyncCPU, Restart: *agentRestart, Redeclare: *agentRedecl, Progress: t.Logf}}
	}
	var rs []*AgentScaleResult
	for _, c := range sizes {
		r, err := MeasureAgentScale(c)
		if err != nil {
			t.Fatal(err)
		}
		if r.ReconcileError != "" || r.SlotsInUse != r.LiveSAs || r.VifEntries != c.Vifs {
			t.Fatalf("at %d vifs / %d SAs: %d slots, %d vifs in the maps, error %q", c.Vifs, c.SAs, r.SlotsInUse, r.VifEntries, r.ReconcileError)
		}
		rs = append(rs, r)
	}
	t.Logf("\n%s", FormatAgentScale(rs))
}

// TestXFRMSyncGuestJob is the guest side of MeasureXFRMSync: the harness
// boots Debian's kernel with this test binary and runs this test with
// MLSGATE_BENCH_XFRM_JOB set. Elsewhere it has nothing to do.
func TestXFRMSyncGuestJob(t *testing.T) {
	if part := os.Getenv(xfrmPartEnv); part != "" { // a child of the job
		if err := runXFRMPart(part); err != nil {
			t.Fatal(err)
		}
		return
	}
	job := os.Getenv(xfrmJobEnv)
	if job == "" {
		t.Skip("the guest side of MeasureXFRMSync; runs only inside the guest kernel")
	}
	if err := runXFRMJob(t.Context(), job); err != nil {
		t.Fatal(err)
	}
}

// TestXFRMSyncCachedOnly: with CachedOnly and no image in the cache, the
// benchmark is skipped before anything is downloaded or built.
func TestXFRMSyncCachedOnly(t *testing.T) {
	_, err := MeasureXFRMSync(t.Context(), XFRMSyncConfig{SAs: 10, GuestCache: t.TempDir(), CachedOnly: true})
	if !errors.Is(err, ErrNoCachedImage) {
		t.Fatalf("empty cache with CachedOnly: %v, want ErrNoCachedImage", err)
	}
	if _, err := MeasureXFRMSync(t.Context(), XFRMSyncConfig{SAs: 0}); err == nil || !strings.Contains(err.Error(), "0 SAs") {
		t.Errorf("0 SAs: %v", err)
	}
}

func TestFormatXFRMSync(t *testing.T) {
	md := FormatXFRMSync(&XFRMSyncResult{SAs: 1000, BareInstall: 2 * time.Second, BareRate: 500, Install: time.Second, Rate: 1000,
		SyncP50: 60 * time.Millisecond, SyncP99: 240 * time.Millisecond, PollInterval: 2 * time.Millisecond, Accel: "tcg", Kernel: "6.1.0-56-amd64",
		Interval: 3 * time.Millisecond, PacedP50: 4 * time.Millisecond, PacedP99: 9 * time.Millisecond, PacedMax: 12 * time.Millisecond, PacedPoll: time.Millisecond,
		BareCPU: 1900 * time.Millisecond, CPUInstaller: 2500 * time.Millisecond, CPUAgent: 800 * time.Millisecond, CPUObserver: 300 * time.Millisecond})
	for _, want := range []string{"under QEMU TCG", "| 1000 | 2s | 500 | 1s | 1000 | 2.00 | 60ms | 240ms |",
		"one SA every 3ms (the rest as above; the observer looks every 1ms while an SA is outstanding and waits on the installer otherwise): SA → map p50 4ms, p99 9ms, max 12ms.",
		"installer 2.5s (1.9s with no agent), agent 800ms, observer 300ms"} {
		if !strings.Contains(md, want) {
			t.Errorf("table lacks %q:\n%s", want, md)
		}
	}
}
