package agent

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/mlsgate/mlsgate/agent/buildinfo"
	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/verdict"
	"github.com/prometheus/client_golang/prometheus"
)

// GuestCounterReader reads the per-guest counters of one slot.
type GuestCounterReader interface {
	GuestCounters(slot uint16) ([2][verdict.NumReasons]bpf.Counter, error)
}

// guestSlot is one guest's counter slot and its labels.
type guestSlot struct {
	iface string
	vm    uint32
	slot  uint16
}

// guestSlots lists the counter slots of the vifs the maps hold, with the
// interface name the agent attached under (empty for an ifindex it does
// not know by name).
func (a *Agent) guestSlots() []guestSlot {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.applied == nil {
		return nil
	}
	out := make([]guestSlot, 0, len(a.applied.Vifs))
	for idx, v := range a.applied.Vifs {
		if v.Slot == 0 {
			continue
		}
		out = append(out, guestSlot{iface: a.attached[int(idx)], vm: v.VmId, slot: v.Slot})
	}
	return out
}

// CounterReader reads the per-CPU verdict counters (bpf.Maps.Counters).
type CounterReader interface {
	Counters() ([2][verdict.NumReasons]bpf.Counter, error)
}

type metrics struct {
	reg              *prometheus.Registry
	syncLag          prometheus.Histogram
	reconcileSeconds prometheus.Histogram
	reconcileErrors  prometheus.Counter
	attaches         prometheus.Counter
	detaches         prometheus.Counter
	events           *prometheus.CounterVec
	eventsSuppressed prometheus.Counter
	eventsLost       prometheus.Counter
	apiChanges       *prometheus.CounterVec
	apiRefused       prometheus.Counter
	// followerDrops counts events a slow /v1/events follower missed.
	followerDrops atomic.Uint64
	// ringLost reads the kernel's count of denials that did not fit in the
	// events ring (nil: none known).
	ringLost func() (uint64, error)
	counters CounterReader
	// guestCounters reads one counter slot (bpf.Maps.GuestCounters).
	guestCounters GuestCounterReader
	xfrmStat      func() ([]byte, error)
}

const ns = "mlsgate"

func newMetrics(a *Agent) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		syncLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "sync_lag_seconds",
			Help:    "Time from a change (SA, interface, desired state) reaching the agent to the maps and links reflecting it.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}),
		reconcileSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "reconcile_seconds",
			Help:    "Duration of one reconcile: plan, map writes, attach and detach.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}),
		reconcileErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "reconcile_errors_total", Help: "Reconciles that failed and will be retried."}),
		attaches:        prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "attaches_total", Help: "Program attachments to (or updates on) vifs."}),
		detaches:        prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "detaches_total", Help: "Program detachments from vifs."}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "denial_events_total", Help: "Sampled denial events read from the ring buffer, by reason.",
		}, []string{"reason"}),
		eventsSuppressed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "denial_logs_suppressed_total", Help: "Denial events not logged because of the rate limit."}),
		eventsLost:       prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "denial_events_read_errors_total", Help: "Ring buffer records that could not be decoded."}),
		apiChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "api_changes_total",
			Help: "Changes to the desired state through the API (guest_set, guest_rm, peers, sas), by result (applied, refused as invalid).",
		}, []string{"change", "result"}),
		apiRefused: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "api_refused_total", Help: "API requests refused because the caller is neither root nor in the socket group."}),
		xfrmStat:   func() ([]byte, error) { return os.ReadFile("/proc/net/xfrm_stat") },
	}
	for _, c := range changeKinds {
		for _, r := range []string{"applied", "refused"} {
			m.apiChanges.WithLabelValues(c, r)
		}
	}
	for _, r := range verdict.Reasons() {
		if !r.Allowed() {
			m.events.WithLabelValues(r.String())
		}
	}
	m.reg.MustRegister(m.syncLag, m.reconcileSeconds, m.reconcileErrors, m.attaches, m.detaches, m.events, m.eventsSuppressed, m.eventsLost,
		m.apiChanges, m.apiRefused, &scrapeCollector{a: a, m: m}, buildinfo.Collector())
	return m
}

// scrapeCollector reads the kernel's counters and the agent's state at
// scrape time, so the numbers are never older than the scrape.
type scrapeCollector struct {
	a *Agent
	m *metrics
}

var (
	descPackets      = prometheus.NewDesc(ns+"_packets_total", "Packets seen by the vif programs, by direction (ingress = from the guest) and reason.", []string{"direction", "reason"}, nil)
	descBytes        = prometheus.NewDesc(ns+"_bytes_total", "Bytes seen by the vif programs, by direction and reason.", []string{"direction", "reason"}, nil)
	descSAs          = prometheus.NewDesc(ns+"_sas", "SAs by state: synced (in the maps from the kernel), static, unlabeled, bad_context (never an allow), no_guest.", []string{"state"}, nil)
	descGuests       = prometheus.NewDesc(ns+"_guests", "Declared guests by state.", []string{"state"}, nil)
	descEntries      = prometheus.NewDesc(ns+"_map_entries", "Entries the agent has written, by map.", []string{"map"}, nil)
	descCapacity     = prometheus.NewDesc(ns+"_map_capacity", "Capacity of each map.", []string{"map"}, nil)
	descXfrm         = prometheus.NewDesc(ns+"_xfrm_errors_total", "The kernel's XFRM error counters from /proc/net/xfrm_stat.", []string{"name"}, nil)
	descReady        = prometheus.NewDesc(ns+"_ready", "1 once the first full reconcile succeeded.", nil, nil)
	descEnforce      = prometheus.NewDesc(ns+"_enforce", "1 when the agent drops denied packets; 0 when it only counts them (every guest is then in audit mode).", nil, nil)
	descAudit        = prometheus.NewDesc(ns+"_guest_audit", "1 when a declared guest's denials are only counted, not dropped (its audit flag, or enforce off).", []string{"interface"}, nil)
	descGuestPackets = prometheus.NewDesc(ns+"_guest_packets_total", "Packets of each guest by direction and reason (the vif programs' per-guest counters: rows only for reasons seen; guests past the 1,023 counter slots count only in mlsgate_packets_total).", []string{"interface", "vm", "direction", "reason"}, nil)
	descGuestBytes   = prometheus.NewDesc(ns+"_guest_bytes_total", "Bytes of each guest by direction and reason.", []string{"interface", "vm", "direction", "reason"}, nil)
	descLost         = prometheus.NewDesc(ns+"_events_lost_total", "Denial events lost: ring (the kernel found the events ring full), follower (a slow /v1/events reader missed them).", []string{"stage"}, nil)
)

func (c *scrapeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPackets, descBytes, descSAs, descGuests, descEntries, descCapacity, descXfrm, descReady, descEnforce, descAudit, descLost, descGuestPackets, descGuestBytes} {
		ch <- d
	}
}

func (c *scrapeCollector) Collect(ch chan<- prometheus.Metric) {
	if cr := c.m.counters; cr != nil {
		if counts, err := cr.Counters(); err == nil {
			for d, dir := range []string{"ingress", "egress"} {
				for _, r := range verdict.Reasons() {
					v := counts[d][r]
					ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(v.Packets), dir, r.String())
					ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(v.Bytes), dir, r.String())
				}
			}
		}
	}
	if gr := c.m.guestCounters; gr != nil {
		for _, g := range c.a.guestSlots() {
			counts, err := gr.GuestCounters(g.slot)
			if err != nil {
				continue
			}
			vm := strconv.FormatUint(uint64(g.vm), 10)
			for d, dir := range []string{"ingress", "egress"} {
				for _, r := range verdict.Reasons() {
					v := counts[d][r]
					if v.Packets == 0 {
						continue // bounded, and sparse: a guest sees few reasons
					}
					ch <- prometheus.MustNewConstMetric(descGuestPackets, prometheus.CounterValue, float64(v.Packets), g.iface, vm, dir, r.String())
					ch <- prometheus.MustNewConstMetric(descGuestBytes, prometheus.CounterValue, float64(v.Bytes), g.iface, vm, dir, r.String())
				}
			}
		}
	}
	st := c.a.Status()
	for _, kv := range []struct {
		k string
		v int
	}{{"synced", st.SAs.Synced}, {"static", st.SAs.Static}, {"unlabeled", st.SAs.Unlabeled}, {"bad_context", st.SAs.BadContext}, {"no_guest", st.SAs.NoGuest}} {
		ch <- prometheus.MustNewConstMetric(descSAs, prometheus.GaugeValue, float64(kv.v), kv.k)
	}
	var present, attached int
	for _, g := range st.Guests {
		if g.Present {
			present++
		}
		if g.Attached {
			attached++
		}
	}
	ch <- prometheus.MustNewConstMetric(descGuests, prometheus.GaugeValue, float64(len(st.Guests)), "declared")
	ch <- prometheus.MustNewConstMetric(descGuests, prometheus.GaugeValue, float64(present), "present")
	ch <- prometheus.MustNewConstMetric(descGuests, prometheus.GaugeValue, float64(attached), "attached")
	caps := map[string]int{"vifs": bpf.VifsMax, "labels": bpf.LabelsMax, "sa_slots": int(c.a.cfg.SPISlots), "sas": bpf.SAsMax, "peers": bpf.PeersMax}
	for name, n := range map[string]int{"vifs": st.Maps.Vifs, "labels": st.Maps.Labels, "sa_slots": st.Maps.Slots, "sas": st.Maps.SAs, "peers": st.Maps.Peers} {
		ch <- prometheus.MustNewConstMetric(descEntries, prometheus.GaugeValue, float64(n), name)
		ch <- prometheus.MustNewConstMetric(descCapacity, prometheus.GaugeValue, float64(caps[name]), name)
	}
	if b, err := c.m.xfrmStat(); err == nil {
		for name, v := range parseXfrmStat(b) {
			ch <- prometheus.MustNewConstMetric(descXfrm, prometheus.CounterValue, float64(v), name)
		}
	}
	ready := 0.0
	if st.Ready {
		ready = 1
	}
	ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, ready)
	ch <- prometheus.MustNewConstMetric(descEnforce, prometheus.GaugeValue, b2f(st.Enforce))
	for _, g := range st.Guests {
		ch <- prometheus.MustNewConstMetric(descAudit, prometheus.GaugeValue, b2f(g.Enforcement == "audit"), g.Interface)
	}
	if c.m.ringLost != nil {
		if n, err := c.m.ringLost(); err == nil {
			ch <- prometheus.MustNewConstMetric(descLost, prometheus.CounterValue, float64(n), "ring")
		}
	}
	ch <- prometheus.MustNewConstMetric(descLost, prometheus.CounterValue, float64(c.m.followerDrops.Load()), "follower")
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// parseXfrmStat reads /proc/net/xfrm_stat: lines of "XfrmInError  0".
func parseXfrmStat(b []byte) map[string]uint64 {
	out := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		if v, err := strconv.ParseUint(f[1], 10, 64); err == nil {
			out[f[0]] = v
		}
	}
	return out
}
