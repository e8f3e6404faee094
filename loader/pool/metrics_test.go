package pool

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestCollectorsCountInvalidations(t *testing.T) {
	e, r := newReadyEnv(t, 0, 2)
	e.refill()
	r.set(func(f *fakeReady) { f.wants[0].Fingerprint = "fp2" })
	e.refill()
	reg := prometheus.NewRegistry()
	reg.MustRegister(e.p.Collectors()...)
	want := `
# HELP mlsgate_pool_invalidated_total Ready guests dropped as stale after a template, CA or application change.
# TYPE mlsgate_pool_invalidated_total counter
mlsgate_pool_invalidated_total 2
# HELP mlsgate_pool_prepared_total Guests configured for an application ahead of demand.
# TYPE mlsgate_pool_prepared_total counter
mlsgate_pool_prepared_total 4
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "mlsgate_pool_invalidated_total", "mlsgate_pool_prepared_total"); err != nil {
		t.Error(err)
	}
	if probs, err := testutil.GatherAndLint(reg); err != nil || len(probs) > 0 {
		t.Errorf("lint: %v %v", probs, err)
	}
}
