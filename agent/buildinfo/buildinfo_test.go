package buildinfo

import (
	"runtime/debug"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestFromBuildInfo(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.time", Value: "2026-12-01T10:00:00Z"}, {Key: "vcs.modified", Value: "true"},
	}}
	in := FromBuildInfo(bi)
	want := Info{Version: "(devel)", Revision: "0123abcd", Time: "2026-12-01T10:00:00Z", Modified: true, GoVersion: "go1.26.0"}
	if in != want {
		t.Fatalf("got %+v, want %+v", in, want)
	}
	s := in.String()
	for _, part := range []string{"0123abcd", "modified", "go1.26.0", "2026-12-01T10:00:00Z"} {
		if !strings.Contains(s, part) {
			t.Errorf("%q lacks %q", s, part)
		}
	}
	empty := FromBuildInfo(&debug.BuildInfo{})
	if empty.Revision != unknown || empty.Version != unknown || empty.GoVersion != unknown || empty.Modified {
		t.Errorf("a build without VCS data: %+v, want unknown fields", empty)
	}
}

func TestCollector(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(Collector())
	if n, err := testutil.GatherAndCount(reg, "mlsgate_build_info"); err != nil || n != 1 {
		t.Fatalf("mlsgate_build_info series: %d, %v", n, err)
	}
	if probs, err := testutil.GatherAndLint(reg); err != nil || len(probs) > 0 {
		t.Fatalf("lint: %v %v", probs, err)
	}
	mfs, _ := reg.Gather()
	m := mfs[0].GetMetric()[0]
	if m.GetGauge().GetValue() != 1 {
		t.Errorf("value %v, want 1", m.GetGauge().GetValue())
	}
	names := map[string]bool{}
	for _, l := range m.GetLabel() {
		names[l.GetName()] = l.GetValue() != ""
	}
	for _, l := range []string{"version", "revision", "goversion"} {
		if !names[l] {
			t.Errorf("label %s missing or empty: %v", l, m.GetLabel())
		}
	}
}

func TestLinkerValuesOnlyFillGaps(t *testing.T) {
	stamped := Info{Version: "v1", Revision: "aaaa", Time: "t1", GoVersion: "go1.26.0"}
	if got := withLinkerValues(stamped, "bbbb", "t2", "true"); got != stamped {
		t.Errorf("linker values replaced the toolchain's: %+v", got)
	}
	bare := Info{Version: unknown, Revision: unknown, Time: unknown, GoVersion: "go1.26.0"}
	got := withLinkerValues(bare, "bbbb", "2026-12-02T06:00:00Z", "true")
	if got.Revision != "bbbb" || got.Time != "2026-12-02T06:00:00Z" || !got.Modified {
		t.Errorf("linker values not used for a build without VCS data: %+v", got)
	}
	if got := withLinkerValues(bare, "", "", ""); got != bare {
		t.Errorf("empty linker values changed %+v to %+v", bare, got)
	}
}
