package bench

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/mapper"
	"github.com/mlsgate/mlsgate/verdict"
)

func TestRunConfigSelected(t *testing.T) {
	c := RunConfig{What: []string{"mapper", "fastpath"}}
	got, err := c.selected()
	if err != nil || strings.Join(got, ",") != "fastpath,mapper" {
		t.Errorf("selected %v, %v; want fastpath,mapper in run order", got, err)
	}
	c.What = []string{"all"}
	if got, _ := c.selected(); len(got) != len(Benchmarks) {
		t.Errorf("all selects %v", got)
	}
	c.What = []string{"fastpth"}
	if _, err := c.selected(); err == nil || !strings.Contains(err.Error(), `"fastpth"`) {
		t.Errorf("a misspelt benchmark gives %v", err)
	}
}

func TestMeasureBundle(t *testing.T) {
	b, err := MeasureBundle("../examples/analyst", "analyst", 3)
	if err != nil {
		t.Fatal(err)
	}
	if b.Iterations != 3 || b.SAs == 0 || b.Policies == 0 || b.P50 <= 0 || b.P99 < b.P50 {
		t.Errorf("timing %+v", b)
	}
	if _, err := MeasureBundle("../examples/analyst", "nosuch", 1); err == nil || !strings.Contains(err.Error(), `"nosuch"`) {
		t.Errorf("unknown application: %v", err)
	}
}

func TestWriteReport(t *testing.T) {
	r := &Report{When: time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC), Host: Host{CPU: "c", CPUs: 2, Kernel: "k", Virtualization: "none"},
		Fastpath: &FastpathReport{Repeat: 10, Rounds: 1, Cases: []FastpathCase{
			{SAs: 10, Name: "empty", NsPerPacket: 26, Ratio: 1}, {SAs: 10, Name: "parse", NsPerPacket: 27, Ratio: 27.0 / 26},
			{SAs: 10, Name: "esp", NsPerPacket: 52, Ratio: 2, Reason: verdict.AllowLabeled}, {SAs: 10, Name: "plain", NsPerPacket: 39, Ratio: 1.5, Reason: verdict.AllowDefault},
			{SAs: 10, Family: FamilyIPv6, Name: "empty", NsPerPacket: 20, Ratio: 1}, {SAs: 10, Family: FamilyIPv6, Name: "secpath", NsPerPacket: 50, Ratio: 2.5, Reason: verdict.AllowLabeled}}},
		Mapper:  &mapper.Result{Rules: 10000, Lookups: 5, Uncached: mapper.LookupStats{PerSecond: 1e6, P50: time.Microsecond}},
		Bundle:  &BundleTiming{App: "analyst", Iterations: 2, P50: time.Millisecond, SAs: 8, Policies: 12},
		Skipped: map[string]string{"vmstart": "no ESP"}, Failed: map[string]string{"agent": "boom"}}
	dir := filepath.Join(t.TempDir(), "out")
	if err := WriteReport(dir, r); err != nil {
		t.Fatal(err)
	}
	md := checkReportDir(t, dir, false)
	for _, want := range []string{"| 10 | IPv4 | 26.0 ns | 27.0 ns | 1.04 | 52.0 ns | 2.00 | 39.0 ns | 1.50 | — | — |",
		"| 10 | IPv6 | 20.0 ns | — | — | — | — | — | — | 50.0 ns | 2.50 |", "verdict, secpath (" + verdict.AllowLabeled.String() + ")", "| policy (cache off) | 1000000 | 1µs |",
		"8 SAs, 12 XFRM policies", "- vmstart (skipped): no ESP", "- agent (failed): boom", "c, 2 cores, kernel k, running in none"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

// checkReportDir checks that the results folder holds a report, JSON that
// reads back, and well-formed plots; it returns the report.
func checkReportDir(t *testing.T, dir string, vmstart bool) string {
	t.Helper()
	js, err := os.ReadFile(filepath.Join(dir, ReportJSON))
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatalf("%s: %v", ReportJSON, err)
	}
	plots := []string{PlotPerPacket}
	if vmstart {
		plots = append(plots, PlotVMStart)
	}
	for _, p := range plots {
		b, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		parseSVG(t, string(b))
	}
	md, err := os.ReadFile(filepath.Join(dir, ReportMarkdown))
	if err != nil {
		t.Fatal(err)
	}
	return string(md)
}

// TestPrivilegedBenchQuick runs the whole harness in quick mode (small
// sizes) so that it cannot rot, and checks the results folder. VM start
// runs with the netns backend when this kernel has ESP; the QEMU part (and
// the netns part booted under QEMU where ESP is missing) is left to
// TestPrivilegedVMStartQuick and make bench. Nothing about speed is asserted.
func TestPrivilegedBenchQuick(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (BPF, network namespaces, bpffs, nftables): run 'sudo make test-kernel'")
	}
	cfg := RunConfig{Quick: true, AppsDir: "../examples/analyst", Progress: t.Logf}
	if err := xfrm.ProbeESP(); err != nil {
		cfg.VMStartBackends, cfg.VMStartSkip = []string{}, "this kernel lacks ESP and the quick test boots no QEMU guest ("+err.Error()+"); make bench measures it"
	} else {
		cfg.VMStartBackends = []string{"netns"}
		bin := filepath.Join(t.TempDir(), "mlsgate")
		if err := buildMlsgate(t.Context(), bin); err != nil {
			t.Fatal(err)
		}
		cfg.Binary = bin
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	r, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if r.Fastpath == nil || len(r.Fastpath.Cases) != 44 || r.Traffic == nil || len(r.Agent) != 2 || r.Mapper == nil || r.MapperAPI == nil || r.Bundle == nil {
		t.Fatalf("report lacks a benchmark: %+v", r)
	}
	if _, skipped := r.Skipped["xfrm"]; skipped == (r.XFRM != nil) {
		t.Errorf("xfrm: result %+v, skipped %q: want exactly one", r.XFRM, r.Skipped["xfrm"])
	} else if r.XFRM != nil && (r.XFRM.SAs != 200 || r.XFRM.Slots < 200 || r.XFRM.Rate <= 0 || r.XFRM.BareRate <= 0) {
		t.Errorf("xfrm in the guest: %+v", r.XFRM)
	}
	wantCases := 1 + 2
	if r.Traffic.NftSkipped == "" {
		wantCases += 4
	}
	if len(r.Traffic.Cases) != wantCases {
		t.Errorf("%d traffic cases, want %d: %+v", len(r.Traffic.Cases), wantCases, r.Traffic.Cases)
	}
	for _, c := range r.Traffic.Cases {
		if c.PacketsPerSec <= 0 || c.P50 <= 0 || c.PPSRatio <= 0 {
			t.Errorf("traffic %s at %d: %+v", c.Name, c.Size, c)
		}
	}
	dir := t.TempDir()
	if err := WriteReport(dir, r); err != nil {
		t.Fatal(err)
	}
	md := checkReportDir(t, dir, r.VMStart != nil)
	for _, want := range []string{"## Per-packet cost", "## Real traffic", "## Control plane", "Label mapper", "Label mapper over its HTTP API", "bundle generation"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	t.Logf("\n%s", md)
}
