package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/label"
	"golang.org/x/sys/unix"
)

// AgentScaleConfig says how big a host to simulate.
type AgentScaleConfig struct {
	Vifs, SAs int
	Changes   int // single-SA changes timed after the initial sync
}

// AgentScaleResult is what the agent costs at that size.
type AgentScaleResult struct {
	Vifs, SAs      int
	InitialSync    time.Duration // start to the first full reconcile
	ChangeP50      time.Duration // one SA added: handed to the agent → in the maps
	ChangeP99      time.Duration
	RSSBytes       uint64 // the measuring process (agent + the simulated SA list)
	GoHeapBytes    uint64
	Maps           MapMemory
	LabelsInUse    int
	SlotsInUse     int
	VifEntries     int
	ReconcileError string
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

type chanSAs struct {
	initial []agent.KernelSA
	ch      chan []agent.KernelSA
}

func (c chanSAs) Watch(ctx context.Context, update func([]agent.KernelSA)) error {
	update(c.initial)
	for {
		select {
		case <-ctx.Done():
			return nil
		case s := <-c.ch:
			update(s)
		}
	}
}

func guestAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(100 + i/250), byte(i % 250), 7})
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
	ac.SPISlots = uint32(max(1024, cfg.SAs+cfg.Changes+1))
	ac.ResyncInterval = 0
	ac.Integrity = map[string]label.Integrity{"analyst_t": 7}
	k, err := agent.LoadKernel(ac)
	if err != nil {
		return nil, err
	}
	defer k.Close()

	host := netip.MustParseAddr("10.99.0.1")
	sas := make([]agent.KernelSA, 0, cfg.SAs+cfg.Changes)
	for i := range cfg.SAs {
		g := i % cfg.Vifs
		sas = append(sas, agent.KernelSA{
			Src: guestAddr(g), Dst: host, SPI: ac.SPIBase + uint32(i), Proto: 50,
			Context: fmt.Sprintf("system_u:system_r:analyst_t:s%d:c%d", 6+i%10, i%64),
		})
	}
	src := chanSAs{initial: sas, ch: make(chan []agent.KernelSA)}
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
	start := time.Now()
	go func() { done <- a.Run(ctx) }()
	res := &AgentScaleResult{Vifs: cfg.Vifs, SAs: cfg.SAs}
	synced := func(n int) bool {
		st := a.Status()
		return st.Ready && st.SAs.Synced == n && st.Maps.Vifs == cfg.Vifs
	}
	if !waitFor(func() bool { return synced(cfg.SAs) }, 10*time.Minute) {
		return nil, fmt.Errorf("initial sync of %d SAs did not finish: %+v", cfg.SAs, a.Status())
	}
	res.InitialSync = time.Since(start)
	var lat []time.Duration
	for c := range cfg.Changes {
		sas = append(sas, agent.KernelSA{Src: guestAddr(c % cfg.Vifs), Dst: host, SPI: ac.SPIBase + uint32(cfg.SAs+c), Proto: 50, Context: "system_u:system_r:analyst_t:s9"})
		t0 := time.Now()
		src.ch <- sas
		if !waitFor(func() bool { return synced(len(sas)) }, time.Minute) {
			return nil, fmt.Errorf("change %d not applied: %+v", c, a.Status())
		}
		lat = append(lat, time.Since(t0))
	}
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		res.ChangeP50, res.ChangeP99 = lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)]
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.GoHeapBytes = ms.HeapInuse
	res.RSSBytes = rss()
	if res.Maps, err = memory(&k.Objs.Maps); err != nil {
		return nil, err
	}
	st := a.Status()
	res.LabelsInUse, res.SlotsInUse, res.VifEntries, res.ReconcileError = st.Maps.Labels, st.Maps.Slots, st.Maps.Vifs, st.Error
	cancel()
	<-done
	return res, nil
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

// rss reads VmRSS of this process.
func rss() uint64 {
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

// FormatAgentScale prints the result as a Markdown table.
func FormatAgentScale(rs []*AgentScaleResult) string {
	var b strings.Builder
	b.WriteString("| vifs | SAs | initial sync | one SA change p50 / p99 | agent RSS | Go heap | maps (kernel memlock) |\n|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rs {
		fmt.Fprintf(&b, "| %d | %d | %v | %v / %v | %.1f MiB | %.1f MiB | %.1f MiB |\n", r.Vifs, r.SAs,
			r.InitialSync.Round(time.Millisecond), r.ChangeP50.Round(time.Microsecond*100), r.ChangeP99.Round(time.Microsecond*100),
			float64(r.RSSBytes)/(1<<20), float64(r.GoHeapBytes)/(1<<20), float64(r.Maps.Total)/(1<<20))
	}
	return b.String()
}
