package agent

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/vishvananda/netns"
)

// XFRMWatcher mirrors the kernel's SA database through XFRM netlink: it
// subscribes first, then dumps, so no change between the two is lost, and
// re-dumps whenever the kernel says its notifications overran (Resync) or
// SAs were flushed. Bursts of events are coalesced into one update.
type XFRMWatcher struct {
	// NS is the network namespace whose SAs to follow; nil means the
	// agent's own.
	NS *netns.NsHandle
}

type saID struct {
	dst   netip.Addr
	spi   uint32
	proto uint8
}

func (w XFRMWatcher) handle() (*xfrm.Handle, error) {
	if w.NS != nil {
		return xfrm.NewHandleAt(*w.NS)
	}
	return xfrm.NewHandle()
}

// Watch implements SAWatcher: the complete set after every change, kept
// from WatchDeltas.
func (w XFRMWatcher) Watch(ctx context.Context, update func([]KernelSA)) error {
	sas := map[saID]KernelSA{}
	publish := func() {
		out := make([]KernelSA, 0, len(sas))
		for _, s := range sas {
			out = append(out, s)
		}
		update(out)
	}
	return w.WatchDeltas(ctx, func(all []KernelSA) {
		clear(sas)
		for _, k := range all {
			sas[saID{k.Dst, k.SPI, k.Proto}] = k
		}
		publish()
	}, func(cs []SAChange) {
		for _, c := range cs {
			if c.Gone {
				delete(sas, saID{c.SA.Dst, c.SA.SPI, c.SA.Proto})
			} else {
				sas[saID{c.SA.Dst, c.SA.SPI, c.SA.Proto}] = c.SA
			}
		}
		publish()
	})
}

// WatchDeltas implements SADeltaWatcher: the dump, then each burst of
// events as one list of changes in the kernel's order; a flush or an
// overrun (Resync) is a new dump.
func (w XFRMWatcher) WatchDeltas(ctx context.Context, full func([]KernelSA), changes func([]SAChange)) error {
	ns := netns.None()
	if w.NS != nil {
		ns = *w.NS
	}
	events, err := xfrm.Subscribe(ctx, ns)
	if err != nil {
		return fmt.Errorf("subscribe to XFRM events: %w", err)
	}
	h, err := w.handle()
	if err != nil {
		return fmt.Errorf("XFRM netlink: %w", err)
	}
	defer h.Close()
	dump := func() error {
		states, err := h.States()
		if err != nil {
			return fmt.Errorf("dump SAs: %w", err)
		}
		out := make([]KernelSA, 0, len(states))
		for i := range states {
			out = append(out, kernelSA(&states[i]))
		}
		full(out)
		return nil
	}
	if err := dump(); err != nil {
		return err
	}
	var batch []SAChange
	for {
		var e xfrm.Event
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case e, ok = <-events:
			if !ok {
				return nil
			}
		}
		redump := false
		batch = batch[:0]
		// Take this event and everything already queued, then hand over once.
		for {
			switch e.Kind {
			case xfrm.NewSA, xfrm.UpdSA:
				if e.State != nil {
					batch = append(batch, SAChange{SA: kernelSA(e.State)})
				}
			case xfrm.DelSA:
				if e.State != nil {
					batch = append(batch, SAChange{SA: KernelSA{Dst: e.State.Dst, SPI: e.State.SPI, Proto: uint8(e.State.Proto)}, Gone: true})
				}
			case xfrm.ExpireSA:
				if e.Hard && e.State != nil {
					batch = append(batch, SAChange{SA: KernelSA{Dst: e.State.Dst, SPI: e.State.SPI, Proto: uint8(e.State.Proto)}, Gone: true})
				}
			case xfrm.FlushSA, xfrm.Resync:
				redump = true
			case xfrm.Failed:
				return fmt.Errorf("XFRM events: %w", e.Err)
			}
			select {
			case e, ok = <-events:
				if !ok {
					return nil
				}
				continue
			default:
			}
			break
		}
		if redump {
			if err := dump(); err != nil {
				return err
			}
		} else if len(batch) > 0 {
			changes(batch)
		}
	}
}

func kernelSA(s *xfrm.State) KernelSA {
	k := KernelSA{Src: s.Src, Dst: s.Dst, SPI: s.SPI, Proto: uint8(s.Proto), Reqid: s.Reqid, Context: s.Context}
	if s.Selector != nil {
		if s.Selector.Src.IsValid() && s.Selector.Src.IsSingleIP() {
			k.SelSrc = s.Selector.Src.Addr()
		}
		if s.Selector.Dst.IsValid() && s.Selector.Dst.IsSingleIP() {
			k.SelDst = s.Selector.Dst.Addr()
		}
	}
	return k
}
