package bpf

import (
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/verdict"
)

// The lattice, decided ahead of time. Labels, ranges and peers change only
// when the control plane changes them, so the planner answers every
// dominance question a packet could ask and the programs test bits:
//
//   - a guest accepts the default label: VIF_F_DEFAULT_IN_RANGE;
//   - a peer accepts the default label: PEER_F_ACCEPTS_DEFAULT (the plain path);
//   - a peer accepts an SA's label: bit range_id of accepts[label id], where
//     range_id interns the peer's range (the secpath path);
//   - an SA's label lies within its owner's range: SA_F_IN_OWNER_RANGE.
//
// Bounds (bpf/lib/types.h): LabelsMax labels (65,536; accepts costs
// RangesMax/8 = 128 bytes per label, 8 MiB preallocated), RangesMax distinct
// peer ranges (1,024, counting those the maps still hold from the previous
// plan), PeersMax peers (131,072, not preallocated), and SA slots as the
// loader sizes them (36 bytes each: 36 MiB at 1,000,000).
//
// These functions are pure, so that a full plan and an incremental update
// compute the same entries from the same inputs.

// RangesMax bounds the distinct peer ranges (RANGES_MAX).
const RangesMax = 1024

// DefaultInRange is the VIF_F_DEFAULT_IN_RANGE flag of a guest with range r.
func DefaultInRange(r label.Bounds) uint32 {
	if r.Contains(label.Default) {
		return uint32(FastpathVifFlagVIF_F_DEFAULT_IN_RANGE)
	}
	return 0
}

// PeerFlags are the flags of a peer entry with range r.
func PeerFlags(r label.Bounds) uint8 {
	if r.Contains(label.Default) {
		return uint8(FastpathPeerFlagPEER_F_ACCEPTS_DEFAULT)
	}
	return 0
}

// AcceptedRanges is the accepts entry of label l: bit id for every range
// (by range id) that contains l. Ids at or above RangesMax are ignored
// (internRange never hands them out).
func AcceptedRanges(l label.Label, ranges map[uint32]label.Bounds) FastpathLabelAccepts {
	var a FastpathLabelAccepts
	for id, r := range ranges {
		if id < RangesMax && r.Contains(l) {
			a.Ranges[id/64] |= 1 << (id % 64)
		}
	}
	return a
}

// SetAcceptsBit sets or clears, in every label's accepts entry, the bit of
// one range: what an incremental update writes when a range id is handed
// out. labels: label id to label.
func SetAcceptsBit(acc map[uint32]FastpathLabelAccepts, labels map[uint32]label.Label, id uint32, r label.Bounds) {
	if id >= RangesMax {
		return
	}
	for lid, l := range labels {
		a := acc[lid]
		if r.Contains(l) {
			a.Ranges[id/64] |= 1 << (id % 64)
		} else {
			a.Ranges[id/64] &^= 1 << (id % 64)
		}
		acc[lid] = a
	}
}

// rangeIDs interns peer ranges the way PlanFrom interns labels: a range
// that prev holds keeps its id, and a new range takes an id that neither
// prev nor the new state uses, so that while Apply moves the maps from
// prev to next no peer entry points at a bit whose meaning changed.
type rangeIDs struct {
	ids    map[label.Bounds]uint32
	used   map[uint32]bool // ids of the new state
	prev   map[label.Bounds]uint32
	inPrev map[uint32]bool
	next   uint32
}

func newRangeIDs(prev *State) *rangeIDs {
	r := &rangeIDs{ids: map[label.Bounds]uint32{}, used: map[uint32]bool{}, inPrev: map[uint32]bool{}}
	if prev != nil {
		r.prev = prev.RangeIDs
		for _, id := range prev.RangeIDs {
			r.inPrev[id] = true
		}
	}
	return r
}

// intern returns the id of b, or false when RangesMax ids are taken.
func (r *rangeIDs) intern(b label.Bounds) (uint32, bool) {
	if id, ok := r.ids[b]; ok {
		return id, true
	}
	id, ok := r.prev[b]
	for !ok {
		if r.next >= RangesMax {
			return 0, false
		}
		if !r.used[r.next] && !r.inPrev[r.next] {
			id, ok = r.next, true
		}
		r.next++
	}
	r.ids[b] = id
	r.used[id] = true
	return id, true
}

// planAccepts fills s.Accepts: every label's accepted ranges, over the
// ranges of s and those of prev that s dropped (their peers still point
// at them until Apply has written the new peers). The labels of prev that
// s dropped get their entry too: the SAs the maps still hold with them
// read it until Apply deletes them, and a range id new in s (free in
// prev, so its bit in their entry is a stale one) must read true there.
// PlanFrom never gives their ids to a new label.
func planAccepts(s, prev *State) {
	ranges := make(map[uint32]label.Bounds, len(s.RangeIDs))
	if prev != nil {
		for b, id := range prev.RangeIDs {
			ranges[id] = b
		}
	}
	for b, id := range s.RangeIDs {
		ranges[id] = b
	}
	s.Accepts = make(map[uint32]FastpathLabelAccepts, len(s.LabelIDs))
	for l, id := range s.LabelIDs {
		s.Accepts[id] = AcceptedRanges(l, ranges)
	}
	if prev != nil {
		for l, id := range prev.LabelIDs {
			if _, kept := s.LabelIDs[l]; !kept {
				s.Accepts[id] = AcceptedRanges(l, ranges)
			}
		}
	}
}

// peerEntry is the map entry of a peer whose range bounds have label ids
// lo and hi and range id rid.
func peerEntry(pe verdict.Peer, lo, hi, rid uint32) FastpathPeer {
	return FastpathPeer{AppId: pe.App, RangeLo: lo, RangeHi: hi, RangeId: uint16(rid), Kind: uint8(pe.Kind), Flags: PeerFlags(pe.Range)}
}
