package kerneltests

import (
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/verdict"
)

const apiPort = 8443

var (
	hostV4   = netip.MustParseAddr("10.0.0.1")
	guestV4  = netip.MustParseAddr("10.0.0.7")
	openV4   = netip.MustParseAddr("10.0.1.5") // app 1, open (s0-s5)
	otherApp = netip.MustParseAddr("10.0.2.5") // app 2
	secretV4 = netip.MustParseAddr("10.0.3.5") // app 1, secret (s6-s15)
	nowhere  = netip.MustParseAddr("192.0.2.1")
	hostV6   = netip.MustParseAddr("fd00::1")
	hostLL   = netip.MustParseAddr("fe80::1")
	guestLL  = netip.MustParseAddr("fe80::ff:fe00:7") // EUI-64 of macGuest
	guestV6  = netip.MustParseAddr("fd00::7")
	openV6   = netip.MustParseAddr("fd00:1::5")
)

func mustBounds(s string) label.Bounds {
	b, err := label.ParseBounds(s)
	if err != nil {
		panic(err)
	}
	return b
}

func mustLabel(s string) label.Label {
	l, err := label.ParseLabel(s)
	if err != nil {
		panic(err)
	}
	return l
}

// tablePolicy: guest VM 7 of application 1, range s0-s5:c0.c3/i0-i5, on the
// probe's ifindex.
func tablePolicy() *verdict.Policy {
	pfx := netip.MustParsePrefix
	return &verdict.Policy{
		Guests: map[uint32]verdict.Guest{probeIfindex: {
			VM: 7, App: 1, Range: mustBounds("s0-s5:c0.c3/i0-i5"),
			Addr4: guestV4, Addr6: guestV6, AllowUnlabeled: true,
			HostAddr4: hostV4, HostAddr6: hostLL, MAC: [6]byte(macGuest),
		}},
		Peers: []verdict.Peer{
			{Prefix: pfx("10.0.0.1/32"), Kind: verdict.PeerHost, Range: mustBounds("s0-s15:c0.c1023/i0-i15")},
			{Prefix: pfx("10.0.1.0/24"), App: 1, Kind: verdict.PeerWeb, Range: mustBounds("s0-s5:c0.c3/i0-i5")},
			{Prefix: pfx("10.0.2.0/24"), App: 2, Kind: verdict.PeerWeb, Range: mustBounds("s0-s15/i0-i15")},
			{Prefix: pfx("10.0.3.0/24"), App: 1, Kind: verdict.PeerWeb, Range: mustBounds("s6-s15:c0.c1023/i0-i15")},
			{Prefix: pfx("fd00::1/128"), Kind: verdict.PeerHost, Range: mustBounds("s0-s15/i0-i15")},
			{Prefix: pfx("fd00:1::/64"), App: 1, Kind: verdict.PeerWeb, Range: mustBounds("s0-s5:c0.c3/i0-i5")},
		},
		SAs: []verdict.SA{
			{SPI: 0xc0000001, Family: verdict.AFInet, Daddr: hostV4, Owner: 7, App: 1, Label: mustLabel("s3:c1/i2")},
			{SPI: 0xc0000002, Family: verdict.AFInet, Daddr: hostV4, Owner: 7, App: 1, Label: mustLabel("s9/i2")},
			{SPI: 0xc0000003, Family: verdict.AFInet, Daddr: hostV4, Owner: 8, App: 1, Label: mustLabel("s3/i2")},
			{SPI: 0xc0000004, Family: verdict.AFInet, Daddr: hostV4, Owner: 7, App: 2, Label: mustLabel("s3/i2")},
			{SPI: 0xc0000005, Family: verdict.AFInet6, Daddr: hostV6, Owner: 7, App: 1, Label: mustLabel("s3/i2")},
			{SPI: 0x00002000, Family: verdict.AFInet, Daddr: openV4, Owner: 7, App: 1, Label: mustLabel("s2/i1")},
			{SPI: 0x00002001, Family: verdict.AFInet, Daddr: guestV4, Owner: 7, App: 1, Label: mustLabel("s2/i1")},
			// host-terminated, SPI outside the host's range: secpath only
			{SPI: 0x00003000, Family: verdict.AFInet, Owner: 7, App: 1, Label: mustLabel("s4:c2/i3")},
			{SPI: 0xc0000010, Family: verdict.AFInet, Daddr: hostV4, Owner: 7, App: 1, Label: mustLabel("s5:c0.c3/i5")},
		},
		SPIBase: 0xc0000000, SPISlots: 4096, APIPort: apiPort, Enforce: true,
	}
}

func tableOptions() bpf.Options {
	return bpf.Options{SPIBase: 0xc0000000, SPISlots: 4096, APIPort: apiPort, Enforce: true, EventSample: 1}
}

func udp(src, dst netip.Addr, sport, dport uint16, payload []byte, vlans ...uint16) []byte {
	ls := ipLayers(src, dst, layers.IPProtocolUDP, vlans...)
	u := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	return serialize(append(ls, u, gopacket.Payload(payload))...)
}

func tcp(src, dst netip.Addr, sport, dport uint16) []byte {
	ls := ipLayers(src, dst, layers.IPProtocolTCP)
	return serialize(append(ls, &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), SYN: true, Window: 1024})...)
}

// tcpAck is a TCP segment with ACK set (SYN too when syn): not a bare SYN.
func tcpAck(src, dst netip.Addr, sport, dport uint16, syn bool) []byte {
	ls := ipLayers(src, dst, layers.IPProtocolTCP)
	return serialize(append(ls, &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), SYN: syn, ACK: true, Window: 1024})...)
}

func esp(src, dst netip.Addr, spi uint32, vlans ...uint16) []byte {
	ls := ipLayers(src, dst, layers.IPProtocolESP, vlans...)
	return serialize(append(ls, espPayload(spi, 1, make([]byte, 32)))...)
}

func icmp6(src, dst netip.Addr, typ uint8) []byte {
	ls := ipLayers(src, dst, layers.IPProtocolICMPv6)
	return serialize(append(ls, &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}, gopacket.Payload(make([]byte, 20)))...)
}

// vlanTagged inserts one 802.1Q tag after the MAC addresses.
func vlanTagged(f []byte) []byte {
	out := append([]byte{}, f[:12]...)
	out = append(out, 0x81, 0x00, 0, 42)
	return append(out, f[12:]...)
}

func arp() []byte {
	return serialize(&layers.Ethernet{SrcMAC: macGuest, DstMAC: []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: macGuest, SourceProtAddress: guestV4.AsSlice(),
			DstHwAddress: make([]byte, 6), DstProtAddress: hostV4.AsSlice()})
}

func TestPrivilegedFastpathTable(t *testing.T) {
	requirePrivileged(t)
	enterNetNS(t)
	p := newProber(t, tableOptions())

	secpath := func(spi uint32) *verdict.Secpath { return &verdict.Secpath{SPI: spi, Family: verdict.AFInet} }
	noUnlabeled := func(pol *verdict.Policy) {
		g := pol.Guests[probeIfindex]
		g.AllowUnlabeled = false
		pol.Guests[probeIfindex] = g
	}
	audit := func(pol *verdict.Policy) {
		g := pol.Guests[probeIfindex]
		g.Audit = true
		pol.Guests[probeIfindex] = g
	}
	highGuest := func(pol *verdict.Policy) {
		g := pol.Guests[probeIfindex]
		g.Range = mustBounds("s2-s5/i0-i5")
		pol.Guests[probeIfindex] = g
	}
	noGuest := func(pol *verdict.Policy) { delete(pol.Guests, probeIfindex) }
	undeclared := func(pol *verdict.Policy) { pol.Guests[probeIfindex] = verdict.Guest{Deny: verdict.DenyUndeclared} }
	unplanned := func(pol *verdict.Policy) {
		g := pol.Guests[probeIfindex]
		g.MAC[0] |= 1 // a multicast MAC: the planner refuses the guest
		pol.Guests[probeIfindex] = g
	}
	ipv4Head := udp(guestV4, openV4, 1000, 9000, nil)[:14+10]

	cases := []struct {
		name    string
		frame   []byte
		dir     verdict.Direction
		secpath *verdict.Secpath
		tweak   func(*verdict.Policy)
		root    bool // sent by a local socket owned by root
		want    verdict.Reason
		allow   bool // the tc verdict, where it differs from want.Allowed()
	}{
		{name: "unmanaged vif", frame: udp(guestV4, openV4, 1000, 9000, nil), tweak: noGuest, want: verdict.PassUnmanaged},
		{name: "undeclared vif", frame: esp(guestV4, hostV4, 0xc0000001), tweak: undeclared, want: verdict.DenyUndeclared},
		{name: "undeclared vif, arp", frame: arp(), tweak: undeclared, want: verdict.DenyUndeclared},
		{name: "unplanned guest", frame: esp(guestV4, hostV4, 0xc0000001), tweak: unplanned, want: verdict.DenyUnplanned},
		{name: "unplanned guest, toward it", frame: udp(openV4, guestV4, 9000, 1000, nil), dir: verdict.Egress, tweak: unplanned, want: verdict.DenyUnplanned},
		{name: "arp", frame: arp(), want: verdict.AllowControl},
		{name: "arp probe from 0.0.0.0", frame: arpFrame(netip.IPv4Unspecified(), hostV4, 0), want: verdict.AllowControl},
		{name: "arp unpadded (42 bytes, as Linux sends it on veth)", frame: arp()[:42], want: verdict.AllowControl},
		{name: "arp padded to the minimum frame", frame: arpFrame(guestV4, hostV4, 0), want: verdict.AllowControl},
		{name: "arp one byte past the minimum frame", frame: arpFrame(guestV4, hostV4, 1), want: verdict.DenyControl},
		{name: "duplicate address detection for its link-local address", frame: nd(netip.IPv6Unspecified(), netip.MustParseAddr("ff02::1:ff00:7"), 135, guestLL, nil), want: verdict.AllowControl},
		{name: "duplicate address detection with a nonce option (RFC 7527, as Linux sends it)", frame: func() []byte {
			f := nd(netip.IPv6Unspecified(), netip.MustParseAddr("ff02::1:ff00:7"), 135, guestLL, []byte{1, 2, 3, 4, 5, 6})
			f[len(f)-8] = 14 // the nonce option, not a link-layer address (no checksum is checked)
			return f
		}(), want: verdict.AllowControl},
		{name: "a nonce option from a source that is not ::", frame: func() []byte {
			f := nd(guestLL, hostLL, 135, hostLL, []byte{1, 2, 3, 4, 5, 6})
			f[len(f)-8] = 14
			return f
		}(), want: verdict.DenyControl},
		{name: "another guest's dhcp toward the guest (bridge)", frame: udp(otherHost4, bcast4, 68, 67, make([]byte, 300)), dir: verdict.Egress, want: verdict.DenySpoofed},
		{name: "another guest's ike to its host address toward the guest (bridge)", frame: udp(openV4, hostV4, 500, 500, make([]byte, 300)), dir: verdict.Egress, want: verdict.DenySpoofed},
		{name: "multicast data toward the guest", frame: udp(openV6, netip.MustParseAddr("ff02::fb"), 5353, 5353, make([]byte, 30)), dir: verdict.Egress, want: verdict.DenySpoofed},
		{name: "esp toward another address", frame: esp(openV4, openV4, 0x2000), dir: verdict.Egress, want: verdict.DenySpoofed},
		{name: "arp behind a vlan tag", frame: vlanTagged(arp()[:42]), want: verdict.DenyControl},
		{name: "dhcp discover behind a vlan tag is not control", frame: vlanTagged(udp(netip.IPv4Unspecified(), bcast4, 68, 67, make([]byte, 240))), want: verdict.DenySpoofed},
		{name: "neighbour solicitation behind a vlan tag", frame: vlanTagged(nd(guestLL, hostLL, 135, hostLL, macGuest)), want: verdict.DenyControl},
		{name: "ike behind a vlan tag is plain", frame: vlanTagged(udp(guestV4, hostV4, 500, 500, make([]byte, 28))), want: verdict.AllowDefault},
		{name: "arp from a spoofed mac", frame: func() []byte {
			f := arp()
			f[6+5] = 0x99
			return f
		}(), want: verdict.DenySpoofed},
		{name: "arp whose sender hardware address is not the frame's", frame: func() []byte {
			f := arp()
			f[14+8+5] = 0x99
			return f
		}(), want: verdict.DenyControl},
		{name: "arp reply toward the guest", frame: arpReply(hostV4, guestV4), dir: verdict.Egress, want: verdict.AllowControl},
		{name: "arp toward the guest from another address", frame: arpReply(otherHost4, guestV4), dir: verdict.Egress, want: verdict.DenyControl},
		{name: "esp from a spoofed mac", frame: func() []byte {
			f := esp(guestV4, hostV4, 0xc0000001)
			f[6] = 0x04
			return f
		}(), want: verdict.DenySpoofed},
		{name: "mac check is off without a mac", frame: func() []byte {
			f := esp(guestV4, hostV4, 0xc0000001)
			f[6] = 0x04
			return f
		}(), tweak: func(pol *verdict.Policy) {
			g := pol.Guests[probeIfindex]
			g.MAC = [6]byte{}
			pol.Guests[probeIfindex] = g
		}, want: verdict.AllowLabeled},
		{name: "lldp is not ip", frame: append(append(append([]byte{}, macHost...), macGuest...), 0x88, 0xcc, 1, 2, 3, 4), want: verdict.DenyUnlabeled},
		{name: "dhcp discover", frame: udp(netip.IPv4Unspecified(), netip.MustParseAddr("255.255.255.255"), 68, 67, make([]byte, 240)), want: verdict.AllowControl},
		{name: "dhcp offer toward guest", frame: udp(hostV4, guestV4, 67, 68, make([]byte, 240)), dir: verdict.Egress, want: verdict.AllowControl},
		{name: "dhcp request to the host", frame: udp(guestV4, hostV4, 68, 67, make([]byte, 300)), want: verdict.AllowControl},
		{name: "dhcp offer broadcast toward guest", frame: udp(hostV4, bcast4, 67, 68, make([]byte, 300)), dir: verdict.Egress, want: verdict.AllowControl},
		{name: "dhcp from 0.0.0.0 to the host is spoofed", frame: udp(netip.IPv4Unspecified(), hostV4, 68, 67, make([]byte, 240)), want: verdict.DenySpoofed},
		{name: "dhcpv6 solicit", frame: udp(guestLL, netip.MustParseAddr("ff02::1:2"), 546, 547, make([]byte, 60)), want: verdict.AllowControl},
		{name: "dhcpv6 advertise toward the guest", frame: udp(hostLL, guestLL, 547, 546, make([]byte, 60)), dir: verdict.Egress, want: verdict.AllowControl},
		{name: "ipv6 neighbour solicitation", frame: nd(guestLL, netip.MustParseAddr("ff02::1:ff00:1"), 135, hostLL, macGuest), want: verdict.AllowControl},
		{name: "ipv6 neighbour solicitation from the global address", frame: nd(guestV6, hostLL, 135, hostLL, nil), want: verdict.AllowControl},
		{name: "ipv6 router solicitation from ::", frame: nd(netip.IPv6Unspecified(), netip.MustParseAddr("ff02::2"), 133, netip.Addr{}, nil), want: verdict.AllowControl},
		{name: "ipv6 router solicitation with its mac", frame: nd(guestLL, netip.MustParseAddr("ff02::2"), 133, netip.Addr{}, macGuest), want: verdict.AllowControl},
		{name: "ipv6 neighbour advertisement for itself", frame: nd(guestLL, hostLL, 136, guestLL, macGuest), want: verdict.AllowControl},
		{name: "neighbour advertisement for another address", frame: nd(guestLL, hostLL, 136, netip.MustParseAddr("fd00::8"), macGuest), want: verdict.DenyControl},
		{name: "neighbour solicitation with another mac", frame: nd(guestLL, hostLL, 135, hostLL, macOther), want: verdict.DenyControl},
		{name: "neighbour solicitation for another address", frame: nd(guestLL, netip.MustParseAddr("ff02::1:ff00:1"), 135, netip.MustParseAddr("fd00::8"), macGuest), want: verdict.DenyControl},
		{name: "router advertisement from the guest", frame: icmp6Hop(guestLL, netip.MustParseAddr("ff02::1"), 134, 255, 12), want: verdict.DenyControl},
		{name: "neighbour solicitation toward the guest from ::", frame: nd(netip.IPv6Unspecified(), netip.MustParseAddr("ff02::1:ff00:7"), 135, guestLL, nil), dir: verdict.Egress, want: verdict.DenyControl},
		{name: "ipv6 from a guest with no ipv6 address", frame: udp(guestV6, openV6, 1000, 9000, nil), tweak: func(pol *verdict.Policy) {
			g := pol.Guests[probeIfindex]
			g.Addr6 = netip.Addr{}
			pol.Guests[probeIfindex] = g
		}, want: verdict.DenySpoofed},
		{name: "mldv2 report", frame: icmp6Hop(guestLL, netip.MustParseAddr("ff02::16"), 143, 1, 28), want: verdict.AllowControl},
		{name: "mld report with hop limit 255", frame: icmp6Hop(guestLL, netip.MustParseAddr("ff02::16"), 143, 255, 28), want: verdict.DenyControl},
		{name: "neighbour solicitation for another address", frame: icmp6Hop(guestLL, netip.MustParseAddr("ff02::1:ff00:9"), 135, 255, 20), want: verdict.DenyControl},
		{name: "neighbour solicitation 577 bytes", frame: icmp6Hop(guestLL, hostLL, 135, 255, 573), want: verdict.DenyControl},
		{name: "neighbour advertisement from a spoofed source", frame: icmp6Hop(netip.MustParseAddr("fe80::99"), hostLL, 136, 255, 20), want: verdict.DenySpoofed},
		{name: "router advertisement toward the guest", frame: icmp6Hop(hostLL, netip.MustParseAddr("ff02::1"), 134, 255, 48), dir: verdict.Egress, want: verdict.AllowControl},
		{name: "router advertisement toward the guest from elsewhere", frame: icmp6Hop(netip.MustParseAddr("fe80::99"), netip.MustParseAddr("ff02::1"), 134, 255, 48), dir: verdict.Egress, want: verdict.DenyControl},
		{name: "ipv6 echo is not control", frame: icmp6(guestV6, openV6, 128), want: verdict.AllowDefault},
		{name: "ike to the host", frame: udp(guestV4, hostV4, 500, 500, make([]byte, 28)), want: verdict.AllowControl},
		{name: "ike nat-t with non-esp marker to the host", frame: udp(guestV4, hostV4, 4500, 4500, make([]byte, 28)), want: verdict.AllowControl},
		{name: "ike to a web server is plain", frame: udp(guestV4, openV4, 500, 500, make([]byte, 28)), want: verdict.AllowDefault},
		{name: "agent api on the host", frame: tcp(guestV4, hostV4, 40000, apiPort), want: verdict.AllowControl},
		{name: "agent port elsewhere is plain", frame: tcp(guestV4, secretV4, 40000, apiPort), want: verdict.DenyPeerRange},
		{name: "ike toward the guest from root", frame: udp(hostV4, guestV4, 4500, 4500, make([]byte, 28)), dir: verdict.Egress, root: true, want: verdict.AllowControl},
		{name: "host to the guest's update daemon", frame: tcp(hostV4, guestV4, 40000, apiPort), dir: verdict.Egress, root: true, want: verdict.AllowControl},
		{name: "host api answers the guest", frame: tcpAck(hostV4, guestV4, apiPort, 40000, true), dir: verdict.Egress, root: true, want: verdict.AllowControl},
		{name: "update daemon answers the host", frame: tcpAck(guestV4, hostV4, apiPort, 40000, true), want: verdict.AllowControl},
		{name: "bare syn from the update daemon port is plain", frame: tcp(guestV4, hostV4, apiPort, 40000), want: verdict.AllowDefault},
		{name: "update daemon port from a web server is plain", frame: tcp(openV4, guestV4, 40000, apiPort), dir: verdict.Egress, want: verdict.AllowDefault},
		{name: "esp in range", frame: esp(guestV4, hostV4, 0xc0000001), want: verdict.AllowLabeled},
		{name: "esp at the top of the range", frame: esp(guestV4, hostV4, 0xc0000010), want: verdict.AllowLabeled},
		{name: "esp in range, vlan tagged", frame: esp(guestV4, hostV4, 0xc0000001, 42), want: verdict.AllowLabeled},
		{name: "esp in range, qinq", frame: esp(guestV4, hostV4, 0xc0000001, 42, 43), want: verdict.AllowLabeled},
		{name: "esp ipv6 in range", frame: esp(guestV6, hostV6, 0xc0000005), want: verdict.AllowLabeled},
		{name: "esp foreign spi in hash", frame: esp(guestV4, openV4, 0x2000), want: verdict.AllowLabeled},
		{name: "esp unknown spi", frame: esp(guestV4, hostV4, 0xc00000ff), want: verdict.DenyUnknownSA},
		{name: "esp unknown foreign spi", frame: esp(guestV4, hostV4, 0x2002), want: verdict.DenyUnknownSA},
		{name: "esp known spi, other destination", frame: esp(guestV4, openV4, 0xc0000001), want: verdict.DenyUnknownSA},
		{name: "esp known spi, other family", frame: esp(guestV6, hostV6, 0xc0000001), want: verdict.DenyUnknownSA},
		{name: "esp of another guest", frame: esp(guestV4, hostV4, 0xc0000003), want: verdict.DenyForeignSA},
		{name: "esp of another application", frame: esp(guestV4, hostV4, 0xc0000004), want: verdict.DenyAppMismatch},
		{name: "esp label above the guest", frame: esp(guestV4, hostV4, 0xc0000002), want: verdict.DenyLabelRange},
		{name: "esp toward the guest", frame: esp(openV4, guestV4, 0x2001), dir: verdict.Egress, want: verdict.AllowLabeled},
		{name: "esp toward the guest, label above it", frame: esp(hostV4, guestV4, 0xc0000002), dir: verdict.Egress, want: verdict.DenyUnknownSA},
		{name: "esp to host-terminated sa needs secpath", frame: esp(guestV4, hostV4, 0x3000), want: verdict.DenyUnknownSA},
		{name: "secpath to an open server", frame: tcp(guestV4, openV4, 40000, 443), secpath: secpath(0x3000), want: verdict.AllowLabeled},
		{name: "secpath slot sa", frame: tcp(guestV4, openV4, 40000, 443), secpath: secpath(0xc0000001), want: verdict.AllowLabeled},
		{name: "secpath to a secret server", frame: tcp(guestV4, secretV4, 40000, 443), secpath: secpath(0x3000), want: verdict.DenyPeerRange},
		{name: "secpath to another application", frame: tcp(guestV4, otherApp, 40000, 443), secpath: secpath(0x3000), want: verdict.DenyAppMismatch},
		{name: "secpath to nowhere", frame: tcp(guestV4, nowhere, 40000, 443), secpath: secpath(0x3000), want: verdict.DenyPeerRange},
		{name: "secpath unknown spi", frame: tcp(guestV4, openV4, 40000, 443), secpath: secpath(0x3001), want: verdict.DenyUnknownSA},
		{name: "secpath sa of another guest", frame: tcp(guestV4, openV4, 40000, 443), secpath: secpath(0xc0000003), want: verdict.DenyForeignSA},
		{name: "secpath label above the guest", frame: tcp(guestV4, openV4, 40000, 443), secpath: secpath(0xc0000002), want: verdict.DenyLabelRange},
		{name: "secpath toward the guest from an open server", frame: tcp(openV4, guestV4, 443, 40000), dir: verdict.Egress, secpath: secpath(0x3000), want: verdict.AllowLabeled},
		{name: "secpath toward the guest from a secret server", frame: tcp(secretV4, guestV4, 443, 40000), dir: verdict.Egress, secpath: secpath(0x3000), want: verdict.DenyPeerRange},
		{name: "plain to an open server", frame: udp(guestV4, openV4, 1000, 9000, nil), want: verdict.AllowDefault},
		{name: "plain ipv6 to an open server", frame: udp(guestV6, openV6, 1000, 9000, nil), want: verdict.AllowDefault},
		{name: "plain to a secret server", frame: udp(guestV4, secretV4, 1000, 9000, nil), want: verdict.DenyPeerRange},
		{name: "plain to another application", frame: udp(guestV4, otherApp, 1000, 9000, nil), want: verdict.DenyAppMismatch},
		{name: "plain to nowhere", frame: udp(guestV4, nowhere, 1000, 9000, nil), want: verdict.DenyPeerRange},
		{name: "plain toward the guest", frame: udp(openV4, guestV4, 9000, 1000, nil), dir: verdict.Egress, want: verdict.AllowDefault},
		{name: "plain, unlabeled not allowed", frame: udp(guestV4, openV4, 1000, 9000, nil), tweak: noUnlabeled, want: verdict.DenyUnlabeled},
		{name: "plain, guest range above the default", frame: udp(guestV4, openV4, 1000, 9000, nil), tweak: highGuest, want: verdict.DenyLabelRange},
		{name: "spoofed ipv4 source", frame: udp(netip.MustParseAddr("10.0.0.99"), openV4, 1000, 9000, nil), want: verdict.DenySpoofed},
		{name: "spoofed ipv6 source", frame: esp(netip.MustParseAddr("fd00::99"), hostV6, 0xc0000005), want: verdict.DenySpoofed},
		{name: "spoofed esp", frame: esp(netip.MustParseAddr("10.0.0.99"), hostV4, 0xc0000001), want: verdict.DenySpoofed},
		{name: "audit mode passes a denial", frame: esp(guestV4, hostV4, 0xc0000003), tweak: audit, want: verdict.DenyForeignSA, allow: true},
		{name: "ipv6 extension chain then esp", frame: rawFrame{src: guestV6, dst: hostV6, proto: 50, ext: []uint8{0, 60, 43, 51}, l4: espBytes(0xc0000005, 1, 16)}.bytes(), want: verdict.AllowLabeled},
		{name: "ipv6 first fragment of esp", frame: rawFrame{src: guestV6, dst: hostV6, proto: 50, ext: []uint8{44}, l4: espBytes(0xc0000005, 1, 16)}.bytes(), want: verdict.AllowLabeled},
		{name: "ipv6 later fragment is plain", frame: rawFrame{src: guestV6, dst: openV6, proto: 50, ext: []uint8{44}, laterFrag: true, l4: make([]byte, 16)}.bytes(), want: verdict.AllowDefault},
		{name: "ipv4 later fragment is plain", frame: rawFrame{src: guestV4, dst: secretV4, proto: 50, laterFrag: true, l4: make([]byte, 16)}.bytes(), want: verdict.DenyPeerRange},
		{name: "ipv4 with options then esp", frame: rawFrame{src: guestV4, dst: hostV4, proto: 50, ipv4Opts: 3, l4: espBytes(0xc0000001, 1, 8)}.bytes(), want: verdict.AllowLabeled},
		// BPF_PROG_TEST_RUN refuses an untagged IP frame shorter than the
		// fixed IP header, so shorter truncations travel behind a VLAN tag.
		{name: "malformed: truncated ipv4 header", frame: vlanTagged(ipv4Head), want: verdict.DenyMalformed},
		{name: "malformed: ipv4 options past the frame", frame: func() []byte {
			f := udp(guestV4, openV4, 1000, 9000, nil)[:14+20]
			f[14] = 0x4f
			return f
		}(), want: verdict.DenyMalformed},
		{name: "malformed: ipv4 total length beyond the frame", frame: rawFrame{src: guestV4, dst: openV4, proto: 17, l4: udpBytes(1, 2, nil), lenDelta: 1}.bytes(), want: verdict.DenyMalformed},
		{name: "malformed: ipv6 payload length beyond the frame", frame: rawFrame{src: guestV6, dst: openV6, proto: 17, l4: udpBytes(1, 2, nil), lenDelta: 1}.bytes(), want: verdict.DenyMalformed},
		{name: "malformed: truncated esp", frame: rawFrame{src: guestV4, dst: hostV4, proto: 50, l4: []byte{0xc0, 0, 0, 1}}.bytes(), want: verdict.DenyMalformed},
		{name: "malformed: truncated udp", frame: rawFrame{src: guestV4, dst: hostV4, proto: 17, l4: []byte{0, 68, 0}}.bytes(), want: verdict.DenyMalformed},
		{name: "malformed: truncated tcp", frame: rawFrame{src: guestV4, dst: hostV4, proto: 6, l4: make([]byte, 12)}.bytes(), want: verdict.DenyMalformed},
		{name: "malformed: three vlan tags", frame: rawFrame{vlans: 3, src: guestV4, dst: openV4, proto: 17, l4: udpBytes(1, 2, nil)}.bytes(), want: verdict.DenyMalformed},
		{name: "malformed: nine ipv6 extension headers", frame: rawFrame{src: guestV6, dst: openV6, proto: 17, ext: []uint8{0, 60, 60, 60, 60, 60, 60, 60, 60}, l4: udpBytes(1, 2, nil)}.bytes(), want: verdict.DenyMalformed},
		{name: "malformed: extension header past the frame", frame: rawFrame{src: guestV6, dst: openV6, proto: 60, l4: []byte{17, 0, 0}}.bytes(), want: verdict.DenyMalformed},
		{name: "malformed: extension chain past 512 bytes", frame: rawFrame{src: guestV6, dst: openV6, proto: 17, ext: []uint8{60, 60}, extLen: 40, l4: udpBytes(1, 2, nil)}.bytes(), want: verdict.DenyMalformed},
		{name: "malformed: ipv4 ihl below 5", frame: func() []byte {
			f := udp(guestV4, openV4, 1000, 9000, nil)
			f[14] = 0x44
			return f
		}(), want: verdict.DenyMalformed},
		{name: "malformed: ip version mismatch", frame: func() []byte {
			f := udp(guestV4, openV4, 1000, 9000, nil)
			f[14] = 0x65
			return f
		}(), want: verdict.DenyMalformed},
	}

	seen := map[verdict.Reason]bool{}
	for _, c := range cases {
		pol := tablePolicy()
		if c.tweak != nil {
			c.tweak(pol)
		}
		if err := p.install(pol); err != nil {
			t.Fatalf("%s: install: %v", c.name, err)
		}
		pkt := verdict.Packet{Ifindex: probeIfindex, Dir: c.dir, Frame: c.frame, Secpath: c.secpath, RootSocket: c.root}
		if ref := verdict.Decide(pol, pkt); ref != c.want {
			t.Errorf("%s: reference says %s, want %s", c.name, ref, c.want)
		}
		ret, got, err := p.run(pkt)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got != c.want {
			t.Errorf("%s: kernel says %s, want %s", c.name, got, c.want)
		}
		wantRet := uint32(retDrop)
		if c.want.Allowed() || c.allow {
			wantRet = retAllow
		}
		if ret != wantRet {
			t.Errorf("%s: tc verdict %#x, want %#x", c.name, ret, wantRet)
		}
		seen[got] = true
	}
	for _, r := range verdict.Reasons() {
		if !seen[r] {
			t.Errorf("no case gives reason %s", r)
		}
	}
}

// The Go reasons are the C enum, value for value.
func TestPrivilegedReasonCodes(t *testing.T) {
	want := map[verdict.Reason]bpf.FastpathReason{
		verdict.PassUnmanaged:   bpf.FastpathReasonREASON_PASS_UNMANAGED,
		verdict.AllowLabeled:    bpf.FastpathReasonREASON_ALLOW_LABELED,
		verdict.AllowDefault:    bpf.FastpathReasonREASON_ALLOW_DEFAULT,
		verdict.AllowControl:    bpf.FastpathReasonREASON_ALLOW_CONTROL,
		verdict.DenyUnknownSA:   bpf.FastpathReasonREASON_DENY_UNKNOWN_SA,
		verdict.DenyForeignSA:   bpf.FastpathReasonREASON_DENY_FOREIGN_SA,
		verdict.DenyLabelRange:  bpf.FastpathReasonREASON_DENY_LABEL_RANGE,
		verdict.DenyAppMismatch: bpf.FastpathReasonREASON_DENY_APP_MISMATCH,
		verdict.DenyPeerRange:   bpf.FastpathReasonREASON_DENY_PEER_RANGE,
		verdict.DenyUnlabeled:   bpf.FastpathReasonREASON_DENY_UNLABELED,
		verdict.DenyMalformed:   bpf.FastpathReasonREASON_DENY_MALFORMED,
		verdict.DenySpoofed:     bpf.FastpathReasonREASON_DENY_SPOOFED,
		verdict.DenyUndeclared:  bpf.FastpathReasonREASON_DENY_UNDECLARED,
		verdict.DenyUnplanned:   bpf.FastpathReasonREASON_DENY_UNPLANNED,
		verdict.DenyControl:     bpf.FastpathReasonREASON_DENY_CONTROL,
		verdict.NumReasons:      bpf.FastpathReasonREASON_MAX,
	}
	for g, c := range want {
		if uint32(g) != uint32(c) {
			t.Errorf("reason %s: Go %d, C %d", g, g, c)
		}
	}
}
