package bpf

import (
	"errors"
	"fmt"
	"sort"

	"github.com/cilium/ebpf"

	"github.com/mlsgate/mlsgate/verdict"
)

// GuestsMax bounds the per-guest counters (GUESTS_MAX): slots 1 to
// GuestsMax-1 belong to one vif each; slot 0 counts the vifs that found
// none (more than GuestsMax-1 guests), so the overall counters stay exact
// and the per-guest ones are bounded: GuestsMax × 2 directions × reasons.
const GuestsMax = 1024

// AssignGuestSlots gives every vif entry of next a counter slot: the one
// prev gave the same ifindex for the same VM, else one that neither prev
// nor next uses, so that a reused slot never carries another guest's
// counts into the new one (Apply zeroes a slot before a vif takes it). It
// is pure over its arguments; a full plan and an incremental update call
// it alike.
func AssignGuestSlots(next, prev map[uint32]FastpathVif) {
	used := map[uint16]bool{0: true}
	for _, v := range prev {
		used[v.Slot] = true
	}
	idx := make([]uint32, 0, len(next))
	for k := range next {
		idx = append(idx, k)
	}
	sort.Slice(idx, func(a, b int) bool { return idx[a] < idx[b] })
	var fresh []uint32
	for _, k := range idx {
		v := next[k]
		if o, ok := prev[k]; ok && o.VmId == v.VmId && o.Slot != 0 {
			v.Slot = o.Slot
			next[k] = v
			continue
		}
		fresh = append(fresh, k)
	}
	cand := uint16(1)
	for _, k := range fresh {
		v := next[k]
		for cand < GuestsMax && used[cand] {
			cand++
		}
		v.Slot = 0
		if cand < GuestsMax {
			v.Slot = cand
			used[cand] = true
		}
		next[k] = v
	}
}

// newSlots lists the slots next assigns that prev did not hold for the
// same vif: their counters must be zeroed before the vif entries are.
func newSlots(prev, next map[uint32]FastpathVif) []uint16 {
	var out []uint16
	for k, v := range next {
		if v.Slot == 0 {
			continue
		}
		if o, ok := prev[k]; ok && o.Slot == v.Slot {
			continue
		}
		out = append(out, v.Slot)
	}
	return out
}

// zeroGuestSlots clears every counter of the slots: in batches (per-CPU
// values, one per possible CPU for each key), one by one where the map
// has no batch update. A batch is 1,000 slots' worth of 2×NumReasons
// per-CPU writes that otherwise cost a syscall each (~60 ms at a start
// with 1,000 vifs).
func (m mapSet) zeroGuestSlots(slots []uint16) error {
	if len(slots) == 0 || m.GuestCtr == nil {
		return nil
	}
	ncpu := ebpf.MustPossibleCPU()
	keys := make([]uint32, 0, len(slots)*2*int(verdict.NumReasons))
	for _, s := range slots {
		for k := range guestKeys(s) {
			keys = append(keys, k)
		}
	}
	zero := make([]FastpathCounter, min(len(keys), batchSize)*ncpu)
	for len(keys) > 0 {
		n := min(len(keys), batchSize)
		_, err := m.GuestCtr.BatchUpdate(keys[:n], zero[:n*ncpu], nil)
		if errors.Is(err, ebpf.ErrNotSupported) {
			for _, k := range keys[:n] {
				if err := m.GuestCtr.Update(k, zero[:ncpu], ebpf.UpdateAny); err != nil {
					return fmt.Errorf("zero guest counters of slot %d: %w", k/(2*uint32(verdict.NumReasons)), err)
				}
			}
		} else if err != nil {
			return fmt.Errorf("zero guest counters of slots %d..%d: %w", keys[0]/(2*uint32(verdict.NumReasons)), keys[n-1]/(2*uint32(verdict.NumReasons)), err)
		}
		keys = keys[n:]
	}
	return nil
}

// guestKeys are the keys of one slot's counters.
func guestKeys(slot uint16) func(func(uint32) bool) {
	return func(yield func(uint32) bool) {
		base := uint32(slot) * 2 * uint32(verdict.NumReasons)
		for k := base; k < base+2*uint32(verdict.NumReasons); k++ {
			if !yield(k) {
				return
			}
		}
	}
}

// GuestCounters reads one slot's counters summed over CPUs, by direction
// and reason.
func (m *Maps) GuestCounters(slot uint16) (out [2][verdict.NumReasons]Counter, err error) {
	var per []FastpathCounter
	for d := range 2 {
		for r := range int(verdict.NumReasons) {
			key := (uint32(slot)*2+uint32(d))*uint32(verdict.NumReasons) + uint32(r)
			if err := m.GuestCtr.Lookup(key, &per); err != nil {
				return out, fmt.Errorf("read %s[%d]: %w", MapGuestCtr, key, err)
			}
			for _, c := range per {
				out[d][r].Packets += c.Packets
				out[d][r].Bytes += c.Bytes
			}
		}
	}
	return out, nil
}
