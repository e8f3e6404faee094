package verdict

import (
	"fmt"
	"net/netip"
	"sort"
)

// GuestProblems returns, by ifindex, why the planner cannot give a guest
// its policy: a bad range or address, a multicast MAC, a host-side IPv6
// address that is not link-local, or a conflict with another guest (one VM
// with two ranges or applications; one address or MAC claimed twice). Such
// a guest is denied everything (DenyUnplanned) while the others keep their
// policy. Guests with Deny set are not checked.
func (p *Policy) GuestProblems() map[uint32]error {
	out := map[uint32]error{}
	idx := make([]uint32, 0, len(p.Guests))
	for i, g := range p.Guests {
		if g.Deny == 0 {
			idx = append(idx, i)
		}
	}
	sort.Slice(idx, func(a, b int) bool { return idx[a] < idx[b] })
	for _, i := range idx {
		g := p.Guests[i]
		if err := g.check(i); err != nil {
			out[i] = err
		}
	}
	// Conflicts: every guest involved is refused, whichever came first.
	claim := map[string]uint32{}
	vms := map[uint32]uint32{}
	for _, i := range idx {
		g := p.Guests[i]
		if j, ok := vms[g.VM]; ok {
			o := p.Guests[j]
			if o.Range != g.Range || o.App != g.App {
				err := fmt.Errorf("vm %d has vifs with different ranges or applications (ifindex %d: %s app %d; ifindex %d: %s app %d); give every vif of a VM the same policy",
					g.VM, j, o.Range, o.App, i, g.Range, g.App)
				setOnce(out, i, err)
				setOnce(out, j, err)
			}
		} else {
			vms[g.VM] = i
		}
		var keys []string
		for _, a := range []netip.Addr{g.Addr4, g.Addr6} {
			if isSet(a) {
				keys = append(keys, "address "+a.String())
			}
		}
		if g.MAC != ([6]byte{}) {
			keys = append(keys, fmt.Sprintf("mac %x", g.MAC))
		}
		for _, k := range keys {
			if j, ok := claim[k]; ok && j != i {
				err := fmt.Errorf("%s is declared for ifindex %d and %d; give each guest its own", k, j, i)
				setOnce(out, i, err)
				setOnce(out, j, err)
			} else {
				claim[k] = i
			}
		}
	}
	return out
}

func setOnce(m map[uint32]error, k uint32, err error) {
	if m[k] == nil {
		m[k] = err
	}
}

// check is what one guest needs to be planned.
func (g *Guest) check(ifindex uint32) error {
	name := fmt.Sprintf("vm %d on ifindex %d", g.VM, ifindex)
	switch {
	case ifindex == 0:
		return fmt.Errorf("%s: ifindex 0 names no interface", name)
	case g.Addr4.IsValid() && !g.Addr4.Is4():
		return fmt.Errorf("%s: Addr4 %s is not an IPv4 address", name, g.Addr4)
	case g.Addr6.IsValid() && (!g.Addr6.Is6() || g.Addr6.Is4In6()):
		return fmt.Errorf("%s: Addr6 %s is not an IPv6 address", name, g.Addr6)
	case g.HostAddr4.IsValid() && (!g.HostAddr4.Is4() || g.HostAddr4.IsUnspecified() || g.HostAddr4 == bcast4):
		return fmt.Errorf("%s: HostAddr4 %s is not a unicast IPv4 address", name, g.HostAddr4)
	case g.HostAddr6.IsValid() && (!g.HostAddr6.Is6() || !g.HostAddr6.IsLinkLocalUnicast()):
		return fmt.Errorf("%s: HostAddr6 %s is not an IPv6 link-local address (fe80::/10)", name, g.HostAddr6)
	case g.MAC[0]&1 != 0:
		return fmt.Errorf("%s: MAC %x is a multicast address; give the guest's unicast MAC", name, g.MAC)
	}
	if err := g.Range.Validate(); err != nil {
		return fmt.Errorf("%s: range: %w", name, err)
	}
	return nil
}
