package bpf

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/verdict"
)

func randLabel(r *rand.Rand) label.Label {
	var l label.Label
	l.Secrecy.Sens = uint8(r.IntN(4) * 3)
	l.Integrity = label.Integrity(r.IntN(3) * 2)
	for _, c := range []int{0, 7, 64, 1023} {
		if r.IntN(3) == 0 {
			l.Secrecy.Cats.Add(c)
		}
	}
	return l
}

func randBounds(r *rand.Rand) label.Bounds {
	a, b := randLabel(r), randLabel(r)
	if r.IntN(5) == 0 {
		return label.Bounds{Low: label.Default, High: label.LabelLUB(a, b)}
	}
	return label.Bounds{Low: label.LabelGLB(a, b), High: label.LabelLUB(a, b)}
}

// randLatticePolicy: one guest, SAs and peers with random labels and ranges.
func randLatticePolicy(r *rand.Rand) *verdict.Policy {
	p := &verdict.Policy{SPIBase: 0xc0000000, SPISlots: 64, Guests: map[uint32]verdict.Guest{
		3: {VM: 7, App: 1, Range: randBounds(r), Addr4: netip.MustParseAddr("10.0.0.7"), AllowUnlabeled: true}}}
	for i := range r.IntN(8) {
		p.SAs = append(p.SAs, verdict.SA{SPI: 0xc0000000 + uint32(i), Family: verdict.AFInet,
			Daddr: netip.MustParseAddr("10.0.0.1"), Owner: 7, App: 1, Label: randLabel(r)})
	}
	for i := range r.IntN(8) {
		p.Peers = append(p.Peers, verdict.Peer{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i), 0}), 24),
			App: uint32(r.IntN(2)), Range: randBounds(r), Kind: verdict.PeerWeb})
	}
	return p
}

// Every bit the programs test is the answer of the reference's dominance
// check, and it stays so through a sequence of re-plans, including the
// moment Apply has written the new accepts but not yet the new peers: a
// peer entry of the previous state finds, in the new accepts, the bit its
// own range owned.
func TestLatticeTablesAnswerTheReference(t *testing.T) {
	seed := rand.Uint64()
	r := rand.New(rand.NewPCG(seed, 0))
	var prev *State
	var prevPol *verdict.Policy
	for step := range 300 {
		pol := randLatticePolicy(r)
		s, err := PlanFrom(pol, prev)
		if err != nil {
			t.Fatalf("seed %d step %d: %v", seed, step, err)
		}
		check := func(what string, pol *verdict.Policy, peers map[FastpathPeerKey]FastpathPeer) {
			t.Helper()
			for _, pe := range pol.Peers {
				e := peers[PeerKey(pe.Prefix)]
				if got, want := e.Flags&uint8(FastpathPeerFlagPEER_F_ACCEPTS_DEFAULT) != 0, pe.Range.Contains(label.Default); got != want {
					t.Fatalf("seed %d step %d %s: peer %s (range %s) accepts the default label: table %v, reference %v", seed, step, what, pe.Prefix, pe.Range, got, want)
				}
				for l, id := range s.LabelIDs {
					acc := s.Accepts[id]
					got := acc.Ranges[e.RangeId/64]>>(e.RangeId%64)&1 == 1
					if want := pe.Range.Contains(l); got != want {
						t.Fatalf("seed %d step %d %s: peer %s (range %s, id %d) accepts %s (id %d): table %v, reference %v",
							seed, step, what, pe.Prefix, pe.Range, e.RangeId, l, id, got, want)
					}
				}
			}
		}
		check("new peers", pol, s.Peers)
		if prev != nil {
			check("previous peers during apply", prevPol, prev.Peers)
		}
		for ifindex, g := range pol.Guests {
			if got, want := s.Vifs[ifindex].Flags&uint32(FastpathVifFlagVIF_F_DEFAULT_IN_RANGE) != 0, g.Range.Contains(label.Default); got != want {
				t.Fatalf("seed %d step %d: guest range %s holds the default label: table %v, reference %v", seed, step, g.Range, got, want)
			}
		}
		if len(s.RangeIDs) > RangesMax {
			t.Fatalf("%d range ids", len(s.RangeIDs))
		}
		prev, prevPol = s, pol
	}
}

// An incremental update may set one range's bit in every label's accepts
// entry; it must agree with the full computation.
func TestSetAcceptsBitAgreesWithAcceptedRanges(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	ranges := map[uint32]label.Bounds{}
	labels := map[uint32]label.Label{}
	for i := range 40 {
		labels[uint32(i)] = randLabel(r)
	}
	acc := map[uint32]FastpathLabelAccepts{}
	for range 200 {
		id := uint32(r.IntN(RangesMax))
		b := randBounds(r)
		ranges[id] = b
		SetAcceptsBit(acc, labels, id, b)
	}
	for lid, l := range labels {
		if got, want := acc[lid], AcceptedRanges(l, ranges); got != want {
			t.Fatalf("label %s: incremental %x, full %x", l, got.Ranges, want.Ranges)
		}
	}
}

// More distinct peer ranges than the accepts bitmap holds is an error
// naming the bound, not a silent wrap of the range id.
func TestPlanRefusesTooManyRanges(t *testing.T) {
	p := &verdict.Policy{}
	for i := range RangesMax + 1 {
		var hi label.Label
		hi.Secrecy.Sens = 15
		hi.Secrecy.Cats.Add(i % 1024)
		if i >= 1024 {
			hi.Integrity = 1
		}
		p.Peers = append(p.Peers, verdict.Peer{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24),
			Range: label.Bounds{High: hi}, Kind: verdict.PeerWeb})
	}
	_, err := Plan(p)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("more than %d distinct peer ranges", RangesMax)) {
		t.Fatalf("plan of %d distinct ranges: %v; want the RANGES_MAX error", RangesMax+1, err)
	}
	p.Peers = p.Peers[:RangesMax]
	if _, err := Plan(p); err != nil {
		t.Fatalf("plan of %d distinct ranges: %v", RangesMax, err)
	}
}
