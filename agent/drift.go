package agent

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mlsgate/mlsgate/bpf"
)

// Drift: the kernel state changed behind the agent's back. The pin lock
// keeps a second agent away, but anything with CAP_BPF (bpftool, a
// script, an agent started with another --pin-dir spelling before the
// lock existed) can still detach a link or overwrite a vifs entry, and the
// agent would go on reporting the guest attached. So every DriftInterval
// the agent reads its links and the vifs map back, compares them with
// what it applied, repairs the difference (entries first, then links, as
// reconcile orders them) and counts each repair.

// LinkChecker is the optional seam that reads a vif's links back
// (bpf.PinnedLinkAttached in production). An Attacher without it is not
// checked.
type LinkChecker interface {
	LinkAttached(ifindex int) (bool, error)
}

// VifReader is the optional seam that reads the vifs map back
// (bpf.Maps.ReadVifs in production). A MapWriter without it is not
// checked.
type VifReader interface {
	ReadVifs() (map[uint32]bpf.FastpathVif, error)
}

// Drift kinds, the values of mlsgate_drift_repairs_total's label.
const (
	driftLink = "link"
	driftVif  = "vif"
)

func newDriftRepairs(reg prometheus.Registerer) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Name: "drift_repairs_total",
		Help: "Kernel state found changed behind the agent's back and repaired, by kind: link (a vif's tcx link missing or detached), vif (a vifs map entry missing or altered).",
	}, []string{"kind"})
	c.WithLabelValues(driftLink)
	c.WithLabelValues(driftVif)
	reg.MustRegister(c)
	return c
}

// driftLoop checks for drift every DriftInterval until ctx ends.
func (a *Agent) driftLoop(ctx context.Context) {
	if a.cfg.DriftInterval <= 0 {
		return
	}
	t := time.NewTicker(a.cfg.DriftInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.checkDrift()
		}
	}
}

// checkDrift compares the links and vifs entries with what the agent
// applied and repairs the differences; it returns the number of repairs.
// It does nothing before the first reconcile, and leaves alone what
// reconcile is about to change anyway (it runs under the same lock, on the
// state reconcile last applied).
func (a *Agent) checkDrift() int {
	lc, _ := a.attacher.(LinkChecker)
	vr, _ := a.maps.(VifReader)
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.ready.Load() || a.applied == nil {
		return 0
	}
	repairs := 0
	if vr != nil {
		cur, err := vr.ReadVifs()
		if err != nil {
			a.log.Error("drift check: read vifs", "error", err)
		} else if bad := diffVifs(cur, a.applied.Vifs); len(bad) > 0 {
			// Apply writes what differs from prev: prev is the applied
			// state with the vifs the kernel really holds.
			prev := *a.applied
			prev.Vifs = cur
			if err := a.maps.Apply(&prev, a.applied); err != nil {
				a.log.Error("drift repair: rewrite vifs", "error", err, "ifindexes", bad)
			} else {
				a.log.Warn("drift repaired: vifs entries changed behind the agent's back were rewritten", "ifindexes", bad)
				a.driftRepairs.WithLabelValues(driftVif).Add(float64(len(bad)))
				repairs += len(bad)
			}
		}
	}
	if lc != nil {
		for _, idx := range slices.Sorted(maps.Keys(a.attached)) {
			name := a.attached[idx]
			if name == "" || a.modes[idx] == "clsact" {
				continue // not learnt yet, or not pinned (no tcx)
			}
			ok, err := lc.LinkAttached(idx)
			if err != nil {
				a.log.Error("drift check: links", "interface", name, "ifindex", idx, "error", err)
				continue
			}
			if ok {
				continue
			}
			mode, err := a.attacher.Attach(idx)
			if err != nil {
				a.lastErr = fmt.Errorf("drift repair: attach %s: %w", name, err)
				a.log.Error("drift repair: attach", "interface", name, "ifindex", idx, "error", err)
				continue
			}
			a.modes[idx] = mode
			a.metrics.attaches.Inc()
			a.driftRepairs.WithLabelValues(driftLink).Inc()
			repairs++
			a.log.Warn("drift repaired: the vif's programs were detached behind the agent's back and are attached again", "interface", name, "ifindex", idx, "mode", mode)
		}
	}
	return repairs
}

// diffVifs lists the ifindexes whose entry in cur differs from want
// (missing, altered, or present without being wanted).
func diffVifs(cur, want map[uint32]bpf.FastpathVif) []uint32 {
	var bad []uint32
	for k, w := range want {
		if c, ok := cur[k]; !ok || c != w {
			bad = append(bad, k)
		}
	}
	for k := range cur {
		if _, ok := want[k]; !ok {
			bad = append(bad, k)
		}
	}
	slices.Sort(bad)
	return bad
}

// LinkAttached implements LinkChecker.
func (k *Kernel) LinkAttached(ifindex int) (bool, error) {
	return bpf.PinnedLinkAttached(k.PinDir, ifindex)
}

// ReadVifs implements VifReader.
func (k *Kernel) ReadVifs() (map[uint32]bpf.FastpathVif, error) { return k.Objs.Maps.ReadVifs() }
