package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/loader/image"
)

// The XFRM benchmark: SAs with SELinux contexts installed through
// agent/xfrm into a real kernel's SAD, and the time until the agent's XFRM
// sync has them in its BPF maps. It runs inside Debian's kernel under QEMU
// (the loader/image guest), which has ESP and SELinux; this host's kernel may
// have neither.

// XFRMSyncConfig says how many SAs to install in the guest.
type XFRMSyncConfig struct {
	SAs int
	// Interval, when set, adds a paced install: one SA every Interval.
	Interval time.Duration
	// GuestCache is the guestvm image cache; "" is image.DefaultCacheDir.
	GuestCache string
	// CachedOnly skips the benchmark (ErrNoCachedImage) unless a guest
	// image is already in the cache, so that a quick run never downloads
	// a kernel or builds an image.
	CachedOnly bool
	Progress   func(format string, args ...any)
}

// ErrNoCachedImage says that CachedOnly found no guest image in the cache.
var ErrNoCachedImage = errors.New("no guest image in the cache")

// XFRMSyncResult is the XFRM install rate and SA→map sync latency measured
// in the guest kernel.
type XFRMSyncResult struct {
	SAs int `json:"sas"`
	// BareInstall is installing the SAs through agent/xfrm with no agent
	// running: the baseline of Install.
	BareInstall time.Duration `json:"bare_install_ns"`
	BareRate    float64       `json:"bare_sas_per_second"`
	// Install is installing them while the agent follows the SAD and
	// writes its maps (on the guest's one vCPU).
	Install time.Duration `json:"install_ns"`
	Rate    float64       `json:"sas_per_second"`
	// SyncP50, SyncP99, SyncMax: from one SA's AddState returning to the
	// agent's status counting it in the maps (status polled every
	// PollInterval).
	SyncP50      time.Duration `json:"sync_p50_ns"`
	SyncP99      time.Duration `json:"sync_p99_ns"`
	SyncMax      time.Duration `json:"sync_max_ns"`
	PollInterval time.Duration `json:"poll_interval_ns"`
	// Interval, PacedP50, PacedP99, PacedMax: SA→map latency when the SAs
	// are installed at a steady rate, one every Interval (the rate of a
	// large dom0's rekeys), rather than back to back.
	Interval time.Duration `json:"interval_ns,omitempty"`
	PacedP50 time.Duration `json:"paced_p50_ns,omitempty"`
	PacedP99 time.Duration `json:"paced_p99_ns,omitempty"`
	PacedMax time.Duration `json:"paced_max_ns,omitempty"`
	// AllSynced is AddState of the first SA to all of them in the maps.
	AllSynced time.Duration `json:"all_synced_ns"`
	// Slots is the agent's SA slots in use once all were synced.
	Slots int `json:"slots"`
	// AgentReady is the agent's start to its first reconcile (loading the
	// fast path: the verifier under TCG).
	AgentReady time.Duration `json:"agent_ready_ns"`
	// Where: kernel and emulation; Hardware: the host and the VM.
	Kernel   string `json:"kernel"`
	Accel    string `json:"accel"`
	Hardware string `json:"hardware"`
}

// xfrmJobEnv names the job file of the XFRM measurement inside the guest
// kernel; TestXFRMSyncGuestJob runs it when set.
const xfrmJobEnv = "MLSGATE_BENCH_XFRM_JOB"

// xfrmJob is what the host asks of the bench test binary in the guest.
type xfrmJob struct {
	SAs int    `json:"sas"`
	Out string `json:"out"` // guest path of the result
	// Interval paces a second install: one SA every Interval (0: none).
	Interval time.Duration `json:"interval_ns"`
}

// MeasureXFRMSync boots Debian's kernel under QEMU with the bench test
// binary, which installs cfg.SAs labeled SAs there, first with no agent and
// then with the real agent (agent.Start: the XFRM watcher and the fast
// path's maps) following them, and reports both install rates and the
// SA→map latency. Root only (QEMU, the guest image cache).
func MeasureXFRMSync(ctx context.Context, cfg XFRMSyncConfig) (*XFRMSyncResult, error) {
	if cfg.SAs < 1 || cfg.SAs > 60000 {
		return nil, fmt.Errorf("xfrm bench: %d SAs: want 1 to 60000 (the agent's default SPI slots, less room)", cfg.SAs)
	}
	progress := cfg.Progress
	if progress == nil {
		progress = func(string, ...any) {}
	}
	cache := cfg.GuestCache
	if cache == "" {
		cache = image.DefaultCacheDir()
	}
	if cfg.CachedOnly {
		if imgs, _ := filepath.Glob(filepath.Join(cache, "images", "*", "manifest.json")); len(imgs) == 0 {
			return nil, fmt.Errorf("%w under %s (make bench builds one; or run kernel-tests' guest tests once)", ErrNoCachedImage, cache)
		}
	}
	img, err := image.Prepare(ctx, cfg.GuestCache, progressWriter(progress, "xfrm: image: "))
	if err != nil {
		return nil, fmt.Errorf("guest image for the xfrm measurement: %w", err)
	}
	share, err := os.MkdirTemp("", "mlsgate-xfrm-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(share)
	const memory = 1024
	var r XFRMSyncResult
	res, err := guestRun{what: "xfrm", img: img, share: share, test: "^TestXFRMSyncGuestJob$", env: xfrmJobEnv,
		job: xfrmJob{SAs: cfg.SAs, Out: "/mnt/xfrm.json", Interval: cfg.Interval}, result: "xfrm.json", timeout: 20 * time.Minute, memory: memory, progress: progress}.run(ctx, &r)
	if err != nil {
		return nil, err
	}
	r.Kernel, r.Accel = img.KernelRelease, res.Accel
	r.Hardware = fmt.Sprintf("%d host cores; one QEMU %s VM, 1 vCPU, %d MiB%s", runtime.NumCPU(), strings.ToUpper(res.Accel), memory, noKVM(res.Accel))
	return &r, nil
}

// Addresses and contexts of the guest side: SAs from the host to guest 7,
// as the inguest agent test installs them.
var (
	xfrmHost  = netip.MustParseAddr("10.71.0.1")
	xfrmGuest = netip.MustParseAddr("10.71.0.7")
	xfrmKey   = []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}
)

// xfrmPoll is how often the measurement asks the agent for its count.
const xfrmPoll = 2 * time.Millisecond

const (
	xfrmReqid   = 7011
	xfrmSPIBase = 0xc0000100
)

// xfrmState is SA i of the measurement: ESP transport, AES-GCM, with an
// SELinux context whose level varies.
func xfrmState(i int) xfrm.State {
	return xfrm.State{
		Src: xfrmHost, Dst: xfrmGuest, SPI: uint32(xfrmSPIBase + i), Proto: xfrm.ProtoESP, Mode: xfrm.ModeTransport, Reqid: xfrmReqid,
		Context:      fmt.Sprintf("system_u:system_r:analyst_t:s%d:c%d", i%10, i%100),
		AEAD:         &xfrm.Algo{Name: "rfc4106(gcm(aes))", Key: xfrmKey, ICVBits: 128},
		ReplayWindow: 32,
	}
}

// runXFRMJob is the guest side of MeasureXFRMSync, in the guest's own
// network namespace: the bare install, a flush, the agent's start, and the
// timed install it follows. The result goes to the job's Out as JSON.
func runXFRMJob(ctx context.Context, path string) error {
	var job xfrmJob
	if err := readGuestJob(path, &job); err != nil {
		return err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return err
	}
	h, err := xfrm.NewHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	n := job.SAs
	res := &XFRMSyncResult{SAs: n, PollInterval: xfrmPoll}

	// Baseline: the same SAs with nobody listening. An untimed round first
	// pays the kernel's one-time costs (the AEAD's instantiation, the SAD's
	// hash tables growing), which the timed rounds then share alike.
	var start time.Time
	for round := range 2 {
		start = time.Now()
		for i := range n {
			if err := h.AddState(xfrmState(i)); err != nil {
				return fmt.Errorf("bare install, SA %d of %d: %w", i, n, err)
			}
		}
		if round == 1 {
			res.BareInstall = time.Since(start)
			res.BareRate = float64(n) / res.BareInstall.Seconds()
		}
		if got, err := h.DeleteStatesByReqid(xfrmReqid); err != nil || got != n {
			return fmt.Errorf("remove the bare SAs: %d of %d removed (%v)", got, n, err)
		}
	}
	fmt.Printf("bare install: %d SAs in %v (%.0f SAs/s)\n", n, res.BareInstall.Round(time.Millisecond), res.BareRate)

	a, stop, err := startGuestAgent(ctx, res)
	if err != nil {
		return err
	}
	defer stop()
	base := a.Status().SAs.Synced

	// Throughput: as fast as agent/xfrm installs them.
	lat, install, all, err := timedInstall(h, a, n, 0, base)
	if err != nil {
		return err
	}
	res.Install, res.AllSynced = install, all
	res.Rate = float64(n) / res.Install.Seconds()
	res.SyncP50, res.SyncP99, res.SyncMax = lat[n/2], lat[min(n-1, n*99/100)], lat[n-1]
	fmt.Printf("with the agent: %d SAs in %v (%.0f SAs/s); SA → maps p50 %v p99 %v max %v; all in the maps after %v\n",
		n, res.Install.Round(time.Millisecond), res.Rate, res.SyncP50, res.SyncP99, res.SyncMax, res.AllSynced.Round(time.Millisecond))
	st := a.Status()
	res.Slots = st.Maps.Slots
	if st.Maps.Slots < n || st.SAs.BadContext > 0 || st.SAs.NoGuest > 0 {
		return fmt.Errorf("after the install: %d slots in the maps for %d SAs, %d with a bad context, %d without a guest: %+v",
			st.Maps.Slots, n, st.SAs.BadContext, st.SAs.NoGuest, st.SAs)
	}
	if _, err := h.DeleteStatesByReqid(xfrmReqid); err != nil {
		return fmt.Errorf("remove the SAs: %w", err)
	}
	// Latency at a steady rate: one SA every job.Interval, once the agent
	// has seen the deletions.
	if job.Interval > 0 {
		if !waitFor(func() bool { return a.Status().SAs.Synced == base }, 2*time.Minute) {
			return fmt.Errorf("the agent still counts %d SAs 2 minutes after their deletion, want %d: %+v", a.Status().SAs.Synced, base, a.Status())
		}
		lat, _, _, err := timedInstall(h, a, n, job.Interval, base)
		if err != nil {
			return err
		}
		res.Interval = job.Interval
		res.PacedP50, res.PacedP99, res.PacedMax = lat[n/2], lat[min(n-1, n*99/100)], lat[n-1]
		fmt.Printf("one SA every %v: SA → maps p50 %v p99 %v max %v\n", job.Interval, res.PacedP50, res.PacedP99, res.PacedMax)
		if _, err := h.DeleteStatesByReqid(xfrmReqid); err != nil {
			return fmt.Errorf("remove the SAs: %w", err)
		}
	}
	out, err := json.Marshal(res)
	if err != nil {
		return err
	}
	return os.WriteFile(job.Out, out, 0o644)
}

// timedInstall installs SAs 0..n-1, one every interval (0: back to back),
// while polling the agent's count of synced SAs, and returns each SA's
// time from AddState returning to the agent counting it (sorted), the
// install's time and the time until all were counted. The agent counts
// SAs, not which ones: the k-th counted is taken to be the k-th installed.
// SAs are installed in order and synced in batches, so this is exact up
// to the order within one batch.
func timedInstall(h *xfrm.Handle, a *agent.Agent, n int, interval time.Duration, base int) ([]time.Duration, time.Duration, time.Duration, error) {
	added := make([]time.Time, n)
	seen := make([]time.Time, n)
	polled := make(chan error, 1)
	go func() {
		got := 0
		deadline := time.Now().Add(10 * time.Minute)
		for got < n {
			if time.Now().After(deadline) {
				polled <- fmt.Errorf("only %d of %d SAs reached the agent's maps in 10 minutes: %+v", got, n, a.Status())
				return
			}
			st := a.Status()
			now := time.Now()
			for got < n && got < st.SAs.Synced-base {
				seen[got] = now
				got++
			}
			time.Sleep(xfrmPoll)
		}
		polled <- nil
	}()
	start := time.Now()
	for i := range n {
		if interval > 0 {
			time.Sleep(time.Until(start.Add(time.Duration(i) * interval)))
		}
		if err := h.AddState(xfrmState(i)); err != nil {
			return nil, 0, 0, fmt.Errorf("install with the agent, SA %d of %d: %w", i, n, err)
		}
		added[i] = time.Now()
	}
	install := time.Since(start)
	if err := <-polled; err != nil {
		return nil, 0, 0, err
	}
	lat := make([]time.Duration, n)
	for i := range n {
		lat[i] = max(0, seen[i].Sub(added[i]))
	}
	slices.Sort(lat)
	return lat, install, seen[n-1].Sub(start), nil
}

// startGuestAgent runs the real agent in this process over a bpffs of its
// own, with guest 7 (the SAs' destination) declared, and waits until it is
// ready; res.AgentReady gets the wait.
func startGuestAgent(ctx context.Context, res *XFRMSyncResult) (*agent.Agent, func(), error) {
	dir, err := os.MkdirTemp("", "xfrm-agent-")
	if err != nil {
		return nil, nil, err
	}
	bpffs := filepath.Join(dir, "bpffs")
	if err := os.Mkdir(bpffs, 0o700); err != nil {
		return nil, nil, err
	}
	if err := unix.Mount("bpffs", bpffs, "bpf", 0, ""); err != nil {
		return nil, nil, fmt.Errorf("mount bpffs on %s: %w", bpffs, err)
	}
	cleanup := []func(){func() { unix.Unmount(bpffs, unix.MNT_DETACH); os.RemoveAll(dir) }}
	stop := func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
	}
	cfg := agent.DefaultConfig()
	cfg.StateDir, cfg.PinDir, cfg.Socket, cfg.Listen = filepath.Join(dir, "state"), filepath.Join(bpffs, "mlsgate"), "", ""
	cfg.Integrity = map[string]label.Integrity{"analyst_t": 5}
	start := time.Now()
	a, k, err := agent.Start(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		stop()
		return nil, nil, fmt.Errorf("start the agent in the guest: %w", err)
	}
	cleanup = append(cleanup, func() { k.Close() })
	r, _ := label.ParseBounds("s0-s15:c0.c1023/i0-i15")
	if err := a.SetGuest(agent.GuestSpec{Interface: "vif7.0", VM: 7, App: 1, Range: r, Addr4: xfrmGuest}); err != nil {
		stop()
		return nil, nil, err
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	cleanup = append(cleanup, func() { cancel(); <-done })
	if !waitFor(func() bool { return a.Status().Ready }, 2*time.Minute) {
		stop()
		return nil, nil, fmt.Errorf("the agent in the guest was not ready after 2 minutes: %+v", a.Status())
	}
	res.AgentReady = time.Since(start)
	fmt.Printf("agent ready after %v\n", res.AgentReady.Round(time.Millisecond))
	return a, stop, nil
}

// FormatXFRMSync is the guest control-plane table.
func FormatXFRMSync(r *XFRMSyncResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nXFRM SAs with SELinux contexts in the guest kernel, under QEMU %s (Debian's kernel %s; %s): %d SAs installed through agent/xfrm, after an untimed warm-up round, first with no agent (the baseline), then with the agent following the SAD into its BPF maps on the same vCPU. Sync latency: from AddState returning to the agent's status counting the SA (polled every %v).\n\n",
		strings.ToUpper(r.Accel), r.Kernel, r.Hardware, r.SAs, r.PollInterval)
	b.WriteString("| SAs | install, no agent | SAs/s | install, agent running | SAs/s | × no agent | SA → map p50 | p99 | max | all in the maps |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	ratio := 0.0
	if r.BareRate > 0 {
		ratio = r.Rate / r.BareRate
	}
	fmt.Fprintf(&b, "| %d | %v | %.0f | %v | %.0f | %.2f | %v | %v | %v | %v |\n", r.SAs,
		r.BareInstall.Round(time.Millisecond), r.BareRate, r.Install.Round(time.Millisecond), r.Rate, ratio,
		r.SyncP50.Round(100*time.Microsecond), r.SyncP99.Round(100*time.Microsecond), r.SyncMax.Round(100*time.Microsecond), r.AllSynced.Round(time.Millisecond))
	if r.Interval > 0 {
		fmt.Fprintf(&b, "\nAt a steady rate, one SA every %v (the rest as above): SA → map p50 %v, p99 %v, max %v.\n",
			r.Interval, r.PacedP50.Round(100*time.Microsecond), r.PacedP99.Round(100*time.Microsecond), r.PacedMax.Round(100*time.Microsecond))
	}
	fmt.Fprintf(&b, "\nThe agent's start in the guest (loading the fast path; the verifier under %s) took %v. Emulated: compare with the host's own numbers only as ratios.\n",
		strings.ToUpper(r.Accel), r.AgentReady.Round(time.Millisecond))
	return b.String()
}
