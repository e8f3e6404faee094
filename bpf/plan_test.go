package bpf

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/verdict"
)

func bounds(t *testing.T, s string) label.Bounds {
	t.Helper()
	b, err := label.ParseBounds(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPlanInternsAndPrecomputes(t *testing.T) {
	in, _ := label.ParseLabel("s3/i2")
	out, _ := label.ParseLabel("s9/i2")
	p := &verdict.Policy{
		Guests: map[uint32]verdict.Guest{5: {VM: 7, App: 1, Range: bounds(t, "s0-s5/i0-i5"), Addr4: netip.MustParseAddr("10.0.0.7")}},
		SAs: []verdict.SA{
			{SPI: 0xc0000001, Family: verdict.AFInet, Daddr: netip.MustParseAddr("10.0.0.1"), Owner: 7, App: 1, Label: in},
			{SPI: 0xc0000002, Family: verdict.AFInet, Daddr: netip.MustParseAddr("10.0.0.1"), Owner: 7, App: 1, Label: out},
			{SPI: 0x1000, Family: verdict.AFInet6, Owner: 8, App: 1, Label: in},
		},
		Peers:   []verdict.Peer{{Prefix: netip.MustParsePrefix("10.0.1.9/24"), App: 1, Range: bounds(t, "s0-s5/i0-i5")}},
		SPIBase: 0xc0000000, SPISlots: 16,
	}
	s, err := Plan(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Slots[1].Flags; got != uint8(FastpathSaFlagSA_F_VALID|FastpathSaFlagSA_F_IN_OWNER_RANGE) {
		t.Errorf("in-range SA flags %#x", got)
	}
	if got := s.Slots[2].Flags; got != uint8(FastpathSaFlagSA_F_VALID) {
		t.Errorf("out-of-range SA flags %#x, want valid only", got)
	}
	if s.Slots[1].LabelId == DefaultLabelID || s.Slots[1].LabelId == s.Slots[2].LabelId {
		t.Errorf("label ids %d and %d: want distinct and not the default", s.Slots[1].LabelId, s.Slots[2].LabelId)
	}
	k := FastpathSaKey{Spi: 0x1000, Family: uint16(verdict.AFInet6)}
	if sa, ok := s.SAs[k]; !ok || sa.Flags&uint8(FastpathSaFlagSA_F_IN_OWNER_RANGE) != 0 {
		t.Errorf("host-terminated SA of an unknown owner: %+v present %v; want present, not in range", sa, ok)
	}
	pk := PeerKey(netip.MustParsePrefix("10.0.1.0/24"))
	if pk.Prefixlen != 8+24 || pk.Addr[2] != 1 || pk.Addr[3] != 0 {
		t.Errorf("peer key %+v", pk)
	}
	if _, ok := s.Peers[pk]; !ok {
		t.Errorf("peer 10.0.1.9/24 not stored under its masked prefix")
	}
	if v := s.Vifs[5]; v.Addr4 != [4]uint8{10, 0, 0, 7} || v.Flags != uint32(FastpathVifFlagVIF_F_MANAGED|FastpathVifFlagVIF_F_DEFAULT_IN_RANGE) {
		t.Errorf("vif %+v", v)
	}
}

func TestPlanRefusesBadInput(t *testing.T) {
	ok := bounds(t, "s0-s5/i0-i5")
	l, _ := label.ParseLabel("s1/i1")
	cases := []struct {
		name, want string
		p          verdict.Policy
	}{
		{"reserved spi", "0x10: SPIs 0-255 are reserved", verdict.Policy{SAs: []verdict.SA{{SPI: 0x10, Family: verdict.AFInet, Label: l}}}},
		{"family mismatch", "not of family 2", verdict.Policy{SAs: []verdict.SA{{SPI: 0x1000, Family: verdict.AFInet, Daddr: netip.MustParseAddr("fd00::1"), Label: l}}}},
		{"unspecified destination", "leave it unset", verdict.Policy{SAs: []verdict.SA{{SPI: 0x1000, Family: verdict.AFInet, Daddr: netip.IPv4Unspecified(), Label: l}}}},
		{"duplicate slot", "two SAs with one SPI in the host's range", verdict.Policy{SPIBase: 0x1000, SPISlots: 8, SAs: []verdict.SA{
			{SPI: 0x1001, Family: verdict.AFInet, Daddr: netip.MustParseAddr("10.0.0.1"), Label: l},
			{SPI: 0x1001, Family: verdict.AFInet, Daddr: netip.MustParseAddr("10.0.0.2"), Label: l}}}},
		{"duplicate peer", "listed twice", verdict.Policy{Peers: []verdict.Peer{
			{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Range: ok}, {Prefix: netip.MustParsePrefix("10.1.0.0/8"), Range: ok}}}},
	}
	for _, c := range cases {
		_, err := Plan(&c.p)
		if !errors.Is(err, ErrPlan) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want ErrPlan naming %q", c.name, err, c.want)
		}
	}
}

// A guest the planner cannot take is refused on its own: a deny-all entry
// (deny_unplanned) and the reason in Unplanned, naming the problem.
func TestPlanRefusesBadGuestAlone(t *testing.T) {
	ok := bounds(t, "s0-s5/i0-i5")
	l, _ := label.ParseLabel("s1/i1")
	mac := [6]byte{2, 0, 0, 0, 0, 9}
	cases := []struct {
		name, want string
		bad        []uint32
		guests     map[uint32]verdict.Guest
	}{
		{"ifindex zero", "ifindex 0", []uint32{0}, map[uint32]verdict.Guest{0: {VM: 1, Range: ok}}},
		{"inverted guest range", "inverted", []uint32{3}, map[uint32]verdict.Guest{3: {VM: 1, Range: label.Bounds{Low: l, High: label.Default}}}},
		{"one vm, two policies", "different ranges", []uint32{3, 4}, map[uint32]verdict.Guest{3: {VM: 1, Range: ok}, 4: {VM: 1, Range: bounds(t, "s0/i0")}}},
		{"multicast mac", "multicast", []uint32{3}, map[uint32]verdict.Guest{3: {VM: 1, Range: ok, MAC: [6]byte{3, 0, 0, 0, 0, 1}}}},
		{"host ipv6 not link-local", "link-local", []uint32{3}, map[uint32]verdict.Guest{3: {VM: 1, Range: ok, HostAddr6: netip.MustParseAddr("fd00::1")}}},
		{"host ipv4 broadcast", "unicast", []uint32{3}, map[uint32]verdict.Guest{3: {VM: 1, Range: ok, HostAddr4: netip.MustParseAddr("255.255.255.255")}}},
		{"one address, two guests", "10.0.0.7 is declared", []uint32{3, 4}, map[uint32]verdict.Guest{
			3: {VM: 1, Range: ok, Addr4: netip.MustParseAddr("10.0.0.7")}, 4: {VM: 2, Range: ok, Addr4: netip.MustParseAddr("10.0.0.7")}}},
		{"one mac, two guests", "mac 020000000009", []uint32{3, 4}, map[uint32]verdict.Guest{
			3: {VM: 1, Range: ok, MAC: mac}, 4: {VM: 2, Range: ok, MAC: mac}}},
	}
	for _, c := range cases {
		c.guests[9] = verdict.Guest{VM: 9, App: 1, Range: ok, Addr4: netip.MustParseAddr("10.0.0.9")}
		s, err := Plan(&verdict.Policy{Guests: c.guests})
		if err != nil {
			t.Errorf("%s: the whole plan failed: %v", c.name, err)
			continue
		}
		for _, i := range c.bad {
			if err := s.Unplanned[i]; err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: ifindex %d unplanned %v, want an error naming %q", c.name, i, err, c.want)
			}
			if v := s.Vifs[i]; v.Deny != uint8(verdict.DenyUnplanned) || v.Flags != uint32(FastpathVifFlagVIF_F_MANAGED) {
				t.Errorf("%s: ifindex %d entry %+v, want managed deny-all (deny_unplanned)", c.name, i, v)
			}
		}
		if v := s.Vifs[9]; v.Deny != 0 || v.VmId != 9 || s.Unplanned[9] != nil {
			t.Errorf("%s: the good guest: entry %+v, unplanned %v; want it planned", c.name, v, s.Unplanned[9])
		}
	}
}

// TestPlanFromKeepsLabelIDs: a label that stays keeps its id, and a new one
// never takes an id the previous state used, so applying the new state
// over the old one never makes an entry point at a changed label.
func TestPlanFromKeepsLabelIDs(t *testing.T) {
	mk := func(labels ...string) *verdict.Policy {
		p := &verdict.Policy{Guests: map[uint32]verdict.Guest{}, SPIBase: 0xc0000000, SPISlots: 64}
		for i, s := range labels {
			l, err := label.ParseLabel(s)
			if err != nil {
				t.Fatal(err)
			}
			p.SAs = append(p.SAs, verdict.SA{SPI: 0x1000 + uint32(i), Family: verdict.AFInet, Daddr: netip.MustParseAddr("10.0.0.1"), Owner: 1, App: 1, Label: l})
		}
		return p
	}
	a, err := Plan(mk("s1/i1", "s2/i2", "s3/i3"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := PlanFrom(mk("s3/i3", "s4/i4", "s2/i2"), a)
	if err != nil {
		t.Fatal(err)
	}
	for l, id := range b.LabelIDs {
		if old, ok := a.LabelIDs[l]; ok && old != id {
			t.Errorf("%v moved from id %d to %d", l, old, id)
		}
		if _, kept := a.LabelIDs[l]; !kept {
			for ol, oid := range a.LabelIDs {
				if oid == id {
					t.Errorf("new label %v took id %d of %v", l, id, ol)
				}
			}
		}
	}
}

// A guest on an interface index past the dense array (the kernel hands out
// indexes well above 65,535 on a busy host) is planned, and a guest the
// planner cannot take does not stop the others from being planned.
func TestPlanAnyIfindexAndBadGuestAlone(t *testing.T) {
	r := bounds(t, "s0-s5/i0-i5")
	p := &verdict.Policy{Guests: map[uint32]verdict.Guest{
		70_000: {VM: 7, App: 1, Range: r, Addr4: netip.MustParseAddr("10.0.0.7")},
		5:      {VM: 8, App: 1, Range: r, Addr4: netip.MustParseAddr("10.0.0.8")},
		// Same VM as vif 5 with another range: the planner refuses it.
		6: {VM: 8, App: 2, Range: bounds(t, "s1-s3/i0-i5"), Addr4: netip.MustParseAddr("10.0.0.9")},
	}}
	s, err := Plan(p)
	if err != nil {
		t.Fatalf("one bad guest failed the whole plan: %v", err)
	}
	if v, ok := s.Vifs[70_000]; !ok || v.VmId != 7 || v.Flags&uint32(FastpathVifFlagVIF_F_MANAGED) == 0 || v.Deny != 0 {
		t.Errorf("vif on ifindex 70000: %+v present %v; want vm 7, managed, planned", v, ok)
	}
	if v := s.Vifs[5]; v.Deny != uint8(verdict.DenyUnplanned) || s.Unplanned[5] == nil {
		t.Errorf("vif 5 (vm 8, conflicting policies): %+v, unplanned %v; want deny_unplanned", v, s.Unplanned[5])
	}
	if v := s.Vifs[6]; v.Deny != uint8(verdict.DenyUnplanned) || s.Unplanned[6] == nil {
		t.Errorf("vif 6 (vm 8, conflicting policies): %+v, unplanned %v; want deny_unplanned", v, s.Unplanned[6])
	}
	// A guest with the link model: the entry carries what the kernel checks.
	p.Guests[70_001] = verdict.Guest{VM: 9, App: 1, Range: r, Addr4: netip.MustParseAddr("10.0.1.7"),
		HostAddr4: netip.MustParseAddr("10.0.1.1"), HostAddr6: netip.MustParseAddr("fe80::1"), MAC: [6]byte{2, 0x6d, 0x6c, 0, 0, 9}}
	if s, err = Plan(p); err != nil {
		t.Fatal(err)
	}
	v := s.Vifs[70_001]
	if v.Mac != [6]byte{2, 0x6d, 0x6c, 0, 0, 9} || v.Host4 != [4]uint8{10, 0, 1, 1} || v.Host6 != netip.MustParseAddr("fe80::1").As16() ||
		v.Ll6 != netip.MustParseAddr("fe80::6d:6cff:fe00:9").As16() {
		t.Errorf("vif 70001: %+v; want its MAC, host addresses and link-local fe80::6d:6cff:fe00:9", v)
	}
}
