package bench

import (
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/mapper"
)

// TestMapperAPI measures a small policy over loopback HTTP: it needs no
// root. It checks the shape of the result and that keep-alive held (no more
// connections than client goroutines), not the speed.
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
		if c.Connections < 1 || c.Connections > int64(c.Goroutines)+1 {
			t.Errorf("cache %s, %d goroutines: %d connections; keep-alive should hold about one per goroutine", c.Cache, c.Goroutines, c.Connections)
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
