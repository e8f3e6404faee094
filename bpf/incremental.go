package bpf

import (
	"fmt"
	"net/netip"

	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/verdict"
)

// Incremental keeps a State equal, entry for entry and label ids aside, to
// what PlanFrom computes for a policy while the policy changes one SA, the
// guest set or the peer list at a time. Each change costs what it touches
// (an SA: its entry and its label; the guests: the vifs, and the SAs of the
// owners whose range changed; the peers: the peer entries), not the whole
// policy. Commit hands out the difference since the last Commit as two
// partial States that Apply writes in its usual order.
//
// Label ids stay stable as with PlanFrom: a label keeps its id while any
// entry refers to it, a label that loses its last entry gives its id back
// only after the Commit that removed the entries (so no entry the maps
// still hold points at an id that is written with another label), and a
// new label takes an id no entry of the maps refers to.
//
// The lattice tables follow the same rules. Peer ranges have ids as labels
// do: a range keeps its id while a peer has it, and a range that loses its
// last peer gives its id back only after the Commit that removed the peers
// (its accepts bits stay as they are until then, so the peers the maps
// still hold go on reading true bits). A new label's accepts entry is
// computed over every range whose id is not free; a new range id has its
// bit written in every label's entry; Apply writes both before the SAs and
// peers that lead a packet to them. A freed range id's bits are left stale
// (no peer points at them) and rewritten when the id is handed out again.
// Guest counter slots are assigned as PlanFrom does, against the vifs the
// maps hold (the state of the last Commit), so a slot still counting for
// a vif the maps hold is never handed to another, and Apply zeroes a new
// slot before the vif that takes it.
//
// After an error the Incremental is spent (every later call returns the
// error): the caller plans in full (PlanFrom) and starts a new one.
type Incremental struct {
	cur               *State
	spiBase, spiSlots uint32

	// The SAs are their entries in cur (an entry holds all of the SA the
	// plan uses): no second copy of 100k SAs.
	owners map[uint32]verdict.Guest // the planned guests by VM (PlanFrom's owners)

	refs      map[uint32]int // label id → entries of cur that refer to it
	labelOf   map[uint32]label.Label
	maybeGone map[uint32]struct{} // ids whose count fell to 0 in this batch
	free      []uint32            // ids no entry of the maps refers to
	released  []uint32            // ids dropped in this batch: free after Commit
	hiID      uint32              // no id above was ever handed out

	// Range ids: rangeOf holds every id that is not free (the ranges of
	// cur, and those dropped in this batch that the maps' peers may still
	// point at); rangeRefs counts the peers of cur by range id.
	rangeOf       map[uint32]label.Bounds
	rangeRefs     map[uint32]int
	rangeReleased []uint32 // dropped at this Commit: free after it

	// The batch: the old value of every entry touched since the last Commit.
	jVifs   map[uint32]was[FastpathVif]
	jLabels map[uint32]was[FastpathMlsLabel]
	jSlots  map[uint32]was[FastpathSa]
	jSAs    map[FastpathSaKey]was[FastpathSa]
	jPeers  map[FastpathPeerKey]was[FastpathPeer]
	jAcc    map[uint32]was[FastpathLabelAccepts]

	err error
}

// SAKey names an SA of the policy: its SPI and destination.
type SAKey struct {
	SPI   uint32
	Daddr netip.Addr
}

type was[V any] struct {
	v   V
	had bool
}

// NewIncremental takes over s, the State PlanFrom computed for p (and the
// maps hold): s is updated in place from now on, and State returns it.
func NewIncremental(p *verdict.Policy, s *State) (*Incremental, error) {
	in := &Incremental{
		cur: s, spiBase: p.SPIBase, spiSlots: p.SPISlots, owners: plannedOwners(p.Guests),
		refs: map[uint32]int{}, labelOf: map[uint32]label.Label{}, maybeGone: map[uint32]struct{}{},
		rangeOf: map[uint32]label.Bounds{}, rangeRefs: map[uint32]int{},
	}
	if s.Accepts == nil {
		s.Accepts = map[uint32]FastpathLabelAccepts{}
	}
	if s.RangeIDs == nil {
		s.RangeIDs = map[label.Bounds]uint32{}
	}
	for b, id := range s.RangeIDs {
		in.rangeOf[id] = b
	}
	in.reset()
	for l, id := range s.LabelIDs {
		in.labelOf[id] = l
		in.hiID = max(in.hiID, id)
	}
	for id := uint32(1); id < in.hiID; id++ {
		if _, ok := in.labelOf[id]; !ok {
			in.free = append(in.free, id)
		}
	}
	for _, v := range s.Vifs {
		in.refVif(v, 1)
	}
	for _, v := range s.Slots {
		in.refSA(v, 1)
	}
	for _, v := range s.SAs {
		in.refSA(v, 1)
	}
	for k, v := range s.Peers {
		if _, ok := in.rangeOf[uint32(v.RangeId)]; !ok {
			return nil, fmt.Errorf("%w: peer %+v has range id %d, which the state's RangeIDs lack: not a plan", ErrPlan, k, v.RangeId)
		}
		in.refPeer(v, 1)
	}
	for id := range in.labelOf {
		if id != DefaultLabelID && in.refs[id] == 0 {
			in.maybeGone[id] = struct{}{}
		}
	}
	if len(p.SAs) != len(s.Slots)+len(s.SAs) {
		return nil, fmt.Errorf("%w: the state holds %d SA entries for %d SAs: not the plan of this policy", ErrPlan, len(s.Slots)+len(s.SAs), len(p.SAs))
	}
	return in, nil
}

// State is the current State, the maps' content once the last Commit is
// applied. It is updated in place.
func (in *Incremental) State() *State { return in.cur }

// Err is the error that spent the Incremental, or nil.
func (in *Incremental) Err() error { return in.err }

func (in *Incremental) reset() {
	in.jVifs, in.jLabels, in.jSlots = map[uint32]was[FastpathVif]{}, map[uint32]was[FastpathMlsLabel]{}, map[uint32]was[FastpathSa]{}
	in.jSAs, in.jPeers = map[FastpathSaKey]was[FastpathSa]{}, map[FastpathPeerKey]was[FastpathPeer]{}
	in.jAcc = map[uint32]was[FastpathLabelAccepts]{}
}

func (in *Incremental) fail(err error) error {
	if in.err == nil {
		in.err = err
	}
	return in.err
}

// plannedOwners is PlanFrom's owners: the guests it plans, by VM.
func plannedOwners(guests map[uint32]verdict.Guest) map[uint32]verdict.Guest {
	problems := (&verdict.Policy{Guests: guests}).GuestProblems()
	owners := map[uint32]verdict.Guest{}
	for i, g := range guests {
		if g.Deny == 0 && problems[i] == nil {
			owners[g.VM] = g
		}
	}
	return owners
}

func (in *Incremental) slot(spi uint32) (uint32, bool) {
	if spi >= in.spiBase && spi-in.spiBase < in.spiSlots {
		return spi - in.spiBase, true
	}
	return 0, false
}

// find is the entry of the SA k: in its slot, or in the hash.
func (in *Incremental) find(k SAKey) (v FastpathSa, slot uint32, hk FastpathSaKey, inSlot, ok bool) {
	d := addr16(k.Daddr)
	fams := []verdict.Family{verdict.FamilyOf(k.Daddr)}
	if !k.Daddr.IsValid() { // host-terminated: keyed by the zero address of its family
		fams = []verdict.Family{verdict.AFInet, verdict.AFInet6}
	}
	if slot, inSlot = in.slot(k.SPI); inSlot {
		v, ok = in.cur.Slots[slot]
		ok = ok && v.Daddr == d && (!k.Daddr.IsValid() || v.Family == uint16(fams[0]))
		return v, slot, hk, true, ok
	}
	for _, f := range fams {
		hk = FastpathSaKey{Spi: k.SPI, Family: uint16(f), Daddr: d}
		if v, ok = in.cur.SAs[hk]; ok {
			return v, 0, hk, false, true
		}
	}
	return v, 0, hk, false, false
}

// SetSA adds sa, or replaces the SA with its SPI and destination.
func (in *Incremental) SetSA(sa verdict.SA) error {
	if in.err != nil {
		return in.err
	}
	k := SAKey{sa.SPI, sa.Daddr}
	old, oslot, ohk, oInSlot, had := in.find(k)
	if had && old.OwnerVm == sa.Owner && old.AppId == sa.App && old.Family == uint16(sa.Family) && in.labelOf[old.LabelId] == sa.Label {
		return nil
	}
	if err := checkSA(&sa); err != nil {
		return in.fail(err)
	}
	id, err := in.intern(sa.Label)
	if err != nil {
		return in.fail(fmt.Errorf("%w: %s: %w", ErrPlan, saName(&sa), err))
	}
	if had {
		in.drop(oslot, ohk, oInSlot)
	}
	o, hasOwner := in.owners[sa.Owner]
	v := saEntry(&sa, id, o, hasOwner)
	if slot, ok := in.slot(sa.SPI); ok {
		if _, dup := in.cur.Slots[slot]; dup {
			return in.fail(planErr("%s: two SAs with one SPI in the host's range; the host allocates each SPI once", saName(&sa)))
		}
		in.setSlot(slot, v, true)
	} else {
		hk := FastpathSaKey{Spi: sa.SPI, Family: uint16(sa.Family), Daddr: v.Daddr}
		if _, dup := in.cur.SAs[hk]; dup {
			return in.fail(planErr("%s: two SAs with one SPI for destination %s", saName(&sa), sa.Dest()))
		}
		if len(in.cur.SAs) >= SAsMax {
			return in.fail(planErr("more than %d SAs outside the host's SPI range", SAsMax))
		}
		in.setHashSA(hk, v, true)
	}
	return nil
}

// HasSA reports whether the SA with this SPI and destination is planned.
func (in *Incremental) HasSA(k SAKey) bool {
	_, _, _, _, ok := in.find(k)
	return ok
}

// DeleteSA removes the SA with this SPI and destination, if there is one.
func (in *Incremental) DeleteSA(k SAKey) error {
	if in.err != nil {
		return in.err
	}
	if _, slot, hk, inSlot, ok := in.find(k); ok {
		in.drop(slot, hk, inSlot)
	}
	return nil
}

func (in *Incremental) drop(slot uint32, hk FastpathSaKey, inSlot bool) {
	if inSlot {
		in.setSlot(slot, FastpathSa{}, false)
	} else {
		in.setHashSA(hk, FastpathSa{}, false)
	}
}

// SetGuests replaces the guests (the policy's Guests, by ifindex). It
// costs the number of guests, and the SAs of the VMs whose planned range
// changed.
func (in *Incremental) SetGuests(guests map[uint32]verdict.Guest) error {
	if in.err != nil {
		return in.err
	}
	problems := (&verdict.Policy{Guests: guests}).GuestProblems()
	unplanned := map[uint32]error{}
	vifs := make(map[uint32]FastpathVif, len(guests))
	for ifindex, g := range guests {
		var v FastpathVif
		switch {
		case g.Deny != 0:
			if g.Deny != verdict.DenyUndeclared && g.Deny != verdict.DenyUnplanned {
				return in.fail(planErr("ifindex %d: deny-all reason %s; want deny_undeclared or deny_unplanned", ifindex, g.Deny))
			}
			v = denyVif(g, g.Deny)
		case problems[ifindex] != nil:
			unplanned[ifindex] = problems[ifindex]
			v = denyVif(g, verdict.DenyUnplanned)
		default:
			if err := g.Range.Validate(); err != nil {
				return in.fail(fmt.Errorf("%w: vm %d on ifindex %d: %w", ErrPlan, g.VM, ifindex, err))
			}
			lo, err := in.intern(g.Range.Low)
			if err == nil {
				var hi uint32
				hi, err = in.intern(g.Range.High)
				v = vifEntry(g, lo, hi)
			}
			if err != nil {
				return in.fail(fmt.Errorf("%w: vm %d on ifindex %d: %w", ErrPlan, g.VM, ifindex, err))
			}
		}
		vifs[ifindex] = v
	}
	// The slots, against the vifs the maps hold: cur with this batch's
	// changes undone.
	held := make(map[uint32]FastpathVif, len(in.cur.Vifs))
	for k, v := range in.cur.Vifs {
		held[k] = v
	}
	for k, w := range in.jVifs {
		if w.had {
			held[k] = w.v
		} else {
			delete(held, k)
		}
	}
	AssignGuestSlots(vifs, held)
	for ifindex, v := range vifs {
		in.setVif(ifindex, v, true)
	}
	for ifindex := range in.cur.Vifs {
		if _, ok := guests[ifindex]; !ok {
			in.setVif(ifindex, FastpathVif{}, false)
		}
	}
	in.cur.Unplanned = unplanned
	owners := plannedOwners(guests)
	changed := map[uint32]bool{}
	for vm, o := range in.owners {
		if n, ok := owners[vm]; !ok || n.Range != o.Range {
			changed[vm] = true
		}
	}
	for vm := range owners {
		if _, ok := in.owners[vm]; !ok {
			changed[vm] = true
		}
	}
	in.owners = owners
	if len(changed) == 0 {
		return nil
	}
	// The SAs of the VMs whose planned range changed: a scan of the
	// entries (no planning), then a rewrite of those whose in-range flag
	// moves.
	inRange := func(v FastpathSa) FastpathSa {
		o, ok := owners[v.OwnerVm]
		sa := verdict.SA{Owner: v.OwnerVm, Label: in.labelOf[v.LabelId]}
		w := saEntry(&sa, v.LabelId, o, ok)
		v.Flags = v.Flags&^uint8(FastpathSaFlagSA_F_IN_OWNER_RANGE) | w.Flags&uint8(FastpathSaFlagSA_F_IN_OWNER_RANGE)
		return v
	}
	for slot, v := range in.cur.Slots {
		if changed[v.OwnerVm] {
			if w := inRange(v); w != v {
				in.setSlot(slot, w, true)
			}
		}
	}
	for hk, v := range in.cur.SAs {
		if changed[v.OwnerVm] {
			if w := inRange(v); w != v {
				in.setHashSA(hk, w, true)
			}
		}
	}
	return nil
}

// SetPeers replaces the peer list. It costs the number of peers.
func (in *Incremental) SetPeers(peers []verdict.Peer) error {
	if in.err != nil {
		return in.err
	}
	next := make(map[FastpathPeerKey]FastpathPeer, len(peers))
	for _, pe := range peers {
		if !pe.Prefix.IsValid() {
			return in.fail(planErr("peer with an invalid prefix %q", pe.Prefix))
		}
		pfx := pe.Prefix.Masked()
		if err := pe.Range.Validate(); err != nil {
			return in.fail(fmt.Errorf("%w: peer %s: %w", ErrPlan, pfx, err))
		}
		lo, err := in.intern(pe.Range.Low)
		var hi uint32
		if err == nil {
			hi, err = in.intern(pe.Range.High)
		}
		if err != nil {
			return in.fail(fmt.Errorf("%w: peer %s: %w", ErrPlan, pfx, err))
		}
		k := PeerKey(pfx)
		if _, dup := next[k]; dup {
			return in.fail(planErr("peer %s listed twice", pfx))
		}
		if len(next) >= PeersMax {
			return in.fail(planErr("more than %d peers", PeersMax))
		}
		rid, ok := in.internRange(pe.Range)
		if !ok {
			return in.fail(planErr("peer %s: more than %d distinct peer ranges (with those still in the maps); raise RANGES_MAX", pfx, RangesMax))
		}
		next[k] = peerEntry(pe, lo, hi, rid)
	}

	for k := range in.cur.Peers {
		if _, ok := next[k]; !ok {
			in.setPeer(k, FastpathPeer{}, false)
		}
	}
	for k, v := range next {
		in.setPeer(k, v, true)
	}
	return nil
}

// intern returns the id of l, giving it one (with no entries yet) if it
// has none.
func (in *Incremental) intern(l label.Label) (uint32, error) {
	if id, ok := in.cur.LabelIDs[l]; ok {
		return id, nil
	}
	if err := l.Validate(); err != nil {
		return 0, err
	}
	var id uint32
	if n := len(in.free); n > 0 {
		id, in.free = in.free[n-1], in.free[:n-1]
	} else {
		if in.hiID+1 >= LabelsMax {
			return 0, planErr("more than %d distinct labels; raise LABELS_MAX", LabelsMax)
		}
		in.hiID++
		id = in.hiID
	}
	in.cur.LabelIDs[l] = id
	in.labelOf[id] = l
	in.maybeGone[id] = struct{}{}
	journal(in.cur.Labels, in.jLabels, id, KernelLabel(l), true)
	journal(in.cur.Accepts, in.jAcc, id, AcceptedRanges(l, in.rangeOf), true)
	return id, nil
}

// internRange returns the id of the peer range b, handing it the lowest id
// no range of the maps or of cur has (false: none left) and writing its
// bit in every label's accepts entry.
func (in *Incremental) internRange(b label.Bounds) (uint32, bool) {
	if id, ok := in.cur.RangeIDs[b]; ok {
		return id, true
	}
	id := uint32(0)
	for ; id < RangesMax; id++ {
		if _, used := in.rangeOf[id]; !used {
			break
		}
	}
	if id >= RangesMax {
		return 0, false
	}
	in.cur.RangeIDs[b] = id
	in.rangeOf[id] = b
	word, bit := id/64, uint64(1)<<(id%64)
	for lid, l := range in.labelOf {
		a := in.cur.Accepts[lid]
		if b.Contains(l) {
			a.Ranges[word] |= bit
		} else {
			a.Ranges[word] &^= bit
		}
		if a != in.cur.Accepts[lid] {
			journal(in.cur.Accepts, in.jAcc, lid, a, true)
		}
	}
	return id, true
}

func (in *Incremental) ref(id uint32, d int) {
	if id == DefaultLabelID {
		return
	}
	in.refs[id] += d
	if in.refs[id] == 0 {
		in.maybeGone[id] = struct{}{}
	}
}

func (in *Incremental) refVif(v FastpathVif, d int) { in.ref(v.RangeLo, d); in.ref(v.RangeHi, d) }
func (in *Incremental) refSA(v FastpathSa, d int)   { in.ref(v.LabelId, d) }
func (in *Incremental) refPeer(v FastpathPeer, d int) {
	in.ref(v.RangeLo, d)
	in.ref(v.RangeHi, d)
	in.rangeRefs[uint32(v.RangeId)] += d
}

func (in *Incremental) setVif(k uint32, v FastpathVif, keep bool) {
	if old, had := journal(in.cur.Vifs, in.jVifs, k, v, keep); had {
		in.refVif(old, -1)
	}
	if keep {
		in.refVif(v, 1)
	}
}

func (in *Incremental) setSlot(k uint32, v FastpathSa, keep bool) {
	if old, had := journal(in.cur.Slots, in.jSlots, k, v, keep); had {
		in.refSA(old, -1)
	}
	if keep {
		in.refSA(v, 1)
	}
}

func (in *Incremental) setHashSA(k FastpathSaKey, v FastpathSa, keep bool) {
	if old, had := journal(in.cur.SAs, in.jSAs, k, v, keep); had {
		in.refSA(old, -1)
	}
	if keep {
		in.refSA(v, 1)
	}
}

func (in *Incremental) setPeer(k FastpathPeerKey, v FastpathPeer, keep bool) {
	if old, had := journal(in.cur.Peers, in.jPeers, k, v, keep); had {
		in.refPeer(old, -1)
	}
	if keep {
		in.refPeer(v, 1)
	}
}

// journal sets (keep) or deletes cur[k], noting its value before the
// batch the first time the batch touches it; it returns the value it
// replaces.
func journal[K comparable, V any](cur map[K]V, j map[K]was[V], k K, v V, keep bool) (V, bool) {
	old, had := cur[k]
	if _, seen := j[k]; !seen {
		j[k] = was[V]{old, had}
	}
	if keep {
		cur[k] = v
	} else {
		delete(cur, k)
	}
	return old, had
}

// Commit ends the batch: it drops the labels no entry refers to any more
// and returns the entries the batch touched, as they were (prev) and as
// they are (next), for Apply(prev, next). next's LabelIDs, RangeIDs and
// Unplanned are the whole State's. An empty batch gives two empty States.
func (in *Incremental) Commit() (prev, next *State, err error) {
	if in.err != nil {
		return nil, nil, in.err
	}
	for id := range in.maybeGone {
		if in.refs[id] != 0 {
			continue
		}
		delete(in.refs, id)
		l := in.labelOf[id]
		delete(in.labelOf, id)
		delete(in.cur.LabelIDs, l)
		journal(in.cur.Labels, in.jLabels, id, FastpathMlsLabel{}, false)
		// Its accepts entry stays in this Commit's next: the SAs the
		// maps still hold with this label read it until Apply deletes
		// them, and a range id handed out in this batch has its bit there.
		in.released = append(in.released, id)
	}
	clear(in.maybeGone)
	if len(in.jPeers) > 0 {
		for b, id := range in.cur.RangeIDs {
			if in.rangeRefs[id] == 0 {
				delete(in.cur.RangeIDs, b)
				delete(in.rangeRefs, id)
				in.rangeReleased = append(in.rangeReleased, id)
			}
		}
	}
	if len(in.jVifs) > 0 {
		big := 0
		for k := range in.cur.Vifs {
			if k >= VifsMax {
				big++
			}
		}
		if big > VifsBigMax {
			return nil, nil, in.fail(fmt.Errorf("%d vifs on ifindexes >= %d: the fast path holds %d (VIFS_BIG_MAX)", big, VifsMax, VifsBigMax))
		}
	}
	prev, next = &State{}, &State{}
	prev.Vifs, next.Vifs = split(in.cur.Vifs, in.jVifs)
	prev.Labels, next.Labels = split(in.cur.Labels, in.jLabels)
	prev.Slots, next.Slots = split(in.cur.Slots, in.jSlots)
	prev.SAs, next.SAs = split(in.cur.SAs, in.jSAs)
	prev.Peers, next.Peers = split(in.cur.Peers, in.jPeers)
	prev.Accepts, next.Accepts = split(in.cur.Accepts, in.jAcc)
	for _, id := range in.released {
		delete(in.cur.Accepts, id)
	}
	next.LabelIDs, next.RangeIDs, next.Unplanned = in.cur.LabelIDs, in.cur.RangeIDs, in.cur.Unplanned
	in.reset()
	in.free = append(in.free, in.released...)
	in.released = in.released[:0]
	for _, id := range in.rangeReleased {
		delete(in.rangeOf, id)
	}
	in.rangeReleased = in.rangeReleased[:0]
	return prev, next, nil
}

func split[K comparable, V comparable](cur map[K]V, j map[K]was[V]) (prev, next map[K]V) {
	prev, next = make(map[K]V), make(map[K]V)
	for k, w := range j {
		v, has := cur[k]
		if has && w.had && v == w.v {
			continue // touched and put back
		}
		if w.had {
			prev[k] = w.v
		}
		if has {
			next[k] = v
		}
	}
	return prev, next
}
