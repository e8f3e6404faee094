package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// batchSize bounds one BPF_MAP_UPDATE_BATCH call.
const batchSize = 4096

// Apply writes next into the maps, touching only what differs from prev
// (nil prev: everything). New labels, their accepted ranges and SAs go in
// before the vifs and peers that refer to them; entries that disappear go last, vifs first.
func (m *Maps) Apply(prev, next *State) error {
	ms := mapSet{Labels: m.Labels, Accepts: m.Accepts, SASlots: m.SASlots, SAs: m.SAs, Peers: m.Peers, Vifs: m.Vifs, VifsBig: m.VifsBig}
	if m.GuestCtr != nil { // a nil *ebpf.Map in the interface would not compare nil
		ms.GuestCtr = m.GuestCtr
	}
	return applyTo(ms, prev, next)
}

// kvMap is what Apply needs of a map: *ebpf.Map, or a recording fake in
// the tests that check the order of the writes (incremental_test.go).
type kvMap interface {
	BatchUpdate(keys, values any, opts *ebpf.BatchOptions) (int, error)
	Update(key, value any, flags ebpf.MapUpdateFlags) error
	Delete(key any) error
	Type() ebpf.MapType
	MaxEntries() uint32
}

// mapSet names the policy maps Apply writes, and the per-guest counters
// it zeroes before a vif takes a slot (nil: none loaded).
type mapSet struct {
	Labels, Accepts, SASlots, SAs, Peers, Vifs, VifsBig kvMap
	GuestCtr                                            kvMap
}

func applyTo(m mapSet, prev, next *State) error {
	if prev == nil {
		prev = &State{}
	}
	if len(next.Slots) > 0 {
		if k, n := maxKey(next.Slots), m.SASlots.MaxEntries(); k >= n {
			return fmt.Errorf("sa slot %d beyond the %d slots loaded: load with a larger SPISlots", k, n)
		}
	}
	prevSmall, prevBig := splitVifs(prev.Vifs)
	nextSmall, nextBig := splitVifs(next.Vifs)
	if n := len(nextBig); n > VifsBigMax {
		return fmt.Errorf("%d vifs on ifindexes >= %d: the fast path holds %d (VIFS_BIG_MAX)", n, VifsMax, VifsBigMax)
	}
	steps := []struct {
		name string
		err  func() error
	}{
		{"labels", func() error { return putChanged(m.Labels, prev.Labels, next.Labels) }},
		{"accepts", func() error { return putChanged(m.Accepts, prev.Accepts, next.Accepts) }},
		{"sa_slots", func() error { return putChanged(m.SASlots, prev.Slots, next.Slots) }},
		{"sas", func() error { return putChanged(m.SAs, prev.SAs, next.SAs) }},
		{"peers", func() error { return putChanged(m.Peers, prev.Peers, next.Peers) }},
		{"guest counters", func() error { return m.zeroGuestSlots(newSlots(prev.Vifs, next.Vifs)) }},
		{"vifs", func() error { return putChanged(m.Vifs, prevSmall, nextSmall) }},
		{"vifs_big", func() error { return putChanged(m.VifsBig, prevBig, nextBig) }},
		{"vifs", func() error { return clearGone(m.Vifs, prevSmall, nextSmall, true) }},
		{"vifs_big", func() error { return clearGone(m.VifsBig, prevBig, nextBig, false) }},
		{"peers", func() error { return clearGone(m.Peers, prev.Peers, next.Peers, false) }},
		{"sas", func() error { return clearGone(m.SAs, prev.SAs, next.SAs, false) }},
		{"sa_slots", func() error { return clearGone(m.SASlots, prev.Slots, next.Slots, true) }},
	}
	for _, s := range steps {
		if err := s.err(); err != nil {
			return fmt.Errorf("apply %s: %w", s.name, err)
		}
	}
	return nil
}

// splitVifs separates the entries of the dense array (ifindex < VifsMax)
// from those of the hash.
func splitVifs(all map[uint32]FastpathVif) (small, big map[uint32]FastpathVif) {
	small, big = map[uint32]FastpathVif{}, map[uint32]FastpathVif{}
	for k, v := range all {
		if k < VifsMax {
			small[k] = v
		} else {
			big[k] = v
		}
	}
	return small, big
}

func maxKey[V any](m map[uint32]V) uint32 {
	var k uint32
	for x := range m {
		k = max(k, x)
	}
	return k
}

func putChanged[K, V comparable](m kvMap, prev, next map[K]V) error {
	// Sized for a start, when every entry is new (100k SAs: no regrowth).
	n := 0
	if len(prev) == 0 {
		n = len(next)
	}
	keys, vals := make([]K, 0, n), make([]V, 0, n)
	for k, v := range next {
		if old, ok := prev[k]; ok && old == v {
			continue
		}
		keys = append(keys, k)
		vals = append(vals, v)
	}
	return put(m, keys, vals)
}

// clearGone removes entries of prev that next lacks; arrays cannot delete,
// so their entries are zeroed (flags 0: unmanaged vif, invalid SA).
func clearGone[K, V comparable](m kvMap, prev, next map[K]V, array bool) error {
	var keys []K
	for k := range prev {
		if _, ok := next[k]; !ok {
			keys = append(keys, k)
		}
	}
	if array {
		return put(m, keys, make([]V, len(keys)))
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete %v: %w", k, err)
		}
	}
	return nil
}

// put writes in batches where the map type has them (arrays, hashes) and
// one by one where it does not (LPM tries).
func put[K, V any](m kvMap, keys []K, vals []V) error {
	for len(keys) > 0 {
		n := min(len(keys), batchSize)
		if m.Type() != ebpf.LPMTrie {
			_, err := m.BatchUpdate(keys[:n], vals[:n], nil)
			if err == nil {
				keys, vals = keys[n:], vals[n:]
				continue
			}
			if !errors.Is(err, ebpf.ErrNotSupported) {
				return err
			}
		}
		for i := range n {
			if err := m.Update(keys[i], vals[i], ebpf.UpdateAny); err != nil {
				return fmt.Errorf("update %v: %w", keys[i], err)
			}
		}
		keys, vals = keys[n:], vals[n:]
	}
	return nil
}
