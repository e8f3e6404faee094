package agent

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/verdict"
)

// Event is one sampled denial, with names instead of numbers.
type Event struct {
	Time      time.Time `json:"time"`
	Interface string    `json:"interface,omitempty"`
	Ifindex   uint32    `json:"ifindex"`
	VM        uint32    `json:"vm"`
	Direction string    `json:"direction"`
	Reason    string    `json:"reason"`
	SPI       uint32    `json:"spi,omitempty"`
	// Label is the SA's label in text form (s3:c1.c4/i5).
	Label string `json:"label,omitempty"`
	Proto uint8  `json:"proto"`
	// Protocol names Proto (tcp, udp, icmp, ipv6-icmp, esp, ...).
	Protocol string     `json:"protocol"`
	Src      netip.Addr `json:"src"`
	Dst      netip.Addr `json:"dst"`
	// Sport and Dport are the TCP/UDP ports, when the fast path reports them.
	Sport uint16 `json:"sport,omitempty"`
	Dport uint16 `json:"dport,omitempty"`
	// ICMPType is the ICMPv6 message type, when reported.
	ICMPType uint8 `json:"icmp_type,omitempty"`
}

// ProtocolName names an IP protocol number.
func ProtocolName(p uint8) string {
	switch p {
	case 1:
		return "icmp"
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 50:
		return "esp"
	case 51:
		return "ah"
	case 58:
		return "ipv6-icmp"
	case 132:
		return "sctp"
	}
	return strconv.Itoa(int(p))
}

type eventHub struct {
	mu    sync.Mutex
	subs  map[chan Event]struct{}
	drops *atomic.Uint64
}

func (h *eventHub) publish(e Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.subs {
		select {
		case c <- e:
		default: // a slow follower loses events, never the agent
			if h.drops != nil {
				h.drops.Add(1)
			}
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

func (a *Agent) hub() *eventHub {
	a.events.mu.Lock()
	if a.events.drops == nil {
		a.events.drops = &a.metrics.followerDrops
	}
	a.events.mu.Unlock()
	return &a.events
}

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
			"spi", fmt.Sprintf("%#x", e.SPI), "label", e.Label, "protocol", e.Protocol, "src", e.Src, "sport", e.Sport, "dst", e.Dst, "dport", e.Dport)
	}
}

func (a *Agent) describe(ev bpf.FastpathEvent, bootOffset time.Duration) Event {
	e := Event{
		Time: time.Unix(0, int64(ev.TsNs)).Add(bootOffset), Ifindex: ev.Ifindex, VM: ev.VmId,
		Reason: verdict.Reason(ev.Reason).String(), SPI: ev.Spi, Proto: ev.Proto, Protocol: ProtocolName(ev.Proto), Direction: "ingress",
	}
	e.Sport, e.Dport = eventPorts(ev)
	if ev.Proto == 58 {
		e.ICMPType, e.Sport, e.Dport = uint8(e.Sport), 0, 0
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

// eventPorts returns the ports of an event whose record carries them
// (struct event's sport and dport, host byte order, once the fast path
// reports them; for ICMPv6 sport is the message type); 0 otherwise. By
// reflection, so that the agent builds against either record.
func eventPorts(ev bpf.FastpathEvent) (sport, dport uint16) {
	v := reflect.ValueOf(ev)
	port := func(name string) uint16 {
		f := v.FieldByName(name)
		if !f.IsValid() || !f.CanUint() {
			return 0
		}
		return uint16(f.Uint())
	}
	return port("Sport"), port("Dport")
}

// EventFilter selects events: empty fields match everything.
type EventFilter struct {
	Reason    string
	Interface string
	VM        uint32
}

// Match reports whether e passes the filter.
func (f EventFilter) Match(e Event) bool {
	return (f.Reason == "" || f.Reason == e.Reason) && (f.Interface == "" || f.Interface == e.Interface) && (f.VM == 0 || f.VM == e.VM)
}

// serveEvents streams events as JSON lines until the caller goes away;
// ?reason=, ?interface= and ?vm= filter them. The server's read and write
// timeouts are lifted for this request: a follower may stay for days.
func (a *Agent) serveEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := EventFilter{Reason: q.Get("reason"), Interface: q.Get("interface")}
	if v := q.Get("vm"); v != "" {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, errBody(fmt.Errorf("vm %q: want a VM id", v)))
			return
		}
		f.VM = uint32(n)
	}
	if f.Reason != "" {
		known := false
		for _, rs := range verdict.Reasons() {
			known = known || rs.String() == f.Reason
		}
		if !known {
			writeJSON(w, http.StatusBadRequest, errBody(fmt.Errorf("reason %q: not a reason code (see mlsgate_packets_total's reason label)", f.Reason)))
			return
		}
	}
	rc := http.NewResponseController(w)
	if err := rc.SetWriteDeadline(time.Time{}); err != nil && !errors.Is(err, http.ErrNotSupported) {
		writeJSON(w, http.StatusInternalServerError, errBody(fmt.Errorf("lift the write deadline: %w", err)))
		return
	}
	if err := rc.SetReadDeadline(time.Time{}); err != nil && !errors.Is(err, http.ErrNotSupported) {
		writeJSON(w, http.StatusInternalServerError, errBody(fmt.Errorf("lift the read deadline: %w", err)))
		return
	}
	c, cancel := a.hub().subscribe()
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	enc := json.NewEncoder(w)
	for {
		select {
		case <-r.Context().Done():
			return
		case e := <-c:
			if !f.Match(e) {
				continue
			}
			if err := enc.Encode(e); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
		}
	}
}
