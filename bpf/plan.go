package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/verdict"
)

// Sizes of the maps as compiled (bpf/lib/types.h).
const (
	VifsMax    = 65536 // the dense array; larger ifindexes go to the hash
	VifsBigMax = 4096
	LabelsMax  = 65536
	SAsMax     = 65536
	PeersMax   = 131072
)

// DefaultLabelID is the id of label.Default in the labels map.
const DefaultLabelID = 0

// ErrPlan is wrapped by every error Plan returns.
var ErrPlan = errors.New("invalid fast-path policy")

// State is the content of every policy map, as Plan computes it from a
// verdict.Policy. Apply writes the difference between two States.
type State struct {
	Vifs   map[uint32]FastpathVif      // ifindex
	Labels map[uint32]FastpathMlsLabel // label id
	Slots  map[uint32]FastpathSa       // SPI - SPIBase
	SAs    map[FastpathSaKey]FastpathSa
	Peers  map[FastpathPeerKey]FastpathPeer
	// Accepts: by label id, the peer ranges that contain the label
	// (lattice.go).
	Accepts map[uint32]FastpathLabelAccepts
	// LabelIDs maps a label back to its id, for events and tests.
	LabelIDs map[label.Label]uint32
	// RangeIDs: the id of every peer range, the bit of accepts it owns.
	RangeIDs map[label.Bounds]uint32
	// Unplanned: guests the planner refused, by ifindex, and why. Each has
	// a deny-all entry in Vifs (reason deny_unplanned).
	Unplanned map[uint32]error
}

func planErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrPlan, fmt.Sprintf(format, args...))
}

// KernelLabel is the kernel encoding of l.
func KernelLabel(l label.Label) FastpathMlsLabel {
	return FastpathMlsLabel{Sens: l.Secrecy.Sens, Integ: uint8(l.Integrity), Cats: [16]uint64(l.Secrecy.Cats)}
}

// LabelOf decodes the kernel encoding of a label.
func LabelOf(kl FastpathMlsLabel) label.Label {
	return label.Label{Secrecy: label.Level{Sens: kl.Sens, Cats: label.CategorySet(kl.Cats)}, Integrity: label.Integrity(kl.Integ)}
}

// Plan computes the map contents that make the kernel decide as
// verdict.Decide does under p. It touches nothing; errors name the input.
func Plan(p *verdict.Policy) (*State, error) {
	return PlanFrom(p, nil)
}

// PlanFrom is Plan keeping the label ids of prev, the state the maps hold
// now: a label that stays keeps its id, and a new label takes an id that
// neither prev nor the new state uses. So while Apply moves the maps from
// prev to the result, no entry ever points at an id whose label changed
// under it: an agent can re-plan and apply while traffic flows.
func PlanFrom(p *verdict.Policy, prev *State) (*State, error) {
	s := &State{
		Vifs:      make(map[uint32]FastpathVif, len(p.Guests)),
		Labels:    map[uint32]FastpathMlsLabel{DefaultLabelID: KernelLabel(label.Default)},
		Slots:     make(map[uint32]FastpathSa),
		SAs:       make(map[FastpathSaKey]FastpathSa),
		Peers:     make(map[FastpathPeerKey]FastpathPeer, len(p.Peers)),
		LabelIDs:  map[label.Label]uint32{label.Default: DefaultLabelID},
		Unplanned: map[uint32]error{},
	}
	ranges := newRangeIDs(prev)
	// Ids of prev's labels, which a new label must not take over.
	prevIDs := map[uint32]bool{}
	if prev != nil {
		for _, id := range prev.LabelIDs {
			prevIDs[id] = true
		}
	}
	nextID := uint32(DefaultLabelID)
	intern := func(l label.Label) (uint32, error) {
		if id, ok := s.LabelIDs[l]; ok {
			return id, nil
		}
		if err := l.Validate(); err != nil {
			return 0, err
		}
		id, kept := uint32(0), false
		if prev != nil {
			id, kept = prev.LabelIDs[l]
		}
		for !kept {
			nextID++
			if nextID >= LabelsMax {
				return 0, planErr("more than %d distinct labels; raise LABELS_MAX", LabelsMax)
			}
			_, usedNow := s.Labels[nextID]
			_, usedBefore := prevIDs[nextID]
			if !usedNow && !usedBefore {
				id, kept = nextID, true
			}
		}
		s.LabelIDs[l] = id
		s.Labels[id] = KernelLabel(l)
		return id, nil
	}
	bounds := func(b label.Bounds) (lo, hi uint32, err error) {
		if err := b.Validate(); err != nil {
			return 0, 0, err
		}
		if lo, err = intern(b.Low); err != nil {
			return 0, 0, err
		}
		hi, err = intern(b.High)
		return lo, hi, err
	}

	// A guest the planner cannot take is denied everything; the others
	// are planned as if it were not there.
	problems := p.GuestProblems()
	owners := make(map[uint32]verdict.Guest)
	deny := func(ifindex uint32, g verdict.Guest, r verdict.Reason) {
		s.Vifs[ifindex] = denyVif(g, r)
	}
	for ifindex, g := range p.Guests {
		if g.Deny != 0 {
			if g.Deny != verdict.DenyUndeclared && g.Deny != verdict.DenyUnplanned {
				return nil, planErr("ifindex %d: deny-all reason %s; want deny_undeclared or deny_unplanned", ifindex, g.Deny)
			}
			deny(ifindex, g, g.Deny)
			continue
		}
		if err := problems[ifindex]; err != nil {
			s.Unplanned[ifindex] = err
			deny(ifindex, g, verdict.DenyUnplanned)
			continue
		}
		owners[g.VM] = g
		lo, hi, err := bounds(g.Range)
		if err != nil {
			return nil, fmt.Errorf("%w: vm %d on ifindex %d: %w", ErrPlan, g.VM, ifindex, err)
		}
		s.Vifs[ifindex] = vifEntry(g, lo, hi)
	}

	var prevVifs map[uint32]FastpathVif
	if prev != nil {
		prevVifs = prev.Vifs
	}
	AssignGuestSlots(s.Vifs, prevVifs)

	if p.SPISlots > 0 && uint64(p.SPIBase)+uint64(p.SPISlots) > 1<<32 {
		return nil, planErr("SPI range %#x+%d passes 0xffffffff", p.SPIBase, p.SPISlots)
	}
	for i := range p.SAs {
		sa := &p.SAs[i]
		if err := checkSA(sa); err != nil {
			return nil, err
		}
		id, err := intern(sa.Label)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrPlan, saName(sa), err)
		}
		o, ok := owners[sa.Owner]
		v := saEntry(sa, id, o, ok)
		if sa.SPI >= p.SPIBase && sa.SPI-p.SPIBase < p.SPISlots {
			slot := sa.SPI - p.SPIBase
			if _, dup := s.Slots[slot]; dup {
				return nil, planErr("%s: two SAs with one SPI in the host's range; the host allocates each SPI once", saName(sa))
			}
			s.Slots[slot] = v
			continue
		}
		k := FastpathSaKey{Spi: sa.SPI, Family: uint16(sa.Family), Daddr: v.Daddr}
		if _, dup := s.SAs[k]; dup {
			return nil, planErr("%s: two SAs with one SPI for destination %s", saName(sa), sa.Dest())
		}
		if len(s.SAs) >= SAsMax {
			return nil, planErr("more than %d SAs outside the host's SPI range", SAsMax)
		}
		s.SAs[k] = v
	}

	for _, pe := range p.Peers {
		if !pe.Prefix.IsValid() {
			return nil, planErr("peer with an invalid prefix %q", pe.Prefix)
		}
		pfx := pe.Prefix.Masked()
		lo, hi, err := bounds(pe.Range)
		if err != nil {
			return nil, fmt.Errorf("%w: peer %s: %w", ErrPlan, pfx, err)
		}
		k := PeerKey(pfx)
		if _, dup := s.Peers[k]; dup {
			return nil, planErr("peer %s listed twice", pfx)
		}
		if len(s.Peers) >= PeersMax {
			return nil, planErr("more than %d peers", PeersMax)
		}
		rid, ok := ranges.intern(pe.Range)
		if !ok {
			return nil, planErr("peer %s: more than %d distinct peer ranges (with those still in the maps); raise RANGES_MAX", pfx, RangesMax)
		}
		s.Peers[k] = peerEntry(pe, lo, hi, rid)
	}
	s.RangeIDs = ranges.ids
	planAccepts(s, prev)
	return s, nil
}

// The entries of one guest, SA and peer, shared by PlanFrom and
// Incremental (incremental.go) so that both write the same values.

func denyVif(g verdict.Guest, r verdict.Reason) FastpathVif {
	return FastpathVif{VmId: g.VM, Flags: uint32(FastpathVifFlagVIF_F_MANAGED), Deny: uint8(r)}
}

// vifEntry is the entry of a planned guest whose range has the label ids lo
// and hi.
func vifEntry(g verdict.Guest, lo, hi uint32) FastpathVif {
	v := FastpathVif{VmId: g.VM, AppId: g.App, RangeLo: lo, RangeHi: hi, Flags: uint32(FastpathVifFlagVIF_F_MANAGED) | DefaultInRange(g.Range),
		Addr4: addr4(g.Addr4), Addr6: addr16(g.Addr6), Host4: addr4(g.HostAddr4), Host6: addr16(g.HostAddr6),
		Ll6: addr16(verdict.LinkLocal(g.MAC)), Mac: g.MAC}
	if g.Audit {
		v.Flags |= uint32(FastpathVifFlagVIF_F_AUDIT)
	}
	if g.AllowUnlabeled {
		v.Flags |= uint32(FastpathVifFlagVIF_F_ALLOW_UNLABELED)
	}
	return v
}

func saName(sa *verdict.SA) string { return fmt.Sprintf("SA spi %#x", sa.SPI) }

// checkSA refuses an SA the fast path cannot hold, naming it.
func checkSA(sa *verdict.SA) error {
	if sa.SPI < 256 {
		return planErr("%s: SPIs 0-255 are reserved (RFC 4303)", saName(sa))
	}
	if sa.Family != verdict.AFInet && sa.Family != verdict.AFInet6 {
		return planErr("%s: family %d, want AF_INET (2) or AF_INET6 (10)", saName(sa), sa.Family)
	}
	if sa.Daddr.IsUnspecified() {
		return planErr("%s: destination %s; leave it unset for an SA the host terminates", saName(sa), sa.Daddr)
	}
	if sa.Daddr.Is4In6() {
		return planErr("%s: destination %s is IPv4-mapped; write %s", saName(sa), sa.Daddr, sa.Daddr.Unmap())
	}
	if sa.Daddr.IsValid() && verdict.FamilyOf(sa.Daddr) != sa.Family {
		return planErr("%s: destination %s is not of family %d", saName(sa), sa.Daddr, sa.Family)
	}
	return nil
}

// saEntry is the entry of a checked SA whose label has the id id; owner is
// the planned guest of its owner VM, if hasOwner.
func saEntry(sa *verdict.SA, id uint32, owner verdict.Guest, hasOwner bool) FastpathSa {
	v := FastpathSa{OwnerVm: sa.Owner, AppId: sa.App, LabelId: id, Family: uint16(sa.Family), Flags: uint8(FastpathSaFlagSA_F_VALID)}
	if hasOwner && owner.Range.Contains(sa.Label) {
		v.Flags |= uint8(FastpathSaFlagSA_F_IN_OWNER_RANGE)
	}
	v.Daddr = addr16(sa.Dest())
	return v
}

// PeerKey is the LPM trie key of a prefix: the family byte, then the address.
func PeerKey(pfx netip.Prefix) FastpathPeerKey {
	a := pfx.Addr()
	return FastpathPeerKey{Prefixlen: 8 + uint32(pfx.Bits()), Family: uint8(verdict.FamilyOf(a)), Addr: addr16(a)}
}

// addr4 is an IPv4 address as the vif entry holds it; zero when unset.
func addr4(a netip.Addr) (out [4]uint8) {
	if a.Is4() {
		return a.As4()
	}
	return out
}

// addr16 lays an address out as the fast path stores it: IPv4 in the first
// four bytes, the rest zero.
func addr16(a netip.Addr) (out [16]uint8) {
	if !a.IsValid() {
		return out
	}
	if a.Is4() {
		b := a.As4()
		copy(out[:], b[:])
		return out
	}
	return a.As16()
}

// Clone is a copy of s whose maps are its own (every map non-nil; a nil s
// gives an empty State).
func (s *State) Clone() *State {
	if s == nil {
		s = &State{}
	}
	return &State{
		Vifs: cloneMap(s.Vifs), Labels: cloneMap(s.Labels), Slots: cloneMap(s.Slots), SAs: cloneMap(s.SAs), Peers: cloneMap(s.Peers),
		Accepts: cloneMap(s.Accepts), LabelIDs: cloneMap(s.LabelIDs), RangeIDs: cloneMap(s.RangeIDs), Unplanned: cloneMap(s.Unplanned),
	}
}

func cloneMap[K comparable, V any](m map[K]V) map[K]V {
	c := make(map[K]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// Changes counts the entries Apply(prev, next) writes or clears. The bits
// of range ids no peer of next has are no part of the plan: a freed id
// keeps stale bits until it is handed out again, when every label's bit is
// rewritten (incremental.go).
func Changes(prev, next *State) int {
	n := diffMap(prev.Vifs, next.Vifs) + diffMap(prev.Slots, next.Slots) + diffMap(prev.SAs, next.SAs) + diffMap(prev.Peers, next.Peers)
	for id, l := range next.Labels {
		if old, ok := prev.Labels[id]; !ok || old != l {
			n++
		}
	}
	var live FastpathLabelAccepts
	for _, id := range next.RangeIDs {
		live.Ranges[id/64] |= 1 << (id % 64)
	}
	for id, a := range next.Accepts {
		old := prev.Accepts[id]
		for i := range a.Ranges {
			if a.Ranges[i]&live.Ranges[i] != old.Ranges[i]&live.Ranges[i] {
				n++
				break
			}
		}
	}
	return n
}

func diffMap[K, V comparable](a, b map[K]V) int {
	n := 0
	for k, v := range b {
		if old, ok := a[k]; !ok || old != v {
			n++
		}
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			n++
		}
	}
	return n
}
