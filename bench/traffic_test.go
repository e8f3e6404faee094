package bench

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNftRuleset(t *testing.T) {
	g, h := netip.MustParseAddr("10.0.0.7"), netip.MustParseAddr("10.0.0.1")
	rules := NftRuleset(TrafficNftRules, "vif7.0", g, h, 0xc0000000, 3)
	for _, want := range []string{
		"table netdev mlsgate_bench {",
		`type filter hook ingress device "vif7.0" priority 0; policy drop;`,
		"ip saddr 10.0.0.7 ip daddr 10.0.0.1 esp spi 0xc0000000 accept",
		"ip saddr 10.0.0.7 ip daddr 10.0.0.1 esp spi 0xc0000002 accept",
	} {
		if !strings.Contains(rules, want) {
			t.Errorf("rules lack %q:\n%s", want, rules)
		}
	}
	if n := strings.Count(rules, " accept\n"); n != 3 {
		t.Errorf("%d accept rules, want 3 (one per SA):\n%s", n, rules)
	}
	set := NftRuleset(TrafficNftSet, "vif7.0", g, h, 0xc0000000, 10)
	if n := strings.Count(set, " accept\n"); n != 1 {
		t.Errorf("%d accept rules with a set, want 1:\n%s", n, set)
	}
	if n := strings.Count(set, "10.0.0.7 . 10.0.0.1 . 0xc000"); n != 10 || !strings.Contains(set, "0xc0000009") {
		t.Errorf("%d set elements, want 10 up to 0xc0000009:\n%s", n, set)
	}
}

// TestNftRulesetParses hands both forms to nft's parser without touching
// the kernel (--check), where nft is installed.
func TestNftRulesetParses(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft not installed (make deps-bench)")
	}
	if os.Geteuid() != 0 {
		t.Skip("nft --check needs root (it opens a netlink socket)")
	}
	dir := t.TempDir()
	for _, kind := range []string{TrafficNftRules, TrafficNftSet} {
		p := filepath.Join(dir, kind+".nft")
		// lo exists everywhere; --check commits nothing.
		if err := os.WriteFile(p, []byte(NftRuleset(kind, "lo", netip.MustParseAddr("10.0.0.7"), netip.MustParseAddr("10.0.0.1"), 1, 20)), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("nft", "--check", "-f", p).CombinedOutput(); err != nil {
			t.Errorf("%s: nft --check: %v\n%s", kind, err, out)
		}
	}
}

func TestTrafficRatios(t *testing.T) {
	cs := trafficRatios([]TrafficCase{
		{Name: TrafficNone, PacketsPerSec: 1e6, P50: 10 * time.Microsecond},
		{Name: TrafficNftRules, Size: 100, PacketsPerSec: 5e5, P50: 30 * time.Microsecond},
	})
	if cs[0].PPSRatio != 1 || cs[1].PPSRatio != 0.5 || cs[1].P50Ratio != 3 {
		t.Errorf("ratios %+v", cs)
	}
	// 2 µs per packet against 1 µs: 1000 ns added.
	if a := cs[1].AddedNs; a < 999.9 || a > 1000.1 {
		t.Errorf("added %v ns, want 1000", a)
	}
	out := FormatTraffic(&TrafficResult{Cases: cs, Rounds: 1, NftSkipped: ""})
	if !strings.Contains(out, "| nft-rules | 100 | — | 500000 | 0.50 | 1000 | 30µs |") {
		t.Errorf("table:\n%s", out)
	}
}

func TestTrafficConfigRefuses(t *testing.T) {
	for _, c := range []TrafficConfig{{Sizes: []int{0}, Packets: 1, Exchanges: 1}, {Packets: 0, Exchanges: 1}, {Packets: 1}} {
		if err := c.defaults(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}
