package pool

import "github.com/prometheus/client_golang/prometheus"

// Collectors are the pool's counters for /metrics, read from Stats at
// scrape time: mlsgate_pool_hits_total{how} (one series per How, all made
// at once), mlsgate_pool_prepared_total, mlsgate_pool_prepare_failures_total
// and mlsgate_pool_invalidated_total (ready guests dropped as stale after a
// template, CA or application change).
func (p *Pool) Collectors() []prometheus.Collector {
	read := func(f func(Stats) int) func() float64 {
		return func() float64 { return float64(f(p.Stats())) }
	}
	cs := []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "mlsgate_pool_prepared_total",
			Help: "Guests configured for an application ahead of demand."}, read(func(s Stats) int { return s.Prepared })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "mlsgate_pool_prepare_failures_total",
			Help: "Preparations of ready guests that failed (the guest was destroyed)."}, read(func(s Stats) int { return s.PrepareFailures })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "mlsgate_pool_invalidated_total",
			Help: "Ready guests dropped as stale after a template, CA or application change."}, read(func(s Stats) int { return s.Invalidated })),
	}
	for _, h := range []How{HowReuse, HowReady, HowIdle, HowBoot} {
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "mlsgate_pool_hits_total",
			Help: "Leases handed out, by where the pool found the guest.", ConstLabels: prometheus.Labels{"how": string(h)}},
			read(func(s Stats) int { return s.Hits[h] })))
	}
	return cs
}
