package verdict

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/mlsgate/mlsgate/label"
)

// The kernel tests hold this package equal to the C verdict on every reason;
// these cases keep the reference honest for a normal user's `go test ./...`.

func ipv4Frame(src, dst string, proto uint8, l4 []byte) []byte {
	f := make([]byte, 34, 34+len(l4))
	binary.BigEndian.PutUint16(f[12:], etherIPv4)
	f[14] = 0x45
	binary.BigEndian.PutUint16(f[16:], uint16(20+len(l4)))
	f[23] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(f[26:], s[:])
	copy(f[30:], d[:])
	return append(f, l4...)
}

func espL4(spi uint32) []byte { return binary.BigEndian.AppendUint32(make([]byte, 0, 8), spi)[:4:4] }

func TestDecide(t *testing.T) {
	rng, _ := label.ParseBounds("s0-s5/i0-i5")
	all, _ := label.ParseBounds("s0-s15/i0-i15")
	in, _ := label.ParseLabel("s3/i2")
	p := &Policy{
		Guests:  map[uint32]Guest{4: {VM: 7, App: 1, Range: rng, Addr4: netip.MustParseAddr("10.0.0.7"), AllowUnlabeled: true}},
		SAs:     []SA{{SPI: 0x1000, Family: AFInet, Daddr: netip.MustParseAddr("10.0.0.1"), Owner: 7, App: 1, Label: in}},
		Peers:   []Peer{{Prefix: netip.MustParsePrefix("10.0.1.0/24"), App: 1, Range: all, Kind: PeerWeb}},
		Enforce: true,
	}
	esp := append(espL4(0x1000), 0, 0, 0, 1)
	udp := []byte{0x9c, 0x40, 0x23, 0x28, 0, 8, 0, 0}
	cases := []struct {
		name string
		pkt  Packet
		want Reason
	}{
		{"unmanaged", Packet{Ifindex: 9, Frame: ipv4Frame("10.0.0.7", "10.0.0.1", 50, esp)}, PassUnmanaged},
		{"esp", Packet{Ifindex: 4, Frame: ipv4Frame("10.0.0.7", "10.0.0.1", 50, esp)}, AllowLabeled},
		{"esp truncated", Packet{Ifindex: 4, Frame: ipv4Frame("10.0.0.7", "10.0.0.1", 50, esp[:6])}, DenyMalformed},
		{"esp other destination", Packet{Ifindex: 4, Frame: ipv4Frame("10.0.0.7", "10.0.0.2", 50, esp)}, DenyUnknownSA},
		{"spoofed", Packet{Ifindex: 4, Frame: ipv4Frame("10.0.0.8", "10.0.0.1", 50, esp)}, DenySpoofed},
		{"plain to a peer", Packet{Ifindex: 4, Frame: ipv4Frame("10.0.0.7", "10.0.1.9", 17, udp)}, AllowDefault},
		{"plain to nowhere", Packet{Ifindex: 4, Frame: ipv4Frame("10.0.0.7", "10.9.0.1", 17, udp)}, DenyPeerRange},
		{"secpath", Packet{Ifindex: 4, Frame: ipv4Frame("10.0.0.7", "10.0.1.9", 17, udp), Secpath: &Secpath{SPI: 0x1000, Family: AFInet}}, DenyUnknownSA},
	}
	for _, c := range cases {
		if got := Decide(p, c.pkt); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
	if p.Drops(4, AllowLabeled) || !p.Drops(4, DenySpoofed) {
		t.Error("Drops: allow dropped or deny passed")
	}
	if Reason(200).String() != "unknown" || DenyMalformed.String() != "deny_malformed" {
		t.Error("reason names")
	}
}

func TestLinkLocalIsEUI64OfTheMAC(t *testing.T) {
	if got := LinkLocal([6]byte{0x02, 0x6d, 0x6c, 0, 0, 7}); got != netip.MustParseAddr("fe80::6d:6cff:fe00:7") {
		t.Errorf("LinkLocal(02:6d:6c:00:00:07) = %s, want fe80::6d:6cff:fe00:7", got)
	}
	if got := LinkLocal([6]byte{}); got.IsValid() {
		t.Errorf("LinkLocal of no MAC = %s, want none", got)
	}
}

// A guest the planner refuses is denied everything by the reference too,
// and only that guest; a deny-all entry drops even for an audit guest.
func TestDecideUnplannedAndUndeclared(t *testing.T) {
	r, _ := label.ParseBounds("s0-s5/i0-i5")
	frame := ipv4Frame("10.0.0.7", "10.0.0.1", 50, make([]byte, 16))
	p := &Policy{Enforce: true, Guests: map[uint32]Guest{
		4: {VM: 7, App: 1, Range: r, Addr4: netip.MustParseAddr("10.0.0.7"), MAC: [6]byte{3}, Audit: true}, // multicast MAC
		5: {VM: 8, App: 1, Range: r, Addr4: netip.MustParseAddr("10.0.0.8")},
		6: {Deny: DenyUndeclared},
	}}
	if got := Decide(p, Packet{Ifindex: 4, Frame: frame}); got != DenyUnplanned || !p.Drops(4, got) {
		t.Errorf("guest with a multicast MAC: %s (drops %v), want deny_unplanned, dropped", got, p.Drops(4, got))
	}
	if got := Decide(p, Packet{Ifindex: 5, Frame: frame}); got != DenySpoofed {
		t.Errorf("the other guest: %s, want its own decision (deny_spoofed: 10.0.0.7 is not its address)", got)
	}
	if got := Decide(p, Packet{Ifindex: 6, Dir: Egress, Frame: frame}); got != DenyUndeclared {
		t.Errorf("undeclared vif: %s, want deny_undeclared", got)
	}
}
