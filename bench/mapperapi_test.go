package bench

import (
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/mapper"
)

// TestMapperAPI measures a small policy over loopback HTTP: it needs no
// root. It checks the shape of the result and that keep-alive held, not the
// speed. Keep-alive holding means far fewer connections than lookups, not
// one per goroutine: net/http's Transport closes a connection whose request
// writer has not reported within 50 ms of the reply being read
// (maxWriteWaitBeforeConnReuse), which a loaded machine reaches (CI counted
// 8 connections for 4 goroutines). Without keep-alive every lookup dials.
func TestMapperAPI(t *testing.T) {
	r, err := MeasureMapperAPI(t.Context(), MapperAPIConfig{Rules: 200, Lookups: 300, Goroutines: []int{1, 4}})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Cases) != 4 {
		t.Fatalf("%d cases, want 4 (cache off and warm × 1 and 4 goroutines): %+v", len(r.Cases), r.Cases)
	}
	for _, c := range r.Cases {
		if c.PerSecond <= 0 || c.P50 <= 0 || c.P99 < c.P50 {
			t.Errorf("cache %s, %d goroutines: %+v", c.Cache, c.Goroutines, c)
		}
		if limit := int64(r.Lookups / 10); c.Connections < 1 || c.Connections > limit {
			t.Errorf("cache %s, %d goroutines: %d connections for %d lookups; keep-alive should hold them to about one per goroutine, at most %d", c.Cache, c.Goroutines, c.Connections, r.Lookups, limit)
		}
	}
	md := formatMapperAPI(r, &mapper.Result{Rules: 200, Uncached: mapper.LookupStats{PerSecond: r.Cases[0].PerSecond * 10}})
	if !strings.Contains(md, "| policy (cache off) | 1 |") || !strings.Contains(md, " 0.100 |") {
		t.Errorf("table lacks the uncached row or its ratio:\n%s", md)
	}
}

func TestMeasureMapperAPIRefusesNonsense(t *testing.T) {
	for _, c := range []MapperAPIConfig{{Rules: 0, Lookups: 1, Goroutines: []int{1}}, {Rules: 10, Lookups: 0, Goroutines: []int{1}},
		{Rules: 10, Lookups: 1}, {Rules: 10, Lookups: 5, Goroutines: []int{0}}} {
		if _, err := MeasureMapperAPI(t.Context(), c); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
}
