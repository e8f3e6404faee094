package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/verdict"
)

// KernelSA is what the agent needs of one of the kernel's XFRM SAs.
type KernelSA struct {
	Src, Dst netip.Addr
	SPI      uint32
	Proto    uint8
	Reqid    uint32
	// Context is the SA's SELinux security context (XFRMA_SEC_CTX); ""
	// for an unlabeled SA.
	Context string
	// SelSrc and SelDst are the SA's selector when it names single hosts:
	// for a tunnel the host terminates on a guest's behalf, the guest is
	// the inner address.
	SelSrc, SelDst netip.Addr
}

// SAWatcher is the seam to the kernel's SA database: Watch calls update
// with the complete set of SAs, first once the initial dump is done and
// then after every change (or resync), until ctx ends. Implementations
// coalesce bursts; update must not be called concurrently.
type SAWatcher interface {
	Watch(ctx context.Context, update func([]KernelSA)) error
}

// LinkEvent is an interface that appeared, changed or went away.
type LinkEvent struct {
	Name    string
	Index   int
	Deleted bool
}

// LinkWatcher is the seam to the kernel's interface list: Watch calls
// event for every existing interface, then synced, then for each change,
// until ctx ends.
type LinkWatcher interface {
	Watch(ctx context.Context, event func(LinkEvent), synced func()) error
}

// Attacher is the seam to program attachment (bpf.AttachPinned and
// bpf.DetachPinned in production).
type Attacher interface {
	Attach(ifindex int) (mode string, err error)
	Detach(ifindex int) error
	Pinned() ([]int, error)
}

// MapWriter is the seam to the BPF maps.
type MapWriter interface {
	ReadState() (*bpf.State, error)
	Apply(prev, next *bpf.State) error
}

// Agent keeps the fast path attached to the declared guests' interfaces and
// its maps equal to the desired state plus the kernel's SAs.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	maps     MapWriter
	attacher Attacher
	links    LinkWatcher
	sas      SAWatcher
	now      func() time.Time

	mu        sync.Mutex
	desired   Desired
	store     *desiredStore  // desiredlog.go
	present   map[string]int // managed-pattern interfaces that exist: name → ifindex
	attached  map[int]string // ifindex → name, programs attached (or adopted)
	modes     map[int]string
	kernelSAs saSeq        // ktab.all
	ktab      *kernelTable // kerneltable.go
	saView    saStats
	applied   *bpf.State
	inc       incState  // incremental.go
	pendingAt time.Time // oldest change not yet applied
	lastErr   error
	linksSync bool
	// topoDirty: the interfaces or the declarations changed (or the last
	// reconcile failed) since the attach/detach steps last ran; an SA
	// change alone skips them (they cost the number of vifs).
	topoDirty bool
	sasSync   bool

	kick    chan struct{}
	events  eventHub
	ready   atomic.Bool
	readyC  chan struct{} // closed on the first full reconcile
	metrics *metrics

	driftRepairs *prometheus.CounterVec // drift.go
	rot          *rotationState         // rotation.go
}

type saStats struct {
	Synced, Unlabeled, BadContext, NoGuest, Static int
	// RefusedRelabel counts declared rotation successors kept out of the
	// maps because they differ from their predecessor (rotation.go).
	RefusedRelabel int `json:"RefusedRelabel,omitempty"`
	rotations      []rotationVerdict
}

// Options are the seams; nil fields get the kernel implementations.
type Options struct {
	Maps     MapWriter
	Attacher Attacher
	Links    LinkWatcher
	SAs      SAWatcher
	Now      func() time.Time
}

// New builds an agent around the given seams. Run starts it.
func New(cfg Config, log *slog.Logger, o Options) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if o.Maps == nil || o.Attacher == nil || o.Links == nil || o.SAs == nil {
		return nil, errors.New("agent.New: every seam must be set (use Start for the kernel ones)")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	d, store, err := openDesired(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	a := &Agent{
		cfg: cfg, log: log, maps: o.Maps, attacher: o.Attacher, links: o.Links, sas: o.SAs, now: o.Now,
		desired: d, store: store, present: map[string]int{}, ktab: newKernelTable(), attached: map[int]string{}, modes: map[int]string{},
		kick: make(chan struct{}, 1), readyC: make(chan struct{}),
	}
	a.kernelSAs = a.ktab.all()
	a.metrics = newMetrics(a)
	a.inc.drift = newDriftCounter(a.metrics.reg)
	a.driftRepairs = newDriftRepairs(a.metrics.reg)
	a.rot = newRotationState(a.metrics.reg)
	return a, nil
}

// Run adopts what a previous agent left pinned, waits for the first full
// view of the interfaces and the SAs (so that it never applies a partial
// view, which would drop allowed traffic), then keeps everything in sync
// until ctx ends. Pins stay when it returns: the fast path keeps enforcing
// the last state (fail closed).
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The watchers start first: the kernel's SA dump and the reading of
	// the pinned maps (at 100k SAs each ~0.1 s, mostly in the kernel) run
	// side by side. No reconcile runs before both are done: the loop
	// below starts after the pinned state is read.
	errc := make(chan error, 2)
	go func() {
		errc <- a.links.Watch(ctx, a.onLink, func() {
			a.mu.Lock()
			a.linksSync = true
			a.mu.Unlock()
			a.poke()
		})
	}()
	go func() {
		if w, ok := a.sas.(SADeltaWatcher); ok {
			errc <- w.WatchDeltas(ctx, a.onSAs, a.onSADelta)
			return
		}
		errc <- a.sas.Watch(ctx, a.onSAs)
	}()
	applied, err := a.maps.ReadState()
	if err != nil {
		return fmt.Errorf("read pinned maps: %w", err)
	}
	pinned, err := a.attacher.Pinned()
	if err != nil {
		return fmt.Errorf("list pinned links: %w", err)
	}
	a.mu.Lock()
	a.applied = applied
	// The link watcher may have named some interfaces already; the rest
	// are named as their events come (onLink).
	nameOf := make(map[int]string, len(a.present))
	for name, idx := range a.present {
		nameOf[idx] = name
	}
	for _, i := range pinned {
		a.attached[i] = nameOf[i]
		a.modes[i] = "adopted"
	}
	a.mu.Unlock()
	a.log.Info("adopted pinned state", "vifs", len(applied.Vifs), "sa_slots", len(applied.Slots), "sas", len(applied.SAs), "peers", len(applied.Peers), "links", len(pinned))

	go a.driftLoop(ctx)
	var resync <-chan time.Time
	if a.cfg.ResyncInterval > 0 {
		t := time.NewTicker(a.cfg.ResyncInterval)
		defer t.Stop()
		resync = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			if ctx.Err() != nil {
				return nil
			}
			return err
		case <-a.kick:
			a.reconcile()
		case <-resync:
			a.mu.Lock()
			a.inc.fullDue = true // the safety net: plan in full, count the drift
			a.mu.Unlock()
			a.reconcile()
		}
	}
}

func (a *Agent) poke() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

func (a *Agent) markPending() {
	if a.pendingAt.IsZero() {
		a.pendingAt = a.now()
	}
}

func (a *Agent) onLink(e LinkEvent) {
	if !a.cfg.manages(e.Name) {
		return
	}
	a.mu.Lock()
	if e.Deleted {
		if a.present[e.Name] == e.Index {
			delete(a.present, e.Name)
		}
	} else {
		a.present[e.Name] = e.Index
		if _, ok := a.attached[e.Index]; ok && a.attached[e.Index] == "" {
			a.attached[e.Index] = e.Name
		}
	}
	a.inc.guests = true
	a.topoDirty = true
	a.markPending()
	a.mu.Unlock()
	a.poke()
}

// onSAs takes the complete set of the kernel's SAs; only the SAs that
// differ from the last set are planned again.
func (a *Agent) onSAs(sas []KernelSA) {
	a.mu.Lock()
	if a.ktab.len() == 0 { // the first dump: nothing to compare with
		a.ktab.sas = make(map[kkey]krec, len(sas))
		for _, k := range sas {
			if a.ktab.set(k) {
				a.inc.dirtySA(saID{k.Dst, k.SPI, k.Proto})
			}
		}
	} else {
		now := make(map[kkey]struct{}, len(sas))
		for _, k := range sas {
			if k.Proto != 50 {
				continue
			}
			now[kkey{k.SPI, compact(k.Dst)}] = struct{}{}
			if a.ktab.set(k) {
				a.inc.dirtySA(saID{k.Dst, k.SPI, 50})
			}
		}
		for key := range a.ktab.sas {
			if _, ok := now[key]; !ok {
				id := saID{key.dst.addr(), key.spi, 50}
				a.ktab.del(id)
				a.inc.dirtySA(id)
			}
		}
	}
	a.sasSync = true
	a.markPending()
	a.mu.Unlock()
	a.poke()
}

// SetGuest declares (or replaces) the guest on an interface.
func (a *Agent) SetGuest(g GuestSpec) error {
	if err := a.cfg.checkManaged(g.Interface); err != nil {
		return err
	}
	_, err := a.changeGuest(journalOp{Set: &g})
	return err
}

func setGuest(g GuestSpec) func(*Desired) {
	return func(d *Desired) {
		for i := range d.Guests {
			if d.Guests[i].Interface == g.Interface {
				d.Guests[i] = g
				return
			}
		}
		d.Guests = append(d.Guests, g)
	}
}

// RemoveGuest forgets the guest on an interface; its programs are
// detached. It reports whether there was one.
func (a *Agent) RemoveGuest(iface string) (bool, error) {
	prev, err := a.changeGuest(journalOp{Remove: iface})
	return prev != nil, err
}

func removeGuest(iface string, found *bool) func(*Desired) {
	return func(d *Desired) {
		for i := range d.Guests {
			if d.Guests[i].Interface == iface {
				d.Guests = append(d.Guests[:i], d.Guests[i+1:]...)
				*found = true
				return
			}
		}
	}
}

// SetPeers replaces the peer list.
func (a *Agent) SetPeers(p []PeerSpec) error {
	_, err := a.changeDesired(func(d *Desired) { d.Peers = p })
	return err
}

// SetStaticSAs replaces the SAs the agent is told about.
func (a *Agent) SetStaticSAs(s []SASpec) error {
	_, err := a.changeDesired(func(d *Desired) { d.SAs = s })
	return err
}

// changeGuest is changeDesired for one guest, set or removed, at a cost
// that does not grow with the number of guests while the agent has not
// synced yet (a host declaring its guests at start): the change is checked
// alone, made in place and appended to the journal (desiredlog.go). Only
// a guest on an interface that exists is planned first (the plan covers
// the present interfaces; an absent one adds nothing to it), and once the
// incremental sync runs the change is compared with the whole state as
// any other. It returns the guest the change replaced or removed, nil
// when there was none.
func (a *Agent) changeGuest(op journalOp) (*GuestSpec, error) {
	iface := op.Remove
	if op.Set != nil {
		iface = op.Set.Interface
	}
	a.mu.Lock()
	gs := a.desired.Guests
	i, found := slices.BinarySearchFunc(gs, iface, byInterface)
	var prev *GuestSpec
	if found {
		p := gs[i]
		prev = &p
	}
	if op.Set == nil && !found {
		a.mu.Unlock()
		return nil, nil
	}
	if op.Set != nil {
		check := Desired{Guests: []GuestSpec{*op.Set}}
		err := check.validateGuest(0)
		// The plan of a guest can fail only on its range's labels (a
		// label id space run out): when the maps, planned without error,
		// hold both already, it cannot (and costs O(guests) per
		// declaration otherwise).
		if _, present := a.present[iface]; err == nil && present && !a.labelsPlanned(op.Set.Range) {
			next := a.desired
			next.Guests = withGuest(slices.Clone(gs), i, found, *op.Set)
			// As change: without the kernel's SAs.
			_, err = a.plan(next, a.present, noSAs)
		}
		if err != nil {
			a.mu.Unlock()
			return prev, err
		}
	}
	var old Desired
	if a.inc.eng != nil { // desiredChanged compares with the state before
		old = a.desired
		old.Guests = slices.Clone(gs)
	}
	if err := a.store.ready(a.desired); err != nil {
		a.mu.Unlock()
		return prev, fmt.Errorf("save desired state: %w", err)
	}
	if err := a.store.appendOp(op); err != nil {
		a.mu.Unlock()
		return prev, fmt.Errorf("save desired state: %w", err)
	}
	if op.Set != nil {
		a.desired.Guests = withGuest(gs, i, found, *op.Set)
	} else {
		a.desired.Guests = slices.Delete(gs, i, i+1)
	}
	if a.store.compactDue() {
		if err := a.store.saveAll(a.desired); err != nil {
			a.log.Warn("could not fold the desired state's journal into desired.json; the journal keeps the changes", "error", err)
		} else if a.store.emptyErr != nil {
			a.log.Warn("desired.json written, but its journal could not be emptied; the next change tries again", "error", a.store.emptyErr)
		}
	}
	if a.inc.eng != nil {
		a.desiredChanged(old, a.desired)
	}
	a.topoDirty = true
	a.markPending()
	a.mu.Unlock()
	a.poke()
	return prev, nil
}

// labelsPlanned: the last reconcile succeeded and its state holds ids for
// both labels of r.
func (a *Agent) labelsPlanned(r label.Bounds) bool {
	if a.inc.eng == nil || a.lastErr != nil || a.applied == nil {
		return false
	}
	_, lo := a.applied.LabelIDs[r.Low]
	_, hi := a.applied.LabelIDs[r.High]
	return lo && hi
}

func byInterface(g GuestSpec, iface string) int { return strings.Compare(g.Interface, iface) }

// withGuest puts g at i of the sorted gs: over the guest there (found) or
// inserted.
func withGuest(gs []GuestSpec, i int, found bool, g GuestSpec) []GuestSpec {
	if found {
		gs[i] = g
		return gs
	}
	return slices.Insert(gs, i, g)
}

// changeDesired validates, persists, then applies a change: the desired
// state on disk is what a restarted agent enforces. It returns the state
// the change replaced.
func (a *Agent) changeDesired(fn func(*Desired)) (Desired, error) {
	a.mu.Lock()
	old := a.desired
	next := Desired{
		Guests: slices.Clone(a.desired.Guests),
		Peers:  slices.Clone(a.desired.Peers),
		SAs:    slices.Clone(a.desired.SAs),

		Rotations: slices.Clone(a.desired.Rotations),
	}
	fn(&next)
	next.sort()
	if err := next.Validate(); err != nil {
		a.mu.Unlock()
		return old, err
	}
	// Checked without the kernel's SAs, whose count the plan of a change
	// must not cost; a kernel SA the change makes unplannable shows as a
	// reconcile error.
	if _, err := a.plan(next, a.present, noSAs); err != nil {
		a.mu.Unlock()
		return old, err
	}
	if err := a.store.saveAll(next); err != nil {
		a.mu.Unlock()
		return old, fmt.Errorf("save desired state: %w", err)
	}
	a.desired = next
	a.desiredChanged(old, next)
	a.topoDirty = true
	a.markPending()
	a.mu.Unlock()
	a.poke()
	return old, nil
}

// policyFor builds the verdict policy of a desired state on the present
// interfaces with the kernel's SAs.
func (a *Agent) policyFor(d Desired, present map[string]int, ksas saSeq) (*verdict.Policy, saStats) {
	return a.policyRes(d, present, ksas, nil)
}

// guestsByAddr: the declared guests by address (the last declaration of
// an address wins).
func guestsByAddr(d Desired) map[netip.Addr]GuestSpec {
	byAddr := map[netip.Addr]GuestSpec{}
	for _, g := range d.Guests {
		if g.Addr4.IsValid() {
			byAddr[g.Addr4] = g
		}
		if g.Addr6.IsValid() {
			byAddr[g.Addr6] = g
		}
	}
	return byAddr
}

// policyRes is policyFor that also notes, in res (when not nil), what it
// made of each SA (incremental.go).
func (a *Agent) policyRes(d Desired, present map[string]int, ksas saSeq, res map[saKey]saRes) (*verdict.Policy, saStats) {
	p := &verdict.Policy{
		Guests: a.guestsFor(d, present), SPIBase: a.cfg.SPIBase, SPISlots: a.cfg.SPISlots,
		APIPort: a.cfg.APIPort, Enforce: a.cfg.Enforce, Peers: peersFor(d),
		SAs: make([]verdict.SA, 0, len(d.SAs)+a.ktab.len()),
	}
	var byAddr map[netip.Addr]GuestSpec // at the first kernel SA: the check of a desired change has none
	var st saStats
	// seen: the statics. A kernel SA's key is never premapped anyway
	// (rotationPremap skips what the kernel holds), so the kernel's SAs,
	// unique by key, need no entry: no 100k inserts at 100k SAs.
	seen := map[saKey]bool{}
	for _, s := range d.SAs {
		sa := staticSA(s)
		p.SAs = append(p.SAs, sa)
		seen[saKey{sa.SPI, sa.Daddr}] = true
		st.Static++
		if res != nil {
			res[saKey{sa.SPI, sa.Daddr}] |= resStatic
		}
	}
	integ := a.integrity()
	labels := labelCache{}
	for _, k := range ksas {
		if k.Proto != 50 {
			continue // only ESP carries traffic the vif programs see
		}
		if byAddr == nil {
			byAddr = guestsByAddr(d)
		}
		sa, r := bindKernelSA(d.Rotations, byAddr, integ, labels, &k, &st)
		key := saKey{k.SPI, k.Dst}
		if res != nil && r != classBound {
			res[key] |= r
		} else if _, noted := res[key]; noted {
			res[key] |= r // a static's key
		}
		if r&resClass != classBound {
			continue
		}
		if seen[key] {
			continue // a static declaration wins
		}
		p.SAs = append(p.SAs, sa)
		st.Synced++
	}
	n := len(st.rotations)
	p.SAs = append(p.SAs, rotationPremap(d, ksas, seen, integ, &st)...)
	if res != nil {
		for _, v := range st.rotations[n:] {
			res[v.key] |= resPremapped
		}
	}
	sortSAs(p.SAs)
	return p, st
}

// sortSAs orders the SAs by SPI, then destination (the plan interns
// labels in this order, so it is deterministic). It sorts their indexes
// and then moves each SA about once, in place (following the cycles of
// the permutation): a verdict.SA is ~170 bytes, which a sort in place
// moves O(n log n) times (100k SAs: ~50 ms), and a sorted copy would add
// its size to the start's peak memory.
func sortSAs(sas []verdict.SA) {
	// SPI and index in one word: a sort of plain integers, then the runs
	// of one SPI (rare: the host allocates its SPIs once) by destination.
	keys := make([]uint64, len(sas))
	for i := range sas {
		keys[i] = uint64(sas[i].SPI)<<32 | uint64(i)
	}
	slices.Sort(keys)
	for i := 0; i < len(keys); {
		j := i + 1
		for j < len(keys) && keys[j]>>32 == keys[i]>>32 {
			j++
		}
		if j-i > 1 {
			slices.SortFunc(keys[i:j], func(x, y uint64) int {
				return cmp.Or(sas[uint32(x)].Daddr.Compare(sas[uint32(y)].Daddr), cmp.Compare(x, y))
			})
		}
		i = j
	}
	idx := make([]int32, len(keys))
	for i, k := range keys {
		idx[i] = int32(uint32(k))
	}
	// sas[i] must become the old sas[idx[i]].
	for i := range idx {
		if idx[i] < 0 || int(idx[i]) == i {
			continue
		}
		tmp := sas[i]
		j := i
		for {
			k := int(idx[j])
			idx[j] = -1
			if k == i {
				sas[j] = tmp
				break
			}
			sas[j] = sas[k]
			j = k
		}
	}
}

func staticSA(s SASpec) verdict.SA {
	return verdict.SA{SPI: s.SPI, Daddr: s.Daddr, Owner: s.Owner, App: s.App, Label: s.Label, Family: verdict.FamilyOf(s.Daddr)}
}

func peersFor(d Desired) []verdict.Peer {
	var out []verdict.Peer
	for _, pe := range d.Peers {
		out = append(out, verdict.Peer{Prefix: pe.Prefix, App: pe.App, Range: pe.Range, Kind: pe.Kind})
	}
	return out
}

func (a *Agent) integrity() label.IntegrityPolicy {
	return label.IntegrityPolicy{Default: a.cfg.DefaultIntegrity, ByType: a.cfg.Integrity}
}

// labelCache interns the labels of the SA contexts one full plan meets:
// a host's SAs carry few distinct contexts, each parsed once rather than
// once per SA. It lives as long as the plan; nil parses every time.
type labelCache map[string]labelOf

type labelOf struct {
	l  label.Label
	ok bool
}

// contextLabel is the label of an SA's context, ok false when it has
// none we can read.
func (c labelCache) contextLabel(context string, integ label.IntegrityPolicy) (label.Label, bool) {
	if v, hit := c[context]; hit {
		return v.l, v.ok
	}
	var v labelOf
	if ctx, err := label.ParseContext(context); err == nil && ctx.HasRange {
		v = labelOf{label.FromContext(ctx, integ), true}
	}
	if c != nil {
		c[context] = v
	}
	return v.l, v.ok
}

// bindKernelSA is what policyFor makes of one of the kernel's ESP SAs:
// its class (unlabeled, bad context, no guest, refused as a relabel, or
// bound to a guest, then with sa), with the counters in st. labels may be
// nil.
func bindKernelSA(rs []RotationSpec, byAddr map[netip.Addr]GuestSpec, integ label.IntegrityPolicy, labels labelCache, k *KernelSA, st *saStats) (verdict.SA, saRes) {
	if k.Context == "" {
		st.Unlabeled++
		return verdict.SA{}, classUnlabeled
	}
	l, ok := labels.contextLabel(k.Context, integ)
	if !ok {
		// Never an allow: an SA whose label we cannot read is left out
		// of the maps, so its packets meet deny_unknown_sa.
		st.BadContext++
		return verdict.SA{}, classBadContext
	}
	// The guest that owns the SA: the sender of outbound SAs, the
	// receiver of inbound ones.
	var g GuestSpec
	for _, addr := range [...]netip.Addr{k.Src, k.Dst, k.SelSrc, k.SelDst} {
		if g, ok = byAddr[addr]; ok && addr.IsValid() {
			break
		}
	}
	if !ok {
		st.NoGuest++
		return verdict.SA{}, classNoGuest
	}
	sa := verdict.SA{SPI: k.SPI, Daddr: k.Dst, Owner: g.VM, App: g.App, Label: l, Family: verdict.FamilyOf(k.Dst)}
	n := len(st.rotations)
	if !rotationAllows(rs, k, &sa, st) {
		return verdict.SA{}, classRefused // a rotation that would relabel: never an allow
	}
	if len(st.rotations) > n {
		return sa, classBound | resAccepted
	}
	return sa, classBound
}

// guestsFor is the policy's guests: the declared guests on the present
// interfaces, and the undeclared interfaces denied.
func (a *Agent) guestsFor(d Desired, present map[string]int) map[uint32]verdict.Guest {
	guests := map[uint32]verdict.Guest{}
	for _, g := range d.Guests {
		idx, ok := present[g.Interface]
		if !ok || !a.cfg.manages(g.Interface) {
			continue
		}
		mac, _ := g.mac() // validated with the desired state
		guests[uint32(idx)] = verdict.Guest{
			VM: g.VM, App: g.App, Range: g.Range, Addr4: g.Addr4, Addr6: g.Addr6,
			HostAddr4: g.HostAddr4, HostAddr6: g.HostAddr6, MAC: mac,
			AllowUnlabeled: g.AllowUnlabeled, Audit: g.Audit,
		}
	}
	// Fail closed: an interface of the patterns with no declared guest is
	// denied everything, unless the configuration says pass.
	if a.cfg.undeclaredMode() == UndeclaredDeny {
		for name, idx := range present {
			if _, ok := guests[uint32(idx)]; !ok && !declaredIn(d, name) && a.cfg.manages(name) {
				guests[uint32(idx)] = verdict.Guest{Deny: verdict.DenyUndeclared}
			}
		}
	}
	return guests
}

func declaredIn(d Desired, name string) bool {
	for _, g := range d.Guests {
		if g.Interface == name {
			return true
		}
	}
	return false
}

// wanted: the agent's programs belong on this present interface (a
// declared guest's, or an undeclared one it denies).
func (a *Agent) wanted(declared map[string]bool, name string) bool {
	return declared[name] || (a.cfg.undeclaredMode() == UndeclaredDeny && a.cfg.manages(name))
}

// saKey identifies an SA as the fast path does: SPI and destination.
type saKey struct {
	spi   uint32
	daddr netip.Addr
}

func (a *Agent) plan(d Desired, present map[string]int, ksas saSeq) (*bpf.State, error) {
	p, _ := a.policyFor(d, present, ksas)
	return bpf.PlanFrom(p, a.applied)
}

// reconcile moves the kernel to the desired state: programs off the
// interfaces that lost their guest, maps to the new state, programs onto
// the new guests' interfaces (so a program never runs on a vif whose entry
// is missing, and an interface is never left without its programs while
// its guest is declared).
func (a *Agent) reconcile() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.linksSync || !a.sasSync {
		return // never apply a partial view
	}
	start := a.now()
	pending := a.pendingAt
	a.pendingAt = time.Time{}
	topo := a.topoDirty || a.lastErr != nil || a.inc.eng == nil || a.inc.fullDue
	declared := map[string]bool{}
	if topo {
		for _, g := range a.desired.Guests {
			declared[g.Interface] = true
		}
	}
	var errs []error
	// 1. Detach where the guest is gone or the interface is.
	for idx, name := range a.attached {
		if !topo {
			break
		}
		cur, exists := a.present[name]
		if name != "" && exists && cur == idx && a.wanted(declared, name) {
			continue
		}
		if err := a.attacher.Detach(idx); err != nil {
			errs = append(errs, fmt.Errorf("detach ifindex %d (%s): %w", idx, name, err))
			continue
		}
		delete(a.attached, idx)
		delete(a.modes, idx)
		a.metrics.detaches.Inc()
		a.log.Info("detached", "interface", name, "ifindex", idx)
	}
	// 2. Maps: by difference (incremental.go), or in full at start, as
	// the periodic safety net, and after an error.
	var err error
	if a.inc.eng != nil && !a.inc.fullDue {
		if err = a.reconcileIncremental(); err != nil {
			a.log.Warn("incremental sync failed; planning in full", "error", err)
			a.inc.drop(true)
		}
	}
	if a.inc.eng == nil || a.inc.fullDue {
		err = a.reconcileFull()
	}
	if err != nil {
		errs = append(errs, err)
		a.metrics.reconcileErrors.Inc()
	}
	// 3. Attach to the declared, present interfaces (after their entries).
	if err == nil && topo {
		for name, idx := range a.present {
			if !a.wanted(declared, name) {
				continue
			}
			if prev, ok := a.attached[idx]; ok && prev == name && a.modes[idx] != "adopted" {
				continue
			}
			mode, err := a.attacher.Attach(idx)
			if err != nil {
				errs = append(errs, fmt.Errorf("attach %s: %w", name, err))
				continue
			}
			a.attached[idx] = name
			a.modes[idx] = mode
			a.metrics.attaches.Inc()
			a.log.Info("attached", "interface", name, "ifindex", idx, "mode", mode)
		}
	}
	a.lastErr = errors.Join(errs...)
	if a.lastErr == nil {
		a.topoDirty = false
	}
	if a.lastErr != nil {
		a.log.Error("reconcile", "error", a.lastErr)
		a.markPending() // try again on the next change or resync
		return
	}
	if !pending.IsZero() {
		a.metrics.syncLag.Observe(a.now().Sub(pending).Seconds())
	}
	a.metrics.reconcileSeconds.Observe(a.now().Sub(start).Seconds())
	if !a.ready.Load() {
		a.ready.Store(true)
		close(a.readyC)
		a.log.Info("ready", "vifs", len(a.applied.Vifs), "sa_slots", len(a.applied.Slots), "sas", len(a.applied.SAs), "peers", len(a.applied.Peers))
	}
}

// Ready reports whether the first full reconcile has succeeded.
func (a *Agent) Ready() bool { return a.ready.Load() }

// ReadyC is closed when the first full reconcile has succeeded.
func (a *Agent) ReadyC() <-chan struct{} { return a.readyC }

// Status is what `mlsgate status` prints.
type Status struct {
	Ready bool `json:"ready"`
	// Enforce is the agent's enforce setting: false puts every guest in
	// audit mode.
	Enforce bool          `json:"enforce"`
	Error   string        `json:"error,omitempty"`
	Guests  []GuestStatus `json:"guests"`
	// Undeclared is the mode for interfaces of the patterns without a
	// guest ("deny" or "pass"); UndeclaredInterfaces lists those present.
	Undeclared           string   `json:"undeclared"`
	UndeclaredInterfaces []string `json:"undeclared_interfaces,omitempty"`
	SAs                  saStats  `json:"sas"`
	Peers                int      `json:"peers"`
	Maps                 struct {
		Vifs, Labels, Slots, SAs, Peers int
	} `json:"maps"`
	Counters map[string]map[string]uint64 `json:"counters,omitempty"`
	// Rotations are the SA rotation records (rotation.go).
	Rotations []RotationStatus `json:"rotations,omitempty"`
	// Patterns are the interface name patterns the agent manages; a guest
	// on any other interface is never attached.
	Patterns []string `json:"interface_patterns"`
}

// GuestStatus is one declared guest and where it stands.
type GuestStatus struct {
	GuestSpec
	Ifindex  int  `json:"ifindex,omitempty"`
	Present  bool `json:"present"`
	Attached bool `json:"attached"`
	// Mode is how the programs are attached (tcx, clsact, updated, adopted).
	Mode string `json:"mode,omitempty"`
	// Enforcement is "enforce" (denied packets are dropped) or "audit"
	// (only counted and reported: the guest's audit flag, or enforce off).
	Enforcement string `json:"enforcement"`
	// Unplanned says why the planner refused the guest: it is denied
	// everything (deny_unplanned) until its declaration is fixed.
	Unplanned string `json:"unplanned,omitempty"`
	// NotAttached says why the programs are not attached ("" when they are).
	NotAttached string `json:"not_attached,omitempty"`
}

// Status reports the agent's view.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := Status{Ready: a.ready.Load(), Enforce: a.cfg.Enforce, SAs: a.saView, Peers: len(a.desired.Peers), Undeclared: a.cfg.undeclaredMode()}
	if a.lastErr != nil {
		s.Error = a.lastErr.Error()
	}
	for _, g := range a.desired.Guests {
		gs := GuestStatus{GuestSpec: g, Enforcement: a.cfg.enforcement(g)}
		if idx, ok := a.present[g.Interface]; ok {
			gs.Present, gs.Ifindex = true, idx
			if name, ok := a.attached[idx]; ok && name == g.Interface {
				gs.Attached, gs.Mode = true, a.modes[idx]
			}
			if a.applied != nil && a.applied.Unplanned[uint32(idx)] != nil {
				gs.Unplanned = a.applied.Unplanned[uint32(idx)].Error()
			}
		}
		gs.NotAttached = a.notAttached(gs)
		s.Guests = append(s.Guests, gs)
	}
	s.Patterns = append([]string{}, a.cfg.Interfaces...)
	declared := make(map[string]bool, len(a.desired.Guests))
	for _, g := range a.desired.Guests {
		declared[g.Interface] = true
	}
	for name := range a.present { // not declaredIn: O(interfaces × guests) under a.mu
		if !declared[name] {
			s.UndeclaredInterfaces = append(s.UndeclaredInterfaces, name)
		}
	}
	sort.Strings(s.UndeclaredInterfaces)
	s.Rotations = a.rotationStatus()
	if a.applied != nil {
		s.Maps.Vifs, s.Maps.Labels, s.Maps.Slots, s.Maps.SAs, s.Maps.Peers = len(a.applied.Vifs), len(a.applied.Labels), len(a.applied.Slots), len(a.applied.SAs), len(a.applied.Peers)
	}
	return s
}
