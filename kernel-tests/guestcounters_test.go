package kerneltests

import (
	"testing"

	"github.com/mlsgate/mlsgate/verdict"
)

// TestPrivilegedFastpathGuestCounters: every verdict counts once in the
// guest's own slot (found from its vif entry), under the direction and
// reason the reference gives, and nowhere in another slot.
func TestPrivilegedFastpathGuestCounters(t *testing.T) {
	requirePrivileged(t)
	pol := tablePolicy()
	p := newProber(t, tableOptions())
	if err := p.install(pol); err != nil {
		t.Fatal(err)
	}
	slot := p.state.Vifs[probeIfindex].Slot
	if slot == 0 {
		t.Fatalf("vif %d has no counter slot", probeIfindex)
	}
	pkts := []verdict.Packet{
		{Ifindex: probeIfindex, Frame: esp(guestV4, hostV4, 0xc0000001)},
		{Ifindex: probeIfindex, Frame: udp(guestV4, openV4, 1000, 9000, nil)},
		{Ifindex: probeIfindex, Dir: verdict.Egress, Frame: esp(openV4, guestV4, 0x2001)},
		{Ifindex: probeIfindex, Frame: esp(guestV4, hostV4, 0xc0000001)},
	}
	var want [2][verdict.NumReasons]uint64
	for _, pkt := range pkts {
		if _, _, err := p.run(pkt); err != nil {
			t.Fatal(err)
		}
		want[pkt.Dir][verdict.Decide(pol, pkt)]++
	}
	got, err := p.maps.GuestCounters(slot)
	if err != nil {
		t.Fatal(err)
	}
	for d := range 2 {
		for _, r := range verdict.Reasons() {
			if got[d][r].Packets != want[d][r] {
				t.Errorf("slot %d %s %s: %d packets, want %d", slot, verdict.Direction(d), r, got[d][r].Packets, want[d][r])
			}
		}
	}
	for _, other := range []uint16{0, slot + 1} {
		c, err := p.maps.GuestCounters(other)
		if err != nil {
			t.Fatal(err)
		}
		for d := range 2 {
			for _, r := range verdict.Reasons() {
				if c[d][r].Packets != 0 {
					t.Errorf("slot %d (not the guest's) counted %d %s %s", other, c[d][r].Packets, verdict.Direction(d), r)
				}
			}
		}
	}
}
