package verdict

import (
	"encoding/binary"
	"net/netip"

	"github.com/mlsgate/mlsgate/label"
)

// Reason is why the fast path passed or dropped a packet. The values are the
// C enum reason; kernel-tests checks that they stay equal.
type Reason uint8

const (
	PassUnmanaged Reason = iota
	AllowLabeled
	AllowDefault
	AllowControl
	DenyUnknownSA
	DenyForeignSA
	DenyLabelRange
	DenyAppMismatch
	DenyPeerRange
	DenyUnlabeled
	DenyMalformed
	DenySpoofed
	DenyUndeclared // a vif of the agent's patterns with no declared guest
	DenyUnplanned  // a declared guest the planner refused
	DenyControl    // ARP or ND/MLD outside the link-control rules
	NumReasons
)

var reasonNames = [NumReasons]string{
	PassUnmanaged:   "pass_unmanaged",
	AllowLabeled:    "allow_labeled",
	AllowDefault:    "allow_default",
	AllowControl:    "allow_control",
	DenyUnknownSA:   "deny_unknown_sa",
	DenyForeignSA:   "deny_foreign_sa",
	DenyLabelRange:  "deny_label_range",
	DenyAppMismatch: "deny_app_mismatch",
	DenyPeerRange:   "deny_peer_range",
	DenyUnlabeled:   "deny_unlabeled",
	DenyMalformed:   "deny_malformed",
	DenySpoofed:     "deny_spoofed",
	DenyUndeclared:  "deny_undeclared",
	DenyUnplanned:   "deny_unplanned",
	DenyControl:     "deny_control",
}

// Reasons lists every reason in order, for metrics that must exist from start-up.
func Reasons() []Reason {
	rs := make([]Reason, NumReasons)
	for i := range rs {
		rs[i] = Reason(i)
	}
	return rs
}

func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Allowed reports whether the packet goes on.
func (r Reason) Allowed() bool { return r <= AllowControl }

// Direction is seen from the host: ingress comes from the guest.
type Direction uint8

const (
	Ingress Direction = iota // from the guest: tc ingress on its vif
	Egress                   // toward the guest: tc egress on its vif
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// Family is an address family as the kernel numbers it.
type Family uint16

const (
	AFInet  Family = 2
	AFInet6 Family = 10
)

// FamilyOf returns the family of a valid address.
func FamilyOf(a netip.Addr) Family {
	if a.Is4() {
		return AFInet
	}
	return AFInet6
}

// Guest is what the fast path knows of the VM behind one vif.
type Guest struct {
	VM, App uint32
	// Range bounds every label the guest may send or receive.
	Range label.Bounds
	// Addr4 and Addr6 are the only sources the guest may use; a family
	// without one has only the link-control sources (::, the guest's
	// link-local address, 0.0.0.0 for DHCP).
	Addr4, Addr6 netip.Addr
	// HostAddr4 and HostAddr6 (the host-side interface's link-local
	// address) are the host's end of the guest's link: the only address
	// link control (ARP, ND, DHCP, IKE, the API port) may reach. Unset:
	// no control of that family reaches the host.
	HostAddr4, HostAddr6 netip.Addr
	// MAC is the guest's Ethernet address, the source of every frame it
	// sends; all zero turns the check off. The guest's link-local address
	// is LinkLocal(MAC).
	MAC            [6]byte
	AllowUnlabeled bool // plain traffic travels at label.Default
	Audit          bool // count and report denials, drop nothing
	// Deny, when set (DenyUndeclared, DenyUnplanned), is the reason
	// every packet on the vif gets.
	Deny Reason
}

// LinkLocal is the IPv6 link-local address a guest derives from its MAC
// (modified EUI-64, RFC 4291 appendix A); the zero Addr for a zero MAC.
func LinkLocal(mac [6]byte) netip.Addr {
	if mac == ([6]byte{}) {
		return netip.Addr{}
	}
	a := [16]byte{0xfe, 0x80, 8: mac[0] ^ 0x02, 9: mac[1], 10: mac[2], 11: 0xff, 12: 0xfe, 13: mac[3], 14: mac[4], 15: mac[5]}
	return netip.AddrFrom16(a)
}

// SA is an IPsec security association as the fast path needs it.
type SA struct {
	SPI    uint32
	Family Family
	// Daddr is the SA's destination. It is left invalid for an SA that the
	// host terminates whose SPI is outside the host's range: such an SA is
	// found only through a packet's secpath.
	Daddr netip.Addr
	Owner uint32 // the VM whose traffic the SA carries
	App   uint32
	Label label.Label
}

// Dest is the destination the kernel keys the SA by: Daddr, or the zero
// address of the SA's family when Daddr is not set.
func (sa *SA) Dest() netip.Addr {
	if sa.Daddr.IsValid() {
		return sa.Daddr
	}
	if sa.Family == AFInet {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

// PeerKind says what sits behind a peer prefix.
type PeerKind uint8

const (
	PeerWeb   PeerKind = 1
	PeerGuest PeerKind = 2
	PeerHost  PeerKind = 3
)

// Peer is a destination (or, toward the guest, a source) with the labels it accepts.
type Peer struct {
	Prefix netip.Prefix
	App    uint32 // 0 serves every application
	Range  label.Bounds
	Kind   PeerKind
}

// Policy is everything the fast path decides from.
type Policy struct {
	Guests map[uint32]Guest // by ifindex
	SAs    []SA
	Peers  []Peer
	// SAs whose SPI lies in [SPIBase, SPIBase+SPISlots) were allocated by
	// the host and live in a dense array indexed by SPI; the others in a hash.
	SPIBase, SPISlots uint32
	APIPort           uint16 // the host's API port and the guests' update daemon port; 0 = none
	Enforce           bool   // false: audit mode everywhere
}

// Secpath is the XFRM state of a packet the host already decrypted.
type Secpath struct {
	SPI    uint32
	Family Family
}

// Packet is one frame on a vif.
type Packet struct {
	Ifindex uint32
	Dir     Direction
	Frame   []byte
	Secpath *Secpath
	// RootSocket: a local socket owned by uid 0 sent the packet (the
	// kernel asks bpf_get_socket_uid). Only IKE and the API port toward
	// the guest need it; a forwarded packet has no local socket.
	RootSocket bool
}

// Drops reports whether the fast path drops a packet it gave reason r.
func (p *Policy) Drops(ifindex uint32, r Reason) bool {
	if r.Allowed() || !p.Enforce {
		return false
	}
	// A deny-all entry has no audit flag: an undeclared vif or a guest
	// the planner refused drops, whatever its declaration asked.
	if r == DenyUndeclared || r == DenyUnplanned {
		return true
	}
	return !p.Guests[ifindex].Audit
}

func (p *Policy) inSlots(spi uint32) bool {
	return spi >= p.SPIBase && spi-p.SPIBase < p.SPISlots
}

// Decide returns the reason the fast path gives pkt under p.
func Decide(p *Policy, pkt Packet) Reason {
	g, ok := p.Guests[pkt.Ifindex]
	if !ok {
		return PassUnmanaged
	}
	if g.Deny != 0 {
		if g.Deny <= AllowControl || g.Deny >= NumReasons {
			return DenyUnplanned
		}
		return g.Deny
	}
	if p.GuestProblems()[pkt.Ifindex] != nil {
		return DenyUnplanned
	}
	h, ok := parse(pkt.Frame)
	if !ok {
		return DenyMalformed
	}
	// Anti-spoof first: every frame from the guest carries its MAC.
	if pkt.Dir == Ingress && g.MAC != ([6]byte{}) && h.smac != g.MAC {
		return DenySpoofed
	}
	if h.family == 0 {
		if h.ethertype == etherARP {
			return arpVerdict(pkt.Frame, &h, &g, pkt.Dir)
		}
		return DenyUnlabeled
	}
	ll := LinkLocal(g.MAC)
	guest, side := g.Addr4, h.saddr
	if h.family == AFInet6 {
		guest = g.Addr6
	}
	if pkt.Dir == Egress {
		side = h.daddr
	}
	// A family without a declared address has no source the guest may use
	// but the link-control ones.
	own := setAndEq(guest, side)
	r := p.control(&h, &g, pkt.Dir, own, ll, pkt.RootSocket)
	if r == AllowControl {
		return r
	}
	if pkt.Dir == Ingress {
		// ND and MLD may come from the guest's link-local address or ::;
		// everything else only from the guest's address.
		if r == DenyControl {
			if own || setAndEq(ll, h.saddr) || h.saddr.IsUnspecified() {
				return DenyControl
			}
			return DenySpoofed
		}
		if !own {
			return DenySpoofed
		}
	} else if r != 0 {
		return r
	} else if !own {
		// Toward the guest, data is addressed to the guest: on a shared
		// bridge another guest's frames (to the host, to broadcast or
		// multicast) would otherwise reach it.
		return DenySpoofed
	}
	if h.proto == protoESP {
		return checkSA(p.saOfESP(&h), &g)
	}
	if sp := pkt.Secpath; sp != nil {
		sa := p.saOfSecpath(sp.SPI, sp.Family)
		if r := checkSA(sa, &g); r != AllowLabeled {
			return r
		}
		return p.checkPeer(&h, pkt.Dir, sa.App, sa.Label)
	}
	if !g.AllowUnlabeled {
		return DenyUnlabeled
	}
	if !g.Range.Contains(label.Default) {
		return DenyLabelRange
	}
	if r := p.checkPeer(&h, pkt.Dir, g.App, label.Default); r != AllowLabeled {
		return r
	}
	return AllowDefault
}

// Link-control limits, as bpf/lib/proto.h has them.
const (
	arpFrameMax = 60  // a 28-byte ARP body padded to the minimum frame
	ctrlL4Max   = 576 // DHCP, DHCPv6, ND and MLD: UDP or ICMPv6 bytes
)

var (
	bcast4    = netip.AddrFrom4([4]byte{255, 255, 255, 255})
	dhcp6All  = netip.MustParseAddr("ff02::1:2")
	allNodes  = netip.MustParseAddr("ff02::1")
	allRouter = netip.MustParseAddr("ff02::2")
	mldv2     = netip.MustParseAddr("ff02::16")
)

// isSet: a valid address that is not all zero.
func isSet(a netip.Addr) bool { return a.IsValid() && !a.IsUnspecified() }

// setAndEq: a is set and equal to b (b read from a packet: same family).
func setAndEq(a, b netip.Addr) bool { return isSet(a) && a == b }

// linkGroup: ff02::1, ff02::2, ff02::16, or the solicited-node group
// ff02::1:ffXX:XXXX of a or b (when set).
func linkGroup(d, a, b netip.Addr) bool {
	if d == allNodes || d == allRouter || d == mldv2 {
		return true
	}
	x := d.As16()
	if [13]byte(x[:13]) != [13]byte{0xff, 0x02, 11: 1, 12: 0xff} {
		return false
	}
	for _, h := range []netip.Addr{a, b} {
		if y := h.As16(); isSet(h) && h.Is6() && x[13] == y[13] && x[14] == y[14] && x[15] == y[15] {
			return true
		}
	}
	return false
}

// arpVerdict: untagged Ethernet/IPv4 ARP in a minimum-size frame, the sender's
// hardware address the frame's source; from the guest, sender its address
// (0.0.0.0 for a probe) and target the host; toward it, the mirror.
func arpVerdict(f []byte, h *headers, g *Guest, dir Direction) Reason {
	off := h.l3off
	if len(f) > arpFrameMax || off != 14 || off+28 > len(f) {
		return DenyControl
	}
	a := f[off:]
	if binary.BigEndian.Uint16(a) != 1 || binary.BigEndian.Uint16(a[2:]) != etherIPv4 || a[4] != 6 || a[5] != 4 {
		return DenyControl
	}
	if op := binary.BigEndian.Uint16(a[6:]); op != 1 && op != 2 {
		return DenyControl
	}
	if [6]byte(a[8:14]) != h.smac {
		return DenyControl
	}
	spa, tpa := netip.AddrFrom4([4]byte(a[14:18])), netip.AddrFrom4([4]byte(a[24:28]))
	if dir == Ingress {
		if !setAndEq(g.Addr4, spa) && !spa.IsUnspecified() {
			return DenyControl
		}
		if !setAndEq(g.HostAddr4, tpa) {
			return DenyControl
		}
	} else {
		if !setAndEq(g.HostAddr4, spa) {
			return DenyControl
		}
		if !setAndEq(g.Addr4, tpa) {
			return DenyControl
		}
	}
	return AllowControl
}

// control decides link control (untagged frames only) between the guest
// and its own host-side address: AllowControl, DenyControl (ND/MLD outside the rules: never
// data), or 0 (not control: decide as data). own: the packet's guest-side
// address (source from the guest, destination toward it) is the guest's.
func (p *Policy) control(h *headers, g *Guest, dir Direction, own bool, ll netip.Addr, root bool) Reason {
	host := g.HostAddr4
	if h.family == AFInet6 {
		host = g.HostAddr6
	}
	switch {
	case h.proto == protoICMPv6 && h.family == AFInet6:
		t := h.icmpType
		if !(t >= 130 && t <= 137 || t == 143) {
			return 0
		}
		if h.l3off != 14 {
			return DenyControl
		}
		hop := uint8(1)
		if t >= 133 && t <= 137 {
			hop = 255
		}
		if h.hop != hop || h.l4len > ctrlL4Max {
			return DenyControl
		}
		if dir == Ingress {
			// A guest is no router (no RA, no redirect); its RS, NS and NA
			// speak only for itself: the fixed length, or one link-layer
			// option with its own MAC; an NA only for its own addresses,
			// an NS only for the host's or its own.
			if t == 134 || t == 137 {
				return DenyControl
			}
			if (t == 133 || t == 135 || t == 136) && !h.ndOK {
				return DenyControl
			}
			if t == 135 && !setAndEq(g.HostAddr6, h.ndTarget) && !setAndEq(ll, h.ndTarget) && !setAndEq(g.Addr6, h.ndTarget) {
				return DenyControl
			}
			if t == 136 && !setAndEq(ll, h.ndTarget) && !setAndEq(g.Addr6, h.ndTarget) {
				return DenyControl
			}
			if !own && !setAndEq(ll, h.saddr) && !h.saddr.IsUnspecified() {
				return DenyControl
			}
			// to the host, or a group of the link: the host's or, for
			// duplicate address detection, the guest's own solicited-node
			// groups
			if !setAndEq(g.HostAddr6, h.daddr) && !linkGroup(h.daddr, g.HostAddr6, ll) && !linkGroup(h.daddr, g.Addr6, g.Addr6) {
				return DenyControl
			}
		} else {
			if !setAndEq(g.HostAddr6, h.saddr) { // only from the host's end of the link
				return DenyControl
			}
			if !own && !setAndEq(ll, h.daddr) && !linkGroup(h.daddr, ll, g.Addr6) {
				return DenyControl
			}
		}
		return AllowControl
	case h.l3off != 14:
		// Link control travels in untagged frames only: a tag could steer a
		// broadcast onto a VLAN of the host's.
		return 0
	case h.proto == protoUDP:
		small := h.l4len <= ctrlL4Max
		if h.family == AFInet {
			if dir == Ingress && h.sport == 68 && h.dport == 67 && small {
				// DHCPDISCOVER/REQUEST from 0.0.0.0 only to broadcast
				if h.daddr == bcast4 && (own || h.saddr.IsUnspecified()) {
					return AllowControl
				}
				if own && setAndEq(g.HostAddr4, h.daddr) {
					return AllowControl
				}
			}
			if dir == Egress && h.sport == 67 && h.dport == 68 && small && setAndEq(g.HostAddr4, h.saddr) &&
				(h.daddr == bcast4 || setAndEq(g.Addr4, h.daddr)) {
				return AllowControl
			}
		} else {
			if dir == Ingress && h.sport == 546 && h.dport == 547 && small && (own || setAndEq(ll, h.saddr)) &&
				(h.daddr == dhcp6All || setAndEq(g.HostAddr6, h.daddr)) {
				return AllowControl
			}
			if dir == Egress && h.sport == 547 && h.dport == 546 && small && setAndEq(g.HostAddr6, h.saddr) &&
				(setAndEq(ll, h.daddr) || setAndEq(g.Addr6, h.daddr)) {
				return AllowControl
			}
		}
		if !h.ike || !own {
			return 0
		}
		if dir == Ingress && setAndEq(host, h.daddr) || dir == Egress && setAndEq(host, h.saddr) && root {
			return AllowControl
		}
	case h.proto == protoTCP && p.APIPort != 0 && own:
		if dir == Ingress {
			// To the host's API; or the guest's update daemon answering the
			// loader, which never opens with a bare SYN.
			bareSYN := h.tcpFlags&0x12 == 0x02
			if (h.dport == p.APIPort || h.sport == p.APIPort && !bareSYN) && setAndEq(host, h.daddr) {
				return AllowControl
			}
			return 0
		}
		if (h.sport == p.APIPort || h.dport == p.APIPort) && setAndEq(host, h.saddr) && root {
			return AllowControl
		}
	}
	return 0
}

func (p *Policy) peerOf(h *headers, dir Direction) *Peer {
	addr := h.daddr
	if dir == Egress {
		addr = h.saddr
	}
	var best *Peer
	for i := range p.Peers {
		pe := &p.Peers[i]
		if pe.Prefix.Addr().Is4() != addr.Is4() || !pe.Prefix.Contains(addr) {
			continue
		}
		if best == nil || pe.Prefix.Bits() > best.Prefix.Bits() {
			best = pe
		}
	}
	return best
}

func (p *Policy) saOfESP(h *headers) *SA {
	inSlots := p.inSlots(h.spi)
	for i := range p.SAs {
		sa := &p.SAs[i]
		if sa.SPI == h.spi && sa.Family == h.family && p.inSlots(sa.SPI) == inSlots && sa.Dest() == h.daddr {
			return sa
		}
	}
	return nil
}

func (p *Policy) saOfSecpath(spi uint32, fam Family) *SA {
	inSlots := p.inSlots(spi)
	for i := range p.SAs {
		sa := &p.SAs[i]
		if sa.SPI != spi || sa.Family != fam {
			continue
		}
		// In the host's range the SPI alone names the SA; outside it, only
		// SAs registered without a destination are found from a secpath.
		if inSlots || sa.Dest().IsUnspecified() {
			return sa
		}
	}
	return nil
}

// checkSA: an SA carries only its owner's traffic, for its owner's
// application, at a label within the owner's range.
func checkSA(sa *SA, g *Guest) Reason {
	switch {
	case sa == nil:
		return DenyUnknownSA
	case sa.Owner != g.VM:
		return DenyForeignSA
	case sa.App != g.App:
		return DenyAppMismatch
	case !g.Range.Contains(sa.Label):
		return DenyLabelRange
	}
	return AllowLabeled
}

// checkPeer: the other end must accept this application and this label.
func (p *Policy) checkPeer(h *headers, dir Direction, app uint32, l label.Label) Reason {
	peer := p.peerOf(h, dir)
	switch {
	case peer == nil:
		return DenyPeerRange
	case peer.App != 0 && peer.App != app:
		return DenyAppMismatch
	case !peer.Range.Contains(l):
		return DenyPeerRange
	}
	return AllowLabeled
}
