package xfrm

import (
	"net/netip"
)

// CatchAllBlock returns unlabeled block policies for everything to and from
// the guest address, at the given priority: out and fwd from the guest, in
// and fwd to it. Give them a higher priority number than the guest's labeled
// policies, so those win where they match.
//
// They close a leak of labeled IPsec: a flow uses a labeled policy only when
// its SELinux domain has association polmatch on the policy's context; a
// domain without it skips the labeled policy, and if no other policy matches,
// its packets leave in clear. An unlabeled policy matches every flow, so the
// block catches them. The same policies serve inside a guest (out, in) and on
// the host that forwards its traffic (fwd).
//
// They block everything the guest's other policies do not allow, including
// control traffic (DHCP, IKE, and for IPv6 neighbour discovery): allow that
// with its own policies at lower priority numbers.
func CatchAllBlock(guest netip.Addr, priority uint32) []Policy {
	host := netip.PrefixFrom(guest, guest.BitLen())
	anyAddr := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	if guest.Is6() {
		anyAddr = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	mk := func(src, dst netip.Prefix, dir Dir) Policy {
		return Policy{Src: src, Dst: dst, Dir: dir, Action: ActionBlock, Priority: priority}
	}
	return []Policy{
		mk(host, anyAddr, DirOut),
		mk(anyAddr, host, DirIn),
		mk(host, anyAddr, DirFwd),
		mk(anyAddr, host, DirFwd),
	}
}
