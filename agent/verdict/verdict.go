package verdict

import (
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
	// Addr4 and Addr6 are the only sources the guest may use; an invalid
	// (zero) address turns the check off for that family.
	Addr4, Addr6   netip.Addr
	AllowUnlabeled bool // plain traffic travels at label.Default
	Audit          bool // count and report denials, drop nothing
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
}

// Drops reports whether the fast path drops a packet it gave reason r.
func (p *Policy) Drops(ifindex uint32, r Reason) bool {
	if r.Allowed() || !p.Enforce {
		return false
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
	h, ok := parse(pkt.Frame)
	if !ok {
		return DenyMalformed
	}
	if h.family == 0 {
		if h.ethertype == etherARP {
			return AllowControl
		}
		return DenyUnlabeled
	}
	if p.isControl(&h, pkt.Dir) {
		return AllowControl
	}
	if pkt.Dir == Ingress {
		own := g.Addr4
		if h.family == AFInet6 {
			own = g.Addr6
		}
		if own.IsValid() && !own.IsUnspecified() && own != h.saddr {
			return DenySpoofed
		}
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

func (p *Policy) isControl(h *headers, dir Direction) bool {
	local, remote := h.sport, h.dport
	if dir == Egress {
		local, remote = remote, local
	}
	switch {
	case h.proto == protoICMPv6 && h.family == AFInet6:
		return (h.icmpType >= 130 && h.icmpType <= 137) || h.icmpType == 143
	case h.proto == protoUDP:
		if h.family == AFInet && local == 68 && remote == 67 {
			return true
		}
		if h.family == AFInet6 && local == 546 && remote == 547 {
			return true
		}
		if !h.ike {
			return false
		}
	case h.proto == protoTCP:
		// The host's API port, and the guest's update daemon on the same
		// port number, so the loader reaches a guest that has no policy yet.
		if p.APIPort == 0 || (remote != p.APIPort && local != p.APIPort) {
			return false
		}
	default:
		return false
	}
	peer := p.peerOf(h, dir)
	return peer != nil && peer.Kind == PeerHost
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
