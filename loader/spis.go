package loader

import (
	"fmt"
	"net/netip"

	"github.com/mlsgate/mlsgate/agent/xfrm"
)

// SPIs. Every guest's SAs take their SPIs from the host's one range, and
// the agent keys its SA table by SPI: two guests holding one SPI make the
// older fail closed (or the host refuses the newer's SA). So the loader
//
//   - records which guest holds each SPI it hands out (allocSPIFor; SA
//     rotation's successors are taken without a holder, allocSPI, and are
//     claimed for their guest at its teardown);
//   - frees a guest's SPIs when it is torn down, after the host's states of
//     it were deleted (TornDown, which the wiring calls after Host.Forget);
//     an SPI whose state could not be deleted stays reserved;
//   - on start, reserves every SPI of its range that the kernel holds
//     (ReserveInstalled), attributing the SAs on a known guest's link to it
//     so that its teardown deletes them and then frees their SPIs.
//
// The API the rotation service uses is unchanged: allocSPI, freeSPIs,
// MarkSPIsInUse.

// XFRMDumper is a host XFRM that can list the kernel's SAs and policies
// (*xfrm.Handle).
type XFRMDumper interface {
	States() ([]xfrm.State, error)
	Policies() ([]xfrm.Policy, error)
}

// ReserveInstalled reads the host's SAs and policies from the kernel and,
// before the loader takes a load: reserves every SPI of the host's range
// in use there; attributes the SAs and labeled policies whose tunnel ends
// at one of guests' addresses to that guest, both for the SPI allocator
// and for the host side (so that Host.Forget deletes them). guests are
// every guest the pool knows, whatever its state. It returns the number of
// SPIs reserved. A host side without XFRM, or whose XFRM cannot list, has
// nothing to reserve.
func (l *Loader) ReserveInstalled(guests []Guest) (int, error) {
	h, ok := l.host.(*Host)
	if !ok || h.XFRM == nil {
		return 0, nil
	}
	d, ok := h.XFRM.(XFRMDumper)
	if !ok {
		return 0, nil
	}
	states, err := d.States()
	if err != nil {
		return 0, fmt.Errorf("reserve the SPIs in use: %w", err)
	}
	pols, err := d.Policies()
	if err != nil {
		return 0, fmt.Errorf("reserve the SPIs in use: %w", err)
	}
	byAddr := map[netip.Addr]string{}
	for _, g := range guests {
		if g.Addr.IsValid() && g.Interface != "" {
			byAddr[g.Addr] = g.Interface
		}
	}
	owner := func(a, b netip.Addr) string {
		if i, ok := byAddr[a]; ok {
			return i
		}
		return byAddr[b]
	}
	adoptS := map[string][]xfrm.State{}
	adoptP := map[string][]xfrm.Policy{}
	n := 0
	l.mu.Lock()
	for _, s := range states {
		iface := owner(s.Src, s.Dst)
		if iface != "" {
			adoptS[iface] = append(adoptS[iface], s)
		}
		if !l.inRange(s.SPI) {
			continue
		}
		if cur, ok := l.spiInUse[s.SPI]; !ok || cur == "" {
			l.spiInUse[s.SPI] = iface
		}
		n++
	}
	l.mu.Unlock()
	for _, p := range pols {
		if p.Context == "" || p.Action != xfrm.ActionAllow {
			continue // the host's own blocks are no guest's
		}
		for _, t := range p.Templates {
			if iface := owner(t.Src, t.Dst); iface != "" {
				adoptP[iface] = append(adoptP[iface], p)
				break
			}
		}
	}
	for iface, st := range adoptS {
		h.adopt(iface, st, adoptP[iface])
	}
	for iface, ps := range adoptP {
		if _, done := adoptS[iface]; !done {
			h.adopt(iface, nil, ps)
		}
	}
	return n, nil
}

// inRange reports whether spi is in the host's range. The caller holds
// l.mu (the range never changes; the lock is not needed for it).
func (l *Loader) inRange(spi uint32) bool {
	return uint64(spi) >= uint64(l.cfg.SPIBase) && uint64(spi) < uint64(l.cfg.SPIBase)+uint64(l.cfg.SPISlots)
}

// adopt records states and policies found installed for the guest on
// iface (after a restart), so that Forget and Isolate delete them.
func (h *Host) adopt(iface string, states []xfrm.State, pols []xfrm.Policy) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.installed == nil {
		h.installed = map[string]hostXFRM{}
	}
	inst := h.installed[iface]
	inst.states = append(inst.states, states...)
	inst.pols = append(inst.pols, pols...)
	h.installed[iface] = inst
}

// claimRotatedSPIs records as g's the SPIs of the SA set in force on g that
// the rotation service allocated without a holder, before it forgets g.
func (l *Loader) claimRotatedSPIs(g *Guest) {
	l.mu.Lock()
	rs := l.rot
	l.mu.Unlock()
	if rs == nil {
		return
	}
	var spis []uint32
	rs.mu.Lock()
	if rg := rs.guests[g.Interface]; rg != nil && rg.bundle != nil {
		for _, s := range rg.bundle.States {
			spis = append(spis, s.SPI)
		}
	}
	rs.mu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range spis {
		if cur, ok := l.spiInUse[s]; ok && cur == "" {
			l.spiInUse[s] = g.Interface
		}
	}
}

// releaseSPIs frees the SPIs g holds. Call it once the host's states of g
// are deleted (Host.Forget): an SPI whose state could not be deleted stays
// reserved, without a holder.
func (l *Loader) releaseSPIs(g *Guest) int {
	var undeleted map[uint32]bool
	if h, ok := l.host.(*Host); ok {
		h.mu.Lock()
		undeleted = make(map[uint32]bool, len(h.undeleted))
		for s := range h.undeleted {
			undeleted[s] = true
		}
		h.mu.Unlock()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for s, holder := range l.spiInUse {
		if holder != g.Interface {
			continue
		}
		if undeleted[s] {
			l.spiInUse[s] = ""
			continue
		}
		delete(l.spiInUse, s)
		n++
	}
	return n
}
