package agent

import (
	"context"
	"net/netip"
	"runtime/debug"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/verdict"
)

// Incremental sync. A change of one kernel SA, of the guests or of the
// peers is planned and applied by difference: the SAs it touches are bound
// again (bindKernelSA, as policyFor binds them all) and handed to a
// bpf.Incremental, whose Commit gives Apply only the entries that changed.
// A full plan (policyFor and bpf.PlanFrom) runs at start (the restart
// path), after any error of the incremental path, and every
// ResyncInterval as a safety net that counts what it had to correct
// (mlsgate_reconcile_drift_total: a difference between the incremental
// state and the full plan is a bug, or maps written behind the agent's
// back).

// SAChange is one change to the kernel's SAs: SA added or updated, or
// gone (then only its Dst, SPI and Proto count).
type SAChange struct {
	SA   KernelSA
	Gone bool
}

// SADeltaWatcher is an SAWatcher that hands over changes instead of the
// whole set: full with the complete set first and after every resync,
// changes (in order) after that. The agent prefers it.
type SADeltaWatcher interface {
	WatchDeltas(ctx context.Context, full func([]KernelSA), changes func([]SAChange)) error
}

// saRes is what the agent made of the SAs at one (SPI, destination): the
// kernel SA's class, and whether a static declaration or a premapped
// rotation successor sits there. The counters of saStats follow from it.
type saRes uint8

const (
	classNone       saRes = 0
	classUnlabeled  saRes = 1
	classBadContext saRes = 2
	classNoGuest    saRes = 3
	classRefused    saRes = 4 // a rotation successor that would relabel
	classBound      saRes = 5
	resClass        saRes = 7
	resStatic       saRes = 1 << 3
	resPremapped    saRes = 1 << 4
	resAccepted     saRes = 1 << 5 // a rotation successor, accepted
)

func (st *saStats) count(r saRes, d int) {
	if r&resStatic != 0 {
		st.Static += d
	}
	switch r & resClass {
	case classUnlabeled:
		st.Unlabeled += d
	case classBadContext:
		st.BadContext += d
	case classNoGuest:
		st.NoGuest += d
	case classRefused:
		st.RefusedRelabel += d
	case classBound:
		if r&resStatic == 0 {
			st.Synced += d
		}
	}
}

func (r saRes) rotation() string {
	switch {
	case r&resClass == classRefused:
		return rotationRefusedRelabel
	case r&resAccepted != 0:
		return rotationAccepted
	case r&resPremapped != 0:
		return rotationPremapped
	}
	return ""
}

// incState is the agent's incremental machinery; a.mu guards it.
type incState struct {
	eng *bpf.Incremental // nil: the next reconcile plans in full
	// stale: a.applied may not be what the maps hold (an incremental step
	// failed halfway); the next full plan reads the maps back first.
	stale   bool
	fullDue bool // the safety net asked for a full plan
	// res: what the agent made of each SA other than a plain bound one
	// (most of them), which an SA planned without a note is.
	res    map[saKey]saRes
	dirty  map[saKey]struct{}
	guests bool // the guest set or the interfaces changed
	peers  bool
	// Caches of the desired state for binding one SA.
	byAddr  map[netip.Addr]GuestSpec
	statics map[saKey]SASpec
	appOf   map[uint32]uint32 // declared VM → application
	drift   prometheus.Counter
}

func newDriftCounter(reg prometheus.Registerer) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: ns, Name: "reconcile_drift_total",
		Help: "Map entries the periodic full plan (every resync_interval) found different from the incrementally maintained state and rewrote; anything but 0 is a bug of the incremental sync or a map written behind the agent's back.",
	})
	reg.MustRegister(c)
	return c
}

func (s *incState) dirtySA(id saID) {
	if s.eng == nil || id.proto != 50 {
		return // a full plan is due anyway, or the fast path never sees it
	}
	if s.dirty == nil {
		s.dirty = map[saKey]struct{}{}
	}
	s.dirty[saKey{id.spi, id.dst}] = struct{}{}
}

func (s *incState) dirtyKey(k saKey) {
	if s.eng == nil {
		return
	}
	if s.dirty == nil {
		s.dirty = map[saKey]struct{}{}
	}
	s.dirty[k] = struct{}{}
}

// drop gives up the incremental state: the next reconcile plans in full.
func (s *incState) drop(stale bool) {
	s.eng, s.res, s.dirty = nil, nil, nil
	s.guests, s.peers = false, false
	s.stale = s.stale || stale
}

func (s *incState) cache(d Desired) {
	s.byAddr = guestsByAddr(d)
	s.statics = make(map[saKey]SASpec, len(d.SAs))
	for _, sa := range d.SAs {
		s.statics[saKey{sa.SPI, sa.Daddr}] = sa
	}
	s.appOf = make(map[uint32]uint32, len(d.Guests))
	for _, g := range d.Guests {
		s.appOf[g.VM] = g.App
	}
}

func (a *Agent) onSADelta(cs []SAChange) {
	a.mu.Lock()
	for _, c := range cs {
		id := saID{c.SA.Dst, c.SA.SPI, c.SA.Proto}
		if c.Gone && a.ktab.del(id) || !c.Gone && a.ktab.set(c.SA) {
			a.inc.dirtySA(id)
		}
	}
	a.markPending()
	a.mu.Unlock()
	a.poke()
}

// desiredChanged marks what a change of the desired state touches: the
// guest set (and the kernel SAs bound through the changed guests'
// addresses, and the rotation successors, whose premapping depends on the
// guests), the peers, the static SAs and rotations that differ.
func (a *Agent) desiredChanged(old, next Desired) {
	in := &a.inc
	if in.eng == nil {
		return
	}
	if !slices.Equal(old.Guests, next.Guests) {
		in.guests = true
		was := map[string]GuestSpec{}
		for _, g := range old.Guests {
			was[g.Interface] = g
		}
		var addrs []caddr
		note := func(g GuestSpec) {
			for _, x := range []netip.Addr{g.Addr4, g.Addr6} {
				if c := compact(x); x.IsValid() && !slices.Contains(addrs, c) {
					addrs = append(addrs, c)
				}
			}
		}
		for _, g := range next.Guests {
			// An SA's binding takes of its guest the VM and the
			// application, found by address: a guest redeclared with
			// the same ones (another range, audit, MAC) binds the same.
			if o, ok := was[g.Interface]; !ok || !sameBinding(o, g) {
				note(g)
				note(o)
			}
			delete(was, g.Interface)
		}
		for _, g := range was {
			note(g)
		}
		// A scan of the SAs' addresses (no planning): the SAs a changed
		// guest binds, or may bind now. The guest's few addresses are
		// compared directly (a map lookup per address hashes 17 bytes).
		if len(addrs) > 0 {
			hit := func(x caddr) bool { return x.fam != 0 && slices.Contains(addrs, x) }
			for key, r := range a.ktab.sas {
				if hit(r.src) || hit(key.dst) || hit(r.selSrc) || hit(r.selDst) {
					in.dirtyKey(saKey{key.spi, key.dst.addr()})
				}
			}
		}
		for _, r := range next.Rotations {
			in.dirtyKey(r.New.key())
		}
	}
	if !slices.Equal(old.Peers, next.Peers) {
		in.peers = true
	}
	if !slices.Equal(old.SAs, next.SAs) {
		for _, s := range old.SAs {
			in.dirtyKey(saKey{s.SPI, s.Daddr})
		}
		for _, s := range next.SAs {
			in.dirtyKey(saKey{s.SPI, s.Daddr})
		}
	}
	if !slices.Equal(old.Rotations, next.Rotations) {
		for _, r := range old.Rotations {
			in.dirtyKey(r.New.key())
		}
		for _, r := range next.Rotations {
			in.dirtyKey(r.New.key())
		}
	}
	in.cache(next)
}

// sameBinding: an SA bound through guest a binds the same through b
// (bindKernelSA and premapOne read these fields of a guest).
func sameBinding(a, b GuestSpec) bool {
	return a.VM == b.VM && a.App == b.App && a.Addr4 == b.Addr4 && a.Addr6 == b.Addr6
}

// resolve binds what sits at k as policyFor would: a static declaration,
// else the kernel's ESP SA, else a premapped rotation successor.
func (a *Agent) resolve(k saKey) (saRes, verdict.SA, bool, saStats) {
	var r saRes
	var st saStats
	var out verdict.SA
	mapped := false
	if s, ok := a.inc.statics[k]; ok {
		r |= resStatic
		out, mapped = staticSA(s), true
	}
	if ks, ok := a.ktab.get(k.spi, k.daddr); ok {
		sa, kr := bindKernelSA(a.desired.Rotations, a.inc.byAddr, a.integrity(), nil, &ks, &st)
		r |= kr
		if kr&resClass == classBound && !mapped {
			out, mapped = sa, true
		}
	} else if !mapped {
		if sa, ok := premapOne(a.desired.Rotations, k, a.inc.appOf, a.integrity()); ok {
			r |= resPremapped
			out, mapped = sa, true
		}
	}
	return r, out, mapped, st
}

// premapOne is rotationPremap for the successor at k.
func premapOne(rs []RotationSpec, k saKey, appOf map[uint32]uint32, integ label.IntegrityPolicy) (verdict.SA, bool) {
	for _, r := range rs {
		if r.New.key() != k {
			continue
		}
		if app, ok := appOf[r.Owner]; !ok || app != r.App {
			return verdict.SA{}, false // the guest is gone or serves another application now
		}
		ctx, err := label.ParseContext(r.Context)
		if err != nil || !ctx.HasRange {
			return verdict.SA{}, false
		}
		return verdict.SA{SPI: r.New.SPI, Daddr: r.New.Daddr, Owner: r.Owner, App: r.App, Label: label.FromContext(ctx, integ), Family: verdict.FamilyOf(r.New.Daddr)}, true
	}
	return verdict.SA{}, false
}

// reconcileIncremental plans and applies what changed since the last
// reconcile. On error the caller drops the incremental state and plans in
// full.
func (a *Agent) reconcileIncremental() error {
	in := &a.inc
	if in.guests {
		if err := in.eng.SetGuests(a.guestsFor(a.desired, a.present)); err != nil {
			return err
		}
	}
	if in.peers {
		if err := in.eng.SetPeers(peersFor(a.desired)); err != nil {
			return err
		}
	}
	for k := range in.dirty {
		old, noted := in.res[k]
		if !noted && in.eng.HasSA(bpf.SAKey{SPI: k.spi, Daddr: k.daddr}) {
			old = classBound
		}
		r, sa, mapped, st := a.resolve(k)
		var err error
		if mapped {
			err = in.eng.SetSA(sa)
		} else {
			err = in.eng.DeleteSA(bpf.SAKey{SPI: k.spi, Daddr: k.daddr})
		}
		if err != nil {
			return err
		}
		if r == old {
			continue
		}
		a.saView.count(old, -1)
		a.saView.count(r, 1)
		if r == classBound || r == 0 {
			delete(in.res, k)
		} else {
			in.res[k] = r
		}
		a.noteRotation(k, r.rotation(), st)
	}
	prev, next, err := in.eng.Commit()
	if err != nil {
		return err
	}
	if err := a.maps.Apply(prev, next); err != nil { // an empty difference writes nothing
		return err
	}
	a.applied = in.eng.State()
	clear(in.dirty)
	in.guests, in.peers = false, false
	return nil
}

// noteRotation is noteRotations for one successor whose verdict may have
// changed.
func (a *Agent) noteRotation(k saKey, result string, st saStats) {
	if result == "" {
		delete(a.rot.seen, k)
		return
	}
	if a.rot.seen[k] == result {
		return
	}
	a.rot.seen[k] = result
	why := ""
	for _, v := range st.rotations {
		if v.key == k {
			why = v.why
		}
	}
	switch result {
	case rotationRefusedRelabel:
		a.rot.counter.WithLabelValues(result).Inc()
		a.log.Warn("sa rotation refused: the successor would relabel the flow; it is kept out of the maps and its packets are denied", "spi", k.spi, "daddr", k.daddr, "why", why)
	case rotationAccepted:
		a.rot.counter.WithLabelValues(result).Inc()
		a.log.Info("sa rotation accepted: old and new SA enforced with the same label", "spi", k.spi, "daddr", k.daddr)
	}
}

// reconcileFull plans everything (policyFor, PlanFrom) and applies the
// difference to what the maps hold; as the safety net it counts that
// difference as drift. It then starts a new incremental state from the
// result.
func (a *Agent) reconcileFull() error {
	in := &a.inc
	safety := in.eng != nil && in.fullDue
	in.fullDue = false
	prev := a.applied
	if in.stale || prev == nil {
		st, err := a.maps.ReadState()
		if err != nil {
			in.drop(true)
			return err
		}
		prev = st
	}
	in.drop(false)
	res := map[saKey]saRes{}
	p, st := a.policyRes(a.desired, a.present, a.kernelSAs, res)
	next, err := bpf.PlanFrom(p, prev)
	if err != nil {
		return err
	}
	if safety {
		if n := bpf.Changes(prev, next); n > 0 {
			in.drift.Add(float64(n))
			a.log.Warn("full plan found drift: the maps were corrected", "entries", n)
		}
	}
	if err := a.maps.Apply(prev, next); err != nil {
		in.stale = true
		return err
	}
	in.stale = false
	a.applied = next
	a.saView = st
	a.noteRotations(st)
	eng, err := bpf.NewIncremental(p, next)
	if err != nil {
		a.log.Error("incremental sync off until the next full plan", "error", err)
		return nil
	}
	in.eng, in.res = eng, map[saKey]saRes{}
	for k, r := range res {
		if r != classBound {
			in.res[k] = r
		}
	}
	in.cache(a.desired)
	// The full plan's garbage (the policy, the maps of a whole State) is
	// several times what the agent keeps: hand it back to the system
	// rather than keep it as headroom (most of the RSS at 100k SAs). In
	// the background: it costs a GC and the scavenging (~0.3 s of CPU at
	// 100k SAs) that the reconcile, holding a.mu, should not wait for.
	res, p = nil, nil
	go debug.FreeOSMemory()
	return nil
}
