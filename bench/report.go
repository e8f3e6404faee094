package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netns"

	"github.com/mlsgate/mlsgate/mapper"
	"github.com/mlsgate/mlsgate/policystore"
)

// The benchmarks Run knows, in the order it runs them.
var Benchmarks = []string{"fastpath", "traffic", "agent", "xfrm", "rotation", "mapper", "bundle", "vmstart"}

// Files WriteReport writes into the results folder.
const (
	ReportJSON     = "results.json"
	ReportMarkdown = "report.md"
	PlotPerPacket  = "per-packet.svg"
	PlotVMStart    = "vmstart.svg"
	PlotAgent      = "agent-one-change.svg"
)

// RunConfig says what Run measures and how big.
type RunConfig struct {
	// What lists benchmarks of Benchmarks; empty or "all" is every one.
	What []string
	// AgentSoak, when positive, adds a churn soak of this length to the
	// agent benchmark at 100,000 SAs (--quick: 2,000), sampling memory.
	AgentSoak time.Duration
	// Quick runs every benchmark at small sizes (CI smoke: it asserts
	// nothing about speed).
	Quick bool
	// AppsDir holds the application files (examples/analyst): the bundle
	// and VM-start benchmarks use them.
	AppsDir string
	// Binary is a static mlsgate for the VM-start guests; "" builds one.
	Binary string
	// VMStartBackends overrides the backends of the VM-start benchmark
	// (default: quick netns, full netns and qemu); an empty non-nil slice
	// with VMStartSkip set skips it.
	VMStartBackends []string
	VMStartSkip     string
	// Progress receives a line per step of long runs.
	Progress func(format string, args ...any)
}

// Host is the machine the numbers come from.
type Host struct {
	Kernel string `json:"kernel"`
	CPUs   int    `json:"cpus"`
	CPU    string `json:"cpu"`
	// Virtualization is what this machine runs under ("none" on bare
	// metal), from the CPU's hypervisor flag and DMI.
	Virtualization string `json:"virtualization"`
}

// FastpathReport is MeasureFastpath's answer with its settings.
type FastpathReport struct {
	Repeat int            `json:"repeat"`
	Rounds int            `json:"rounds"`
	Cases  []FastpathCase `json:"cases"`
	Memory []MapMemory    `json:"memory"`
}

// BundleTiming is policystore.GenerateBundle on one application.
type BundleTiming struct {
	App        string        `json:"app"`
	Iterations int           `json:"iterations"`
	Mean       time.Duration `json:"mean_ns"`
	P50        time.Duration `json:"p50_ns"`
	P99        time.Duration `json:"p99_ns"`
	SAs        int           `json:"sas"`      // in one bundle
	Policies   int           `json:"policies"` // XFRM policies in one bundle
}

// Report is every measurement of one run: results.json holds it whole.
type Report struct {
	When     time.Time           `json:"when"`
	Quick    bool                `json:"quick"`
	Host     Host                `json:"host"`
	Fastpath *FastpathReport     `json:"fastpath,omitempty"`
	Traffic  *TrafficResult      `json:"traffic,omitempty"`
	Agent    []*AgentScaleResult `json:"agent,omitempty"`
	Mapper   *mapper.Result      `json:"mapper,omitempty"`
	// XFRM is the SA install rate and SA→map sync in the guest kernel.
	XFRM *XFRMSyncResult `json:"xfrm,omitempty"`
	// Rotation is SA rotation latency and loss in the guest kernel.
	Rotation *RotationResult `json:"rotation,omitempty"`
	// MapperAPI is the same mapper's lookups over its HTTP API on loopback.
	MapperAPI *MapperAPIResult `json:"mapper_api,omitempty"`
	Bundle    *BundleTiming    `json:"bundle,omitempty"`
	VMStart   *VMStartResult   `json:"vmstart,omitempty"`
	// Skipped and Failed name benchmarks not in the report, and why.
	Skipped map[string]string `json:"skipped,omitempty"`
	Failed  map[string]string `json:"failed,omitempty"`
}

// DefaultResultsDir is bench/results/<date> under root.
func DefaultResultsDir(root string, now time.Time) string {
	return filepath.Join(root, "bench", "results", now.Format("2006-01-02"))
}

// selected resolves cfg.What against Benchmarks.
func (c *RunConfig) selected() ([]string, error) {
	if len(c.What) == 0 || slices.Contains(c.What, "all") {
		return Benchmarks, nil
	}
	for _, w := range c.What {
		if !slices.Contains(Benchmarks, w) {
			return nil, fmt.Errorf("benchmark %q: want one of %s or all", w, strings.Join(Benchmarks, ", "))
		}
	}
	var out []string
	for _, b := range Benchmarks {
		if slices.Contains(c.What, b) {
			out = append(out, b)
		}
	}
	return out, nil
}

// Run measures what cfg selects, each benchmark with its baseline in the
// same run. A benchmark that fails is recorded in Report.Failed and the
// others still run; the error then names every failure. Root only, except
// mapper and bundle.
func Run(ctx context.Context, cfg RunConfig) (*Report, error) {
	what, err := cfg.selected()
	if err != nil {
		return nil, err
	}
	progress := cfg.Progress
	if progress == nil {
		progress = func(string, ...any) {}
	}
	r := &Report{When: time.Now().UTC(), Quick: cfg.Quick, Host: ThisHost(), Skipped: map[string]string{}, Failed: map[string]string{}}
	root := os.Geteuid() == 0
	for _, w := range what {
		if err := ctx.Err(); err != nil {
			return r, err
		}
		if !root && w != "mapper" && w != "bundle" {
			r.Skipped[w] = "needs root (BPF, network namespaces, bpffs)"
			continue
		}
		progress("== %s", w)
		start := time.Now()
		var err error
		switch w {
		case "fastpath":
			err = r.runFastpath(cfg, progress)
		case "traffic":
			tc := TrafficConfig{Sizes: []int{10, 1000, 10000}, Packets: 200_000, Exchanges: 2000, Budget: 5 * time.Second, Rounds: 3, Progress: progress}
			if cfg.Quick {
				tc = TrafficConfig{Sizes: []int{10, 100}, Packets: 5000, Exchanges: 100, Budget: time.Second, Rounds: 1, Progress: progress}
			}
			r.Traffic, err = MeasureTraffic(ctx, tc)
			if err == nil && r.Traffic.NftSkipped != "" {
				r.Skipped["traffic: nftables"] = r.Traffic.NftSkipped
			}
		case "agent":
			// The "one change" curve: 1,000 vifs, 1k to 100k SAs; the
			// largest also gives the memory, and the soak if asked.
			var sizes []AgentScaleConfig
			for _, n := range []int{1000, 3000, 10_000, 30_000, 100_000} {
				sizes = append(sizes, AgentScaleConfig{Vifs: 1000, SAs: n, Changes: 300})
			}
			if cfg.Quick {
				sizes = []AgentScaleConfig{{Vifs: 10, SAs: 500, Changes: 10}, {Vifs: 10, SAs: 2000, Changes: 10}}
			}
			last := &sizes[len(sizes)-1]
			last.Soak, last.Progress = cfg.AgentSoak, progress
			for _, s := range sizes {
				progress("agent: %d vifs, %d SAs", s.Vifs, s.SAs)
				var a *AgentScaleResult
				if a, err = MeasureAgentScale(s); err != nil {
					break
				}
				r.Agent = append(r.Agent, a)
			}
		case "xfrm":
			xc := XFRMSyncConfig{SAs: 1000, Interval: 3 * time.Millisecond, Progress: progress}
			if cfg.Quick {
				xc = XFRMSyncConfig{SAs: 200, CachedOnly: true, Progress: progress}
			}
			r.XFRM, err = MeasureXFRMSync(ctx, xc)
			if errors.Is(err, ErrNoCachedImage) {
				r.Skipped[w] = "quick mode boots a guest only when its image is already cached: " + err.Error()
				err = nil
			}
		case "rotation":
			if cfg.Quick {
				r.Skipped[w] = "quick mode boots no guest for it: make test runs the same rotations (TestGuestSARotation); make bench measures them"
				break
			}
			r.Rotation, err = MeasureRotation(ctx, RotationConfig{Progress: progress})
		case "mapper":
			rules, n := 10_000, 200_000
			if cfg.Quick {
				rules, n = 500, 2000
			}
			var m mapper.Result
			if m, err = mapper.MeasureLookups(rules, n); err != nil {
				break
			}
			r.Mapper = &m
			api := MapperAPIConfig{Rules: rules, Lookups: 20_000, Goroutines: []int{1, 4}, Progress: progress}
			if cfg.Quick {
				api.Lookups = 500
			}
			r.MapperAPI, err = MeasureMapperAPI(ctx, api)
		case "bundle":
			n := 500
			if cfg.Quick {
				n = 20
			}
			r.Bundle, err = MeasureBundle(cfg.AppsDir, "analyst", n)
		case "vmstart":
			err = r.runVMStart(ctx, cfg, progress)
		}
		if err != nil {
			r.Failed[w] = err.Error()
			progress("%s failed: %v", w, err)
			continue
		}
		progress("%s done in %v", w, time.Since(start).Round(time.Millisecond))
	}
	if len(r.Failed) > 0 {
		var errs []error
		for _, w := range what {
			if f, ok := r.Failed[w]; ok {
				errs = append(errs, fmt.Errorf("%s: %s", w, f))
			}
		}
		return r, errors.Join(errs...)
	}
	return r, nil
}

// runFastpath measures the per-packet cost in a network namespace of its
// own (BPF_PROG_TEST_RUN runs packets on its loopback).
func (r *Report) runFastpath(cfg RunConfig, progress func(string, ...any)) error {
	fc := FastpathConfig{SACounts: []int{10, 10_000, 1_000_000}, Repeat: 200_000, Rounds: 15, Progress: progress}
	if cfg.Quick {
		fc = FastpathConfig{SACounts: []int{10, 1000}, Repeat: 1000, Rounds: 1, Progress: progress}
	}
	return inNewNetns(func() error {
		cases, mem, err := MeasureFastpath(fc)
		if err != nil {
			return err
		}
		r.Fastpath = &FastpathReport{Repeat: fc.Repeat, Rounds: fc.Rounds, Cases: cases, Memory: mem}
		return nil
	})
}

func (r *Report) runVMStart(ctx context.Context, cfg RunConfig, progress func(string, ...any)) error {
	backends := cfg.VMStartBackends
	if backends == nil {
		backends = []string{"netns", "qemu"}
		if cfg.Quick {
			backends = []string{"netns"}
		}
	}
	if len(backends) == 0 {
		r.Skipped["vmstart"] = cfg.VMStartSkip
		return nil
	}
	repeat := 5
	if cfg.Quick {
		repeat = 1
	}
	res, err := MeasureVMStart(ctx, VMStartConfig{Backends: backends, Repeat: repeat, AppsDir: cfg.AppsDir, Binary: cfg.Binary, Progress: progress})
	if err != nil {
		return err
	}
	if cfg.VMStartBackends == nil && !cfg.Quick {
		// The Xen column: inside the dom0 image under QEMU (minutes per
		// load under TCG). Its failure costs the column, not the table.
		xr, xerr := MeasureVMStart(ctx, VMStartConfig{Backends: []string{"xen"}, Repeat: repeat, AppsDir: cfg.AppsDir, Binary: cfg.Binary, Progress: progress})
		if xerr != nil {
			r.Failed["vmstart xen"] = xerr.Error()
		} else {
			res.Backends = append(res.Backends, xr.Backends...)
		}
	}
	r.VMStart = res
	return nil
}

// inNewNetns runs fn on a thread in a new network namespace; the thread
// is discarded afterwards.
func inNewNetns(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		ns, err := netns.New()
		if err != nil {
			errc <- fmt.Errorf("new network namespace: %w", err)
			return
		}
		defer ns.Close()
		errc <- fn()
	}()
	return <-errc
}

// MeasureBundle generates the bundle of one guest of application app in
// appsDir n times (policy store only: no certificates, no checkmodule)
// and reports the time per bundle.
func MeasureBundle(appsDir, app string, n int) (*BundleTiming, error) {
	if n <= 0 {
		return nil, fmt.Errorf("bundle bench: %d iterations: want > 0", n)
	}
	if appsDir == "" {
		return nil, errors.New("bundle bench: no application directory; give examples/analyst")
	}
	apps, err := policystore.LoadDir(appsDir)
	if err != nil {
		return nil, fmt.Errorf("bundle bench: %w", err)
	}
	var a *policystore.Application
	for _, x := range apps {
		if x.Name == app {
			a = x
		}
	}
	if a == nil {
		return nil, fmt.Errorf("bundle bench: no application %q in %s", app, appsDir)
	}
	spi := uint32(0x4000)
	req := policystore.BundleRequest{
		Guest: "vm7", GuestAddr: netip.MustParseAddr("10.70.0.7"), HostAddr: netip.MustParseAddr("10.70.0.1"),
		MapperUpstream: "http://10.70.0.1:7070", Version: 1, Now: time.Now(),
		SPI: func() (uint32, error) { spi++; return spi, nil },
	}
	t := &BundleTiming{App: app, Iterations: n}
	ds := make([]time.Duration, n)
	var total time.Duration
	for i := range n {
		start := time.Now()
		b, err := policystore.GenerateBundle(a, req, nil)
		ds[i] = time.Since(start)
		if err != nil {
			return nil, fmt.Errorf("bundle bench: generate %s: %w", app, err)
		}
		total += ds[i]
		t.SAs, t.Policies = len(b.States), len(b.Policies)
	}
	slices.Sort(ds)
	t.Mean, t.P50, t.P99 = total/time.Duration(n), ds[n/2], ds[min(n-1, n*99/100)]
	return t, nil
}

// ThisHost describes the machine.
func ThisHost() Host {
	h := Host{Kernel: kernelRelease(), CPUs: runtime.NumCPU(), CPU: "unknown", Virtualization: "none"}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			switch {
			case ok && k == "model name" && h.CPU == "unknown":
				h.CPU = v
			case ok && k == "flags" && slices.Contains(strings.Fields(v), "hypervisor"):
				h.Virtualization = "a virtual machine (CPU hypervisor flag)"
			}
		}
		f.Close()
	}
	if h.Virtualization != "none" {
		if b, err := os.ReadFile("/sys/class/dmi/id/sys_vendor"); err == nil && len(strings.TrimSpace(string(b))) > 0 {
			h.Virtualization = "a virtual machine (" + strings.TrimSpace(string(b)) + ")"
		}
	}
	return h
}

func (h Host) String() string {
	return fmt.Sprintf("%s, %d cores, kernel %s, running in %s", h.CPU, h.CPUs, h.Kernel, h.Virtualization)
}

// WriteReport writes results.json, report.md and the SVG plots into dir.
func WriteReport(dir string, r *Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("results folder %s: %w (choose another with --out)", dir, err)
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	files := map[string][]byte{
		ReportJSON:     append(js, '\n'),
		ReportMarkdown: []byte(FormatReport(r)),
		PlotPerPacket:  []byte(PerPacketSVG(r)),
	}
	if r.VMStart != nil {
		files[PlotVMStart] = []byte(VMStartSVG(r.VMStart))
	}
	if len(r.Agent) > 0 {
		files[PlotAgent] = []byte(AgentSVG(r))
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// FormatReport is the Markdown report.
func FormatReport(r *Report) string {
	var b strings.Builder
	mode := "full"
	if r.Quick {
		mode = "quick (small sizes: a smoke test, not numbers to quote)"
	}
	fmt.Fprintf(&b, "# mlsgate benchmarks, %s\n\nMode: %s.  \nHardware: %s.\n\n", r.When.Format("2006-01-02 15:04 UTC"), mode, r.Host)
	b.WriteString("Every ratio is against a baseline measured in the same run on the same machine. The cores may be shared with other work: compare ratios, not bare numbers across runs.\n")

	if f := r.Fastpath; f != nil {
		fmt.Fprintf(&b, "\n## Per-packet cost (BPF_PROG_TEST_RUN)\n\nIPv4 and IPv6 packets from the guest, %d repetitions per measurement, fastest of %d interleaved rounds; hardware as above, no emulation. ESP: an ESP packet to the host under an SA in the host's range (vif ingress program). Plain: an unlabeled UDP packet to a web peer (vif ingress program). Secpath: the same UDP packet as the host's decryption leaves it, with the SA in its secpath; it runs through the probe program, the same decision with the secpath read from skb->cb instead of bpf_skb_get_xfrm_state, because a test run cannot carry a decrypted packet. Half the SAs are IPv4 and half IPv6. Each packet was checked to get its reason (in brackets) before it was timed. × empty: ratio to the empty program on the same packet in the same run. The kernel reports the mean per run in whole nanoseconds.\n\n", f.Repeat, f.Rounds)
		b.WriteString(perPacketTable(f.Cases))
		b.WriteString("\n| SAs | map memory (memlock) | fill time |\n|---:|---:|---:|\n")
		for _, m := range f.Memory {
			fmt.Fprintf(&b, "| %d | %.1f MiB | %v |\n", m.SAs, float64(m.Total)/(1<<20), m.Fill.Round(time.Millisecond))
		}
	}
	if r.Traffic != nil {
		b.WriteString("\n## Real traffic between two namespaces\n\n")
		b.WriteString(FormatTraffic(r.Traffic))
	}
	if r.Fastpath != nil || r.Traffic != nil {
		fmt.Fprintf(&b, "\n![per-packet cost against SAs](%s)\n", PlotPerPacket)
	}
	if r.VMStart != nil {
		b.WriteString("\n## VM start: the paper's Table 1\n\n")
		b.WriteString(FormatVMStart(r.VMStart))
		fmt.Fprintf(&b, "\n![VM-start phases per backend](%s)\n", PlotVMStart)
	}
	if len(r.Agent) > 0 || r.Mapper != nil || r.MapperAPI != nil || r.Bundle != nil || r.XFRM != nil || r.Rotation != nil {
		fmt.Fprintf(&b, "\n## Control plane\n\nOn this host (%s), no emulation, except the XFRM and SA rotation tables, which are measured in a guest kernel under QEMU.\n", r.Host)
	}
	if r.XFRM != nil {
		b.WriteString(FormatXFRMSync(r.XFRM))
	}
	if r.Rotation != nil {
		b.WriteString(FormatRotation(r.Rotation))
	}
	if len(r.Agent) > 0 {
		b.WriteString("\nAgent: SAs with SELinux contexts synced into real pinned maps (simulated vifs and SA source).\n\n")
		b.WriteString(FormatAgentScale(r.Agent))
		fmt.Fprintf(&b, "\n![one SA change against the number of SAs](%s)\n", PlotAgent)
		for _, a := range r.Agent {
			if len(a.Soak) > 0 {
				b.WriteString(FormatSoak(a))
			}
		}
	}
	if m := r.Mapper; m != nil {
		fmt.Fprintf(&b, "\nLabel mapper, in process, one goroutine, %d rules, %d lookups:\n\n| lookup | lookups/s | p50 | p99 |\n|---|---:|---:|---:|\n", m.Rules, m.Lookups)
		for _, row := range []struct {
			name string
			s    mapper.LookupStats
		}{{"policy (cache off)", m.Uncached}, {"cached", m.Cached}} {
			fmt.Fprintf(&b, "| %s | %.0f | %v | %v |\n", row.name, row.s.PerSecond, row.s.P50, row.s.P99)
		}
	}
	if a := r.MapperAPI; a != nil {
		b.WriteString(formatMapperAPI(a, r.Mapper))
	}
	if t := r.Bundle; t != nil {
		fmt.Fprintf(&b, "\nPolicy-store bundle generation (%s application: %d SAs, %d XFRM policies; no certificates, no checkmodule), %d bundles: mean %v, p50 %v, p99 %v.\n",
			t.App, t.SAs, t.Policies, t.Iterations, t.Mean.Round(time.Microsecond), t.P50.Round(time.Microsecond), t.P99.Round(time.Microsecond))
	}
	if len(r.Skipped)+len(r.Failed) > 0 {
		b.WriteString("\n## Not measured\n\n")
		for _, m := range []map[string]string{r.Skipped, r.Failed} {
			keys := make([]string, 0, len(m))
			for k := range m {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			for _, k := range keys {
				what := "skipped"
				if m[k] == r.Failed[k] && r.Failed[k] != "" {
					what = "failed"
				}
				fmt.Fprintf(&b, "- %s (%s): %s\n", k, what, m[k])
			}
		}
	}
	return b.String()
}

// formatMapperAPI is the mapper-over-HTTP table, with each row's ratio to
// the in-process lookups of the same cache setting (inproc, when measured
// in the same run).
func formatMapperAPI(a *MapperAPIResult, inproc *mapper.Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nLabel mapper over its HTTP API: the mapper's handler served on 127.0.0.1 (TCP loopback), POST /v1/lookup through mapper.Client with keep-alive connections, %d rules, %d lookups per row; client and server share this host's %d cores. Every URL's answer over the API was first checked against the in-process answer.\n\n", a.Rules, a.Lookups, runtime.NumCPU())
	b.WriteString("| cache | client goroutines | lookups/s | × in process | p50 | p99 | TCP connections |\n|---|---:|---:|---:|---:|---:|---:|\n")
	for _, c := range a.Cases {
		ratio := "—"
		if inproc != nil && inproc.Rules == a.Rules {
			base := inproc.Uncached.PerSecond
			if c.Cache == "warm" {
				base = inproc.Cached.PerSecond
			}
			if base > 0 {
				ratio = fmt.Sprintf("%.3f", c.PerSecond/base)
			}
		}
		what := map[string]string{"off": "policy (cache off)", "warm": "cached"}[c.Cache]
		fmt.Fprintf(&b, "| %s | %d | %.0f | %s | %v | %v | %d |\n", what, c.Goroutines, c.PerSecond, ratio,
			c.P50.Round(100*time.Nanosecond), c.P99.Round(100*time.Nanosecond), c.Connections)
	}
	b.WriteString("\n× in process: against the in-process lookups of the same cache setting above (one goroutine), from this run.\n")
	return b.String()
}

// perPacketTable has one row per SA count and family: the empty program,
// the parser and the full verdict on an ESP, a plain and a secpath packet,
// each with its ratio to the empty program. Results without a family are
// IPv4.
func perPacketTable(cases []FastpathCase) string {
	var b strings.Builder
	names := []string{"parse", "esp", "plain", "secpath"}
	b.WriteString("| SAs | family | empty (floor) |")
	for _, n := range names {
		what := map[string]string{"parse": "parser", "esp": "ESP", "plain": "plain", "secpath": "secpath"}[n]
		if n != "parse" {
			what = "verdict, " + what
			if r := reasonOf(cases, n); r != "" {
				what += " (" + r + ")"
			}
		}
		fmt.Fprintf(&b, " %s | × empty |", what)
	}
	b.WriteString("\n|---:|---|---:|" + strings.Repeat("---:|---:|", len(names)) + "\n")
	type row struct {
		sas int
		fam string
	}
	var rows []row
	cell := map[row]map[string]FastpathCase{}
	for _, c := range cases {
		k := row{c.SAs, c.Family}
		if k.fam == "" {
			k.fam = FamilyIPv4
		}
		if cell[k] == nil {
			cell[k] = map[string]FastpathCase{}
			rows = append(rows, k)
		}
		cell[k][c.Name] = c
	}
	slices.SortStableFunc(rows, func(x, y row) int {
		if x.fam != y.fam {
			return strings.Compare(x.fam, y.fam)
		}
		return x.sas - y.sas
	})
	for _, k := range rows {
		fmt.Fprintf(&b, "| %d | %s | %.1f ns |", k.sas, map[string]string{FamilyIPv4: "IPv4", FamilyIPv6: "IPv6"}[k.fam], cell[k]["empty"].NsPerPacket)
		for _, name := range names {
			c, ok := cell[k][name]
			if !ok {
				b.WriteString(" — | — |")
				continue
			}
			fmt.Fprintf(&b, " %.1f ns | %.2f |", c.NsPerPacket, c.Ratio)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// reasonOf is the reason the cases named name got, when they all got the
// same one.
func reasonOf(cases []FastpathCase, name string) string {
	var r string
	for _, c := range cases {
		if c.Name != name {
			continue
		}
		if r != "" && r != c.Reason.String() {
			return ""
		}
		r = c.Reason.String()
	}
	return r
}
