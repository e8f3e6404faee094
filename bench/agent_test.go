package bench

import (
	"flag"
	"os"
	"testing"

	"github.com/cilium/ebpf/rlimit"
)

var agentFull = flag.Bool("agent.full", false, "measure the agent at 100,000 SAs and 1,000 vifs (make bench)")

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
		sizes = []AgentScaleConfig{{Vifs: 100, SAs: 10000, Changes: 50}, {Vifs: 1000, SAs: 100000, Changes: 50}}
	}
	var rs []*AgentScaleResult
	for _, c := range sizes {
		r, err := MeasureAgentScale(c)
		if err != nil {
			t.Fatal(err)
		}
		if r.ReconcileError != "" || r.SlotsInUse != c.SAs+c.Changes || r.VifEntries != c.Vifs {
			t.Fatalf("at %d vifs / %d SAs: %d slots, %d vifs in the maps, error %q", c.Vifs, c.SAs, r.SlotsInUse, r.VifEntries, r.ReconcileError)
		}
		rs = append(rs, r)
	}
	t.Logf("\n%s", FormatAgentScale(rs))
}
