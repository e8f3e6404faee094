package bpf

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/verdict"
)

// The dump names labels, reasons, flags and guests instead of printing ids.
func TestDumpDecodes(t *testing.T) {
	in, _ := label.ParseLabel("s3:c5/i2")
	p := &verdict.Policy{SPIBase: 0xc0000000, SPISlots: 16,
		Guests: map[uint32]verdict.Guest{5: {VM: 7, App: 1, Range: bounds(t, "s0-s5:c0.c9/i0-i5"), Addr4: netip.MustParseAddr("10.0.0.7"), AllowUnlabeled: true},
			6: {Deny: verdict.DenyUndeclared}},
		SAs:   []verdict.SA{{SPI: 0xc0000001, Family: verdict.AFInet, Daddr: netip.MustParseAddr("10.0.0.1"), Owner: 7, App: 1, Label: in}},
		Peers: []verdict.Peer{{Prefix: netip.MustParsePrefix("10.0.1.0/24"), App: 1, Range: bounds(t, "s0-s9:c0.c9/i0-i9"), Kind: verdict.PeerWeb}},
	}
	s, err := Plan(p)
	if err != nil {
		t.Fatal(err)
	}
	d := &Dump{State: s, Guests: map[uint16][2][verdict.NumReasons]Counter{}, EventsLost: 3}
	d.Verdicts[verdict.Ingress][verdict.AllowLabeled] = Counter{Packets: 2, Bytes: 200}
	var g [2][verdict.NumReasons]Counter
	g[verdict.Egress][verdict.DenyPeerRange] = Counter{Packets: 1, Bytes: 60}
	d.Guests[s.Vifs[5].Slot] = g
	var out strings.Builder
	if err := d.Write(&out, nil, func(i uint32) string { return map[uint32]string{5: "vif7.0"}[i] }); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"ifindex 5 vif7.0: vm 7 app 1 range s0-s5:c0.c9/i0-i5 flags managed,allow_unlabeled,default_in_range",
		"ifindex 6 -: vm 0 app 0", "deny deny_undeclared",
		"label s3:c5/i2 flags valid,in_owner_range",
		"10.0.1.0/24: app 1 range s0-s9:c0.c9/i0-i9 (range id 0) kind web flags accepts_default",
		"ingress allow_labeled: 2 packets, 200 bytes",
		"vm 7 vif7.0 (ifindex 5):\n    egress deny_peer_range: 1 packets",
		"3 denial events found the ring full",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("dump lacks %q:\n%s", want, out.String())
		}
	}
	if err := d.Write(&out, []string{"vifs"}, nil); err == nil || !strings.Contains(err.Error(), MapVifs) {
		t.Errorf("dump of an unknown map name: %v; want an error listing %s", err, MapVifs)
	}
}
