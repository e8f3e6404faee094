package bench

import (
	"encoding/xml"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/loader"
)

// parseSVG decodes the document and counts its elements by name.
func parseSVG(t *testing.T, doc string) map[string]int {
	t.Helper()
	dec := xml.NewDecoder(strings.NewReader(doc))
	n := map[string]int{}
	root := ""
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, doc)
		}
		if se, ok := tok.(xml.StartElement); ok {
			if root == "" {
				root = se.Name.Local
				if se.Name.Space != "http://www.w3.org/2000/svg" {
					t.Errorf("root namespace %q, want the SVG namespace", se.Name.Space)
				}
			}
			n[se.Name.Local]++
		}
	}
	if root != "svg" {
		t.Fatalf("root element %q, want svg", root)
	}
	return n
}

func TestPerPacketSVG(t *testing.T) {
	r := &Report{Host: Host{CPU: "cpu <x> & y", CPUs: 2, Virtualization: "none"},
		Fastpath: &FastpathReport{Cases: []FastpathCase{
			{SAs: 10, Name: "empty", NsPerPacket: 26}, {SAs: 10, Name: "esp", NsPerPacket: 45},
			{SAs: 1_000_000, Name: "empty", NsPerPacket: 26}, {SAs: 1_000_000, Name: "esp", NsPerPacket: 46},
		}},
		Traffic: &TrafficResult{Cases: []TrafficCase{
			{Name: TrafficNone}, {Name: TrafficMlsgate, Size: 10, AddedNs: -30}, {Name: TrafficMlsgate, Size: 10000, AddedNs: 60},
			{Name: TrafficNftRules, Size: 10, AddedNs: 300}, {Name: TrafficNftRules, Size: 10000, AddedNs: 250_000},
			{Name: TrafficNftSet, Size: 10, AddedNs: 90}, {Name: TrafficNftSet, Size: 10000, AddedNs: 95},
		}},
	}
	doc := PerPacketSVG(r)
	n := parseSVG(t, doc)
	if n["polyline"] != 5 || n["circle"] != 10 {
		t.Errorf("%d lines and %d points, want 5 series and 10 points\n%s", n["polyline"], n["circle"], doc)
	}
	// x from 10 to 1M: decades 1..6 labelled; y up to 250 µs: 1ms tick.
	for _, want := range []string{">1M<", ">10k<", ">1ms<", "nftables rules (added)", `fill="white"`, "cpu &lt;x&gt; &amp; y"} {
		if !strings.Contains(doc, want) {
			t.Errorf("plot lacks %q", want)
		}
	}
	// The empty report still gives a valid, empty plot.
	if n := parseSVG(t, PerPacketSVG(&Report{})); n["polyline"] != 0 {
		t.Errorf("empty report plots %d lines", n["polyline"])
	}
}

func TestVMStartSVG(t *testing.T) {
	steps := []loader.Step{{Name: "acquire", Duration: 3 * time.Second}, {Name: "bundle", Duration: 200 * time.Millisecond}, {Name: "ready"}, {Name: StepFirstAnswer, Duration: time.Second}}
	r := &VMStartResult{Backends: []*BackendStart{{Backend: "qemu", Hardware: "TCG",
		Medians: []LoadSummary{{Scenario: Scratch, Runs: 1, Steps: steps}, {Scenario: Preloaded, Runs: 1, Steps: steps[1:]},
			{Scenario: ReadyPool, Runs: 1, Steps: []loader.Step{{Name: "acquire", Duration: 4 * time.Millisecond}, {Name: StepFirstAnswer, Duration: 60 * time.Millisecond}}}}}}}
	doc := VMStartSVG(r)
	n := parseSVG(t, doc)
	// Bars: paper 2+2 parts, scratch 3, preloaded 2, ready pool 2; legend:
	// 2 paper + 3 steps; background 1.
	if n["rect"] != 4+3+2+2+5+1 {
		t.Errorf("%d rects, want 17\n%s", n["rect"], doc)
	}
	for _, want := range []string{"qemu scratch", "qemu preloaded", "qemu ready pool", "4.20 s", "23.40 s", "64 ms", ">paper: configure/load policy<", "qemu: TCG"} {
		if !strings.Contains(doc, want) {
			t.Errorf("plot lacks %q", want)
		}
	}
}

func TestAgentPlotAndSoak(t *testing.T) {
	r := &Report{Agent: []*AgentScaleResult{
		{Vifs: 1000, SAs: 100_000, Changes: 300, ChangeP50: 300 * time.Microsecond, ChangeP99: 2 * time.Millisecond, SoakRate: 30,
			Soak: []SoakSample{{At: time.Minute, RSSBytes: 60 << 20, GoHeapBytes: 20 << 20}, {At: 5 * time.Minute, RSSBytes: 61 << 20, GoHeapBytes: 20 << 20}, {At: 10 * time.Minute, RSSBytes: 63 << 20, GoHeapBytes: 22 << 20}}},
		{Vifs: 1000, SAs: 1000, Changes: 300, ChangeP50: 250 * time.Microsecond, ChangeP99: time.Millisecond},
	}}
	svg := AgentSVG(r)
	for _, want := range []string{"p50, 1000 vifs", "p99, 1000 vifs", "<polyline", "100k"} {
		if !strings.Contains(svg, want) {
			t.Errorf("one-change plot lacks %q", want)
		}
	}
	md := FormatSoak(r.Agent[0])
	// warm-up is the first tenth (1 min): 60 → 63 MiB RSS, 20 → 22 MiB heap
	if !strings.Contains(md, "RSS +5.0 %, Go heap +10.0 %") || !strings.Contains(md, "| 10m0s | 0 | 0 | 63.0 MiB | 22.0 MiB |") {
		t.Errorf("soak table:\n%s", md)
	}
}
