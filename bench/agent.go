package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/label"
	"golang.org/x/sys/unix"
)

// AgentScaleConfig says how big a host to simulate.
type AgentScaleConfig struct {
	Vifs, SAs int
	// Changes: single-SA changes timed after the initial sync, in turn an
	// SA added, an SA rotated (its successor added and it deleted in one
	// burst of events) and an SA deleted.
	Changes int
	// Soak: after the timed changes, churn (the same mix) at SoakRate
	// changes per second for this long, sampling memory every
	// SoakInterval (default: 1/20 of Soak, at least a second).
	Soak         time.Duration
	SoakRate     int
	SoakInterval time.Duration
	// HeapProfile: where to write a heap profile once the changes are done.
	HeapProfile string
	// SyncProfile: where to write a CPU profile of the initial sync alone
	// (from the agent's start to its first full reconcile).
	SyncProfile string
	// Restart: at the end, stop the agent, close the maps and start a new
	// agent on the pins and the state directory (the restart path: pinned
	// maps adopted and read back, the desired state and its journal read),
	// and time its sync (profiled to SyncProfile+".restart").
	Restart bool
	// Redeclare: after the changes, declare every guest again, one at a
	// time (audit switched on), with the agent running over all the SAs,
	// and time the declarations (to the maps holding the last one).
	Redeclare bool
	// Progress, when set, reports the soak's samples as they come.
	Progress func(string, ...any) `json:"-"`
}

// AgentScaleResult is what the agent costs at that size.
type AgentScaleResult struct {
	Vifs, SAs   int
	InitialSync time.Duration // start to the first full reconcile
	// InitialSyncCPU is the process's CPU time (user+system) over the
	// initial sync: unlike the wall time, hardly moved by other load.
	InitialSyncCPU time.Duration `json:",omitempty"`
	// RestartSync/RestartSyncCPU: with Restart, a new agent's agent.New
	// (desired state read) to its first full reconcile over the adopted
	// pins.
	RestartSync    time.Duration `json:",omitempty"`
	RestartSyncCPU time.Duration `json:",omitempty"`
	// Redeclare/RedeclareCPU: with Redeclare, the declarations (wall and
	// the process's CPU, the agent's reconciles included).
	Redeclare    time.Duration `json:",omitempty"`
	RedeclareCPU time.Duration `json:",omitempty"`
	// ChangeP50/P99: one SA change, handed to the agent as an XFRM event
	// → its entry in the maps (read back from the pinned map).
	ChangeP50   time.Duration
	ChangeP99   time.Duration
	Changes     int
	LiveSAs     int    // SAs in the kernel at the end
	RSSBytes    uint64 // the measuring process (agent + the simulated SA source)
	GoHeapBytes uint64
	// GoSysBytes is the memory the Go runtime holds from the OS.
	GoSysBytes     uint64        `json:",omitempty"`
	Soak           []SoakSample  `json:",omitempty"`
	SoakRate       int           `json:",omitempty"`
	SoakChangeP99  time.Duration `json:",omitempty"`
	Maps           MapMemory
	LabelsInUse    int
	SlotsInUse     int
	VifEntries     int
	ReconcileError string
}

// SoakSample is the memory of the process at one time of the soak.
type SoakSample struct {
	At          time.Duration
	Changes     int // changes applied so far
	LiveSAs     int
	RSSBytes    uint64
	GoHeapBytes uint64 // in use, after a GC
}

// fakeAttacher stands in for real interfaces: attachment is measured by
// the kernel tests; here the cost of the maps and the agent is.
type fakeAttacher struct{}

func (fakeAttacher) Attach(int) (string, error) { return "simulated", nil }
func (fakeAttacher) Detach(int) error           { return nil }
func (fakeAttacher) Pinned() ([]int, error)     { return nil, nil }

type listLinks struct{ n int }

func (l listLinks) Watch(ctx context.Context, event func(agent.LinkEvent), synced func()) error {
	for i := range l.n {
		event(agent.LinkEvent{Name: fmt.Sprintf("vif%d.0", i+1), Index: 100 + i})
	}
	synced()
	<-ctx.Done()
	return nil
}

// chanSAs is the kernel's SA database as the agent's XFRM watcher sees it:
// a dump, then bursts of events (agent.SADeltaWatcher).
type chanSAs struct {
	initial func() []agent.KernelSA
	ch      chan []agent.SAChange
}

func (c chanSAs) WatchDeltas(ctx context.Context, full func([]agent.KernelSA), changes func([]agent.SAChange)) error {
	full(c.initial())
	for {
		select {
		case <-ctx.Done():
			return nil
		case cs := <-c.ch:
			changes(cs)
		}
	}
}

// Watch is the complete-set form (agent.SAWatcher); the agent uses
// WatchDeltas.
func (c chanSAs) Watch(ctx context.Context, update func([]agent.KernelSA)) error {
	sas := map[uint32]agent.KernelSA{}
	for _, k := range c.initial() {
		sas[k.SPI] = k
	}
	list := func() []agent.KernelSA {
		out := make([]agent.KernelSA, 0, len(sas))
		for _, k := range sas {
			out = append(out, k)
		}
		return out
	}
	update(list())
	for {
		select {
		case <-ctx.Done():
			return nil
		case cs := <-c.ch:
			for _, ch := range cs {
				if ch.Gone {
					delete(sas, ch.SA.SPI)
				} else {
					sas[ch.SA.SPI] = ch.SA
				}
			}
			update(list())
		}
	}
}

func guestAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(100 + i/250), byte(i % 250), 7})
}

// simSAs is the simulated SA population: an SA's guest and context follow
// from its profile number, so the simulator holds a few bytes per SA, not
// the SAs (the process's RSS is mostly the agent's).
type simSAs struct {
	vifs  int
	base  uint32
	host  netip.Addr
	live  []uint32 // SPIs of the live SAs
	free  []uint32 // SPIs to hand out, oldest first
	prof  []uint32 // profile of the SA in each slot
	next  uint32   // the next fresh profile
	ctxOf []string // by profile % len
}

func newSimSAs(vifs, n, slots int, base uint32) *simSAs {
	s := &simSAs{vifs: vifs, base: base, host: netip.MustParseAddr("10.99.0.1")}
	for i := range 640 {
		s.ctxOf = append(s.ctxOf, fmt.Sprintf("system_u:system_r:analyst_t:s%d:c%d", 6+i%10, i%64))
	}
	s.prof = make([]uint32, slots)
	for i := range n {
		s.live = append(s.live, base+uint32(i))
		s.prof[i] = uint32(i)
	}
	s.next = uint32(n)
	for i := n; i < slots; i++ {
		s.free = append(s.free, base+uint32(i))
	}
	return s
}

// sa is the SA with this SPI (its guest and context follow from the SPI).
func (s *simSAs) sa(spi uint32) agent.KernelSA {
	n := int(s.prof[spi-s.base])
	return agent.KernelSA{Src: guestAddr(n % s.vifs), Dst: s.host, SPI: spi, Proto: 50, Context: s.ctxOf[n%len(s.ctxOf)]}
}

func (s *simSAs) all() []agent.KernelSA {
	out := make([]agent.KernelSA, 0, len(s.live))
	for _, spi := range s.live {
		out = append(out, s.sa(spi))
	}
	return out
}

// change makes the c-th change of the mix: add, rotate, delete. It returns
// the events and the SPIs that must be in the maps, and gone, after them.
func (s *simSAs) change(c int, rng *rand.Rand) (cs []agent.SAChange, in, out []uint32) {
	take := func() uint32 {
		spi := s.free[0]
		s.free = s.free[1:]
		return spi
	}
	drop := func() uint32 {
		i := rng.IntN(len(s.live))
		spi := s.live[i]
		s.live[i] = s.live[len(s.live)-1]
		s.live = s.live[:len(s.live)-1]
		s.free = append(s.free, spi)
		return spi
	}
	switch c % 3 {
	case 0:
		spi := take()
		s.prof[spi-s.base] = s.next
		s.next++
		s.live = append(s.live, spi)
		return []agent.SAChange{{SA: s.sa(spi)}}, []uint32{spi}, nil
	case 1: // the successor carries its predecessor's guest and context
		old := drop()
		spi := take()
		s.prof[spi-s.base] = s.prof[old-s.base]
		s.live = append(s.live, spi)
		o := s.sa(old)
		return []agent.SAChange{{SA: s.sa(spi)}, {SA: agent.KernelSA{Dst: o.Dst, SPI: o.SPI, Proto: o.Proto}, Gone: true}}, []uint32{spi}, []uint32{old}
	default:
		old := drop()
		o := s.sa(old)
		return []agent.SAChange{{SA: agent.KernelSA{Dst: o.Dst, SPI: o.SPI, Proto: o.Proto}, Gone: true}}, nil, []uint32{old}
	}
}

// MeasureAgentScale runs the real agent over real pinned maps (on a bpffs
// mounted for the run) with cfg.Vifs simulated interfaces and cfg.SAs SAs
// with SELinux contexts, and reports memory and sync times. Root only.
func MeasureAgentScale(cfg AgentScaleConfig) (*AgentScaleResult, error) {
	dir, err := os.MkdirTemp("", "mlsgate-scale-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	bpffs := filepath.Join(dir, "bpffs")
	if err := os.Mkdir(bpffs, 0o700); err != nil {
		return nil, err
	}
	if err := unix.Mount("bpffs", bpffs, "bpf", 0, "mode=0700"); err != nil {
		return nil, fmt.Errorf("mount bpffs (root only): %w", err)
	}
	defer unix.Unmount(bpffs, unix.MNT_DETACH)

	ac := agent.DefaultConfig()
	ac.StateDir, ac.PinDir = filepath.Join(dir, "state"), filepath.Join(bpffs, "mlsgate")
	// Room for the live SAs and as many again: deleted SPIs are handed
	// out again, oldest first.
	ac.SPISlots = uint32(max(1024, 2*cfg.SAs+cfg.Changes+1))
	ac.ResyncInterval = 0
	ac.Integrity = map[string]label.Integrity{"analyst_t": 7}
	k, err := agent.LoadKernel(ac)
	if err != nil {
		return nil, err
	}
	defer func() { k.Close() }() // k is replaced by a restart

	sim := newSimSAs(cfg.Vifs, cfg.SAs, int(ac.SPISlots), ac.SPIBase)
	src := chanSAs{initial: sim.all, ch: make(chan []agent.SAChange)}
	a, err := agent.New(ac, slog.New(slog.NewTextHandler(io.Discard, nil)), agent.Options{Maps: k, Attacher: fakeAttacher{}, Links: listLinks{cfg.Vifs}, SAs: src})
	if err != nil {
		return nil, err
	}
	r, _ := label.ParseBounds("s0-s15:c0.c1023/i0-i10")
	for i := range cfg.Vifs {
		if err := a.SetGuest(agent.GuestSpec{Interface: fmt.Sprintf("vif%d.0", i+1), VM: uint32(i + 1), App: 1, Range: r, Addr4: guestAddr(i)}); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	if cfg.SyncProfile != "" {
		f, err := os.Create(cfg.SyncProfile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
		defer pprof.StopCPUProfile() // after an error; else stopped below
	}
	start, cpu0 := time.Now(), cpuTime()
	go func() { done <- a.Run(ctx) }()
	res := &AgentScaleResult{Vifs: cfg.Vifs, SAs: cfg.SAs}
	synced := func(n int) bool {
		st := a.Status()
		return st.Ready && st.SAs.Synced == n && st.Maps.Vifs == cfg.Vifs
	}
	if !waitFor(func() bool { return synced(cfg.SAs) }, 10*time.Minute) {
		return nil, fmt.Errorf("initial sync of %d SAs did not finish: %+v", cfg.SAs, a.Status())
	}
	res.InitialSync, res.InitialSyncCPU = time.Since(start), cpuTime()-cpu0
	if cfg.SyncProfile != "" {
		pprof.StopCPUProfile()
	}

	// One change: from the event handed to the agent to the entries in
	// the pinned map, read back with one lookup per SPI.
	slots := k.Objs.Maps.SASlots
	valid := func(spi uint32) bool {
		var v bpf.FastpathSa
		if err := slots.Lookup(spi-ac.SPIBase, &v); err != nil {
			return false
		}
		return v.Flags&uint8(bpf.FastpathSaFlagSA_F_VALID) != 0
	}
	rng := rand.New(rand.NewPCG(1, 2))
	change := func(c int) (time.Duration, error) {
		cs, in, out := sim.change(c, rng)
		t0 := time.Now()
		src.ch <- cs
		applied := func() bool {
			for _, spi := range in {
				if !valid(spi) {
					return false
				}
			}
			for _, spi := range out {
				if valid(spi) {
					return false
				}
			}
			return true
		}
		for !applied() {
			if d := time.Since(t0); d > time.Minute {
				return d, fmt.Errorf("change %d (%v) not in the maps after %v: %+v", c, cs, d, a.Status())
			} else if d > time.Millisecond {
				time.Sleep(50 * time.Microsecond)
			} else {
				runtime.Gosched()
			}
		}
		return time.Since(t0), nil
	}
	var lat []time.Duration
	for c := range cfg.Changes {
		d, err := change(c)
		if err != nil {
			return nil, err
		}
		lat = append(lat, d)
	}
	res.Changes = len(lat)
	res.ChangeP50, res.ChangeP99 = percentiles(lat)
	if !waitFor(func() bool { return synced(len(sim.live)) }, time.Minute) {
		return nil, fmt.Errorf("after %d changes the agent counts %+v, want %d synced", cfg.Changes, a.Status().SAs, len(sim.live))
	}
	if cfg.Redeclare {
		t0, c0 := time.Now(), cpuTime()
		for i := range cfg.Vifs {
			if err := a.SetGuest(agent.GuestSpec{Interface: fmt.Sprintf("vif%d.0", i+1), VM: uint32(i + 1), App: 1, Range: r, Addr4: guestAddr(i), Audit: true}); err != nil {
				return nil, err
			}
		}
		last := uint32(100 + cfg.Vifs - 1) // listLinks: ifindex 100+i
		if !waitFor(func() bool {
			var v bpf.FastpathVif
			return k.Objs.Maps.Vifs.Lookup(last, &v) == nil && v.Flags&uint32(bpf.FastpathVifFlagVIF_F_AUDIT) != 0
		}, time.Minute) {
			return nil, fmt.Errorf("the last redeclared guest is not in the maps: %+v", a.Status())
		}
		res.Redeclare, res.RedeclareCPU = time.Since(t0), cpuTime()-c0
	}
	sample := func() (rss, heap, sys uint64) {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return readRSS(), ms.HeapInuse, ms.Sys
	}
	res.RSSBytes, res.GoHeapBytes, res.GoSysBytes = sample()
	if cfg.HeapProfile != "" {
		if err := writeHeapProfile(cfg.HeapProfile); err != nil {
			return nil, err
		}
	}
	if cfg.Soak > 0 {
		if err := soak(cfg, res, sim, change, sample); err != nil {
			return nil, err
		}
	}
	if res.Maps, err = memory(&k.Objs.Maps); err != nil {
		return nil, err
	}
	res.LiveSAs = len(sim.live)
	st := a.Status()
	res.LabelsInUse, res.SlotsInUse, res.VifEntries, res.ReconcileError = st.Maps.Labels, st.Maps.Slots, st.Maps.Vifs, st.Error
	cancel()
	<-done
	if cfg.Restart {
		if err := restart(&k, ac, cfg, res, sim); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// restart closes the agent's maps, loads them again from their pins and
// times a new agent's sync over them, from agent.New.
func restart(k **agent.Kernel, ac agent.Config, cfg AgentScaleConfig, res *AgentScaleResult, sim *simSAs) error {
	(*k).Close()
	var err error
	if *k, err = agent.LoadKernel(ac); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	if cfg.SyncProfile != "" {
		f, err := os.Create(cfg.SyncProfile + ".restart")
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	start, cpu0 := time.Now(), cpuTime()
	src := chanSAs{initial: sim.all, ch: make(chan []agent.SAChange)}
	a, err := agent.New(ac, slog.New(slog.NewTextHandler(io.Discard, nil)), agent.Options{Maps: *k, Attacher: fakeAttacher{}, Links: listLinks{cfg.Vifs}, SAs: src})
	if err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if !waitFor(func() bool {
		st := a.Status()
		return st.Ready && st.SAs.Synced == len(sim.live) && st.Maps.Vifs == cfg.Vifs
	}, 10*time.Minute) {
		return fmt.Errorf("restart: the sync of %d SAs did not finish: %+v", len(sim.live), a.Status())
	}
	res.RestartSync, res.RestartSyncCPU = time.Since(start), cpuTime()-cpu0
	return nil
}

// soak churns at cfg.SoakRate changes per second for cfg.Soak, sampling
// memory as it goes.
func soak(cfg AgentScaleConfig, res *AgentScaleResult, sim *simSAs, change func(int) (time.Duration, error), sample func() (uint64, uint64, uint64)) error {
	rate := cfg.SoakRate
	if rate <= 0 {
		rate = 30
	}
	every := cfg.SoakInterval
	if every <= 0 {
		every = max(time.Second, cfg.Soak/20)
	}
	res.SoakRate = rate
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	start := time.Now()
	next := start.Add(every)
	var lat []time.Duration
	n := 0
	for time.Since(start) < cfg.Soak {
		<-tick.C
		d, err := change(cfg.Changes + n)
		if err != nil {
			return fmt.Errorf("soak: %w", err)
		}
		lat = append(lat, d)
		n++
		if now := time.Now(); !now.Before(next) {
			rss, heap, _ := sample()
			s := SoakSample{At: now.Sub(start).Round(time.Second), Changes: n, LiveSAs: len(sim.live), RSSBytes: rss, GoHeapBytes: heap}
			res.Soak = append(res.Soak, s)
			if cfg.Progress != nil {
				cfg.Progress("soak %v: %d changes, %d live SAs, RSS %.1f MiB, Go heap %.1f MiB", s.At, s.Changes, s.LiveSAs, mib(s.RSSBytes), mib(s.GoHeapBytes))
			}
			next = next.Add(every)
		}
	}
	_, res.SoakChangeP99 = percentiles(lat)
	return nil
}

func percentiles(lat []time.Duration) (p50, p99 time.Duration) {
	if len(lat) == 0 {
		return 0, 0
	}
	lat = slices.Clone(lat)
	slices.Sort(lat)
	return lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)]
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func waitFor(cond func() bool, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(2 * time.Millisecond)
	}
	return cond()
}

// readRSS reads VmRSS of this process.
func readRSS() uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// cpuTime is the CPU time this process used so far.
func cpuTime() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// FormatAgentScale prints the result as a Markdown table.
func FormatAgentScale(rs []*AgentScaleResult) string {
	var b strings.Builder
	b.WriteString("One SA change: an SA added, rotated (successor added, predecessor deleted in one burst) or deleted, in turn, handed to the agent as XFRM events → its entries in the pinned map. Initial sync CPU: the process's CPU time over the sync (wall time counts other load on shared cores).\n\n")
	b.WriteString("| vifs | SAs | initial sync (CPU) | one SA change p50 / p99 (n) | agent RSS | Go heap | maps (kernel memlock) |\n|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rs {
		fmt.Fprintf(&b, "| %d | %d | %v (%v) | %v / %v (%d) | %.1f MiB | %.1f MiB | %.1f MiB |\n", r.Vifs, r.SAs,
			r.InitialSync.Round(time.Millisecond), r.InitialSyncCPU.Round(time.Millisecond), r.ChangeP50.Round(time.Microsecond*10), r.ChangeP99.Round(time.Microsecond*10), r.Changes,
			mib(r.RSSBytes), mib(r.GoHeapBytes), mib(r.Maps.Total))
	}
	for _, r := range rs {
		if r.Redeclare > 0 {
			fmt.Fprintf(&b, "\nRedeclaring the %d guests one at a time at %d SAs, the agent running: %v (CPU %v).\n",
				r.Vifs, r.SAs, r.Redeclare.Round(time.Millisecond), r.RedeclareCPU.Round(time.Millisecond))
		}
		if r.RestartSync > 0 {
			fmt.Fprintf(&b, "\nRestart at %d SAs / %d vifs (a new agent on the pinned maps, read back, and the state directory): synced in %v (CPU %v).\n",
				r.SAs, r.Vifs, r.RestartSync.Round(time.Millisecond), r.RestartSyncCPU.Round(time.Millisecond))
		}
	}
	return b.String()
}

// FormatSoak prints the soak's samples and the growth after warm-up (the
// first tenth of the soak): the last sample against the first one after it.
func FormatSoak(r *AgentScaleResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nChurn soak at %d SAs / %d vifs: %d changes/s (add, rotate, delete in turn); one change p99 over the soak %v.\n\n| time | changes | live SAs | RSS | Go heap |\n|---:|---:|---:|---:|---:|\n",
		r.SAs, r.Vifs, r.SoakRate, r.SoakChangeP99.Round(time.Microsecond*10))
	for _, s := range r.Soak {
		fmt.Fprintf(&b, "| %v | %d | %d | %.1f MiB | %.1f MiB |\n", s.At, s.Changes, s.LiveSAs, mib(s.RSSBytes), mib(s.GoHeapBytes))
	}
	if g, ok := soakGrowth(r.Soak); ok {
		fmt.Fprintf(&b, "\nAfter warm-up: RSS %+.1f %%, Go heap %+.1f %%.\n", g.rss, g.heap)
	}
	return b.String()
}

type growth struct{ rss, heap float64 }

func soakGrowth(ss []SoakSample) (growth, bool) {
	if len(ss) < 2 {
		return growth{}, false
	}
	warm := ss[len(ss)-1].At / 10
	i := 0
	for i < len(ss)-1 && ss[i].At < warm {
		i++
	}
	first, last := ss[i], ss[len(ss)-1]
	pct := func(a, b uint64) float64 { return (float64(b) - float64(a)) / float64(a) * 100 }
	return growth{pct(first.RSSBytes, last.RSSBytes), pct(first.GoHeapBytes, last.GoHeapBytes)}, true
}
