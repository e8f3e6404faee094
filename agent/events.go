package agent

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/mlsgate/mlsgate/agent/verdict"
	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/label"
)

// Event is one sampled denial, with names instead of numbers.
type Event struct {
	Time      time.Time  `json:"time"`
	Interface string     `json:"interface,omitempty"`
	Ifindex   uint32     `json:"ifindex"`
	VM        uint32     `json:"vm"`
	Direction string     `json:"direction"`
	Reason    string     `json:"reason"`
	SPI       uint32     `json:"spi,omitempty"`
	Label     string     `json:"label,omitempty"`
	Proto     uint8      `json:"proto"`
	Src       netip.Addr `json:"src"`
	Dst       netip.Addr `json:"dst"`
}

type eventHub struct {
	mu   sync.Mutex
	subs map[chan Event]struct{}
}

func (h *eventHub) publish(e Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.subs {
		select {
		case c <- e:
		default: // a slow follower loses events, never the agent
		}
	}
}

func (h *eventHub) subscribe() (chan Event, func()) {
	c := make(chan Event, 256)
	h.mu.Lock()
	if h.subs == nil {
		h.subs = map[chan Event]struct{}{}
	}
	h.subs[c] = struct{}{}
	h.mu.Unlock()
	return c, func() {
		h.mu.Lock()
		delete(h.subs, c)
		h.mu.Unlock()
	}
}

func (a *Agent) hub() *eventHub { return &a.events }

// ReadEvents reads denial events from the ring buffer until ctx ends: each
// is counted, logged as a structured line (at most cfg.EventRate per
// second; the rest are counted as suppressed) and sent to followers of
// /v1/events.
func (a *Agent) ReadEvents(ctx context.Context, ring *ebpf.Map) error {
	rd, err := ringbuf.NewReader(ring)
	if err != nil {
		return fmt.Errorf("open events ring: %w", err)
	}
	go func() {
		<-ctx.Done()
		rd.Close()
	}()
	bootOffset := bootTimeOffset()
	var tokens float64
	last := time.Now()
	for {
		rec, err := rd.Read()
		if errors.Is(err, ringbuf.ErrClosed) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read events ring: %w", err)
		}
		var ev bpf.FastpathEvent
		if _, err := binary.Decode(rec.RawSample, binary.NativeEndian, &ev); err != nil {
			a.metrics.eventsLost.Inc()
			continue
		}
		e := a.describe(ev, bootOffset)
		a.metrics.events.WithLabelValues(e.Reason).Inc()
		a.hub().publish(e)
		now := time.Now()
		tokens = min(a.cfg.EventRate, tokens+now.Sub(last).Seconds()*a.cfg.EventRate)
		last = now
		if tokens < 1 {
			a.metrics.eventsSuppressed.Inc()
			continue
		}
		tokens--
		a.log.Warn("denied", "interface", e.Interface, "vm", e.VM, "direction", e.Direction, "reason", e.Reason,
			"spi", fmt.Sprintf("%#x", e.SPI), "label", e.Label, "proto", e.Proto, "src", e.Src, "dst", e.Dst)
	}
}

func (a *Agent) describe(ev bpf.FastpathEvent, bootOffset time.Duration) Event {
	e := Event{
		Time: time.Unix(0, int64(ev.TsNs)).Add(bootOffset), Ifindex: ev.Ifindex, VM: ev.VmId,
		Reason: verdict.Reason(ev.Reason).String(), SPI: ev.Spi, Proto: ev.Proto, Direction: "ingress",
	}
	if ev.Dir != 0 {
		e.Direction = "egress"
	}
	if ev.Family == uint8(verdict.AFInet) {
		e.Src = netip.AddrFrom4([4]byte(ev.Saddr[:4]))
		e.Dst = netip.AddrFrom4([4]byte(ev.Daddr[:4]))
	} else {
		e.Src, e.Dst = netip.AddrFrom16(ev.Saddr), netip.AddrFrom16(ev.Daddr)
	}
	a.mu.Lock()
	e.Interface = a.attached[int(ev.Ifindex)]
	if a.applied != nil && ev.Spi != 0 {
		if kl, ok := a.applied.Labels[ev.LabelId]; ok {
			e.Label = label.Label{Secrecy: label.Level{Sens: kl.Sens, Cats: label.CategorySet(kl.Cats)}, Integrity: label.Integrity(kl.Integ)}.String()
		}
	}
	a.mu.Unlock()
	return e
}

// bootTimeOffset converts the kernel's monotonic timestamps to wall time.
func bootTimeOffset() time.Duration {
	mono := monotonicNow()
	return time.Duration(time.Now().UnixNano()) - mono
}

func (a *Agent) serveEvents(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		writeJSON(w, http.StatusInternalServerError, errBody(errors.New("streaming unsupported")))
		return
	}
	c, cancel := a.hub().subscribe()
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	fl.Flush()
	enc := json.NewEncoder(w)
	for {
		select {
		case <-r.Context().Done():
			return
		case e := <-c:
			if err := enc.Encode(e); err != nil {
				return
			}
			fl.Flush()
		}
	}
}
