package loader

import (
	"net/netip"
	"testing"
)

// TestQuarantineDeclaresTheHostSideAddressAndMAC: the fast path passes a
// guest's control traffic (the update daemon's port among it) only with
// the guest's own host-side address, and checks frames against its MAC, so
// the declaration must carry both; without them a booting guest's daemon
// is unreachable.
func TestQuarantineDeclaresTheHostSideAddressAndMAC(t *testing.T) {
	a := &fakeAgent{}
	h := &Host{Agent: a}
	g := &Guest{VM: 7, Name: "vm7", Interface: "vif7.0", Addr: netip.MustParseAddr("10.71.7.2"), HostAddr: netip.MustParseAddr("10.71.7.1"), MAC: GuestMAC(7)}
	if err := h.Quarantine(g); err != nil {
		t.Fatal(err)
	}
	spec := a.guests["vif7.0"]
	if spec.HostAddr4 != g.HostAddr || spec.MAC != g.MAC || spec.Addr4 != g.Addr {
		t.Fatalf("declared %+v, want host_addr4 %s, mac %s, addr4 %s", spec, g.HostAddr, g.MAC, g.Addr)
	}
}
