package bpf

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/verdict"
)

var incSteps = flag.Int("incremental.steps", 1000, "random changes per seed in TestIncrementalMatchesFullPlan")

// fakeMaps stands in for the kernel maps: it records every write Apply
// makes, one entry at a time, and after each checks the invariant the
// stable label ids exist for. An entry never refers to a label id whose
// label is not (yet) the one the State being applied gives it, and a
// label id is never rewritten with another label while an entry refers to it.
// It checks the lattice tables as well, from the maps alone (label ids
// decoded through the labels map): every live peer's range bit in the
// accepts entry of every live SA's label tells whether the range contains
// the label, and its flags are its range's; every planned vif's
// DEFAULT_IN_RANGE flag is its range's; two live vifs never share a
// counter slot, a slot is zeroed only when no live vif has it, and a vif
// takes a slot only once it was zeroed since another vif counted in it.
type fakeMaps struct {
	t     *testing.T
	maps  map[string]*fakeMap
	want  map[uint32]FastpathMlsLabel // the labels of the State being applied
	where string
	// ctrOwner: the vif (ifindex, VM) whose packets a slot's counters
	// hold since it was last zeroed.
	ctrOwner map[uint16][2]uint32
}

type fakeMap struct {
	f    *fakeMaps
	name string
	typ  ebpf.MapType
	max  uint32
	data map[any]any
}

func newFakeMaps(t *testing.T) *fakeMaps {
	f := &fakeMaps{t: t, maps: map[string]*fakeMap{}, ctrOwner: map[uint16][2]uint32{}}
	for _, m := range []struct {
		name string
		typ  ebpf.MapType
		max  uint32
	}{{"labels", ebpf.Array, LabelsMax}, {"sa_slots", ebpf.Array, 64}, {"sas", ebpf.Hash, SAsMax}, {"peers", ebpf.LPMTrie, PeersMax}, {"vifs", ebpf.Array, VifsMax}, {"vifs_big", ebpf.Hash, VifsBigMax},
		{"accepts", ebpf.Array, LabelsMax}, {"guest_ctr", ebpf.PerCPUArray, GuestsMax * 2 * uint32(verdict.NumReasons)}} {
		f.maps[m.name] = &fakeMap{f: f, name: m.name, typ: m.typ, max: m.max, data: map[any]any{}}
	}
	return f
}

func (f *fakeMaps) set() mapSet {
	m := f.maps
	return mapSet{Labels: m["labels"], Accepts: m["accepts"], SASlots: m["sa_slots"], SAs: m["sas"], Peers: m["peers"], Vifs: m["vifs"], VifsBig: m["vifs_big"], GuestCtr: m["guest_ctr"]}
}

// apply is Apply on the fake maps, with the invariant checked at each
// write; labels are all the labels of the State the maps move to (next
// may hold only the difference).
func (f *fakeMaps) apply(prev, next *State, labels map[uint32]FastpathMlsLabel, where string) error {
	f.want, f.where = labels, where
	return applyTo(f.set(), prev, next)
}

func (m *fakeMap) Type() ebpf.MapType { return m.typ }
func (m *fakeMap) MaxEntries() uint32 { return m.max }

func (m *fakeMap) BatchUpdate(keys, values any, _ *ebpf.BatchOptions) (int, error) {
	if m.typ == ebpf.LPMTrie {
		return 0, ebpf.ErrNotSupported
	}
	ks, vs := reflect.ValueOf(keys), reflect.ValueOf(values)
	if m.typ == ebpf.PerCPUArray { // a value per possible CPU for each key
		ncpu := ebpf.MustPossibleCPU()
		if vs.Len() != ks.Len()*ncpu {
			m.f.t.Fatalf("%s: batch of %d keys with %d per-CPU values, want %d", m.name, ks.Len(), vs.Len(), ks.Len()*ncpu)
		}
		for i := range ks.Len() {
			if err := m.Update(ks.Index(i).Interface(), vs.Slice(i*ncpu, (i+1)*ncpu).Interface(), ebpf.UpdateAny); err != nil {
				return i, err
			}
		}
		return ks.Len(), nil
	}
	for i := range ks.Len() {
		if err := m.Update(ks.Index(i).Interface(), vs.Index(i).Interface(), ebpf.UpdateAny); err != nil {
			return i, err
		}
	}
	return ks.Len(), nil
}

func (m *fakeMap) Update(key, value any, _ ebpf.MapUpdateFlags) error {
	f := m.f
	f.t.Helper()
	if m.name == "guest_ctr" {
		slot := uint16(key.(uint32) / (2 * uint32(verdict.NumReasons)))
		for _, c := range value.([]FastpathCounter) {
			if c != (FastpathCounter{}) {
				f.t.Fatalf("%s: guest counter %d written with %+v, want zero", f.where, key, c)
			}
		}
		for _, name := range []string{"vifs", "vifs_big"} {
			for k, v := range f.maps[name].data {
				if v := v.(FastpathVif); v.Flags != 0 && v.Slot == slot {
					f.t.Fatalf("%s: counters of slot %d zeroed while vif %v (vm %d) counts in it", f.where, slot, k, v.VmId)
				}
			}
		}
		delete(f.ctrOwner, slot)
		return nil
	}
	if v, ok := value.(FastpathVif); ok && v.Flags != 0 && v.Slot != 0 {
		me := [2]uint32{key.(uint32), v.VmId}
		if o, counted := f.ctrOwner[v.Slot]; counted && o != me {
			f.t.Fatalf("%s: vif %d (vm %d) takes slot %d, which still counts for ifindex %d vm %d (not zeroed)", f.where, me[0], me[1], v.Slot, o[0], o[1])
		}
		for _, name := range []string{"vifs", "vifs_big"} {
			for k, w := range f.maps[name].data {
				if w := w.(FastpathVif); k != key && w.Flags != 0 && w.Slot == v.Slot {
					f.t.Fatalf("%s: vif %v and vif %v share counter slot %d", f.where, k, key, v.Slot)
				}
			}
		}
		f.ctrOwner[v.Slot] = me
	}
	if m.name == "labels" {
		id := key.(uint32)
		if old, ok := m.data[id]; ok && old != value {
			if e := f.referrer(id); e != "" {
				f.t.Fatalf("%s: label id %d rewritten from %+v to %+v while %s refers to it", f.where, id, old, value, e)
			}
		}
	} else {
		for _, id := range labelIDsOf(value) {
			have, ok := f.maps["labels"].data[id]
			if want, planned := f.want[id]; !ok || !planned || have != want {
				f.t.Fatalf("%s: %s entry %+v written while its label id %d holds %+v (present %v), want %+v (planned %v)", f.where, m.name, key, id, have, ok, want, planned)
			}
		}
	}
	m.data[key] = value
	f.checkLattice(m.name, key)
	return nil
}

// label decodes a label id through the fake labels map.
func (f *fakeMaps) label(id uint32) (label.Label, bool) {
	v, ok := f.maps["labels"].data[id]
	if !ok {
		return label.Label{}, false
	}
	return LabelOf(v.(FastpathMlsLabel)), true
}

// checkLattice checks, after a write, the decisions the lattice tables
// encode against the labels the maps hold.
func (f *fakeMaps) checkLattice(name string, key any) {
	f.t.Helper()
	rng := func(lo, hi uint32) label.Bounds {
		l, okl := f.label(lo)
		h, okh := f.label(hi)
		if !okl || !okh {
			f.t.Fatalf("%s: after writing %s %+v: a range refers to label ids %d-%d, missing", f.where, name, key, lo, hi)
		}
		return label.Bounds{Low: l, High: h}
	}
	for _, mn := range []string{"vifs", "vifs_big"} {
		for k, v := range f.maps[mn].data {
			if v := v.(FastpathVif); v.Flags != 0 && v.Deny == 0 {
				if got, want := v.Flags&uint32(FastpathVifFlagVIF_F_DEFAULT_IN_RANGE), DefaultInRange(rng(v.RangeLo, v.RangeHi)); got != want {
					f.t.Fatalf("%s: after writing %s %+v: vif %v default-in-range flag %#x, its range says %#x", f.where, name, key, k, got, want)
				}
			}
		}
	}
	saLabels := map[uint32]bool{}
	for _, mn := range []string{"sa_slots", "sas"} {
		for _, v := range f.maps[mn].data {
			if v := v.(FastpathSa); v.Flags != 0 {
				saLabels[v.LabelId] = true
			}
		}
	}
	type peerRange struct{ rid, lo, hi uint32 }
	seen := map[peerRange]bool{}
	for k, v := range f.maps["peers"].data {
		v := v.(FastpathPeer)
		r := rng(v.RangeLo, v.RangeHi)
		if got, want := v.Flags, PeerFlags(r); got != want {
			f.t.Fatalf("%s: after writing %s %+v: peer %+v flags %#x, its range says %#x", f.where, name, key, k, got, want)
		}
		pr := peerRange{uint32(v.RangeId), v.RangeLo, v.RangeHi}
		if seen[pr] {
			continue
		}
		seen[pr] = true
		for lid := range saLabels {
			l, _ := f.label(lid)
			var a FastpathLabelAccepts
			if x, ok := f.maps["accepts"].data[lid]; ok {
				a = x.(FastpathLabelAccepts)
			}
			got := a.Ranges[pr.rid/64]&(1<<(pr.rid%64)) != 0
			if want := r.Contains(l); got != want {
				f.t.Fatalf("%s: after writing %s %+v: peer %+v (range id %d) reads accepts bit %v for SA label id %d %v, its range %v says %v", f.where, name, key, k, pr.rid, got, lid, l, r, want)
			}
		}
	}
}

func (m *fakeMap) Delete(key any) error {
	if _, ok := m.data[key]; !ok {
		return ebpf.ErrKeyNotExist
	}
	delete(m.data, key)
	return nil
}

// labelIDsOf lists the label ids a live entry refers to.
func labelIDsOf(v any) []uint32 {
	switch v := v.(type) {
	case FastpathSa:
		if v.Flags != 0 {
			return []uint32{v.LabelId}
		}
	case FastpathVif:
		if v.Flags != 0 {
			return []uint32{v.RangeLo, v.RangeHi}
		}
	case FastpathPeer:
		return []uint32{v.RangeLo, v.RangeHi}
	}
	return nil
}

func (f *fakeMaps) referrer(id uint32) string {
	for _, name := range []string{"sa_slots", "sas", "peers", "vifs", "vifs_big"} {
		for k, v := range f.maps[name].data {
			for _, x := range labelIDsOf(v) {
				if x == id {
					return fmt.Sprintf("%s entry %+v", name, k)
				}
			}
		}
	}
	return ""
}

// content is what the fake maps hold, as a State (live entries only).
func (f *fakeMaps) content() *State {
	s := &State{Vifs: map[uint32]FastpathVif{}, Labels: map[uint32]FastpathMlsLabel{}, Slots: map[uint32]FastpathSa{}, SAs: map[FastpathSaKey]FastpathSa{}, Peers: map[FastpathPeerKey]FastpathPeer{}}
	for k, v := range f.maps["labels"].data {
		s.Labels[k.(uint32)] = v.(FastpathMlsLabel)
	}
	for _, name := range []string{"vifs", "vifs_big"} {
		for k, v := range f.maps[name].data {
			if v := v.(FastpathVif); v.Flags != 0 {
				s.Vifs[k.(uint32)] = v
			}
		}
	}
	for k, v := range f.maps["sa_slots"].data {
		if v := v.(FastpathSa); v.Flags != 0 {
			s.Slots[k.(uint32)] = v
		}
	}
	for k, v := range f.maps["sas"].data {
		s.SAs[k.(FastpathSaKey)] = v.(FastpathSa)
	}
	for k, v := range f.maps["peers"].data {
		s.Peers[k.(FastpathPeerKey)] = v.(FastpathPeer)
	}
	s.Accepts = map[uint32]FastpathLabelAccepts{}
	for k, v := range f.maps["accepts"].data {
		s.Accepts[k.(uint32)] = v.(FastpathLabelAccepts)
	}
	return s
}

// canon is a State with every label id replaced by its label, every range
// id by its range and every counter slot by whether there is one: two
// States are the same plan modulo id assignment when their canons are
// equal. Accepts: by label, the ranges (of RangeIDs) whose bit is set;
// bits of range ids no peer has are not part of the plan (a freed id's
// bits are rewritten when it is handed out again).
type canon struct {
	Vifs    map[uint32]canonVif
	Slots   map[uint32]canonSA
	SAs     map[FastpathSaKey]canonSA
	Peers   map[FastpathPeerKey]canonPeer
	Labels  map[FastpathMlsLabel]bool // the labels some entry refers to
	Ranges  map[label.Bounds]bool     // RangeIDs' ranges
	Accepts map[FastpathMlsLabel]map[label.Bounds]bool
}
type canonVif struct {
	V       FastpathVif
	Lo, Hi  FastpathMlsLabel
	HasSlot bool
}
type canonSA struct {
	V FastpathSa
	L FastpathMlsLabel
}
type canonPeer struct {
	V      FastpathPeer
	Lo, Hi FastpathMlsLabel
	Range  label.Bounds
}

func canonical(t *testing.T, s *State, what string) canon {
	t.Helper()
	c := canon{Vifs: map[uint32]canonVif{}, Slots: map[uint32]canonSA{}, SAs: map[FastpathSaKey]canonSA{}, Peers: map[FastpathPeerKey]canonPeer{}, Labels: map[FastpathMlsLabel]bool{},
		Ranges: map[label.Bounds]bool{}, Accepts: map[FastpathMlsLabel]map[label.Bounds]bool{}}
	rangeOf := map[uint32]label.Bounds{}
	for b, id := range s.RangeIDs {
		if o, dup := rangeOf[id]; dup || id >= RangesMax {
			t.Fatalf("%s: range id %d given to %v and %v (or beyond RANGES_MAX)", what, id, o, b)
		}
		rangeOf[id] = b
		c.Ranges[b] = true
	}
	slots := map[uint16]uint32{}
	lab := func(id uint32) FastpathMlsLabel {
		l, ok := s.Labels[id]
		if !ok {
			t.Fatalf("%s: an entry refers to label id %d, which the state lacks", what, id)
		}
		c.Labels[l] = true
		return l
	}
	for k, v := range s.Vifs {
		cv := canonVif{Lo: lab(v.RangeLo), Hi: lab(v.RangeHi), HasSlot: v.Slot != 0}
		if o, dup := slots[v.Slot]; dup && v.Slot != 0 {
			t.Fatalf("%s: vifs %d and %d share counter slot %d", what, o, k, v.Slot)
		}
		slots[v.Slot] = k
		v.RangeLo, v.RangeHi, v.Slot = 0, 0, 0
		cv.V = v
		c.Vifs[k] = cv
	}
	for k, v := range s.Slots {
		l := lab(v.LabelId)
		v.LabelId = 0
		c.Slots[k] = canonSA{v, l}
	}
	for k, v := range s.SAs {
		l := lab(v.LabelId)
		v.LabelId = 0
		c.SAs[k] = canonSA{v, l}
	}
	for k, v := range s.Peers {
		cp := canonPeer{Lo: lab(v.RangeLo), Hi: lab(v.RangeHi)}
		r, ok := rangeOf[uint32(v.RangeId)]
		if !ok {
			t.Fatalf("%s: peer %+v has range id %d, which RangeIDs lacks", what, k, v.RangeId)
		}
		cp.Range = r
		v.RangeLo, v.RangeHi, v.RangeId = 0, 0, 0
		cp.V = v
		c.Peers[k] = cp
	}
	for l, id := range s.LabelIDs {
		a, ok := s.Accepts[id]
		if !ok {
			t.Fatalf("%s: label id %d (%v) has no accepts entry", what, id, l)
		}
		set := map[label.Bounds]bool{}
		for rid, b := range rangeOf {
			if a.Ranges[rid/64]&(1<<(rid%64)) != 0 {
				set[b] = true
			}
		}
		c.Accepts[KernelLabel(l)] = set
	}
	return c
}

// model is the policy the random changes edit.
type model struct {
	guests map[uint32]verdict.Guest
	sas    map[SAKey]verdict.SA
	peers  []verdict.Peer
}

func (m *model) clone() *model {
	c := &model{guests: map[uint32]verdict.Guest{}, sas: map[SAKey]verdict.SA{}, peers: append([]verdict.Peer(nil), m.peers...)}
	for k, v := range m.guests {
		c.guests[k] = v
	}
	for k, v := range m.sas {
		c.sas[k] = v
	}
	return c
}

const (
	propSPIBase  = 0xc0000000
	propSPISlots = 48
)

func (m *model) policy() *verdict.Policy {
	p := &verdict.Policy{Guests: map[uint32]verdict.Guest{}, Peers: m.peers, SPIBase: propSPIBase, SPISlots: propSPISlots}
	for k, v := range m.guests {
		p.Guests[k] = v
	}
	for _, sa := range m.sas {
		p.SAs = append(p.SAs, sa)
	}
	return p
}

// TestIncrementalMatchesFullPlan interleaves random changes (SAs added,
// deleted and rotated; guests declared, redeclared and removed, some in
// conflict; peer lists replaced) in batches. After each batch it applies
// the Incremental's difference to fake maps that check, at every single
// write, that no live entry points at a relabelled id; then it checks that
// the maps hold exactly the Incremental's State, and that this State is
// the full plan's (PlanFrom) modulo label ids. A batch the full plan
// refuses must be refused by the Incremental too, and the other way
// round; the agent then plans in full from the last good state, which the
// test does as well (the restart path), as it does every so often to
// check that the safety net finds no drift.
func TestIncrementalMatchesFullPlan(t *testing.T) {
	for seed := range uint64(3) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { propIncremental(t, seed, *incSteps) })
	}
}

func propIncremental(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	var labels []label.Label
	for _, s := range []string{"s0/i0", "s3/i2", "s5:c1/i2", "s5:c1,c7/i3", "s9/i7", "s9:c3/i7", "s12:c0.c5/i9", "s15:c0.c1023/i15", "s7/i5", "s2:c2/i1"} {
		l, err := label.ParseLabel(s)
		if err != nil {
			t.Fatal(err)
		}
		labels = append(labels, l)
	}
	var ranges []label.Bounds
	for _, s := range []string{"s0-s15:c0.c1023/i0-i15", "s0-s5:c0.c3/i0-i5", "s3-s9:c1.c7/i2-i8", "s9-s12:c0.c5/i7-i9", "s5-s5:c1/i2-i3"} {
		ranges = append(ranges, bounds(t, s))
	}
	daddrs := []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::1"), {}}
	guestAddrs := []netip.Addr{netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.1.0.3"), netip.MustParseAddr("10.1.0.4"), {}}
	prefixes := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.2.0.0/16"), netip.MustParsePrefix("192.168.1.9/24"), netip.MustParsePrefix("fd00::/64"), netip.MustParsePrefix("0.0.0.0/0")}
	ifindexes := []uint32{3, 4, 5, 6, 7, 8, VifsMax + 1, VifsMax + 9}

	randSA := func(m *model) verdict.SA {
		var spi uint32
		if rng.IntN(3) > 0 {
			spi = propSPIBase + uint32(rng.IntN(propSPISlots))
		} else {
			spi = 0x1000 + uint32(rng.IntN(40))
		}
		d := daddrs[rng.IntN(len(daddrs))]
		fam := verdict.AFInet6
		if d.Is4() {
			fam = verdict.AFInet
		}
		return verdict.SA{SPI: spi, Daddr: d, Family: fam, Owner: uint32(1 + rng.IntN(6)), App: uint32(1 + rng.IntN(2)), Label: labels[rng.IntN(len(labels))]}
	}
	// change edits m and the engine alike; it reports what it did.
	change := func(m *model, in *Incremental) (string, error) {
		keys := func() []SAKey {
			var ks []SAKey
			for k := range m.sas {
				ks = append(ks, k)
			}
			// map order is random; sort for a reproducible pick
			for i := 1; i < len(ks); i++ {
				for j := i; j > 0 && (ks[j].SPI < ks[j-1].SPI || ks[j].SPI == ks[j-1].SPI && ks[j].Daddr.Less(ks[j-1].Daddr)); j-- {
					ks[j], ks[j-1] = ks[j-1], ks[j]
				}
			}
			return ks
		}
		// add an SA whose slot is free, except now and then (a conflict the plan refuses)
		addSA := func(sa verdict.SA) (string, error) {
			m.sas[SAKey{sa.SPI, sa.Daddr}] = sa
			return fmt.Sprintf("set SA %#x %s %v", sa.SPI, sa.Daddr, sa.Label), in.SetSA(sa)
		}
		freeSA := func() verdict.SA {
			for range 50 {
				sa := randSA(m)
				clash := false
				for k := range m.sas {
					if k.SPI == sa.SPI && (k.Daddr != sa.Daddr || sa.SPI < propSPIBase) {
						clash = true
					}
				}
				if !clash || rng.IntN(40) == 0 {
					return sa
				}
			}
			return randSA(m)
		}
		switch op := rng.IntN(100); {
		case op < 35: // SA add or replace
			return addSA(freeSA())
		case op < 55: // SA delete
			ks := keys()
			if len(ks) == 0 {
				return "nothing to delete", nil
			}
			k := ks[rng.IntN(len(ks))]
			delete(m.sas, k)
			return fmt.Sprintf("delete SA %#x %s", k.SPI, k.Daddr), in.DeleteSA(k)
		case op < 70: // SA rotation: the successor with the same binding, then the old one goes
			ks := keys()
			if len(ks) == 0 {
				return addSA(freeSA())
			}
			old := m.sas[ks[rng.IntN(len(ks))]]
			n := freeSA()
			n.Owner, n.App, n.Label, n.Daddr, n.Family = old.Owner, old.App, old.Label, old.Daddr, old.Family
			if _, err := addSA(n); err != nil {
				return "rotate", err
			}
			delete(m.sas, SAKey{old.SPI, old.Daddr})
			if (SAKey{old.SPI, old.Daddr}) == (SAKey{n.SPI, n.Daddr}) {
				m.sas[SAKey{n.SPI, n.Daddr}] = n
				return "rotate onto itself", nil
			}
			return fmt.Sprintf("rotate SA %#x → %#x", old.SPI, n.SPI), in.DeleteSA(SAKey{old.SPI, old.Daddr})
		case op < 85: // guest declared or redeclared
			ifx := ifindexes[rng.IntN(len(ifindexes))]
			g := verdict.Guest{VM: uint32(1 + rng.IntN(6)), App: uint32(1 + rng.IntN(2)), Range: ranges[rng.IntN(len(ranges))],
				Addr4: guestAddrs[rng.IntN(len(guestAddrs))], Audit: rng.IntN(4) == 0, AllowUnlabeled: rng.IntN(4) == 0}
			if rng.IntN(8) == 0 {
				g = verdict.Guest{Deny: verdict.DenyUndeclared}
			}
			m.guests[ifx] = g
			return fmt.Sprintf("guest on %d: %+v", ifx, g), in.SetGuests(m.guests)
		case op < 92: // guest removed
			for k := range m.guests {
				delete(m.guests, k)
				return fmt.Sprintf("guest on %d removed", k), in.SetGuests(m.guests)
			}
			return "no guest to remove", nil
		default: // peers replaced
			m.peers = nil
			for range rng.IntN(5) {
				pfx := prefixes[rng.IntN(len(prefixes))]
				dup := false
				for _, pe := range m.peers {
					dup = dup || pe.Prefix.Masked() == pfx.Masked()
				}
				if dup && rng.IntN(10) > 0 {
					continue
				}
				m.peers = append(m.peers, verdict.Peer{Prefix: pfx, App: uint32(rng.IntN(3)), Range: ranges[rng.IntN(len(ranges))], Kind: verdict.PeerKind(rng.IntN(2))})
			}
			return fmt.Sprintf("%d peers", len(m.peers)), in.SetPeers(m.peers)
		}
	}

	fake := newFakeMaps(t)
	good := &model{guests: map[uint32]verdict.Guest{}, sas: map[SAKey]verdict.SA{}}
	// The restart path: plan in full from what the maps hold and start anew.
	restart := func(applied *State, where string) (*Incremental, *State) {
		full, err := PlanFrom(good.policy(), applied)
		if err != nil {
			t.Fatalf("%s: full plan of the last good policy: %v", where, err)
		}
		if err := fake.apply(applied, full, full.Labels, where); err != nil {
			t.Fatal(err)
		}
		in, err := NewIncremental(good.policy(), full.Clone())
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		return in, full
	}
	in, applied := restart(nil, "start")
	refused, drifts, netSAs := 0, 0, 0
	for step := range steps {
		m := good.clone()
		var did []string
		var err error
		for range 1 + rng.IntN(3) {
			var what string
			what, err = change(m, in)
			did = append(did, what)
			if err != nil {
				break
			}
		}
		where := fmt.Sprintf("seed %d step %d (%v)", seed, step, did)
		var prev, next *State
		if err == nil {
			prev, next, err = in.Commit()
		}
		full, ferr := PlanFrom(m.policy(), applied)
		if (err == nil) != (ferr == nil) {
			t.Fatalf("%s: incremental error %v, full plan error %v: want both or neither", where, err, ferr)
		}
		if err != nil {
			refused++
			if !errors.Is(err, ErrPlan) {
				t.Fatalf("%s: %v does not wrap ErrPlan", where, err)
			}
			in, applied = restart(applied, where+" restart")
			continue
		}
		if step%7 == 3 {
			// The agent's full path under a change (start, safety net,
			// after an error): PlanFrom's State applied over the maps, with
			// the same checks at every write, the Incremental started anew.
			if err := fake.apply(applied, full, full.Labels, where+" full plan"); err != nil {
				t.Fatal(err)
			}
			good, applied = m, full.Clone()
			if in, err = NewIncremental(good.policy(), full.Clone()); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			continue
		}
		if err := fake.apply(prev, next, in.State().Labels, where); err != nil {
			t.Fatal(err)
		}
		good = m
		applied = in.State().Clone()
		got, want := canonical(t, applied, where+" incremental"), canonical(t, full, where+" full")
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: incremental state differs from the full plan:\n got %+v\nwant %+v", where, got, want)
		}
		if len(applied.LabelIDs) != len(got.Labels)+btoi(!got.Labels[KernelLabel(label.Default)]) {
			t.Fatalf("%s: %d label ids for %d labels in use: a label without entries kept its id", where, len(applied.LabelIDs), len(got.Labels))
		}
		if !reflect.DeepEqual(errStrings(applied.Unplanned), errStrings(full.Unplanned)) {
			t.Fatalf("%s: unplanned %v, full plan %v", where, applied.Unplanned, full.Unplanned)
		}
		inMaps := fake.content()
		for id, l := range applied.Labels {
			if inMaps.Labels[id] != l {
				t.Fatalf("%s: label id %d holds %+v in the maps, %+v in the state", where, id, inMaps.Labels[id], l)
			}
		}
		for id, a := range applied.Accepts {
			if inMaps.Accepts[id] != a {
				t.Fatalf("%s: accepts of label id %d hold %v in the maps, %v in the state", where, id, inMaps.Accepts[id], a)
			}
		}
		inMaps.Labels, inMaps.LabelIDs, inMaps.RangeIDs = applied.Labels, applied.LabelIDs, applied.RangeIDs
		if !reflect.DeepEqual(canonical(t, inMaps, where+" maps"), got) {
			t.Fatalf("%s: the maps differ from the incremental state", where)
		}
		netSAs = max(netSAs, len(m.sas))
		if step%97 == 0 { // the safety net: a full plan over the applied state finds nothing to write
			full, err := PlanFrom(good.policy(), applied)
			if err != nil {
				t.Fatal(err)
			}
			d := Changes(applied, full)
			drifts += d
			if d != 0 {
				t.Fatalf("%s: the full plan would rewrite %d entries of the incremental state", where, d)
			}
			in, applied = restart(applied, where+" safety net")
		}
	}
	t.Logf("seed %d: %d steps, %d refused batches (each also refused by the full plan), up to %d SAs", seed, steps, refused, netSAs)
	if refused == 0 || refused > steps/3 {
		t.Errorf("%d refused batches of %d: the generator should hit the planner's refusals now and then, not mostly", refused, steps)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func errStrings(m map[uint32]error) map[uint32]string {
	out := map[uint32]string{}
	for k, v := range m {
		out[k] = v.Error()
	}
	return out
}

// TestFullPlanAcceptsOfDroppedLabels: a full plan that drops an SA's label
// and hands a peer range an id whose accepts bits are stale (freed by an
// earlier Commit) must still write the dropped label's accepts entry: the
// SA stays live until Apply deletes it, after the new peer is written, and
// a packet on it to that peer reads the bit.
func TestFullPlanAcceptsOfDroppedLabels(t *testing.T) {
	l, err := label.ParseLabel("s5:c1/i2")
	if err != nil {
		t.Fatal(err)
	}
	wide, narrow := bounds(t, "s0-s15:c0.c1023/i0-i15"), bounds(t, "s9-s12:c0.c5/i7-i9")
	sa := verdict.SA{SPI: propSPIBase + 1, Daddr: netip.MustParseAddr("10.0.0.1"), Family: verdict.AFInet, Owner: 1, App: 1, Label: l}
	p := &verdict.Policy{Guests: map[uint32]verdict.Guest{}, SAs: []verdict.SA{sa}, SPIBase: propSPIBase, SPISlots: propSPISlots,
		Peers: []verdict.Peer{{Prefix: netip.MustParsePrefix("10.0.0.0/8"), App: 1, Range: wide}}}
	fake := newFakeMaps(t)
	s1, err := PlanFrom(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := fake.apply(nil, s1, s1.Labels, "start"); err != nil {
		t.Fatal(err)
	}
	in, err := NewIncremental(p, s1.Clone())
	if err != nil {
		t.Fatal(err)
	}
	if err := in.SetPeers(nil); err != nil {
		t.Fatal(err)
	}
	prev, next, err := in.Commit()
	if err != nil {
		t.Fatal(err)
	}
	if err := fake.apply(prev, next, in.State().Labels, "peers dropped"); err != nil {
		t.Fatal(err)
	}
	applied := in.State().Clone()
	p3 := &verdict.Policy{Guests: map[uint32]verdict.Guest{}, SPIBase: propSPIBase, SPISlots: propSPISlots,
		Peers: []verdict.Peer{{Prefix: netip.MustParsePrefix("10.2.0.0/16"), App: 1, Range: narrow}}}
	s3, err := PlanFrom(p3, applied)
	if err != nil {
		t.Fatal(err)
	}
	if s3.RangeIDs[narrow] != s1.RangeIDs[wide] {
		t.Fatalf("the narrow range took id %d, the wide one had %d: the test wants the id reused", s3.RangeIDs[narrow], s1.RangeIDs[wide])
	}
	if err := fake.apply(applied, s3, s3.Labels, "full plan: SA dropped, range id reused"); err != nil {
		t.Fatal(err)
	}
}
