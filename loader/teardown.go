package loader

import (
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// HeldGuest is a guest whose destroy failed: it may still run, so it stays
// declared to the agent with no application and an empty range (deny all
// data) and is destroyed again with backoff until that succeeds.
type HeldGuest struct {
	Name      string    `json:"name"`
	VM        uint32    `json:"vm"`
	Interface string    `json:"interface"`
	Failures  int       `json:"failures"`
	LastError string    `json:"last_error"`
	Since     time.Time `json:"since"`
}

// TeardownFailed records that destroying g failed with err; the caller has
// isolated it (Host.Isolate) and not forgotten it.
func (l *Loader) TeardownFailed(g *Guest, err error) {
	l.metrics.teardownFailures.Inc()
	l.mu.Lock()
	defer l.mu.Unlock()
	h, ok := l.held[g.Interface]
	if !ok {
		h = HeldGuest{Name: g.Name, VM: g.VM, Interface: g.Interface, Since: l.now()}
	}
	h.Failures++
	h.LastError = err.Error()
	l.held[g.Interface] = h
	l.metrics.held.Set(float64(len(l.held)))
}

// TornDown records that g was destroyed and forgotten (Host.Forget has
// deleted the host's states of it), and frees its SPIs (spis.go).
func (l *Loader) TornDown(g *Guest) {
	l.mu.Lock()
	delete(l.held, g.Interface)
	l.metrics.held.Set(float64(len(l.held)))
	l.forgetFresh(g)
	l.mu.Unlock()
	l.claimRotatedSPIs(g) // before the rotation service forgets them
	l.forgetRotation(g)   // rotation_run.go
	l.releaseSPIs(g)
}

// Held lists the guests whose destroy failed and that are held deny-all,
// by interface.
func (l *Loader) Held() []HeldGuest {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]HeldGuest, 0, len(l.held))
	for _, h := range l.held {
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Interface < out[j].Interface })
	return out
}

// TeardownFailures is the counter of failed guest destroys
// (mlsgate_loader_teardown_failures_total).
func (l *Loader) TeardownFailures() prometheus.Counter { return l.metrics.teardownFailures }

// Status is what GET /v1/status (the host's socket only) shows.
type Status struct {
	// Held lists guests whose destroy failed: declared deny-all and
	// retried.
	Held []HeldGuest `json:"held"`
}

// Status returns the loader's status.
func (l *Loader) Status() Status { return Status{Held: l.Held()} }
