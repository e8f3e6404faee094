package loader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/policystore"
)

// The loader's rotation service: which bundle is in force on each guest,
// when its SAs are due, the API (`mlsgate sa rotate`, `mlsgate sa
// status`), metrics and events. The protocol itself is rotate.go.

// RotationConfig sets the rotation service.
type RotationConfig struct {
	// StateDir holds the journals (a private directory).
	StateDir string
	// Lifetime is how long a guest's SAs live before they are rotated;
	// each guest's is drawn from [Lifetime-Jitter, Lifetime] so guests
	// loaded together do not rotate together. 0 disables timed rotation.
	Lifetime, Jitter time.Duration
	// Grace is how long old inbound states stay after the switch.
	Grace time.Duration
	// Check is how often due rotations are looked for (default 10 s).
	Check time.Duration
	// SoftBytes and SoftPackets are the kernel's soft lifetime of the
	// host's SAs (xfrm_lifetime_cfg): when one is reached the kernel sends
	// a soft expire, and WatchExpires rotates the guest. SoftPackets is
	// also the sequence-number headroom: an SA's outbound sequence number
	// counts its packets, and a 32-bit one (no ESN) must never wrap, so
	// it stays far below 2^32. 0 turns a limit off.
	SoftBytes, SoftPackets uint64
	// MinSeqHeadroom: every Check, the host's SAs are read back, and a
	// guest one of whose SAs has fewer sequence numbers left than this is
	// rotated (xfrm.State.SeqHeadroom: without ESN, 2^32-1 less the
	// highest sent or received; with ESN practically never). It backs up
	// SoftPackets, whose expire event can be lost, and counts what the
	// sender used rather than what arrived. 0 turns it off.
	MinSeqHeadroom uint64
	// OnResult, when set, learns every rotation's outcome (the loader
	// command logs it: one event per rotation). It never sees a key.
	OnResult func(RotationResult)
}

// DefaultRotationConfig: an hour's lifetime, up to 5 minutes earlier, a
// 2-second grace window.
func DefaultRotationConfig() RotationConfig {
	return RotationConfig{Lifetime: time.Hour, Jitter: 5 * time.Minute, Grace: 2 * time.Second, Check: 10 * time.Second,
		SoftBytes: 1 << 36, SoftPackets: MaxSoftPackets, MinSeqHeadroom: DefaultMinSeqHeadroom}
}

// DefaultMinSeqHeadroom rotates an SA without ESN once half its 32-bit
// sequence space is used.
const DefaultMinSeqHeadroom = 1 << 31

// stateDumper is a host XFRM that lists its SAs (*xfrm.Handle).
type stateDumper interface {
	States() ([]xfrm.State, error)
}

// MaxSoftPackets is the highest soft packet limit: half the 32-bit
// sequence space, so that a rotation triggered there has 2^31 packets of
// headroom before the sender's sequence number would wrap (RFC 4303
// 3.3.3: without ESN the SA must be rekeyed before that).
const MaxSoftPackets = 1 << 31

type rotGuest struct {
	guest      Guest
	bundle     *policystore.Bundle // guest part in force
	since      time.Time           // when its SAs were installed
	due        time.Time
	generation uint64 // rotations since the bundle was loaded
}

type rotations struct {
	cfg RotationConfig
	r   *Rotator
	run sync.Mutex // held across a rotation

	mu         sync.Mutex
	recoverErr error                // the last Recover's, for status
	guests     map[string]*rotGuest // by interface
	events     []RotationResult     // the last maxRotationEvents, oldest first

	// dump lists the host's SAs for the headroom check; nil without one.
	dump     func() ([]xfrm.State, error)
	headroom float64 // the least sequence-number headroom seen, for the gauge (-1: none)

	total    *prometheus.CounterVec
	latency  prometheus.Histogram
	oldest   prometheus.GaugeFunc
	inFlight prometheus.Gauge
}

const maxRotationEvents = 256

// Rotation results, the values of mlsgate_loader_sa_rotations_total's label.
var rotationResults = []string{"ok", "rolled_back", "failed", "refused_relabel"}

// EnableRotation turns SA rotation on. The host side must be a *Host whose
// Agent can be told about rotations (*AgentClient, or an adapter around
// *agent.Agent); on a host without its own XFRM the guests' ends are still
// rotated and the agent still checks. It completes or rolls back the
// rotations a crash interrupted (Recover) before it returns.
func (l *Loader) EnableRotation(ctx context.Context, cfg RotationConfig) error {
	h, ok := l.host.(*Host)
	if !ok {
		return errors.New("rotation: the host side is not a loader.Host")
	}
	ra, ok := h.Agent.(RotationAgent)
	if !ok {
		return errors.New("rotation: the agent client cannot declare rotations")
	}
	if cfg.Check <= 0 {
		cfg.Check = 10 * time.Second
	}
	if cfg.Jitter > cfg.Lifetime {
		return fmt.Errorf("rotation: jitter %v exceeds the lifetime %v", cfg.Jitter, cfg.Lifetime)
	}
	if cfg.SoftPackets > MaxSoftPackets {
		return fmt.Errorf("rotation: soft packet limit %d leaves less than 2^31 sequence numbers of headroom; use at most %d", cfg.SoftPackets, uint64(MaxSoftPackets))
	}
	if cfg.MinSeqHeadroom >= math.MaxUint32 {
		return fmt.Errorf("rotation: sequence-number headroom %d is at least 2^32-1, so every SA without ESN would be rotated at every check; use at most %d (0: off)", cfg.MinSeqHeadroom, uint64(math.MaxUint32-1))
	}
	h.Lifetime = xfrm.Lifetime{SoftBytes: cfg.SoftBytes, SoftPackets: cfg.SoftPackets}
	rs := &rotations{cfg: cfg, guests: map[string]*rotGuest{}, headroom: -1}
	if d, ok := h.XFRM.(stateDumper); ok {
		rs.dump = d.States
	}
	rs.r = &Rotator{
		Agent: ra, Push: l.push.Push, SPI: l.allocSPI, FreeSPIs: l.freeSPIs,
		NextVersion: func(app string) (uint64, error) { return l.catalog.Store.NextVersion(app) },
		StateDir:    cfg.StateDir, Grace: cfg.Grace, Now: l.now,
	}
	if h.XFRM != nil {
		rs.r.XFRM = h.XFRM
	}
	rs.r.Lifetime = h.Lifetime
	rs.r.Done = rs.record
	rs.r.Commit = func(g *Guest, nb *policystore.Bundle) error { return l.commitRotation(rs, g, nb) }
	rs.total = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "mlsgate", Subsystem: "loader", Name: "sa_rotations_total",
		Help: "Guest SA rotations by result: ok, rolled_back (undone before the guest switched), failed (the journal stays and the next start finishes it), refused_relabel (a successor would carry another label; nothing installed).",
	}, []string{"result"})
	for _, r := range rotationResults {
		rs.total.WithLabelValues(r)
	}
	rs.latency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "mlsgate", Subsystem: "loader", Name: "sa_rotation_seconds",
		Help:    "Time from a rotation's trigger to its old states deleted (grace window included).",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 16),
	})
	rs.oldest = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "mlsgate", Subsystem: "loader", Name: "sa_oldest_age_seconds",
		Help: "Age of the oldest guest SA set in force (0 with none): above the lifetime, rotation is not keeping up.",
	}, func() float64 {
		rs.mu.Lock()
		defer rs.mu.Unlock()
		var oldest time.Time
		for _, g := range rs.guests {
			if oldest.IsZero() || g.since.Before(oldest) {
				oldest = g.since
			}
		}
		if oldest.IsZero() {
			return 0
		}
		return l.now().Sub(oldest).Seconds()
	})
	rs.inFlight = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "mlsgate", Subsystem: "loader", Name: "sa_rotations_in_flight", Help: "Rotations running now."})
	seqHeadroom := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "mlsgate", Subsystem: "loader", Name: "sa_seq_headroom",
		Help: "Least sequence-number headroom among the guests' SAs on the host at the last check (packets left before a 32-bit sequence number is exhausted; 2^64 scale with ESN; -1 before a check).",
	}, func() float64 {
		rs.mu.Lock()
		defer rs.mu.Unlock()
		return rs.headroom
	})
	l.metrics.reg.MustRegister(rs.total, rs.latency, rs.oldest, rs.inFlight, seqHeadroom)
	// The sets in force before the restart, so their rotations go on.
	saved, err := rs.r.loadInForce()
	if err != nil {
		return fmt.Errorf("rotation: %w", err)
	}
	for _, f := range saved {
		rs.guests[f.Guest.Interface] = &rotGuest{guest: f.Guest, bundle: f.Bundle, since: f.Since, due: rs.dueAfter(f.Since), generation: f.Generation}
	}
	// Rotations a crash interrupted: finished (commit records the new set)
	// or rolled back (the recorded set stays in force) now; one that
	// cannot be (its guest unreachable) keeps its journal, is counted
	// failed, and is retried by RunRotations. It never stops the loader
	// from starting.
	if _, _, err := rs.r.Recover(ctx); err != nil {
		rs.recoverErr = err
	}
	for _, g := range rs.guests {
		var spis []uint32
		for _, s := range g.bundle.States {
			spis = append(spis, s.SPI)
		}
		l.MarkSPIsInUse(spis)
	}
	l.mu.Lock()
	l.rot = rs
	l.mu.Unlock()
	return nil
}

func (rs *rotations) record(res RotationResult) {
	if rs.cfg.OnResult != nil {
		rs.cfg.OnResult(res)
	}
	rs.total.WithLabelValues(res.Result).Inc()
	if res.Result == "ok" {
		rs.latency.Observe(res.Took.Seconds())
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.events = append(rs.events, res)
	if len(rs.events) > maxRotationEvents {
		rs.events = rs.events[len(rs.events)-maxRotationEvents:]
	}
}

func (rs *rotations) dueAfter(now time.Time) time.Time {
	if rs.cfg.Lifetime <= 0 {
		return time.Time{}
	}
	d := rs.cfg.Lifetime
	if rs.cfg.Jitter > 0 {
		d -= time.Duration(rand.Int64N(int64(rs.cfg.Jitter) + 1))
	}
	return now.Add(d)
}

// rememberBundle is Load's hook: b is now in force on g.
func (l *Loader) rememberBundle(g *Guest, b *policystore.Bundle) {
	l.mu.Lock()
	rs := l.rot
	l.mu.Unlock()
	if rs == nil || b == nil {
		return
	}
	now := l.now()
	rg := &rotGuest{guest: *g, bundle: b.GuestPart(), since: now, due: rs.dueAfter(now)}
	rs.mu.Lock()
	rs.guests[g.Interface] = rg
	rs.mu.Unlock()
	_ = rs.r.saveInForce(inForce{Guest: *g, Bundle: rg.bundle, Since: now})
}

// forgetRotation is TornDown's hook: the guest is gone, so a rotation
// of it that a crash left journalled can be neither finished nor rolled
// back on the guest; its host states (old and new) and agent records go.
func (l *Loader) forgetRotation(g *Guest) {
	l.mu.Lock()
	rs := l.rot
	l.mu.Unlock()
	if rs == nil {
		return
	}
	rs.mu.Lock()
	delete(rs.guests, g.Interface)
	rs.mu.Unlock()
	_ = rs.r.Abandon(g.Interface)
	_ = rs.r.removeInForce(g.Interface)
}

// ErrNoRotation: rotation is not enabled, or the guest serves nothing.
var ErrNoRotation = errors.New("no rotation")

// RotateGuests rotates the SAs of the guests named (by name, interface or
// VM number), or of every guest with all. Rotations run one after the
// other; the results come back in order.
func (l *Loader) RotateGuests(ctx context.Context, names []string, all bool, trigger string) ([]RotationResult, error) {
	l.mu.Lock()
	rs := l.rot
	l.mu.Unlock()
	if rs == nil {
		return nil, fmt.Errorf("%w: SA rotation is not enabled on this loader", ErrNoRotation)
	}
	rs.mu.Lock()
	var todo []string
	for iface, g := range rs.guests {
		if all || slices.Contains(names, g.guest.Name) || slices.Contains(names, iface) || slices.Contains(names, fmt.Sprint(g.guest.VM)) {
			todo = append(todo, iface)
		}
	}
	rs.mu.Unlock()
	sort.Strings(todo)
	if len(todo) == 0 {
		return nil, fmt.Errorf("%w: no guest serving an application matches %v (see 'mlsgate sa status')", ErrNoRotation, names)
	}
	var out []RotationResult
	var errs []error
	for _, iface := range todo {
		res, err := l.rotateOne(ctx, rs, iface, trigger)
		out = append(out, res)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}

func (l *Loader) rotateOne(ctx context.Context, rs *rotations, iface, trigger string) (RotationResult, error) {
	// One rotation at a time, and the bundle read under the same lock: a
	// second trigger for the guest rotates the set the first left.
	rs.run.Lock()
	defer rs.run.Unlock()
	rs.mu.Lock()
	g, ok := rs.guests[iface]
	var guest Guest
	var b *policystore.Bundle
	if ok {
		guest, b = g.guest, g.bundle
	}
	rs.mu.Unlock()
	if !ok {
		return RotationResult{Guest: iface, Result: "failed"}, fmt.Errorf("%w: %s is gone", ErrNoRotation, iface)
	}
	rs.inFlight.Inc()
	defer rs.inFlight.Dec()
	_, res, err := rs.r.Rotate(ctx, &guest, b, trigger)
	return res, err // a finished rotation was committed (commitRotation)
}

// commitRotation is the Rotator's Commit: nb, the successors, is now in
// force on g. It runs before the rotation's journal is removed, for a
// rotation Rotate finished and for one Recover finished after a crash
// (at start or from RunRotations), so the next rotation starts from the
// set the guest holds and the host's record deletes those states at
// teardown.
func (l *Loader) commitRotation(rs *rotations, g *Guest, nb *policystore.Bundle) error {
	now := l.now()
	rs.mu.Lock()
	cur, ok := rs.guests[g.Interface]
	if ok && cur.bundle != nil && cur.bundle.Version > nb.Version {
		// The guest was loaded again while it rotated: that bundle
		// (numbered later) is in force, and its own SAs with it.
		rs.mu.Unlock()
		return nil
	}
	if !ok {
		cur = &rotGuest{guest: *g}
		rs.guests[g.Interface] = cur
	}
	cur.bundle, cur.since, cur.due = nb, now, rs.dueAfter(now)
	cur.generation++
	rec := inForce{Guest: cur.guest, Bundle: nb, Since: now, Generation: cur.generation}
	rs.mu.Unlock()
	if h, ok := l.host.(*Host); ok {
		h.replaceStates(g.Interface, nb.States)
	}
	return rs.r.saveInForce(rec)
}

// replaceStates records the states now in force on the host's end of
// iface's tunnel, so that Forget deletes those.
func (h *Host) replaceStates(iface string, states []xfrm.State) {
	h.mu.Lock()
	defer h.mu.Unlock()
	inst, ok := h.installed[iface]
	if !ok {
		return
	}
	inst.states = nil
	for _, s := range states {
		inst.states = append(inst.states, s)
	}
	h.installed[iface] = inst
}

// RunRotations rotates guests whose SAs reached their lifetime, until ctx
// ends.
func (l *Loader) RunRotations(ctx context.Context) {
	l.mu.Lock()
	rs := l.rot
	l.mu.Unlock()
	if rs == nil || rs.cfg.Lifetime <= 0 {
		return
	}
	t := time.NewTicker(rs.cfg.Check)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rs.run.Lock()
		l.recoverPending(ctx, rs)
		rs.run.Unlock()
		now := l.now()
		rs.mu.Lock()
		var due []string
		for iface, g := range rs.guests {
			if !g.due.IsZero() && !now.Before(g.due) {
				due = append(due, iface)
			}
		}
		rs.mu.Unlock()
		sort.Strings(due)
		for _, iface := range due {
			_, _ = l.rotateOne(ctx, rs, iface, "lifetime")
		}
		for _, iface := range rs.lowHeadroom() {
			_, _ = l.rotateOne(ctx, rs, iface, "seq_headroom")
		}
	}
}

// recoverPending finishes or rolls back the rotations left journalled (a
// peer was down); what they leave in force is committed. Called with
// rs.run held.
func (l *Loader) recoverPending(ctx context.Context, rs *rotations) {
	if js, err := rs.r.pending(); err == nil && len(js) > 0 {
		_, _, err := rs.r.Recover(ctx)
		rs.mu.Lock()
		rs.recoverErr = err
		rs.mu.Unlock()
	}
}

// lowHeadroom reads the host's SAs back and names the guests one of whose
// SAs in force has less sequence-number headroom than MinSeqHeadroom.
func (rs *rotations) lowHeadroom() []string {
	if rs.dump == nil || rs.cfg.MinSeqHeadroom == 0 {
		return nil
	}
	states, err := rs.dump()
	if err != nil {
		return nil // the next tick reads again; the soft limit still holds
	}
	type key struct {
		dst netip.Addr
		spi uint32
	}
	left := map[key]uint64{}
	for _, s := range states {
		if s.Proto == xfrm.ProtoESP {
			left[key{s.Dst, s.SPI}] = s.SeqHeadroom()
		}
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	least := -1.0
	var out []string
	for iface, g := range rs.guests {
		low := false
		for _, s := range g.bundle.States {
			h, ok := left[key{s.Dst, s.SPI}]
			if !ok {
				continue
			}
			if least < 0 || float64(h) < least {
				least = float64(h)
			}
			low = low || h < rs.cfg.MinSeqHeadroom
		}
		if low {
			out = append(out, iface)
		}
	}
	rs.headroom = least
	sort.Strings(out)
	return out
}

// WatchExpires rotates the guest whose SA the kernel reports soft-expired
// (its byte or packet soft limit reached: RotationConfig.SoftBytes,
// SoftPackets), until ctx ends or events closes. events is the host's
// XFRM event stream (xfrm.Subscribe). A guest is rotated once per
// expiry burst: expiries of SAs it no longer holds are ignored.
func (l *Loader) WatchExpires(ctx context.Context, events <-chan xfrm.Event) {
	l.mu.Lock()
	rs := l.rot
	l.mu.Unlock()
	if rs == nil {
		return
	}
	for {
		var e xfrm.Event
		var ok bool
		select {
		case <-ctx.Done():
			return
		case e, ok = <-events:
			if !ok {
				return
			}
		}
		if e.Kind != xfrm.ExpireSA || e.Hard || e.State == nil {
			continue
		}
		iface := rs.guestOf(e.State.Dst, e.State.SPI)
		if iface == "" {
			continue
		}
		_, _ = l.rotateOne(ctx, rs, iface, "soft_limit")
	}
}

// guestOf names the guest whose SA set in force holds (dst, spi).
func (rs *rotations) guestOf(dst netip.Addr, spi uint32) string {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for iface, g := range rs.guests {
		for _, s := range g.bundle.States {
			if s.SPI == spi && s.Dst == dst {
				return iface
			}
		}
	}
	return ""
}

// SAStatus is one guest's SA set as `mlsgate sa status` shows it: never
// a key.
type SAStatus struct {
	Guest       string    `json:"guest"`
	VM          uint32    `json:"vm"`
	Interface   string    `json:"interface"`
	Application string    `json:"application"`
	Version     uint64    `json:"version"`
	Generation  uint64    `json:"generation"`
	Since       time.Time `json:"since"`
	AgeSeconds  float64   `json:"age_seconds"`
	Due         time.Time `json:"due,omitzero"`
	SAs         []SAInfo  `json:"sas"`
}

// SAInfo is one SA, without its key.
type SAInfo struct {
	SPI     uint32 `json:"spi"`
	Src     string `json:"src"`
	Dst     string `json:"dst"`
	Context string `json:"context"`
	Label   string `json:"label"`
}

// SAStatus reports the guests' SA sets and the last rotations.
func (l *Loader) SAStatus() ([]SAStatus, []RotationResult) {
	l.mu.Lock()
	rs := l.rot
	l.mu.Unlock()
	if rs == nil {
		return nil, nil
	}
	now := l.now()
	rs.mu.Lock()
	defer rs.mu.Unlock()
	var out []SAStatus
	for iface, g := range rs.guests {
		s := SAStatus{Guest: g.guest.Name, VM: g.guest.VM, Interface: iface, Application: g.bundle.Application, Version: g.bundle.Version,
			Generation: g.generation, Since: g.since, AgeSeconds: now.Sub(g.since).Seconds(), Due: g.due}
		for _, st := range g.bundle.States {
			s.SAs = append(s.SAs, SAInfo{SPI: st.SPI, Src: st.Src.String(), Dst: st.Dst.String(), Context: st.Context, Label: st.Label.String()})
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Interface < out[j].Interface })
	return out, slices.Clone(rs.events)
}

// RotateRequest is the body of POST /v1/sa/rotate.
type RotateRequest struct {
	Guests []string `json:"guests,omitempty"`
	All    bool     `json:"all,omitempty"`
}

// rotationRoutes serves the rotation API on the host's socket only.
func (a *API) rotationRoutes(mux *http.ServeMux) {
	mux.Handle("POST /v1/sa/rotate", hostOnly(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req RotateRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, LoadError{Error: err.Error(), Reason: "bad_request"})
			return
		}
		if !req.All && len(req.Guests) == 0 {
			writeJSON(w, http.StatusBadRequest, LoadError{Error: "name guests or set all", Reason: "bad_request"})
			return
		}
		res, err := a.Loader.RotateGuests(r.Context(), req.Guests, req.All, "manual")
		code := http.StatusOK
		switch {
		case errors.Is(err, ErrNoRotation):
			code = http.StatusNotFound
		case err != nil:
			code = http.StatusInternalServerError
		}
		body := map[string]any{"rotations": res}
		if err != nil {
			body["error"] = err.Error()
		}
		writeJSON(w, code, body)
	})))
	mux.Handle("GET /v1/sa", hostOnly(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		st, ev := a.Loader.SAStatus()
		writeJSON(w, http.StatusOK, map[string]any{"guests": st, "rotations": ev})
	})))
}

// DeclareRotations implements RotationAgent over the agent's API.
func (c *AgentClient) DeclareRotations(pairs []agent.RotationPair) error {
	_, err := c.do("POST", "/v1/rotations", map[string][]agent.RotationPair{"pairs": pairs})
	return err
}

// DropRotations implements RotationAgent over the agent's API.
func (c *AgentClient) DropRotations(news []agent.SARef) error {
	_, err := c.do("POST", "/v1/rotations/drop", map[string][]agent.SARef{"successors": news})
	return err
}

// DeclareRotation declares one successor over the agent's API.
func (c *AgentClient) DeclareRotation(old, n agent.SARef) error {
	_, err := c.do("POST", "/v1/rotations", map[string]agent.SARef{"old": old, "new": n})
	return err
}

// DropRotation forgets one successor's record over the agent's API;
// ErrNoRotationRecord when it has none.
func (c *AgentClient) DropRotation(n agent.SARef) error {
	code, err := c.do("DELETE", fmt.Sprintf("/v1/rotations/%s/%d", n.Daddr, n.SPI), nil)
	if code == http.StatusNotFound {
		return ErrNoRotationRecord
	}
	return err
}

// InProcessAgent adapts *agent.Agent (an agent in the loader's process)
// to AgentAPI and RotationAgent.
type InProcessAgent struct{ *agent.Agent }

// DeclareRotations implements RotationAgent.
func (a InProcessAgent) DeclareRotations(pairs []agent.RotationPair) error {
	// As over the API: the successors are in the maps before it returns.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := a.Agent.DeclareRotationsMapped(ctx, pairs)
	return err
}

// DropRotations implements RotationAgent.
func (a InProcessAgent) DropRotations(news []agent.SARef) error {
	_, err := a.Agent.DropRotations(news)
	return err
}
