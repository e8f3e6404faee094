package loader

import (
	"context"
	"errors"
	"time"

	"github.com/mlsgate/mlsgate/agent/buildinfo"
	"github.com/prometheus/client_golang/prometheus"
)

type loadMetrics struct {
	reg      *prometheus.Registry
	steps    *prometheus.HistogramVec
	failures *prometheus.CounterVec
	// teardownFailures counts failed guest destroys; held is the number
	// of guests held deny-all because their destroy failed.
	refusals         *prometheus.CounterVec
	teardownFailures prometheus.Counter
	held             prometheus.Gauge
}

// Failure reasons of loads, a fixed set (bounded label values).
var failureReasons = []string{"unauthorized", "unknown_url", "not_compliant", "timeout", "limited", "other"}

// Refusal reasons of guests' requests, a fixed set.
var refusalReasons = []string{"not_a_guest", "wrong_source", "rate_limited", "bad_request", "replayed", "replay_cache_full",
	"active_per_guest", "active_per_app", "fresh_guest_cap"}

func newLoadMetrics() *loadMetrics {
	m := &loadMetrics{
		reg: prometheus.NewRegistry(),
		steps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "mlsgate", Subsystem: "loader", Name: "step_seconds",
			Help:    "Duration of each configuration-phase step (the paper's Table 1 phases), and of whole loads (step total).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18),
		}, []string{"step", "result"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mlsgate", Subsystem: "loader", Name: "failures_total",
			Help: "Loads that failed, by reason.",
		}, []string{"reason"}),
	}
	m.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "mlsgate", Subsystem: "loader", Name: "refusals_total",
		Help: "Requests refused before or instead of a load, by reason (a guest's limits, identity or request).",
	}, []string{"reason"})
	for _, r := range refusalReasons {
		m.refusals.WithLabelValues(r)
	}
	m.teardownFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "mlsgate", Subsystem: "loader", Name: "teardown_failures_total",
		Help: "Guest destroys that failed; the guest stays declared deny-all and is destroyed again with backoff.",
	})
	m.held = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "mlsgate", Subsystem: "loader", Name: "guests_held",
		Help: "Guests whose destroy failed, held deny-all in the agent until a retry succeeds.",
	})
	for _, r := range failureReasons {
		m.failures.WithLabelValues(r)
	}
	m.reg.MustRegister(m.steps, m.failures, m.refusals, m.teardownFailures, m.held, buildinfo.Collector())
	return m
}

func (m *loadMetrics) observe(step string, d time.Duration, err error) {
	res := "ok"
	if err != nil {
		res = "error"
	}
	m.steps.WithLabelValues(step, res).Observe(d.Seconds())
}

func (m *loadMetrics) failed(err error) {
	m.failures.WithLabelValues(failureReason(err)).Inc()
}

func (m *loadMetrics) refused(reason string) {
	m.refusals.WithLabelValues(reason).Inc()
}

func failureReason(err error) string {
	switch {
	case errors.Is(err, ErrLimited):
		return "limited"
	case errors.Is(err, ErrUnauthorized):
		return "unauthorized"
	case errors.Is(err, ErrUnknownURL):
		return "unknown_url"
	case errors.Is(err, ErrNotCompliant):
		return "not_compliant"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return "other"
}

// Registry is the loader's metrics, to be served on /metrics.
func (l *Loader) Registry() *prometheus.Registry { return l.metrics.reg }
