package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/verdict"
)

// SA rotation, the agent's half (DESIGN.md, configuration phase): while a
// guest's SAs are rotated make-before-break, the old and the new SA are in
// the kernel, and in the maps, at once. A rotation must not be a relabel:
// the new SA must carry exactly its predecessor's context, application and
// owner, or its packets would be accepted by the fast path under another
// label than the flow was set up with.
//
// How the agent knows an SA's predecessor. Nothing in the kernel's SA ties
// the two: the reqid is shared by every label's SAs toward one server
// (policystore.GenerateBundle gives one reqid per server, since one SPD
// policy with a range context serves all its labels), so it cannot say
// which of them a new SA replaces; an XFRM mark takes part in the state
// lookup (old and new would need different policy marks, and the outbound
// switch would become a policy rewrite); and the SPI is drawn at random
// from the host's range. So the lineage is declared: the loader, which
// draws the new SPIs, declares "new (spi, daddr) succeeds old (spi,
// daddr)" to the agent before it installs the new state. The agent accepts
// the declaration only while the old SA is one it enforces, snapshots the
// old SA's context, application and owner into the record, and persists it
// with the desired state (so a restarted agent still checks). From then
// on a kernel SA with the successor's SPI and destination enters the maps
// only when its context, application and owner equal the snapshot;
// otherwise it is left out (its packets meet deny_unknown_sa) and counted
// as refused_relabel, and the record cannot be dropped while that SA is
// installed, or the SA would pass for a fresh one.

// SARef names an SA as the fast path keys it: SPI and destination.
type SARef struct {
	SPI   uint32     `json:"spi"`
	Daddr netip.Addr `json:"daddr"`
}

func (r SARef) String() string { return fmt.Sprintf("spi %#x dst %s", r.SPI, r.Daddr) }

func (r SARef) key() saKey { return saKey{r.SPI, r.Daddr} }

// RotationSpec binds a successor SA to the predecessor it replaces, with
// the predecessor's binding as the agent saw it when the rotation was
// declared.
type RotationSpec struct {
	Old SARef `json:"old"`
	New SARef `json:"new"`
	// The predecessor's owner VM, application and SELinux context: what
	// the successor must carry.
	Owner    uint32    `json:"owner"`
	App      uint32    `json:"app"`
	Context  string    `json:"context"`
	Declared time.Time `json:"declared"`
}

// maxRotations bounds the rotation records: a rotation is in flight for a
// grace window only, so a few per SA is plenty.
const maxRotations = 1 << 16

func validateRotations(rs []RotationSpec) error {
	if len(rs) > maxRotations {
		return fmt.Errorf("rotations: %d records, more than %d: drop the records of finished rotations", len(rs), maxRotations)
	}
	succ := map[saKey]bool{}
	for i, r := range rs {
		switch {
		case r.New.SPI < 256:
			return fmt.Errorf("rotations[%d]: new spi %d is reserved (RFC 4303); take it from the host's range", i, r.New.SPI)
		case !r.New.Daddr.IsValid() || r.New.Daddr != r.Old.Daddr:
			return fmt.Errorf("rotations[%d]: new %v and old %v: a rotation keeps the SA's destination", i, r.New, r.Old)
		case r.New == r.Old:
			return fmt.Errorf("rotations[%d]: %v cannot succeed itself", i, r.New)
		case r.Owner == 0 || r.Context == "":
			return fmt.Errorf("rotations[%d] (%v): no owner or context recorded for the predecessor", i, r.New)
		case succ[r.New.key()]:
			return fmt.Errorf("rotations[%d]: %v is declared as a successor twice", i, r.New)
		}
		succ[r.New.key()] = true
	}
	return nil
}

// Rotation results, the values of mlsgate_sa_rotations_total's label.
const (
	rotationAccepted       = "accepted"
	rotationRefusedRelabel = "refused_relabel"
	// rotationPremapped: declared, not in the kernel yet, enforced with
	// the predecessor's binding (not a result: never counted).
	rotationPremapped = "premapped"
)

type rotationState struct {
	counter *prometheus.CounterVec
	// seen holds the successors last counted, by result, so a successor
	// is counted once however many reconciles see it.
	seen map[saKey]string
}

func newRotationState(reg prometheus.Registerer) *rotationState {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Name: "sa_rotations_total",
		Help: "SA rotations the agent checked, by result: accepted (the successor carries its predecessor's context, application and owner, and is enforced beside it), refused_relabel (it does not, and is kept out of the maps).",
	}, []string{"result"})
	c.WithLabelValues(rotationAccepted)
	c.WithLabelValues(rotationRefusedRelabel)
	reg.MustRegister(c)
	return &rotationState{counter: c, seen: map[saKey]string{}}
}

// rotationAllows is policyFor's hook: it reports whether the kernel SA k,
// bound as sa, may enter the maps. Only a declared successor can be
// refused; st records the verdict for counting and status.
func rotationAllows(rs []RotationSpec, k *KernelSA, sa *verdict.SA, st *saStats) bool {
	for i := range rs {
		r := &rs[i]
		if r.New.SPI != k.SPI || r.New.Daddr != k.Dst {
			continue
		}
		if k.Context != r.Context || sa.Owner != r.Owner || sa.App != r.App {
			st.RefusedRelabel++
			st.rotations = append(st.rotations, rotationVerdict{r.New.key(), rotationRefusedRelabel, fmt.Sprintf("context %q owner %d app %d, predecessor %v has context %q owner %d app %d", k.Context, sa.Owner, sa.App, r.Old, r.Context, r.Owner, r.App)})
			return false
		}
		st.rotations = append(st.rotations, rotationVerdict{r.New.key(), rotationAccepted, ""})
		return true
	}
	return true
}

// rotationPremap is policyFor's second hook: the declared successors the
// kernel does not hold yet enter the maps with their predecessor's
// binding, so that the fast path knows a successor before either end
// sends on it (a host's add of its outbound successor is its switch; it
// cannot wait for the agent to sync the new SA). Once the kernel holds
// the successor, rotationAllows checks it, and one that differs leaves
// the maps.
func rotationPremap(d Desired, ksas saSeq, seen map[saKey]bool, integ label.IntegrityPolicy, st *saStats) []verdict.SA {
	if len(d.Rotations) == 0 {
		return nil
	}
	inKernel := map[saKey]bool{}
	for _, k := range ksas {
		if k.Proto == 50 {
			inKernel[saKey{k.SPI, k.Dst}] = true
		}
	}
	owners := map[uint32]uint32{} // vm → app
	for _, g := range d.Guests {
		owners[g.VM] = g.App
	}
	var out []verdict.SA
	for _, r := range d.Rotations {
		k := r.New.key()
		if inKernel[k] || seen[k] {
			continue
		}
		if app, ok := owners[r.Owner]; !ok || app != r.App {
			continue // the guest is gone or serves another application now
		}
		ctx, err := label.ParseContext(r.Context)
		if err != nil || !ctx.HasRange {
			continue
		}
		seen[k] = true
		out = append(out, verdict.SA{SPI: r.New.SPI, Daddr: r.New.Daddr, Owner: r.Owner, App: r.App, Label: label.FromContext(ctx, integ), Family: verdict.FamilyOf(r.New.Daddr)})
		st.rotations = append(st.rotations, rotationVerdict{k, rotationPremapped, ""})
	}
	return out
}

type rotationVerdict struct {
	key    saKey
	result string
	why    string
}

// noteRotations counts and logs the successors whose verdict is new since
// the last reconcile. Called with a.mu held.
func (a *Agent) noteRotations(st saStats) {
	now := map[saKey]string{}
	for _, v := range st.rotations {
		now[v.key] = v.result
		if a.rot.seen[v.key] == v.result || v.result == rotationPremapped {
			continue
		}
		a.rot.counter.WithLabelValues(v.result).Inc()
		if v.result == rotationRefusedRelabel {
			a.log.Warn("sa rotation refused: the successor would relabel the flow; it is kept out of the maps and its packets are denied", "spi", v.key.spi, "daddr", v.key.daddr, "why", v.why)
		} else {
			a.log.Info("sa rotation accepted: old and new SA enforced with the same label", "spi", v.key.spi, "daddr", v.key.daddr)
		}
	}
	a.rot.seen = now
}

// ErrRotation is wrapped by declarations the agent refuses.
var ErrRotation = errors.New("rotation refused")

// RotationPair says that the SA New will succeed Old.
type RotationPair struct {
	Old SARef `json:"old"`
	New SARef `json:"new"`
}

// DeclareRotation records that the SA newRef will succeed old. The old SA
// must be one the agent enforces now (synced from the kernel with a
// context and an owner); its binding is what the successor must carry.
// Declaring the same pair again is a no-op.
func (a *Agent) DeclareRotation(old, newRef SARef) (RotationSpec, error) {
	recs, err := a.DeclareRotations([]RotationPair{{old, newRef}})
	if err != nil {
		return RotationSpec{}, err
	}
	return recs[0], nil
}

// DeclareRotations declares every pair as DeclareRotation does, all or
// none, with one binding pass and one change of the desired state: a
// rotation's successors are declared together.
func (a *Agent) DeclareRotations(pairs []RotationPair) ([]RotationSpec, error) {
	recs := make([]RotationSpec, len(pairs))
	var fresh []RotationSpec
	a.mu.Lock()
	err := func() error {
		if len(pairs) == 0 {
			return nil
		}
		existing := map[SARef]RotationSpec{}
		for _, r := range a.desired.Rotations {
			existing[r.New] = r
		}
		static := map[saKey]bool{}
		for _, s := range a.desired.SAs {
			static[saKey{s.SPI, s.Daddr}] = true
		}
		inBatch := map[SARef]SARef{}
		for _, pr := range pairs {
			if r, ok := existing[pr.New]; ok && r.Old != pr.Old {
				return fmt.Errorf("%w: %v is already the successor of %v", ErrRotation, pr.New, r.Old)
			}
			if o, ok := inBatch[pr.New]; ok && o != pr.Old {
				return fmt.Errorf("%w: %v is named as the successor of both %v and %v", ErrRotation, pr.New, o, pr.Old)
			}
			inBatch[pr.New] = pr.Old
			if static[pr.New.key()] || static[pr.Old.key()] {
				ref := pr.New
				if static[pr.Old.key()] {
					ref = pr.Old
				}
				return fmt.Errorf("%w: %v is a static SA; static SAs are declared, not rotated", ErrRotation, ref)
			}
		}
		if !a.sasSync {
			return fmt.Errorf("%w: the agent has not read the kernel's SAs yet; retry", ErrRotation)
		}
		now := a.now().UTC()
		for i, pr := range pairs {
			if r, ok := existing[pr.New]; ok {
				recs[i] = r
				continue
			}
			b := a.binding(pr.Old.key())
			if b.refused {
				return fmt.Errorf("%w: %v was itself refused as a relabel", ErrRotation, pr.Old)
			}
			if !b.mapped || b.context == "" {
				return fmt.Errorf("%w: the predecessor %v is not an SA the agent enforces (not in the kernel, unlabeled, or of no declared guest); rotate only installed, labeled SAs", ErrRotation, pr.Old)
			}
			recs[i] = RotationSpec{Old: pr.Old, New: pr.New, Owner: b.sa.Owner, App: b.sa.App, Context: b.context, Declared: now}
			if !slices.ContainsFunc(fresh, func(r RotationSpec) bool { return r.New == pr.New }) {
				fresh = append(fresh, recs[i])
			}
		}
		return nil
	}()
	a.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if len(fresh) == 0 {
		return recs, nil
	}
	_, err = a.changeDesired(func(d *Desired) {
		for _, rec := range fresh {
			if !slices.ContainsFunc(d.Rotations, func(r RotationSpec) bool { return r.New == rec.New }) {
				d.Rotations = append(d.Rotations, rec) // else raced with an identical declaration
			}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRotation, err)
	}
	return recs, nil
}

// DeclareRotationsMapped is DeclareRotations, then waits (bounded, and
// until ctx ends) until a reconcile has every successor in the maps: only
// then may a sender switch to them.
func (a *Agent) DeclareRotationsMapped(ctx context.Context, pairs []RotationPair) ([]RotationSpec, error) {
	recs, err := a.DeclareRotations(pairs)
	for i := 0; err == nil && i < len(pairs); i++ {
		err = a.waitMapped(ctx, pairs[i].New.key())
	}
	return recs, err
}

// waitMapped waits (bounded) until a reconcile has put the successor k in
// the maps, premapped or accepted: the caller's next step may switch a
// sender to it.
func (a *Agent) waitMapped(ctx context.Context, k saKey) error {
	for range 500 {
		a.mu.Lock()
		v := a.rot.seen[k]
		a.mu.Unlock()
		switch v {
		case rotationPremapped, rotationAccepted:
			return nil
		case rotationRefusedRelabel:
			return fmt.Errorf("%w: spi %#x dst %s is installed with another binding than its predecessor", ErrRotation, k.spi, k.daddr)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return fmt.Errorf("%w: spi %#x dst %s declared but not in the maps after 5 s (last reconcile error: %v); the rotation must not switch to it", ErrRotation, k.spi, k.daddr, a.lastErr)
}

// saBinding is what the rotation declarations need of the SA at one key.
type saBinding struct {
	refused bool       // a rotation successor refused as a relabel
	sa      verdict.SA // the SA the plan maps there, when mapped
	mapped  bool
	context string // the kernel's ESP SA there: its context ("" when none)
}

// binding is the binding of the SA at k as the full plan makes it: by the
// incremental machinery when it runs (resolve binds the one key, O(1) in
// the SAs), else by the full plan (bindingFull, O(all)).
// TestIncrementalAgentMatchesFullPlan checks the two agree.
func (a *Agent) binding(k saKey) saBinding {
	if a.inc.eng == nil {
		return a.bindingFull(k)
	}
	r, sa, mapped, _ := a.resolve(k)
	b := saBinding{refused: r&resClass == classRefused, sa: sa, mapped: mapped}
	if ks, ok := a.ktab.get(k.spi, k.daddr); ok {
		b.context = ks.Context
	}
	return b
}

func (a *Agent) bindingFull(k saKey) saBinding {
	p, st := a.policyFor(a.desired, a.present, a.kernelSAs)
	b := saBinding{refused: slicesContainsKey(st.rotations, k, rotationRefusedRelabel)}
	for i := range p.SAs {
		if p.SAs[i].SPI == k.spi && p.SAs[i].Daddr == k.daddr {
			b.sa, b.mapped = p.SAs[i], true
		}
	}
	for _, ks := range a.kernelSAs {
		if ks.Proto == 50 && ks.SPI == k.spi && ks.Dst == k.daddr {
			b.context = ks.Context
		}
	}
	return b
}

// ErrRotationInUse is returned when a record cannot be dropped.
var ErrRotationInUse = errors.New("rotation record in use")

// DropRotation forgets the record of the successor newRef (a finished or
// rolled-back rotation). It refuses while the successor is installed and
// refused: without the record it would pass for a fresh SA.
func (a *Agent) DropRotation(newRef SARef) (bool, error) {
	n, err := a.DropRotations([]SARef{newRef})
	return n == 1, err
}

// DropRotations forgets the records of the successors news, all or none
// (refused as DropRotation refuses), with one change of the desired
// state, and says how many it found.
func (a *Agent) DropRotations(news []SARef) (int, error) {
	refused := map[SARef]bool{}
	a.mu.Lock()
	for _, n := range news {
		refused[n] = a.binding(n.key()).refused
	}
	a.mu.Unlock()
	for _, n := range news {
		if refused[n] {
			return 0, fmt.Errorf("%w: %v is installed and was refused as a relabel; delete the SA first", ErrRotationInUse, n)
		}
	}
	found := 0
	_, err := a.changeDesired(func(d *Desired) {
		kept := d.Rotations[:0:0]
		for _, r := range d.Rotations {
			if slices.Contains(news, r.New) {
				found++
			} else {
				kept = append(kept, r)
			}
		}
		d.Rotations = kept
	})
	if err != nil {
		return 0, err
	}
	return found, nil
}

func (a *Agent) desiredRotations() []RotationSpec {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.desired.Rotations
}

func slicesContainsKey(vs []rotationVerdict, k saKey, result string) bool {
	for _, v := range vs {
		if v.key == k && v.result == result {
			return true
		}
	}
	return false
}

// RotationStatus is one rotation record and where it stands.
type RotationStatus struct {
	RotationSpec
	// State: pending (the successor is not installed yet; it is enforced
	// with the predecessor's binding), checking (installed, not yet
	// checked), active (old and new enforced), completed (the predecessor is gone), refused (the
	// successor would relabel and is kept out of the maps).
	State string `json:"state"`
}

// rotationStatus reports the records; called with a.mu held.
func (a *Agent) rotationStatus() []RotationStatus {
	if len(a.desired.Rotations) == 0 {
		return nil // and no pass over 100k SAs at every status request
	}
	inKernel := map[saKey]bool{}
	for _, k := range a.kernelSAs {
		if k.Proto == 50 {
			inKernel[saKey{k.SPI, k.Dst}] = true
		}
	}
	var out []RotationStatus
	for _, r := range a.desired.Rotations {
		s := RotationStatus{RotationSpec: r}
		switch {
		case a.rot.seen[r.New.key()] == rotationRefusedRelabel:
			s.State = "refused"
		case !inKernel[r.New.key()]:
			s.State = "pending"
		case a.rot.seen[r.New.key()] != rotationAccepted:
			s.State = "checking"
		case inKernel[r.Old.key()]:
			s.State = "active"
		default:
			s.State = "completed"
		}
		out = append(out, s)
	}
	return out
}

// maxRotationBatch bounds one batch request: a rotation declares one pair
// per SA of a guest's bundle.
const maxRotationBatch = 4096

// rotationRoutes adds the rotation API to the admin mux:
//
//	POST   /v1/rotations                {old: {spi, daddr}, new: {spi, daddr}}
//	POST   /v1/rotations                {pairs: [{old, new}, ...]}  all or none
//	POST   /v1/rotations/drop           {successors: [{spi, daddr}, ...]}  all or none
//	DELETE /v1/rotations/{daddr}/{spi}  forget the record of a successor
//
// A declaration answers once a reconcile has every successor in the maps.
func (a *Agent) rotationRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/rotations", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Old   *SARef         `json:"old"`
			New   *SARef         `json:"new"`
			Pairs []RotationPair `json:"pairs"`
		}
		if !readJSON(w, r, &req) {
			return
		}
		single := req.Old != nil || req.New != nil
		switch {
		case single && (req.Old == nil || req.New == nil || req.Pairs != nil):
			writeJSON(w, http.StatusBadRequest, errBody(errors.New("request body: give old and new, or pairs, not both")))
			return
		case !single && len(req.Pairs) == 0:
			writeJSON(w, http.StatusBadRequest, errBody(errors.New("request body: give old and new, or a non-empty pairs")))
			return
		case len(req.Pairs) > maxRotationBatch:
			writeJSON(w, http.StatusRequestEntityTooLarge, errBody(fmt.Errorf("request body: %d pairs, at most %d in one request", len(req.Pairs), maxRotationBatch)))
			return
		}
		pairs := req.Pairs
		if single {
			pairs = []RotationPair{{*req.Old, *req.New}}
		}
		recs, err := a.DeclareRotationsMapped(r.Context(), pairs)
		for _, pr := range pairs {
			a.recordChange(r, changeRotation, pr.Old, pr.New, err)
		}
		switch {
		case err != nil:
			writeJSON(w, http.StatusUnprocessableEntity, errBody(err))
		case single:
			writeJSON(w, http.StatusOK, recs[0])
		default:
			writeJSON(w, http.StatusOK, map[string][]RotationSpec{"rotations": recs})
		}
	})
	mux.HandleFunc("POST /v1/rotations/drop", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Successors []SARef `json:"successors"`
		}
		if !readJSON(w, r, &req) {
			return
		}
		if len(req.Successors) == 0 || len(req.Successors) > maxRotationBatch {
			writeJSON(w, http.StatusBadRequest, errBody(fmt.Errorf("request body: %d successors, want 1 to %d", len(req.Successors), maxRotationBatch)))
			return
		}
		n, err := a.DropRotations(req.Successors)
		for _, ref := range req.Successors {
			a.recordChange(r, changeRotationDrop, ref, nil, err)
		}
		if dropFailed(w, err) {
			return
		}
		writeJSON(w, http.StatusOK, map[string]int{"removed": n})
	})
	mux.HandleFunc("DELETE /v1/rotations/{daddr}/{spi}", func(w http.ResponseWriter, r *http.Request) {
		daddr, err := netip.ParseAddr(r.PathValue("daddr"))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, errBody(fmt.Errorf("daddr %q: %w", r.PathValue("daddr"), err)))
			return
		}
		spi, err := strconv.ParseUint(r.PathValue("spi"), 0, 32)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, errBody(fmt.Errorf("spi %q: %w", r.PathValue("spi"), err)))
			return
		}
		ref := SARef{uint32(spi), daddr}
		found, err := a.DropRotation(ref)
		a.recordChange(r, changeRotationDrop, ref, nil, err)
		switch {
		case dropFailed(w, err):
		case !found:
			writeJSON(w, http.StatusNotFound, errBody(fmt.Errorf("no rotation record for the successor %v", ref)))
		default:
			writeJSON(w, http.StatusOK, map[string]bool{"removed": true})
		}
	})
}

// dropFailed answers a refused or failed drop of rotation records and says
// whether it did.
func dropFailed(w http.ResponseWriter, err error) bool {
	switch {
	case errors.Is(err, ErrRotationInUse):
		writeJSON(w, http.StatusConflict, errBody(err))
	case err != nil:
		writeJSON(w, http.StatusInternalServerError, errBody(err))
	default:
		return false
	}
	return true
}
