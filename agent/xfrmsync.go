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

// Watch implements SAWatcher.
func (w XFRMWatcher) Watch(ctx context.Context, update func([]KernelSA)) error {
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
	sas := map[saID]KernelSA{}
	dump := func() error {
		states, err := h.States()
		if err != nil {
			return fmt.Errorf("dump SAs: %w", err)
		}
		clear(sas)
		for i := range states {
			k := kernelSA(&states[i])
			sas[saID{k.Dst, k.SPI, k.Proto}] = k
		}
		return nil
	}
	if err := dump(); err != nil {
		return err
	}
	publish := func() {
		out := make([]KernelSA, 0, len(sas))
		for _, s := range sas {
			out = append(out, s)
		}
		update(out)
	}
	publish()
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
		// Apply this event and everything already queued, then publish once.
		for {
			switch e.Kind {
			case xfrm.NewSA, xfrm.UpdSA:
				if e.State != nil {
					k := kernelSA(e.State)
					sas[saID{k.Dst, k.SPI, k.Proto}] = k
				}
			case xfrm.DelSA:
				if e.State != nil {
					delete(sas, saID{e.State.Dst, e.State.SPI, uint8(e.State.Proto)})
				}
			case xfrm.ExpireSA:
				if e.Hard && e.State != nil {
					delete(sas, saID{e.State.Dst, e.State.SPI, uint8(e.State.Proto)})
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
		}
		publish()
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
