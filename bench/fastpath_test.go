package bench

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"testing"

	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netns"
)

var (
	fastpathSAs = flag.String("fastpath.sas", "10,10000,1000000", "SA counts for BenchmarkFastpath")
	repeat      = flag.Int("fastpath.repeat", 200_000, "BPF_PROG_TEST_RUN repetitions per measurement")
)

func privileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (BPF_PROG_TEST_RUN): run 'sudo make bench'")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	// Test-run packets use the loopback of the current namespace: use one of
	// our own. The thread is discarded with the namespace when the test ends.
	runtime.LockOSThread()
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("new network namespace: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
}

// TestPrivilegedFastpathBenchQuick runs the whole harness at small sizes so
// that it cannot rot; it checks that every case took the intended path and
// says nothing about speed.
func TestPrivilegedFastpathBenchQuick(t *testing.T) {
	privileged(t)
	cases, mem, err := MeasureFastpath(FastpathConfig{SACounts: []int{10, 1000}, Repeat: 1000, Rounds: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(cases) != 44 || len(mem) != 2 {
		t.Fatalf("got %d cases and %d memory rows, want 44 (2 SA counts × 2 families × 11 programs) and 2", len(cases), len(mem))
	}
	seen := map[string]int{}
	for _, c := range cases {
		seen[c.Family+" "+c.Name]++
		if c.NsPerPacket <= 0 {
			t.Errorf("%d SAs %s %s: %v ns per packet", c.SAs, c.Family, c.Name, c.NsPerPacket)
		}
	}
	for _, fam := range []string{FamilyIPv4, FamilyIPv6} {
		for _, name := range []string{"empty", "parse", "esp", "plain", "secpath"} {
			if seen[fam+" "+name] != 2 {
				t.Errorf("%s %s measured %d times, want once per SA count", fam, name, seen[fam+" "+name])
			}
		}
	}
	if mem[1].Bytes["sa_slots"] == 0 {
		t.Errorf("no memory reported for sa_slots: %v", mem[1].Bytes)
	}
	t.Log("\n" + FormatFastpath(cases, mem))
}

// BenchmarkFastpath prints ns per packet for the empty program, the parser
// and the full verdict at each SA count, and their ratio to the empty
// program measured in the same run.
func BenchmarkFastpath(b *testing.B) {
	privileged(b)
	var counts []int
	for _, s := range strings.Split(*fastpathSAs, ",") {
		var n int
		if _, err := fmt.Sscan(s, &n); err != nil {
			b.Fatalf("-fastpath.sas %q: %v", *fastpathSAs, err)
		}
		counts = append(counts, n)
	}
	for range b.N {
		cases, mem, err := MeasureFastpath(FastpathConfig{SACounts: counts, Repeat: *repeat, Rounds: 15,
			Progress: func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }})
		if err != nil {
			b.Fatal(err)
		}
		fmt.Println(FormatFastpath(cases, mem))
		for _, c := range cases {
			if c.Family == FamilyIPv4 && c.Name == "esp" && c.SAs == counts[len(counts)-1] {
				b.ReportMetric(c.NsPerPacket, "ns/esp-packet")
				b.ReportMetric(c.Ratio, "x-empty")
			}
		}
	}
}

// FormatFastpath renders the results as Markdown tables.
func FormatFastpath(cases []FastpathCase, mem []MapMemory) string {
	var sb strings.Builder
	sb.WriteString("| SAs | family | program | ns/packet | × empty |\n|---:|---|---|---:|---:|\n")
	for _, c := range cases {
		what := c.Name
		if c.Name == "esp" || c.Name == "plain" || c.Name == "secpath" {
			what = fmt.Sprintf("full verdict, %s packet (%s)", c.Name, c.Reason)
		}
		fmt.Fprintf(&sb, "| %d | %s | %s | %.1f | %.2f |\n", c.SAs, c.Family, what, c.NsPerPacket, c.Ratio)
	}
	sb.WriteString("\n| SAs | map memory (memlock) | fill time |\n|---:|---|---:|\n")
	for _, m := range mem {
		names := make([]string, 0, len(m.Bytes))
		for n := range m.Bytes {
			names = append(names, n)
		}
		sort.Strings(names)
		var parts []string
		for _, n := range names {
			parts = append(parts, fmt.Sprintf("%s %.1f MiB", n, float64(m.Bytes[n])/(1<<20)))
		}
		fmt.Fprintf(&sb, "| %d | total %.1f MiB: %s | %v |\n", m.SAs, float64(m.Total)/(1<<20), strings.Join(parts, ", "), m.Fill.Round(1e6))
	}
	return sb.String()
}
