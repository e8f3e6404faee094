package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/bpf"
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
	BareCPU     time.Duration `json:"bare_cpu_ns"` // the installer process's CPU time
	// Install is installing them while the agent follows the SAD and
	// writes its maps (on the guest's one vCPU).
	Install time.Duration `json:"install_ns"`
	Rate    float64       `json:"sas_per_second"`
	// SyncP50, SyncP99, SyncMax: from one SA's AddState returning (in the
	// installer's process) to its entry in the agent's SA slot map (read
	// by an observer process, every PollInterval).
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
	// PacedPoll is the observer's period in the paced install.
	PacedPoll time.Duration `json:"paced_poll_ns,omitempty"`
	// CPUInstaller, CPUObserver, CPUAgent: each process's CPU time (user
	// and system) over the install with the agent running.
	CPUInstaller time.Duration `json:"cpu_installer_ns"`
	CPUObserver  time.Duration `json:"cpu_observer_ns"`
	CPUAgent     time.Duration `json:"cpu_agent_ns"`
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

// xfrmPoll and xfrmPollBurst are how often the observer looks for the SAs
// not yet seen, at a steady rate and back to back: under TCG each look
// costs the vCPU the agent and the installer share (~0.3 ms), and back to
// back the agent is seconds behind, so a finer period there would only
// slow both.
const (
	xfrmPoll      = time.Millisecond
	xfrmPollBurst = 5 * time.Millisecond
)

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
	res := &XFRMSyncResult{SAs: n, PollInterval: xfrmPollBurst}

	// Baseline: the same SAs with nobody listening. An untimed round first
	// pays the kernel's one-time costs (the AEAD's instantiation, the SAD's
	// hash tables growing), which the timed rounds then share alike.
	// The timed round runs in an installer process of its own, as the
	// installs with the agent do.
	for round := range 2 {
		if round == 0 {
			for i := range n {
				if err := h.AddState(xfrmState(i)); err != nil {
					return fmt.Errorf("bare install, SA %d of %d: %w", i, n, err)
				}
			}
		} else {
			bare, err := installApart(ctx, xfrmPart{N: n, Alone: true})
			if err != nil {
				return fmt.Errorf("bare install: %w", err)
			}
			res.BareInstall, res.BareCPU = bare.install, bare.cpuInstall
			res.BareRate = float64(n) / res.BareInstall.Seconds()
		}
		if got, err := h.DeleteStatesByReqid(xfrmReqid); err != nil || got != n {
			return fmt.Errorf("remove the bare SAs: %d of %d removed (%v)", got, n, err)
		}
	}
	fmt.Printf("bare install: %d SAs in %v (%.0f SAs/s, CPU %v)\n", n, res.BareInstall.Round(time.Millisecond), res.BareRate, res.BareCPU.Round(time.Millisecond))

	a, pinDir, stop, err := startGuestAgent(ctx, res)
	if err != nil {
		return err
	}
	defer stop()
	base := a.Status().SAs.Synced
	part := xfrmPart{N: n, PinDir: pinDir, SlotBase: xfrmSPIBase - agent.DefaultConfig().SPIBase, Poll: xfrmPollBurst}

	// Throughput: as fast as agent/xfrm installs them.
	b2b, err := installApart(ctx, part)
	if err != nil {
		return err
	}
	lat := b2b.lat
	res.Install, res.AllSynced = b2b.install, b2b.all
	res.CPUInstaller, res.CPUObserver, res.CPUAgent = b2b.cpuInstall, b2b.cpuObserve, b2b.cpuAgent
	res.Rate = float64(n) / res.Install.Seconds()
	res.SyncP50, res.SyncP99, res.SyncMax = lat[n/2], lat[min(n-1, n*99/100)], lat[n-1]
	fmt.Printf("with the agent: %d SAs in %v (%.0f SAs/s); SA → maps p50 %v p99 %v max %v; all in the maps after %v; CPU: installer %v, agent %v, observer %v\n",
		n, res.Install.Round(time.Millisecond), res.Rate, res.SyncP50, res.SyncP99, res.SyncMax, res.AllSynced.Round(time.Millisecond),
		res.CPUInstaller.Round(time.Millisecond), res.CPUAgent.Round(time.Millisecond), res.CPUObserver.Round(time.Millisecond))
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
		part.Interval, part.Poll = job.Interval, xfrmPoll
		paced, err := installApart(ctx, part)
		if err != nil {
			return err
		}
		lat := paced.lat
		res.Interval, res.PacedPoll = job.Interval, xfrmPoll
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

// The timed installs run in two processes of their own beside the
// agent's, as on a host, where the loader or an IKE daemon installs SAs
// and the agent is another process: in one Go process with one vCPU (one
// P), an installer catching up on its schedule ran without yielding and
// held the agent's event goroutine off for up to the runtime's 10 ms
// preemption tick. The installer writes "i nanoseconds" (CLOCK_MONOTONIC,
// after AddState returns) for each SA to a pipe; the observer reads the
// pipe and, every xfrmPoll, looks up the slot of each SA not yet seen in
// the agent's pinned SA slot map.

// xfrmPartEnv holds a child's xfrmPart as JSON; xfrmPartFD is the pipe
// between the two (ExtraFiles[0]); the observer says on xfrmReadyFD
// (ExtraFiles[1]) that it is ready.
const (
	xfrmPartEnv = "MLSGATE_BENCH_XFRM_PART"
	xfrmPartFD  = 3
	xfrmReadyFD = 4
)

// xfrmPart is one child's work.
type xfrmPart struct {
	Role     string        `json:"role"` // "install" or "observe"
	N        int           `json:"n"`
	Interval time.Duration `json:"interval_ns"` // 0: back to back
	PinDir   string        `json:"pin_dir"`
	SlotBase uint32        `json:"slot_base"` // slot of SA 0
	Poll     time.Duration `json:"poll_ns"`   // the observer's period while an SA is outstanding
	Out      string        `json:"out"`       // the child's xfrmPartResult
	Alone    bool          `json:"alone"`     // no observer: the installer only, timed
}

// xfrmPartResult: the installer's start and end, the observer's time at
// which each SA was first seen in the map (CLOCK_MONOTONIC ns), and the
// installer's AddState times.
type xfrmPartResult struct {
	Start, End int64
	Added      []int64
	Seen       []int64
}

// selfCPU is this process's CPU time, user and system.
func selfCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func monoNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// apart is what installApart measured: each SA's time from AddState
// returning to its slot in the map (sorted), the install's time, the time
// from its start until all were in the map, and the CPU time (user and
// system) of each process over it.
type apart struct {
	lat                              []time.Duration
	install, all                     time.Duration
	cpuInstall, cpuObserve, cpuAgent time.Duration
}

// installApart runs the installer and the observer of p.
func installApart(ctx context.Context, p xfrmPart) (apart, error) {
	self, err := os.Executable()
	if err != nil {
		return apart{}, err
	}
	dir, err := os.MkdirTemp("", "xfrm-part-")
	if err != nil {
		return apart{}, err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	start := func(role string, fds ...*os.File) (*exec.Cmd, *strings.Builder, error) {
		q := p
		q.Role, q.Out = role, filepath.Join(dir, role+".json")
		b, err := json.Marshal(q)
		if err != nil {
			return nil, nil, err
		}
		var out strings.Builder
		cmd := exec.CommandContext(ctx, self, "-test.run", "^TestXFRMSyncGuestJob$", "-test.count", "1", "-test.v")
		cmd.Env = append(os.Environ(), xfrmPartEnv+"="+string(b))
		cmd.ExtraFiles = fds
		cmd.Stdout, cmd.Stderr = &out, &out
		return cmd, &out, cmd.Start()
	}
	result := func(role string) (xfrmPartResult, error) {
		var r xfrmPartResult
		b, err := os.ReadFile(filepath.Join(dir, role+".json"))
		if err == nil {
			err = json.Unmarshal(b, &r)
		}
		if err != nil {
			return r, fmt.Errorf("the %s process's result: %w", role, err)
		}
		return r, nil
	}
	cpu := func(c *exec.Cmd) time.Duration { return c.ProcessState.UserTime() + c.ProcessState.SystemTime() }
	if p.Alone {
		inst, out, err := start("install")
		if err == nil {
			err = inst.Wait()
		}
		if err != nil {
			return apart{}, fmt.Errorf("the installer: %w\n%s", err, tail(out.String(), 2000))
		}
		ir, err := result("install")
		if err != nil {
			return apart{}, err
		}
		return apart{install: time.Duration(ir.End - ir.Start), cpuInstall: cpu(inst)}, nil
	}
	r, w, err := os.Pipe()
	if err != nil {
		return apart{}, err
	}
	ready, readyW, err := os.Pipe()
	if err != nil {
		r.Close()
		w.Close()
		return apart{}, err
	}
	defer ready.Close()
	cpu0 := selfCPU() // this process: the agent, and this function waiting
	obs, obsOut, err := start("observe", r, readyW)
	r.Close()
	readyW.Close()
	if err != nil {
		w.Close()
		return apart{}, fmt.Errorf("start the observer: %w", err)
	}
	// The installer starts once the observer has the map open, so that no
	// SA waits in the pipe for the observer's start.
	if _, err := ready.Read(make([]byte, 1)); err != nil {
		w.Close()
		cancel()
		obs.Wait()
		return apart{}, fmt.Errorf("the observer never got ready: %v\n%s", err, tail(obsOut.String(), 2000))
	}
	inst, instOut, err := start("install", w)
	w.Close()
	if err == nil {
		err = inst.Wait()
	}
	if err != nil {
		cancel()
		obs.Wait()
		return apart{}, fmt.Errorf("the installer: %w\n%s", err, tail(instOut.String(), 2000))
	}
	if err := obs.Wait(); err != nil {
		return apart{}, fmt.Errorf("the observer: %w\n%s", err, tail(obsOut.String(), 2000))
	}
	ir, err := result("install")
	if err != nil {
		return apart{}, err
	}
	or, err := result("observe")
	if err != nil {
		return apart{}, err
	}
	if len(ir.Added) != p.N || len(or.Seen) != p.N {
		return apart{}, fmt.Errorf("%d SAs installed, %d seen, want %d", len(ir.Added), len(or.Seen), p.N)
	}
	a := apart{lat: make([]time.Duration, p.N), install: time.Duration(ir.End - ir.Start),
		cpuInstall: cpu(inst), cpuObserve: cpu(obs), cpuAgent: selfCPU() - cpu0}
	last := int64(0)
	for i := range p.N {
		a.lat[i] = time.Duration(max(0, or.Seen[i]-ir.Added[i]))
		last = max(last, or.Seen[i])
	}
	slices.Sort(a.lat)
	a.all = time.Duration(last - ir.Start)
	return a, nil
}

// runXFRMPart is a child's side of installApart.
func runXFRMPart(spec string) error {
	var p xfrmPart
	if err := json.Unmarshal([]byte(spec), &p); err != nil {
		return fmt.Errorf("%s: %w", xfrmPartEnv, err)
	}
	var pipe *os.File
	if !p.Alone {
		pipe = os.NewFile(xfrmPartFD, "xfrm-part-pipe")
	}
	var res xfrmPartResult
	var err error
	switch p.Role {
	case "install":
		res, err = installPart(p, pipe)
	case "observe":
		res, err = observePart(p, pipe)
	default:
		err = fmt.Errorf("%s: role %q", xfrmPartEnv, p.Role)
	}
	if err != nil {
		return err
	}
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	return os.WriteFile(p.Out, b, 0o600)
}

// installPart installs SAs 0..n-1, one every p.Interval (0: back to
// back), and tells the observer each one's time.
func installPart(p xfrmPart, pipe *os.File) (xfrmPartResult, error) {
	if pipe != nil {
		defer pipe.Close()
	}
	h, err := xfrm.NewHandle()
	if err != nil {
		return xfrmPartResult{}, err
	}
	defer h.Close()
	res := xfrmPartResult{Added: make([]int64, p.N)}
	line := make([]byte, 0, 32)
	start := time.Now()
	res.Start = monoNow()
	for i := range p.N {
		if p.Interval > 0 {
			time.Sleep(time.Until(start.Add(time.Duration(i) * p.Interval)))
		}
		if err := h.AddState(xfrmState(i)); err != nil {
			return res, fmt.Errorf("install with the agent, SA %d of %d: %w", i, p.N, err)
		}
		res.Added[i] = monoNow()
		if pipe == nil {
			continue
		}
		line = fmt.Appendf(line[:0], "%d %d\n", i, res.Added[i])
		if _, err := pipe.Write(line); err != nil {
			return res, fmt.Errorf("tell the observer: %w", err)
		}
	}
	res.End = monoNow()
	return res, nil
}

// observePart reads the installer's lines and polls the slot of each SA
// installed but not yet seen, until all p.N were seen.
func observePart(p xfrmPart, pipe *os.File) (xfrmPartResult, error) {
	m, err := bpf.OpenPinned(p.PinDir)
	if err != nil {
		return xfrmPartResult{}, err
	}
	defer m.Close()
	ready := os.NewFile(xfrmReadyFD, "xfrm-part-ready")
	_, err = ready.Write([]byte{1})
	ready.Close()
	if err != nil {
		return xfrmPartResult{}, fmt.Errorf("say ready: %w", err)
	}
	added := make(chan int, p.N)
	readErr := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			var i int
			var t int64
			if _, err := fmt.Sscanf(sc.Text(), "%d %d", &i, &t); err != nil || i < 0 || i >= p.N {
				readErr <- fmt.Errorf("installer line %q: %v", sc.Text(), err)
				return
			}
			added <- i
		}
		readErr <- sc.Err()
	}()
	res := xfrmPartResult{Seen: make([]int64, p.N)}
	var pending []int
	seen, closed := 0, false
	deadline := time.Now().Add(10 * time.Minute)
	drain := func() {
		for {
			select {
			case i := <-added:
				pending = append(pending, i)
			default:
				return
			}
		}
	}
	for seen < p.N {
		if time.Now().After(deadline) {
			return res, fmt.Errorf("only %d of %d SAs reached the agent's slot map in 10 minutes", seen, p.N)
		}
		// Nothing outstanding: wait for the installer rather than poll,
		// which would take the vCPU from the agent and the installer.
		if len(pending) == 0 && !closed {
			select {
			case i := <-added:
				pending = append(pending, i)
			case err := <-readErr:
				if err != nil {
					return res, err
				}
				closed = true
			case <-time.After(time.Until(deadline)):
				continue
			}
		}
		drain()
		if closed && len(pending) == 0 {
			return res, fmt.Errorf("the installer ended after %d of %d SAs were seen", seen, p.N)
		}
		// Oldest first, and no further than two SAs not yet in the map:
		// the agent writes them in the order their events came, so the
		// later ones are not there either, and every lookup under TCG
		// costs the vCPU the others share.
		now := monoNow()
		kept, misses := pending[:0], 0
		for k, i := range pending {
			if misses == 2 {
				kept = append(kept, pending[k:]...)
				break
			}
			var v bpf.FastpathSa
			err := m.SASlots.Lookup(p.SlotBase+uint32(i), &v)
			if err == nil && v.Flags&uint8(bpf.FastpathSaFlagSA_F_VALID) != 0 {
				res.Seen[i] = now
				seen++
				continue
			}
			if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return res, fmt.Errorf("look up slot %d: %w", p.SlotBase+uint32(i), err)
			}
			misses++
			kept = append(kept, i)
		}
		pending = kept
		if len(pending) > 0 {
			time.Sleep(p.Poll)
		}
	}
	return res, nil
}

// startGuestAgent runs the real agent in this process over a bpffs of its
// own, with guest 7 (the SAs' destination) declared, and waits until it is
// ready; res.AgentReady gets the wait. It returns the agent's pin
// directory.
func startGuestAgent(ctx context.Context, res *XFRMSyncResult) (*agent.Agent, string, func(), error) {
	dir, err := os.MkdirTemp("", "xfrm-agent-")
	if err != nil {
		return nil, "", nil, err
	}
	bpffs := filepath.Join(dir, "bpffs")
	if err := os.Mkdir(bpffs, 0o700); err != nil {
		return nil, "", nil, err
	}
	if err := unix.Mount("bpffs", bpffs, "bpf", 0, ""); err != nil {
		return nil, "", nil, fmt.Errorf("mount bpffs on %s: %w", bpffs, err)
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
		return nil, "", nil, fmt.Errorf("start the agent in the guest: %w", err)
	}
	cleanup = append(cleanup, func() { k.Close() })
	r, _ := label.ParseBounds("s0-s15:c0.c1023/i0-i15")
	if err := a.SetGuest(agent.GuestSpec{Interface: "vif7.0", VM: 7, App: 1, Range: r, Addr4: xfrmGuest}); err != nil {
		stop()
		return nil, "", nil, err
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	cleanup = append(cleanup, func() { cancel(); <-done })
	if !waitFor(func() bool { return a.Status().Ready }, 2*time.Minute) {
		stop()
		return nil, "", nil, fmt.Errorf("the agent in the guest was not ready after 2 minutes: %+v", a.Status())
	}
	res.AgentReady = time.Since(start)
	fmt.Printf("agent ready after %v\n", res.AgentReady.Round(time.Millisecond))
	return a, cfg.PinDir, stop, nil
}

// FormatXFRMSync is the guest control-plane table.
func FormatXFRMSync(r *XFRMSyncResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nXFRM SAs with SELinux contexts in the guest kernel, under QEMU %s (Debian's kernel %s; %s): %d SAs installed through agent/xfrm by an installer process, after an untimed warm-up round, first with no agent (the baseline), then with the agent (a process of its own, as on a host) following the SAD into its BPF maps on the same vCPU. Sync latency: from AddState returning to the SA's entry in the agent's slot map, read by a third process every %v. Back to back, the install with the agent running is slower than the agent's own CPU time accounts for: the installer's CPU time rises too (below), most likely the emulator's cost of each switch between processes, which one process's goroutines (the harness before) did not pay.\n\n",
		strings.ToUpper(r.Accel), r.Kernel, r.Hardware, r.SAs, r.PollInterval)
	b.WriteString("| SAs | install, no agent | SAs/s | install, agent running | SAs/s | × no agent | SA → map p50 | p99 | max | all in the maps |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	ratio := 0.0
	if r.BareRate > 0 {
		ratio = r.Rate / r.BareRate
	}
	fmt.Fprintf(&b, "| %d | %v | %.0f | %v | %.0f | %.2f | %v | %v | %v | %v |\n", r.SAs,
		r.BareInstall.Round(time.Millisecond), r.BareRate, r.Install.Round(time.Millisecond), r.Rate, ratio,
		r.SyncP50.Round(100*time.Microsecond), r.SyncP99.Round(100*time.Microsecond), r.SyncMax.Round(100*time.Microsecond), r.AllSynced.Round(time.Millisecond))
	if r.CPUInstaller > 0 {
		fmt.Fprintf(&b, "\nCPU time (user and system) of the install with the agent running: installer %v (%v with no agent), agent %v, observer %v.\n",
			r.CPUInstaller.Round(time.Millisecond), r.BareCPU.Round(time.Millisecond), r.CPUAgent.Round(time.Millisecond), r.CPUObserver.Round(time.Millisecond))
	}
	if r.Interval > 0 {
		fmt.Fprintf(&b, "\nAt a steady rate, one SA every %v (the rest as above; the observer looks every %v while an SA is outstanding and waits on the installer otherwise): SA → map p50 %v, p99 %v, max %v.\n",
			r.Interval, r.PacedPoll, r.PacedP50.Round(100*time.Microsecond), r.PacedP99.Round(100*time.Microsecond), r.PacedMax.Round(100*time.Microsecond))
	}
	fmt.Fprintf(&b, "\nThe agent's start in the guest (loading the fast path; the verifier under %s) took %v. Emulated: compare with the host's own numbers only as ratios.\n",
		strings.ToUpper(r.Accel), r.AgentReady.Round(time.Millisecond))
	return b.String()
}
