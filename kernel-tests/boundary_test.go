package kerneltests

import (
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/mlsgate/mlsgate/verdict"
)

// The guest-side trust boundary (issue 11), tried as a guest with root
// would: frames that today pass as "control" but reach, or come from,
// something other than the guest's own host-side address. The guest is
// strict (no unlabeled traffic), so anything that is not control must be
// refused; each case must be refused by the kernel and by the reference.

var (
	bcast4     = netip.MustParseAddr("255.255.255.255")
	otherHost4 = netip.MustParseAddr("10.0.0.2") // another guest's host-side address
)

// arpFrame is an Ethernet/IPv4 ARP request from the guest, padded to the
// 60-byte minimum frame (gopacket pads), with extra bytes after that.
func arpFrame(senderIP, targetIP netip.Addr, extra int) []byte {
	f := serialize(&layers.Ethernet{SrcMAC: macGuest, DstMAC: []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: macGuest, SourceProtAddress: senderIP.AsSlice(),
			DstHwAddress: make([]byte, 6), DstProtAddress: targetIP.AsSlice()})
	return append(f, make([]byte, extra)...)
}

// arpReply is an ARP reply toward the guest (from the host's MAC).
func arpReply(senderIP, targetIP netip.Addr) []byte {
	return serialize(&layers.Ethernet{SrcMAC: macHost, DstMAC: macGuest, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPReply, SourceHwAddress: macHost, SourceProtAddress: senderIP.AsSlice(),
			DstHwAddress: macGuest, DstProtAddress: targetIP.AsSlice()})
}

// nd is an RS (133: no target), NS (135) or NA (136) with the hop limit RFC
// 4861 wants, and a link-layer address option carrying mac when mac is set
// (source for RS/NS, target for NA).
func nd(src, dst netip.Addr, typ uint8, target netip.Addr, mac []byte) []byte {
	body := make([]byte, 4) // reserved (NA: flags)
	if typ != 133 {
		body = append(body, target.AsSlice()...)
	}
	if mac != nil {
		opt := byte(1)
		if typ == 136 {
			opt = 2
		}
		body = append(append(body, opt, 1), mac...)
	}
	ls := ipLayers(src, dst, layers.IPProtocolICMPv6)
	ls[len(ls)-1].(*layers.IPv6).HopLimit = 255
	return serialize(append(ls, &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}, gopacket.Payload(body))...)
}

// icmp6Hop is an ICMPv6 message of type typ with a hop limit and n bytes of body.
func icmp6Hop(src, dst netip.Addr, typ, hop uint8, n int) []byte {
	ls := ipLayers(src, dst, layers.IPProtocolICMPv6)
	ls[len(ls)-1].(*layers.IPv6).HopLimit = hop
	return serialize(append(ls, &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}, gopacket.Payload(make([]byte, n)))...)
}

func TestPrivilegedFastpathBoundary(t *testing.T) {
	requirePrivileged(t)
	enterNetNS(t)
	p := newProber(t, tableOptions())

	strict := func() *verdict.Policy {
		pol := tablePolicy()
		g := pol.Guests[probeIfindex]
		g.AllowUnlabeled = false
		pol.Guests[probeIfindex] = g
		// Another guest's host-side address is a host address too.
		pol.Peers = append(pol.Peers, verdict.Peer{Prefix: netip.PrefixFrom(otherHost4, 32), Kind: verdict.PeerHost, Range: mustBounds("s0-s15/i0-i15")})
		return pol
	}
	kb := make([]byte, 1024)
	cases := []struct {
		name  string
		frame []byte
		dir   verdict.Direction
		want  verdict.Reason
	}{
		// 1. DHCP is a channel to anywhere.
		{name: "dhcp 68->67 with 1 KB to a server on the untrusted network", frame: udp(guestV4, nowhere, 68, 67, kb), want: verdict.DenyUnlabeled},
		{name: "dhcp 67->68 from the untrusted network toward the guest", frame: udp(nowhere, guestV4, 67, 68, kb), dir: verdict.Egress, want: verdict.DenyUnlabeled},
		{name: "dhcp from 0.0.0.0 to a server on the untrusted network", frame: udp(netip.IPv4Unspecified(), nowhere, 68, 67, make([]byte, 240)), want: verdict.DenySpoofed},
		{name: "dhcpv6 546->547 to a global address", frame: udp(guestV6, netip.MustParseAddr("2001:db8::1"), 546, 547, kb), want: verdict.DenyUnlabeled},
		{name: "dhcp to broadcast carrying 1 KB", frame: udp(netip.IPv4Unspecified(), bcast4, 68, 67, kb), want: verdict.DenySpoofed},
		// 2. ND/MLD and ARP are channels.
		{name: "neighbour solicitation with 1 KB to a web server", frame: icmp6Hop(guestV6, openV6, 135, 255, 1024), want: verdict.DenyControl},
		{name: "neighbour solicitation with hop limit 64", frame: icmp6Hop(guestV6, hostV6, 135, 64, 20), want: verdict.DenyControl},
		{name: "mld report to a web server", frame: icmp6Hop(guestV6, openV6, 143, 1, 20), want: verdict.DenyControl},
		{name: "router advertisement from a spoofed source", frame: icmp6Hop(netip.MustParseAddr("fd00::99"), netip.MustParseAddr("ff02::1"), 134, 255, 20), want: verdict.DenySpoofed},
		{name: "1,114-byte arp frame", frame: arpFrame(guestV4, hostV4, 1114-60), want: verdict.DenyControl},
		{name: "arp from another guest's address", frame: arpFrame(netip.MustParseAddr("10.0.0.8"), hostV4, 0), want: verdict.DenyControl},
		{name: "arp for another guest's host-side address", frame: arpFrame(guestV4, otherHost4, 0), want: verdict.DenyControl},
		{name: "arp that is not ethernet/ipv4", frame: func() []byte {
			f := arpFrame(guestV4, hostV4, 0)
			f[14+4] = 16 // hlen 16
			return f
		}(), want: verdict.DenyControl},
		// 3. Port rules match either port.
		{name: "source port = api port to host tcp 22", frame: tcp(guestV4, hostV4, apiPort, 22), want: verdict.DenyUnlabeled},
		{name: "source port = api port to another guest's host-side address", frame: tcp(guestV4, otherHost4, apiPort, 22), want: verdict.DenyUnlabeled},
		{name: "api port on another guest's host-side address", frame: tcp(guestV4, otherHost4, 40000, apiPort), want: verdict.DenyUnlabeled},
		{name: "source port 500 to host udp 53", frame: udp(guestV4, hostV4, 500, 53, make([]byte, 28)), want: verdict.DenyUnlabeled},
		{name: "source port 4500 to host udp 53", frame: udp(guestV4, hostV4, 4500, 53, make([]byte, 28)), want: verdict.DenyUnlabeled},
		{name: "ike to another guest's host-side address", frame: udp(guestV4, otherHost4, 500, 500, make([]byte, 28)), want: verdict.DenyUnlabeled},
		// Toward the guest: a packet that no root socket on the host sent
		// (an unprivileged process, or one forwarded from elsewhere).
		{name: "host port 4500 to a guest port, not from root", frame: udp(hostV4, guestV4, 4500, 9999, make([]byte, 28)), dir: verdict.Egress, want: verdict.DenyUnlabeled},
		{name: "ike from the host, not from root", frame: udp(hostV4, guestV4, 4500, 4500, make([]byte, 28)), dir: verdict.Egress, want: verdict.DenyUnlabeled},
		{name: "api port from the host, not from root", frame: tcp(hostV4, guestV4, apiPort, 40000), dir: verdict.Egress, want: verdict.DenyUnlabeled},
	}
	for _, c := range cases {
		pol := strict()
		if err := p.install(pol); err != nil {
			t.Fatalf("%s: install: %v", c.name, err)
		}
		pkt := verdict.Packet{Ifindex: probeIfindex, Dir: c.dir, Frame: c.frame}
		if ref := verdict.Decide(pol, pkt); ref != c.want {
			t.Errorf("%s: reference %s, want %s", c.name, ref, c.want)
		}
		ret, got, err := p.run(pkt)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got != c.want || ret != retDrop {
			t.Errorf("%s: kernel %s (tc %#x), want %s, dropped", c.name, got, ret, c.want)
		}
	}
}
