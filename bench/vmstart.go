package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/assemble"
	"github.com/mlsgate/mlsgate/loader/backend"
	"github.com/mlsgate/mlsgate/loader/image"
	"github.com/mlsgate/mlsgate/loader/pool"
	"github.com/mlsgate/mlsgate/policystore"
)

// The paper's Table 1 (section 5.3.2), in seconds: a Jif browser VM on Xen,
// configured and loaded from scratch and from the pool of pre-loaded VMs,
// and a native Firefox in dom0.
const (
	PaperScratchConfigure   = 4.90
	PaperScratchLoad        = 18.50
	PaperPreloadedConfigure = 0.90
	PaperPreloadedLoad      = 2.80
	PaperNativeCold         = 7.45
	PaperNativeWarm         = 1.50
	PaperTahoma             = 10.0 // "approximately 10 seconds", fewer configuration tasks
)

// Step names MeasureVMStart adds to the loader's own (resolve, authorize,
// acquire, bundle, compliance, push guest policy, host policy).
const (
	// StepFirstAnswer is the first exchange with the configured guest:
	// a fresh TCP connection and mutual-TLS handshake from the host to the
	// guest's update daemon, through the fast path on its vif, asking for
	// its status, which must name the bundle version just pushed.
	StepFirstAnswer = "first answer"
	// StepPreBoot is the idle guest's boot by the pool's refill, before the
	// load and off its path (reported, never added to a total).
	StepPreBoot = "pre-boot (pool refill)"
)

// Scenario names.
const (
	Scratch   = "scratch"   // empty pool: the load boots its guest
	Preloaded = "preloaded" // an idle guest booted beforehand is taken over
	// ReadyPool: the application asks for a ready guest (`pool: {ready:
	// 1}`), which the refill boots and configures beforehand; the load
	// only resolves, authorizes and hands it out.
	ReadyPool = "ready"
)

// Issue 14's targets, against which the report sets its medians.
const (
	TargetReadyConfigure    = 10 * time.Millisecond
	TargetIdleTakeoverQEMU  = 150 * time.Millisecond
	TargetReadyFirstAnswerN = 50 * time.Millisecond // netns
)

// VMStartConfig says what MeasureVMStart measures.
type VMStartConfig struct {
	// Backends to measure, in order: "netns", "qemu". Default both.
	Backends []string
	// Repeat is the number of loads per backend and scenario (default 3);
	// the report gives their medians.
	Repeat int
	// AppsDir holds the application files (examples/analyst).
	AppsDir string
	// URL is loaded; default http://ws1.analyst.example/profile.
	URL string
	// Binary is a statically linked mlsgate, run as every guest's update
	// daemon; "" builds one (CGO_ENABLED=0 go build ./cmd/mlsgate).
	Binary string
	// GuestCache is the guestvm image cache; "" is image.DefaultCacheDir.
	GuestCache string
	// Accel is the QEMU backend's accelerator; default "tcg" (a /dev/kvm
	// that opens is no proof that it runs a stock kernel).
	Accel string
	// QEMUMemory is each QEMU guest's RAM in MiB; default 512.
	QEMUMemory int
	// APIPort is the host's API port and the guests' update daemon port,
	// passed by the fast path as host control traffic; default 7443.
	APIPort uint16
	// ResultsDir, when set, receives vmstart.md and vmstart.json.
	ResultsDir string
	// Progress, when set, receives a line per step.
	Progress func(format string, args ...any)

	// The Xen backend's settings (see measureXen). XenKernel and
	// XenRamdisk are dom0 paths of the guests' raw vmlinux (default
	// image.XenGuestKernel) and of their ramdisk whose init starts the
	// update daemon (backend.XenInitrd; default image.XenGuestRamdisk);
	// XenMemory is each guest's RAM in MiB (default 192).
	XenKernel, XenRamdisk string
	XenMemory             int
	// XenImage, on a host that is not a dom0, is the dom0 image the Xen
	// measurement boots under QEMU (image.PrepareXen's); the bench test
	// binary runs there (TestVMStartXenJob). Nil prepares it.
	XenImage *image.XenImage
	// HostSemodule installs the host's modules with semodule (the
	// loader's --semodule): where the running policy came from this host's
	// module store (the Xen dom0 loads the image's store).
	HostSemodule bool

	// unpauses, when set, returns the time the backend spent in `xl
	// unpause` since its last call (measureXen sets it): the Xen
	// hand-out inside the acquire step.
	unpauses func() time.Duration
}

// VMStartResult is the reproduction of the paper's Table 1.
type VMStartResult struct {
	When       time.Time       `json:"when"`
	HostKernel string          `json:"host_kernel"`
	HostCPUs   int             `json:"host_cpus"`
	URL        string          `json:"url"`
	Repeat     int             `json:"repeat"`
	Backends   []*BackendStart `json:"backends"`
}

// BackendStart is one backend's measurements.
type BackendStart struct {
	Backend string `json:"backend"`
	// Where says where the loader, the agent and the guests ran.
	Where string `json:"where"`
	// Hardware is the CPU and emulation the numbers come from.
	Hardware  string        `json:"hardware"`
	Scratch   []LoadRun     `json:"scratch"`
	Preloaded []LoadRun     `json:"preloaded"`
	Ready     []LoadRun     `json:"ready,omitempty"`
	Medians   []LoadSummary `json:"medians"` // scratch, preloaded, ready
	// GuestNotes are what the guests' update daemons reported about parts
	// of the bundle they did not install (distinct lines).
	GuestNotes []string `json:"guest_notes,omitempty"`
}

// LoadRun is one load with its steps.
type LoadRun struct {
	Scenario string `json:"scenario"`
	// How is where the pool found the guest: "boot" or "idle".
	How   string        `json:"how"`
	Steps []loader.Step `json:"steps"` // the loader's, then StepFirstAnswer
	// PreBoot is the idle guest's boot (preloaded), or the ready guest's
	// boot and configuration (ready); off the path either way.
	PreBoot time.Duration `json:"pre_boot_ns,omitempty"`
	// Configure is the paper's "Configure/Load Policy": every loader step
	// except a boot. Load is its "Loading (Browser and) Page": the boot,
	// when the load needed one, and the first answer.
	Configure time.Duration `json:"configure_ns"`
	Load      time.Duration `json:"load_ns"`
	Total     time.Duration `json:"total_ns"`
	// Unpause is the part of the acquire step spent in `xl unpause` (Xen:
	// a paused guest's hand-out).
	Unpause time.Duration `json:"unpause_ns,omitempty"`
	Version uint64        `json:"bundle_version"`
	// GuestSAs and GuestPolicies are the XFRM SAs and policies the guest's
	// daemon reported installing.
	GuestSAs      int `json:"guest_sas"`
	GuestPolicies int `json:"guest_policies"`
}

// LoadSummary is the median of a scenario's runs, step by step (each
// total is the median of the runs' totals, not a sum of medians).
type LoadSummary struct {
	Scenario string        `json:"scenario"`
	Runs     int           `json:"runs"`
	Steps    []loader.Step `json:"steps"`
	// PushParts is where the push's time went (see loader.PartsPusher).
	PushParts []loader.Step `json:"push_parts,omitempty"`
	PreBoot   time.Duration `json:"pre_boot_ns,omitempty"`
	Configure time.Duration `json:"configure_ns"`
	Load      time.Duration `json:"load_ns"`
	Total     time.Duration `json:"total_ns"`
	Unpause   time.Duration `json:"unpause_ns,omitempty"`
}

// Median returns the backend's summary of a scenario.
func (b *BackendStart) Median(scenario string) (LoadSummary, bool) {
	for _, m := range b.Medians {
		if m.Scenario == scenario {
			return m, true
		}
	}
	return LoadSummary{}, false
}

func (c *VMStartConfig) defaults() error {
	if len(c.Backends) == 0 {
		c.Backends = []string{"netns", "qemu"}
	}
	for _, b := range c.Backends {
		if b != "netns" && b != "qemu" && b != "xen" {
			return fmt.Errorf("vmstart: backend %q: want netns, qemu or xen", b)
		}
	}
	if c.Repeat <= 0 {
		c.Repeat = 3
	}
	if c.URL == "" {
		c.URL = "http://ws1.analyst.example/profile"
	}
	if c.Accel == "" {
		c.Accel = "tcg"
	}
	if c.QEMUMemory == 0 {
		c.QEMUMemory = 512
	}
	if c.APIPort == 0 {
		c.APIPort = 7443
	}
	if c.Progress == nil {
		c.Progress = func(string, ...any) {}
	}
	if c.AppsDir == "" {
		return errors.New("vmstart: AppsDir is empty; give the application files (examples/analyst)")
	}
	if _, err := os.Stat(c.AppsDir); err != nil {
		return fmt.Errorf("vmstart: AppsDir: %w (give the directory of examples/analyst)", err)
	}
	return nil
}

// MeasureVMStart runs the loader's real configuration phase on this host
// for cfg.URL, with each backend of cfg.Backends, from scratch (empty pool:
// the load boots a guest) and from the pool (an idle guest booted
// beforehand by the refill), cfg.Repeat times each, and returns every run
// with the medians. Root only.
//
// Everything is the real thing: the policy store, the CA, the pool, the
// agent with the fast path pinned on a bpffs mounted for the run (its API
// port is the update daemons' port), the backend, and `mlsgate updated`
// in each guest applying the bundle over mutual TLS. The host installs no
// SAs of its own (loader.Host.XFRM is nil): the fast path gets the bundle's
// SAs as static entries, and the guests' kernels hold them.
//
// netns guests need ESP in the kernel they share with the host (their
// daemon refuses a bundle whose SAs it cannot install). Where this kernel
// lacks it, the netns measurement runs inside Debian's kernel under QEMU
// (the guestvm harness, as `mlsgate demo` does) by the bench test binary's
// TestVMStartGuestJob, and its numbers are emulated. QEMU guests boot
// Debian's kernel with an init that loads virtio-net and the ESP modules
// and starts the update daemon; they run in this host's root network
// namespace on taps vif<N>.0 with 10.71.N.0/24, the loader's addressing
// plan. Every guest, tap, pin and temporary file is removed before return.
func MeasureVMStart(ctx context.Context, cfg VMStartConfig) (*VMStartResult, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("vmstart: needs root (bpffs, BPF programs, network namespaces, taps): run as root")
	}
	tmp, err := os.MkdirTemp("", "mlsgate-vmstart-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if cfg.Binary == "" {
		cfg.Binary = filepath.Join(tmp, "mlsgate")
		cfg.Progress("building a static mlsgate for the guests")
		if err := buildMlsgate(ctx, cfg.Binary); err != nil {
			return nil, err
		}
	}
	res := &VMStartResult{When: time.Now().UTC(), HostKernel: kernelRelease(), HostCPUs: runtime.NumCPU(), URL: cfg.URL, Repeat: cfg.Repeat}
	for _, name := range cfg.Backends {
		var b *BackendStart
		switch name {
		case "netns":
			if espErr := xfrm.ProbeESP(); espErr == nil {
				b, err = measureBackend(ctx, cfg, &backend.Netns{Binary: cfg.Binary, StateDir: filepath.Join(tmp, "netns")}, filepath.Join(tmp, "netns-run"))
				if b != nil {
					b.Where = "this host's kernel " + res.HostKernel + ", guests are network namespaces"
					b.Hardware = fmt.Sprintf("%d cores, no VM", res.HostCPUs)
				}
			} else {
				b, err = measureNetnsInGuest(ctx, cfg, tmp, espErr)
			}
		case "qemu":
			b, err = measureQEMU(ctx, cfg, tmp)
		case "xen":
			if InDom0() {
				b, err = measureXen(ctx, cfg, tmp)
			} else {
				b, err = measureXenInDom0(ctx, cfg, tmp)
			}
		}
		if err != nil {
			return res, fmt.Errorf("vmstart %s: %w", name, err)
		}
		res.Backends = append(res.Backends, b)
	}
	if cfg.ResultsDir != "" {
		if err := WriteVMStart(cfg.ResultsDir, res); err != nil {
			return res, err
		}
	}
	return res, nil
}

// WriteVMStart writes FormatVMStart's table to dir/vmstart.md and the
// result to dir/vmstart.json.
func WriteVMStart(dir string, r *VMStartResult) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("results directory: %w", err)
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "vmstart.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "vmstart.md"), []byte(FormatVMStart(r)), 0o644)
}

// measureBackend is the measurement on this kernel: the agent, the loader
// wired as the command wires it, and cfg.Repeat loads per scenario through
// be. Its files live under dir, which it removes.
func measureBackend(ctx context.Context, cfg VMStartConfig, be loader.Backend, dir string) (_ *BackendStart, err error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, err
	}
	apps, err := policystore.LoadDir(cfg.AppsDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	bpffs := filepath.Join(dir, "bpffs")
	if err := os.Mkdir(bpffs, 0o700); err != nil {
		return nil, err
	}
	if err := unix.Mount("bpffs", bpffs, "bpf", 0, "mode=0700"); err != nil {
		return nil, fmt.Errorf("mount bpffs on %s (root only): %w", bpffs, err)
	}
	defer unix.Unmount(bpffs, unix.MNT_DETACH)

	ac := agent.DefaultConfig()
	ac.StateDir, ac.PinDir, ac.Listen, ac.Socket = filepath.Join(dir, "agent"), filepath.Join(bpffs, "mlsgate"), "", ""
	_, onXen := be.(*backend.Xen)
	if onXen {
		// vif-mlsgate declares each new vif to the agent's API before
		// the loader does: serve it on a socket and tell the script.
		ac.Socket = filepath.Join(dir, "agent.sock")
		undo, err := xenVifDefaults(cfg.Binary, ac.Socket)
		if err != nil {
			return nil, err
		}
		defer undo()
	}
	ac.APIPort, ac.SPISlots, ac.EventRate = cfg.APIPort, 4096, 5
	ac.Integrity = integrityOf(apps)
	a, k, err := agent.Start(ac, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		return nil, fmt.Errorf("start the agent: %w", err)
	}
	defer k.Close()
	defer bpf.RemovePins(ac.PinDir)
	actx, stopAgent := context.WithCancel(ctx)
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(actx) }()
	go a.ReadEvents(actx, k.Objs.Events)
	defer func() {
		stopAgent()
		select {
		case <-agentDone:
		case <-time.After(30 * time.Second):
		}
	}()
	if onXen {
		// The socket vif-mlsgate declares new vifs on (mlsgate guest set).
		stopAPI, err := serveAgentSocket(ac.Socket, a.AdminHandler())
		if err != nil {
			return nil, err
		}
		defer stopAPI()
	}
	if !waitFor(a.Ready, 2*time.Minute) {
		return nil, fmt.Errorf("the agent was not ready within 2m: %+v", a.Status())
	}
	cfg.Progress("%s: agent ready (pins in %s)", be.Name(), ac.PinDir)

	v, err := assemble.Start(ctx, assemble.Setup{
		StateDir: filepath.Join(dir, "loader"), AppsDir: cfg.AppsDir, APIPort: cfg.APIPort, PoolSize: 1, MaxLoads: 8,
		Backend: be, Agent: a, HostXFRM: nil, SPIBase: ac.SPIBase, SPISlots: ac.SPISlots,
		// On Xen pre-loaded and ready guests wait paused (section 5.2.1 of
		// the paper): their hand-out is xl unpause.
		PauseIdle: onXen, HostSemodule: cfg.HostSemodule,
	})
	if err != nil {
		return nil, fmt.Errorf("start the loader: %w", err)
	}
	defer v.Close()
	removeAll := func() error {
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		var errs []error
		for _, e := range v.Pool.List() {
			if err := v.Pool.Remove(dctx, e.Guest.VM); err != nil {
				errs = append(errs, fmt.Errorf("remove guest vm%d: %w", e.Guest.VM, err))
			}
		}
		// A guest that comes next gets the same VM number and address; a
		// kept-alive connection to the destroyed one would meet a reset.
		v.Updated.CloseIdleConnections()
		return errors.Join(errs...)
	}
	defer func() {
		if rerr := removeAll(); err == nil && rerr != nil {
			err = rerr
		}
	}()

	b := &BackendStart{Backend: be.Name()}
	notes := map[string]bool{}
	// The ready scenario's applications: the same files, the loaded one
	// asking for one ready guest.
	readyApps := filepath.Join(dir, "ready-apps")
	if err := ReadyAppsDir(cfg.AppsDir, readyApps, cfg.URL, v.Store); err != nil {
		return nil, err
	}
	one := func(scenario string, i int) error {
		var run LoadRun
		run.Scenario = scenario
		if scenario == ReadyPool {
			if _, err := v.Store.SyncDir(readyApps); err != nil {
				return err
			}
			defer v.Store.SyncDir(cfg.AppsDir) //nolint:errcheck // checked by the next scenario's load
			t0 := time.Now()
			if err := v.Pool.Refill(ctx); err != nil {
				return fmt.Errorf("pool refill (the ready guest's boot and configuration): %w", err)
			}
			run.PreBoot = time.Since(t0)
		}
		if scenario == Preloaded {
			t0 := time.Now()
			if err := v.Pool.Refill(ctx); err != nil {
				return fmt.Errorf("pool refill (the idle guest's boot): %w", err)
			}
			// The loader opens its connection to a booted guest's daemon
			// in the background; an idle guest waits long enough in the
			// pool for that to finish, so wait for it here too.
			for _, e := range v.Pool.List() {
				if e.State == pool.Idle && !onXen { // a paused guest answers nothing
					if err := v.Updated.Connect(ctx, e.Guest.UpdatedAddr); err != nil {
						return fmt.Errorf("connect to the idle guest's daemon: %w", err)
					}
				}
			}
			run.PreBoot = time.Since(t0)
		}
		if cfg.unpauses != nil {
			cfg.unpauses() // what the refill's unpauses took is not the load's
		}
		r, err := v.Loader.Load(ctx, loader.Caller{Host: true}, cfg.URL)
		if err != nil {
			return fmt.Errorf("%s load %d of %s: %w", scenario, i+1, cfg.URL, err)
		}
		if cfg.unpauses != nil {
			run.Unpause = cfg.unpauses()
		}
		run.How, run.Version, run.Steps = r.How, r.Version, slices.Clone(r.Steps)
		want := map[string]string{Scratch: "boot", Preloaded: "idle", ReadyPool: "ready"}[scenario]
		if r.How != want {
			return fmt.Errorf("%s load %d: the pool gave a guest by %q, want %q (a guest was left from an earlier load)", scenario, i+1, r.How, want)
		}
		// The first answer: a new connection, as a browser's first request.
		v.Updated.CloseIdleConnections()
		t0 := time.Now()
		st, err := v.Updated.Status(ctx, r.Guest.UpdatedAddr)
		first := time.Since(t0)
		if err != nil {
			return fmt.Errorf("%s load %d: the guest's update daemon at %s did not answer: %w", scenario, i+1, r.Guest.UpdatedAddr, err)
		}
		if scenario == ReadyPool && st.Applied != nil && st.Applied.Application == r.App && r.Version == 0 {
			// Configured before the load: the guest names the bundle the
			// refill pushed.
			run.Version = st.Applied.Version
		}
		if st.Applied == nil || st.Applied.Version != run.Version || run.Version == 0 {
			return fmt.Errorf("%s load %d: the guest reports bundle %+v, want version %d", scenario, i+1, st.Applied, run.Version)
		}
		if rep := st.Applied.Report; rep != nil {
			run.GuestSAs, run.GuestPolicies = len(rep.XFRM.StatesAdded)+len(rep.XFRM.StatesUpdated), len(rep.XFRM.PoliciesAdded)+len(rep.XFRM.PoliciesUpdated)
			for _, n := range append(slices.Clone(rep.Notes), rep.Modules.Note) {
				if n != "" {
					notes[n] = true
				}
			}
		}
		run.Steps = append(run.Steps, loader.Step{Name: StepFirstAnswer, Duration: first})
		run.split()
		cfg.Progress("%s %s %d/%d: configure %v, load %v (%s) on %s", be.Name(), scenario, i+1, cfg.Repeat,
			run.Configure.Round(time.Millisecond), run.Load.Round(time.Millisecond), stepLine(run.Steps), r.Guest.Name)
		switch scenario {
		case Scratch:
			b.Scratch = append(b.Scratch, run)
		case Preloaded:
			b.Preloaded = append(b.Preloaded, run)
		default:
			b.Ready = append(b.Ready, run)
		}
		if scenario == ReadyPool {
			// Back to the plain applications before the pool empties, so
			// that no refill prepares another ready guest.
			if _, err := v.Store.SyncDir(cfg.AppsDir); err != nil {
				return err
			}
		}
		// The next load must find the pool empty again.
		return removeAll()
	}
	for i := range cfg.Repeat {
		for _, sc := range []string{Scratch, Preloaded, ReadyPool} {
			if err := one(sc, i); err != nil {
				return nil, err
			}
		}
	}
	b.Medians = []LoadSummary{summarize(Scratch, b.Scratch), summarize(Preloaded, b.Preloaded), summarize(ReadyPool, b.Ready)}
	for n := range notes {
		b.GuestNotes = append(b.GuestNotes, n)
	}
	sort.Strings(b.GuestNotes)
	return b, nil
}

// split computes Configure, Load and Total from the steps: a boot (the
// acquire step of a load that booted its guest) and the first answer are
// loading; every other step of the loader is configuration.
func (r *LoadRun) split() {
	r.Configure, r.Load = 0, 0
	for _, s := range r.Steps {
		switch {
		case s.Name == StepFirstAnswer, s.Name == "acquire" && r.How == "boot":
			r.Load += s.Duration
		default:
			r.Configure += s.Duration
		}
	}
	r.Total = r.Configure + r.Load
}

// summarize is the median of runs, step by step in the first run's order.
func summarize(scenario string, runs []LoadRun) LoadSummary {
	s := LoadSummary{Scenario: scenario, Runs: len(runs)}
	if len(runs) == 0 {
		return s
	}
	pick := func(f func(LoadRun) time.Duration) time.Duration {
		ds := make([]time.Duration, len(runs))
		for i, r := range runs {
			ds[i] = f(r)
		}
		return median(ds)
	}
	for _, st := range runs[0].Steps {
		name := st.Name
		s.Steps = append(s.Steps, loader.Step{Name: name, Duration: pick(func(r LoadRun) time.Duration {
			for _, x := range r.Steps {
				if x.Name == name {
					return x.Duration
				}
			}
			return 0
		})})
	}
	for _, st := range runs[0].Steps {
		for _, part := range st.Parts {
			name := part.Name
			s.PushParts = append(s.PushParts, loader.Step{Name: name, Duration: pick(func(r LoadRun) time.Duration {
				for _, x := range r.Steps {
					for _, y := range x.Parts {
						if y.Name == name {
							return y.Duration
						}
					}
				}
				return 0
			})})
		}
	}
	s.PreBoot = pick(func(r LoadRun) time.Duration { return r.PreBoot })
	s.Configure = pick(func(r LoadRun) time.Duration { return r.Configure })
	s.Load = pick(func(r LoadRun) time.Duration { return r.Load })
	s.Total = pick(func(r LoadRun) time.Duration { return r.Total })
	s.Unpause = pick(func(r LoadRun) time.Duration { return r.Unpause })
	return s
}

func targetMet(ok bool) string {
	if ok {
		return "met"
	}
	return "not met"
}

// ReadyAppsDir copies the applications of src into dst with the one that
// serves url asking for one ready guest (`pool: {ready: 1}`; `mlsgate demo`
// shows a ready-pool hit with it).
func ReadyAppsDir(src, dst, url string, st *policystore.Store) error {
	r, _, err := st.Resolve(url)
	if err != nil {
		return fmt.Errorf("ready scenario: %s: %w", url, err)
	}
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return err
	}
	if err := copyFiles(src, dst); err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(dst, "*.yaml"))
	if err != nil {
		return err
	}
	for _, f := range files {
		a, err := policystore.LoadFile(f)
		if err != nil || a.Name != r.App.Name {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if a.Pool.Ready > 0 {
			return nil
		}
		return os.WriteFile(f, append(data, []byte("\npool: {ready: 1}\n")...), 0o600)
	}
	return fmt.Errorf("ready scenario: no file in %s holds application %s", src, r.App.Name)
}

// median of ds (the mean of the middle two for an even count).
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func stepLine(steps []loader.Step) string {
	var parts []string
	for _, s := range steps {
		if s.Name != "ready" {
			parts = append(parts, fmt.Sprintf("%s %v", s.Name, s.Duration.Round(100*time.Microsecond)))
		}
	}
	return strings.Join(parts, ", ")
}

// integrityOf is the agent's integrity table for the applications' types.
func integrityOf(apps []*policystore.Application) map[string]label.Integrity {
	integ := map[string]label.Integrity{}
	for _, a := range apps {
		for t, i := range a.Integrity {
			integ[t] = i
		}
		integ[a.Type] = a.IntegrityPolicy().Of(a.Type)
	}
	return integ
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// buildMlsgate builds a static mlsgate at out.
func buildMlsgate(ctx context.Context, out string) error {
	cmd := exec.CommandContext(ctx, goCommand(), "build", "-o", out, "github.com/mlsgate/mlsgate/cmd/mlsgate")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("CGO_ENABLED=0 go build ./cmd/mlsgate: %v\n%s (or give VMStartConfig.Binary)", err, b)
	}
	return nil
}

func goCommand() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// guestJobEnv names the job file of the netns measurement inside the guest
// kernel; TestVMStartGuestJob runs it when set.
const guestJobEnv = "MLSGATE_BENCH_VMSTART_JOB"

// guestJob is what the host asks of the bench test binary in the guest.
type guestJob struct {
	Repeat  int    `json:"repeat"`
	URL     string `json:"url"`
	APIPort uint16 `json:"api_port"`
	Apps    string `json:"apps"`   // guest path
	Binary  string `json:"binary"` // guest path of mlsgate
	Out     string `json:"out"`    // guest path of the result
}

// measureNetnsInGuest runs the netns measurement inside Debian's kernel
// under QEMU: the bench test binary, mlsgate and the applications go to the
// guest over the harness's 9p share, and the result comes back as JSON.
func measureNetnsInGuest(ctx context.Context, cfg VMStartConfig, tmp string, espErr error) (*BackendStart, error) {
	cfg.Progress("netns: this kernel cannot hold the bundle's SAs (%v): measuring inside the Debian guest kernel", espErr)
	img, err := image.Prepare(ctx, cfg.GuestCache, progressWriter(cfg.Progress, "netns: image: "))
	if err != nil {
		return nil, fmt.Errorf("guest image for the netns measurement: %w", err)
	}
	share := filepath.Join(tmp, "share")
	if err := os.MkdirAll(filepath.Join(share, "apps"), 0o755); err != nil {
		return nil, err
	}
	if err := copyFiles(cfg.AppsDir, filepath.Join(share, "apps")); err != nil {
		return nil, fmt.Errorf("copy the applications from %s: %w", cfg.AppsDir, err)
	}
	if err := copyFile(cfg.Binary, filepath.Join(share, "mlsgate"), 0o755); err != nil {
		return nil, fmt.Errorf("copy %s into the guest share: %w", cfg.Binary, err)
	}
	const memory = 1024
	var b BackendStart
	res, err := guestRun{what: "netns", img: img, share: share, test: "^TestVMStartGuestJob$", env: guestJobEnv,
		job:    guestJob{Repeat: cfg.Repeat, URL: cfg.URL, APIPort: cfg.APIPort, Apps: "/mnt/apps", Binary: "/mnt/mlsgate", Out: "/mnt/netns.json"},
		result: "netns.json", timeout: 30 * time.Minute, memory: memory, progress: cfg.Progress}.run(ctx, &b)
	if err != nil {
		return nil, err
	}
	b.Where = fmt.Sprintf("inside Debian's kernel %s under QEMU (this host's kernel lacks ESP); agent, loader and namespace guests all in that one VM", img.KernelRelease)
	b.Hardware = fmt.Sprintf("%d host cores; one QEMU %s VM, 1 vCPU, %d MiB%s", runtime.NumCPU(), strings.ToUpper(res.Accel), memory, noKVM(res.Accel))
	return &b, nil
}

// runGuestJob is the guest side of measureNetnsInGuest: the netns
// measurement on the guest's kernel, written as JSON to the job's Out.
func runGuestJob(ctx context.Context, path string) error {
	var job guestJob
	if err := readGuestJob(path, &job); err != nil {
		return err
	}
	if err := xfrm.ProbeESP(); err != nil {
		return fmt.Errorf("the guest kernel cannot hold ESP SAs either: %w", err)
	}
	cfg := VMStartConfig{Backends: []string{"netns"}, Repeat: job.Repeat, URL: job.URL, APIPort: job.APIPort, AppsDir: job.Apps, Binary: job.Binary,
		Progress: func(f string, a ...any) { fmt.Printf(f+"\n", a...) }}
	if err := cfg.defaults(); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "vmstart-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	b, err := measureBackend(ctx, cfg, &backend.Netns{Binary: cfg.Binary, StateDir: filepath.Join(tmp, "netns")}, filepath.Join(tmp, "run"))
	if err != nil {
		return err
	}
	out, err := json.Marshal(b)
	if err != nil {
		return err
	}
	return os.WriteFile(job.Out, out, 0o644)
}

// measureQEMU prepares a guest image whose init starts the real update
// daemon and measures the QEMU backend with it.
func measureQEMU(ctx context.Context, cfg VMStartConfig, tmp string) (*BackendStart, error) {
	if _, err := exec.LookPath(backend.DefaultQEMUBinary); err != nil {
		return nil, fmt.Errorf("%w: %s is missing (make deps-guest)", image.ErrMissingTools, backend.DefaultQEMUBinary)
	}
	img, err := image.Prepare(ctx, cfg.GuestCache, progressWriter(cfg.Progress, "qemu: image: "))
	if err != nil {
		return nil, fmt.Errorf("guest image: %w", err)
	}
	dir := filepath.Join(tmp, "qemu-image")
	initrd, err := qemuInitrd(ctx, img, cfg, dir)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	q := &backend.QEMU{Kernel: img.Kernel, Initrd: initrd, Accel: cfg.Accel, Memory: cfg.QEMUMemory, StateDir: filepath.Join(tmp, "qemu"),
		Progress: func(s string) { cfg.Progress("qemu: %s", s) }}
	b, err := measureBackend(ctx, cfg, q, filepath.Join(tmp, "qemu-run"))
	if err != nil {
		return nil, err
	}
	b.Where = fmt.Sprintf("this host's kernel %s (agent, loader, taps in the root namespace); guests boot Debian's kernel %s", kernelRelease(), img.KernelRelease)
	b.Hardware = fmt.Sprintf("%d host cores; guest 1 vCPU, %d MiB, QEMU %s%s", runtime.NumCPU(), cfg.QEMUMemory, strings.ToUpper(cfg.Accel), noKVM(cfg.Accel))
	return b, nil
}

func noKVM(accel string) string {
	if accel == "tcg" {
		return ", no KVM"
	}
	return ""
}

// qemuSkipModules are guestvm's modules a QEMU-backend guest does not need
// (9p is the harness's share; the rest serve the in-guest tests).
var qemuSkipModules = []string{"9pnet_virtio", "9p", "veth", "dummy", "sch_ingress", "cls_bpf", "virtio_pci"}

// qemuInitrd writes dir/initrd: the guestvm image's initramfs with
// cfg.Binary as /sbin/mlsgate, virtio-net (which the image does not pack)
// from the cached kernel package, and an InitScript /init that loads the
// ESP modules and virtio-net and starts the update daemon.
func qemuInitrd(ctx context.Context, img *image.Image, cfg VMStartConfig, dir string) (string, error) {
	cache := cfg.GuestCache
	if cache == "" {
		cache = image.DefaultCacheDir()
	}
	debs, _ := filepath.Glob(filepath.Join(cache, "debs", "linux-image-"+img.KernelRelease+"_*.deb"))
	if len(debs) == 0 {
		return "", fmt.Errorf("no kernel package for %s under %s/debs: remove %s and let image.Prepare download it again", img.KernelRelease, cache, img.Dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	rel := "./lib/modules/" + img.KernelRelease + "/kernel/"
	kos := []string{rel + "net/core/failover.ko", rel + "drivers/net/net_failover.ko", rel + "drivers/net/virtio_net.ko"}
	script := `deb=$1 dir=$2; shift 2; dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir" "$@"`
	cmd := exec.CommandContext(ctx, "sh", append([]string{"-c", script, "sh", debs[0], dir}, kos...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("extract virtio-net from %s: %v\n%s", debs[0], err, out)
	}
	bin, err := os.ReadFile(cfg.Binary)
	if err != nil {
		return "", err
	}
	var modules []string
	for _, m := range img.Modules {
		if !slices.Contains(qemuSkipModules, m) {
			modules = append(modules, m)
		}
	}
	modules = append(modules, "virtio_pci")
	files := []backend.File{{Path: "sbin/mlsgate", Mode: 0o755, Data: bin}}
	for _, ko := range kos {
		data, err := os.ReadFile(filepath.Join(dir, ko))
		if err != nil {
			return "", err
		}
		p := "/lib/modules/extra/" + filepath.Base(ko)
		files = append(files, backend.File{Path: p, Mode: 0o644, Data: data})
		modules = append(modules, p)
	}
	files = append(files, backend.File{Path: "init", Mode: 0o755, Data: []byte(backend.InitScript(backend.InitOptions{Modules: modules}))})
	out := filepath.Join(dir, "initrd")
	if err := backend.AppendInitramfs(out, img.Initrd, files); err != nil {
		return "", err
	}
	return out, nil
}

// progressWriter turns written lines into Progress calls.
func progressWriter(progress func(string, ...any), prefix string) io.Writer {
	return lineWriter(func(line string) { progress("%s%s", prefix, line) })
}

type lineWriter func(string)

func (w lineWriter) Write(b []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if line != "" {
			w(line)
		}
	}
	return len(b), nil
}

func copyFiles(src, dst string) error {
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Type().IsRegular() {
			if err := copyFile(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name()), 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, mode)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// FormatVMStart prints the result as the paper's Table 1, with the
// paper's numbers beside the medians measured here, then the step
// breakdown and what each phase includes.
func FormatVMStart(r *VMStartResult) string {
	var b bytes.Buffer
	sec := func(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
	// The ready pool's hits are milliseconds: shown in them.
	medMS := func(be *BackendStart, sc string, f func(LoadSummary) time.Duration) string {
		m, ok := be.Median(sc)
		if !ok || m.Runs == 0 {
			return "—"
		}
		return fmt.Sprintf("%.1f ms", float64(f(m))/float64(time.Millisecond))
	}
	med := func(be *BackendStart, sc string, f func(LoadSummary) time.Duration) string {
		m, ok := be.Median(sc)
		if !ok || m.Runs == 0 {
			return "—"
		}
		return sec(f(m))
	}
	conf := func(m LoadSummary) time.Duration { return m.Configure }
	load := func(m LoadSummary) time.Duration { return m.Load }
	total := func(m LoadSummary) time.Duration { return m.Total }

	fmt.Fprintf(&b, "Table 1 reproduced: %s, median of %d loads per cell (host kernel %s, %d cores, %s)\n\n",
		r.URL, r.Repeat, r.HostKernel, r.HostCPUs, r.When.Format("2006-01-02"))
	b.WriteString("| | Operation | Paper (Xen, 2008) |")
	for _, be := range r.Backends {
		fmt.Fprintf(&b, " %s |", be.Backend)
	}
	b.WriteString("\n|---|---|---:|")
	for range r.Backends {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	row := func(group, op, paper string, cell func(*BackendStart) string) {
		fmt.Fprintf(&b, "| %s | %s | %s |", group, op, paper)
		for _, be := range r.Backends {
			fmt.Fprintf(&b, " %s |", cell(be))
		}
		b.WriteString("\n")
	}
	none := func(*BackendStart) string { return "—" }
	row("Hardware", "", "Xen dom0 (paper's testbed)", func(be *BackendStart) string { return be.Hardware })
	row("From scratch", "Configure/Load Policy", fmt.Sprintf("%.2f s", PaperScratchConfigure), func(be *BackendStart) string { return med(be, Scratch, conf) })
	row("", "Loading Browser and Page (here: boot + first answer)", fmt.Sprintf("%.2f s", PaperScratchLoad), func(be *BackendStart) string { return med(be, Scratch, load) })
	row("", "total", fmt.Sprintf("%.2f s", PaperScratchConfigure+PaperScratchLoad), func(be *BackendStart) string { return med(be, Scratch, total) })
	row("Pre-loaded VMs", "Configure/Load Policy", fmt.Sprintf("%.2f s", PaperPreloadedConfigure), func(be *BackendStart) string { return med(be, Preloaded, conf) })
	row("", "Loading Page (here: first answer)", fmt.Sprintf("%.2f s", PaperPreloadedLoad), func(be *BackendStart) string { return med(be, Preloaded, load) })
	row("", "total", fmt.Sprintf("%.2f s", PaperPreloadedConfigure+PaperPreloadedLoad), func(be *BackendStart) string { return med(be, Preloaded, total) })
	row("", "idle guest's boot, beforehand (off the path)", "—", func(be *BackendStart) string {
		return med(be, Preloaded, func(m LoadSummary) time.Duration { return m.PreBoot })
	})
	row("Ready pool (issue 14)", "Configure (resolve, authorize, hand-out)", "—", func(be *BackendStart) string { return medMS(be, ReadyPool, conf) })
	row("", "Loading Page (here: first answer)", "—", func(be *BackendStart) string { return medMS(be, ReadyPool, load) })
	row("", "total", "—", func(be *BackendStart) string { return medMS(be, ReadyPool, total) })
	row("", "ready guest's boot and configuration, beforehand (off the path)", "—", func(be *BackendStart) string {
		return med(be, ReadyPool, func(m LoadSummary) time.Duration { return m.PreBoot })
	})
	row("Native Browser", "Cold-start Loading Page", fmt.Sprintf("%.2f s", PaperNativeCold), none)
	row("", "Warm-start Loading Page", fmt.Sprintf("%.2f s", PaperNativeWarm), none)
	row("Tahoma", "new browser VM (fewer configuration tasks)", fmt.Sprintf("~%.0f s", PaperTahoma), none)

	ms3 := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
	b.WriteString("\nIssue 14's targets (medians of this run):\n\n")
	for _, be := range r.Backends {
		if m, ok := be.Median(ReadyPool); ok && m.Runs > 0 {
			fmt.Fprintf(&b, "- %s ready-pool hit, configure: %s (target ≤ %s): %s\n", be.Backend, ms3(m.Configure), ms3(TargetReadyConfigure), targetMet(m.Configure <= TargetReadyConfigure))
			first := time.Duration(0)
			for _, st := range m.Steps {
				if st.Name == StepFirstAnswer {
					first = st.Duration
				}
			}
			if be.Backend == "netns" {
				fmt.Fprintf(&b, "- %s ready-pool hit, first answer: %s (target ≤ %s): %s\n", be.Backend, ms3(first), ms3(TargetReadyFirstAnswerN), targetMet(first <= TargetReadyFirstAnswerN))
			} else {
				fmt.Fprintf(&b, "- %s ready-pool hit, first answer: %s\n", be.Backend, ms3(first))
			}
		}
		if m, ok := be.Median(Preloaded); ok && m.Runs > 0 {
			line := fmt.Sprintf("- %s idle takeover, configure: %s", be.Backend, ms3(m.Configure))
			if be.Backend == "qemu" {
				line += fmt.Sprintf(" (target ≤ %s): %s", ms3(TargetIdleTakeoverQEMU), targetMet(m.Configure <= TargetIdleTakeoverQEMU))
			}
			b.WriteString(line + "\n")
		}
	}

	b.WriteString("\nThe push to the guest's update daemon, part by part (median, ms; \"guest:\" parts are the daemon's own report):\n\n| part |")
	for _, be := range r.Backends {
		fmt.Fprintf(&b, " %s scratch | %s pre-loaded |", be.Backend, be.Backend)
	}
	b.WriteString("\n|---|")
	for range r.Backends {
		b.WriteString("---:|---:|")
	}
	b.WriteString("\n")
	var partNames []string
	for _, be := range r.Backends {
		for _, m := range be.Medians {
			for _, s := range m.PushParts {
				if !slices.Contains(partNames, s.Name) {
					partNames = append(partNames, s.Name)
				}
			}
		}
	}
	for _, n := range partNames {
		fmt.Fprintf(&b, "| %s |", n)
		for _, be := range r.Backends {
			for _, sc := range []string{Scratch, Preloaded} {
				m, _ := be.Median(sc)
				cell := "—"
				for _, s := range m.PushParts {
					if s.Name == n {
						cell = fmt.Sprintf("%.1f", float64(s.Duration)/float64(time.Millisecond))
					}
				}
				fmt.Fprintf(&b, " %s |", cell)
			}
		}
		b.WriteString("\n")
	}

	b.WriteString("\nSteps (median, ms):\n\n| step |")
	for _, be := range r.Backends {
		fmt.Fprintf(&b, " %s scratch | %s pre-loaded | %s ready pool |", be.Backend, be.Backend, be.Backend)
	}
	b.WriteString("\n|---|")
	for range r.Backends {
		b.WriteString("---:|---:|---:|")
	}
	b.WriteString("\n")
	var names []string
	for _, be := range r.Backends {
		for _, m := range be.Medians {
			for _, s := range m.Steps {
				if s.Name != "ready" && !slices.Contains(names, s.Name) {
					names = append(names, s.Name)
				}
			}
		}
	}
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }
	for _, n := range names {
		shown := n
		if n == "acquire" {
			shown = "acquire (scratch: boot)"
		}
		fmt.Fprintf(&b, "| %s |", shown)
		for _, be := range r.Backends {
			for _, sc := range []string{Scratch, Preloaded, ReadyPool} {
				m, _ := be.Median(sc)
				cell := "—"
				for _, s := range m.Steps {
					if s.Name == n {
						cell = ms(s.Duration)
					}
				}
				fmt.Fprintf(&b, " %s |", cell)
			}
		}
		b.WriteString("\n")
	}
	// The Xen hand-out inside acquire: xl unpause of a paused guest.
	var unpaused bool
	for _, be := range r.Backends {
		for _, m := range be.Medians {
			unpaused = unpaused || m.Unpause > 0
		}
	}
	if unpaused {
		b.WriteString("| of acquire: xl unpause (Xen hand-out) |")
		for _, be := range r.Backends {
			for _, sc := range []string{Scratch, Preloaded, ReadyPool} {
				m, _ := be.Median(sc)
				cell := "—"
				if m.Unpause > 0 {
					cell = ms(m.Unpause)
				}
				fmt.Fprintf(&b, " %s |", cell)
			}
		}
		b.WriteString("\n")
	}

	b.WriteString(`
What the phases include:
- Configure/Load Policy: the loader's steps on the real policy store, CA and pool:
  resolve the URL, authorize the host as caller, acquire a guest (pre-loaded: take
  over the idle guest), bundle (SPIs, SELinux modules, XFRM SAs and policies,
  mapper policy; no certificates: the guest's daemon presents the one of its
  boot), compliance (with the modules compiled by checkmodule, once per module
  text, at the loader's start in the background), push the
  guest policy to its update daemon over mutual TLS (the daemon applies modules,
  mapper policy and XFRM in the guest's kernel before it answers), host policy
  (the guest's range, SAs and peers into the agent's BPF maps; the host's modules
  installed with semodule where the host runs its store's policy (the Xen dom0,
  as 'mlsgate loader --semodule'), else compiled where checkmodule exists). The
  host installs no SAs of its own (Host.XFRM nil).
- Loading (Browser and) Page: from scratch, the boot (the acquire step: a VM
  number, a guest certificate, the agent told of the vif, the backend's boot until
  the guest's update daemon accepts TCP); then, in both scenarios, the first
  answer: a fresh TCP connection and TLS handshake from the host to the guest's
  daemon through the fast path on its vif, whose status must name the bundle just
  pushed. The handshake resumes the session of the loader's last connection to
  the daemon (its push's): the hybrid post-quantum key exchange is done again,
  the certificates are not signed and verified again, and both ends check
  revocation, validity and names again. There is no browser: the paper's page load is not reproduced.
- The pool's refill boots the idle guest before the pre-loaded load; its time is
  shown apart and is in no total.
- Ready pool: the application asks for one ready guest (pool: {ready: 1}); the
  refill boots it (its update daemon's certificate is issued then) and runs the
  whole configuration (bundle with the guest's own SA keys, compliance, push,
  host policy) before the load, shown
  apart and in no total. The load resolves, authorizes and takes the guest (one
  committed write to the pool's table); its first answer is as above.
`)
	var emulated, native []string
	for _, be := range r.Backends {
		if strings.Contains(be.Hardware, "TCG") {
			emulated = append(emulated, be.Backend)
		} else {
			native = append(native, be.Backend)
		}
	}
	if len(emulated) > 0 {
		fmt.Fprintf(&b, "- Emulated figures: the %s columns ran under QEMU's TCG (software emulation, no KVM), so every boot and\n  in-guest step there is many times slower than on hardware; the paper's Xen figures are hardware ones.", strings.Join(emulated, " and "))
		if len(native) > 0 {
			fmt.Fprintf(&b, " Not emulated: %s.", strings.Join(native, ", "))
		}
		b.WriteString("\n")
	}
	for _, be := range r.Backends {
		fmt.Fprintf(&b, "- %s: %s.\n", be.Backend, be.Where)
		for _, runs := range [][]LoadRun{be.Scratch, be.Preloaded, be.Ready} {
			if len(runs) > 0 {
				fmt.Fprintf(&b, "  - %s load: the guest's daemon installed %d SAs and %d XFRM policies in the guest's kernel\n", runs[0].Scenario, runs[0].GuestSAs, runs[0].GuestPolicies)
			}
		}
		for _, n := range be.GuestNotes {
			fmt.Fprintf(&b, "  - guest daemon: %s\n", n)
		}
	}
	return b.String()
}
