package xfrm

import (
	"net/netip"
	"slices"

	"github.com/mlsgate/mlsgate/policystore"
)

// DefaultReplayWindow is the anti-replay window [StateFromStore] gives an
// SA, in packets (strongSwan's default).
const DefaultReplayWindow = 32

// invalid is the value a conversion gives a field whose store value it does
// not know, so that Validate refuses the result and names the field.
const invalid = 0xff

// StateFromStore converts one of the policy store's SAs. The store validates
// its bundles; a protocol or mode it does not generate converts to a value
// [State.Validate] (and so [Handle.AddState]) refuses. The key is copied.
func StateFromStore(s policystore.XFRMState) State {
	st := State{
		Src:          s.Src,
		Dst:          s.Dst,
		SPI:          s.SPI,
		Proto:        protoFromStore(s.Proto),
		Mode:         modeFromStore(s.Mode),
		Reqid:        s.Reqid,
		Context:      s.Context,
		ReplayWindow: DefaultReplayWindow,
		ESN:          s.ESN,
	}
	if s.AEAD.Name != "" {
		st.AEAD = &Algo{Name: s.AEAD.Name, Key: slices.Clone(s.AEAD.Key), ICVBits: s.AEAD.ICVBits}
	}
	return st
}

// PolicyFromStore converts one of the policy store's policies, as
// [StateFromStore] does SAs.
func PolicyFromStore(p policystore.XFRMPolicy) Policy {
	pol := Policy{
		Src:      p.Src,
		Dst:      p.Dst,
		Proto:    p.Proto,
		Context:  p.Context,
		Priority: p.Priority,
	}
	switch p.Dir {
	case policystore.DirIn:
		pol.Dir = DirIn
	case policystore.DirOut:
		pol.Dir = DirOut
	case policystore.DirFwd:
		pol.Dir = DirFwd
	default:
		pol.Dir = invalid
	}
	switch p.Action {
	case policystore.ActionAllow:
		pol.Action = ActionAllow
	case policystore.ActionBlock:
		pol.Action = ActionBlock
	default:
		pol.Action = invalid
	}
	for _, t := range p.Templates {
		pol.Templates = append(pol.Templates, Template{
			Src:   t.Src,
			Dst:   t.Dst,
			Proto: protoFromStore(t.Proto),
			Mode:  modeFromStore(t.Mode),
			Reqid: t.Reqid,
		})
	}
	return pol
}

func protoFromStore(p string) uint8 {
	if p == policystore.ProtoESP {
		return ProtoESP
	}
	return 0
}

func modeFromStore(m string) Mode {
	switch m {
	case policystore.ModeTransport:
		return ModeTransport
	case policystore.ModeTunnel:
		return ModeTunnel
	}
	return invalid
}

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
