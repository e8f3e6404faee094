package main

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netns"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/bpf"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/backend"
	"github.com/mlsgate/mlsgate/loader/image"
	"github.com/mlsgate/mlsgate/mapper"
	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/verdict"
)

const demoAPIPort = 7443

func newDemoCmd() *cobra.Command {
	var apps, cache string
	var inside bool
	var xo xenDemoOptions
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "the paper's analyst scenario with real enforcement (root)",
		Long: `Run the paper's analyst scenario (section 5): the host agent with the fast path
on every guest's vif, the policy store with the analyst and osint applications,
the label mapper, VMLoad with guests as network namespaces, and web servers
reached through labeled IPsec. A browser in the analyst guest loads pages, and
a compromised one tries what it should not; every attempted flow is printed
with its label, the verdict and who enforced it, then the configuration-phase
timings for a cold boot and a pool hit beside the paper's Table 1.

It needs ESP and an active SELinux with an MLS policy. Where the running
kernel lacks them it boots Debian's kernel under QEMU (the test harness's
image) and runs the scenario there, and says so.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			if os.Geteuid() != 0 {
				return errors.New("the demo needs root (BPF, network namespaces, XFRM): run 'sudo make demo'")
			}
			switch xo.Backend {
			case "netns":
			case "xen":
				return runXenDemo(cmd.Context(), out, apps, inside, xo)
			default:
				return fmt.Errorf("--backend %q: give netns (guests are network namespaces) or xen (guests are Xen PV domains)", xo.Backend)
			}
			if inside {
				return runScenario(cmd.Context(), out, apps, xo)
			}
			if why := kernelLacks(); why == "" {
				fmt.Fprintln(out, "This kernel has ESP and an active SELinux MLS policy: running the demo here, guests are network namespaces.")
				return runScenario(cmd.Context(), out, apps, xo)
			} else {
				fmt.Fprintf(out, "This kernel %s, so the demo runs inside the Debian guest kernel of the test harness,\nguests are network namespaces there (QEMU with software emulation: times below are emulated, not native).\n\n", why)
			}
			return runInGuest(cmd.Context(), out, apps, cache)
		},
	}
	cmd.Flags().StringVar(&apps, "apps", "examples/analyst", "directory of application files")
	cmd.Flags().StringVar(&cache, "guest-cache", "", "guest image cache (default $MLSGATE_GUEST_CACHE or /var/cache/mlsgate/guest)")
	cmd.Flags().BoolVar(&inside, "inside", false, "run the scenario on this kernel without checking it (used inside the guest)")
	cmd.Flags().MarkHidden("inside")
	xo.flags(cmd)
	cmd.AddCommand(newDemoProbeCmd())
	return cmd
}

// kernelLacks says what the running kernel lacks for the demo, or "".
func kernelLacks() string {
	var missing []string
	if _, err := os.Stat("/sys/fs/selinux/enforce"); err != nil {
		missing = append(missing, "has no active SELinux")
	}
	if err := xfrm.ProbeESP(); err != nil {
		missing = append(missing, "has no ESP transform ("+err.Error()+")")
	}
	return strings.Join(missing, " and ")
}

// runInGuest boots the harness's Debian kernel with this binary and runs
// the scenario there.
func runInGuest(ctx context.Context, out io.Writer, apps, cache string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if f, err := elf.Open(exe); err == nil {
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				f.Close()
				return fmt.Errorf("%s is dynamically linked and cannot run in the guest: build it with CGO_ENABLED=0 go build -o bin/mlsgate ./cmd/mlsgate (make demo does)", exe)
			}
		}
		f.Close()
	}
	fmt.Fprintln(out, "Preparing the guest image (cached after the first run)...")
	img, err := image.Prepare(ctx, cache, prefixWriter(out, "  image: "))
	if err != nil {
		return err
	}
	share, err := os.MkdirTemp("", "mlsgate-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(share)
	if err := copyDir(apps, filepath.Join(share, "apps")); err != nil {
		return fmt.Errorf("copy the applications from %s: %w", apps, err)
	}
	fmt.Fprintf(out, "Booting Debian %s under QEMU...\n\n", img.KernelRelease)
	res, err := img.Run(ctx, image.RunOptions{
		Binary: exe, Args: []string{"demo", "--inside", "--apps", "/mnt/apps"}, Share: share,
		Enforcing: false, Memory: 1024, Timeout: 10 * time.Minute, Progress: out,
	})
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("the demo failed in the guest (exit %d)", res.ExitCode)
	}
	fmt.Fprintf(out, "\n(guest: %s, boot %.1fs, demo %.1fs)\n", res.Accel, res.BootDuration.Seconds(), res.RunDuration.Seconds())
	return nil
}

func copyDir(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

type prefixW struct {
	w      io.Writer
	prefix string
}

func (p prefixW) Write(b []byte) (int, error) {
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if line != "" {
			fmt.Fprint(p.w, p.prefix+line)
		}
	}
	return len(b), nil
}

func prefixWriter(w io.Writer, prefix string) io.Writer { return prefixW{w, prefix} }

// flow is one attempted exchange and what became of it.
type flow struct {
	What, From, To, Label string
	Result                string // "delivered" or "refused"
	By                    string // who decided: the fast path's reasons, the kernel's XFRM, the loader
	Detail                string
	Want                  expect // what the applications require
	Problem               string // why the outcome is not Want; empty when it is
}

type scenario struct {
	out       io.Writer
	k         *agent.Kernel
	plan      *demoPlan
	flows     []flow
	addrs     map[string]netip.Addr // host name → server address
	timings   []*loader.Result
	firstPage []time.Duration // per timing: the first page load through the new guest
	servers   []*demoServer
	// drive opens the driver of a guest the loader booted (nsGuest,
	// consoleGuest); drivers keeps them by VM.
	drive     func(*loader.Guest) (guestDriver, error)
	driversMu sync.Mutex
	drivers   map[uint32]guestDriver
	// beforeModules is, per guest booted by a backend with a Ready step
	// of the demo's (Xen), whether a socket of each application's type
	// could be created before any bundle reached the guest.
	beforeModules map[uint32]map[string]error
	beforeTook    map[uint32]time.Duration
}

// serverStats is every web server's XFRM and TCP statistics, keyed
// "<server> <counter>".
func (s *scenario) serverStats() map[string]uint64 {
	m := map[string]uint64{}
	for _, sv := range s.servers {
		if !sv.handle.IsOpen() {
			continue
		}
		for k, v := range xfrmStatIn(sv.handle) {
			m[sv.srv.Name+" "+k] = v
		}
		inNS(sv.handle, func() error {
			for k, v := range snmpTCP() {
				m[sv.srv.Name+" Tcp"+k] = v
			}
			return nil
		})
	}
	return m
}

// counters is a snapshot of the fast path's verdict counters.
func (s *scenario) counters() [2][verdict.NumReasons]bpf.Counter {
	c, _ := s.k.Counters()
	return c
}

func xfrmStat() map[string]uint64 { return parseStat("/proc/net/xfrm_stat") }

// xfrmStatIn reads a namespace's XFRM statistics (/proc/net follows the
// reading thread's namespace).
func xfrmStatIn(ns netns.NsHandle) map[string]uint64 {
	var m map[string]uint64
	inNS(ns, func() error { m = parseStat("/proc/thread-self/net/xfrm_stat"); return nil })
	return m
}

func parseStat(path string) map[string]uint64 {
	b, _ := os.ReadFile(path)
	out := map[string]uint64{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 {
			var v uint64
			fmt.Sscan(f[1], &v)
			out[f[0]] = v
		}
	}
	return out
}

// enforcement names what changed in the fast path's and XFRM's counters.
func enforcement(before, after [2][verdict.NumReasons]bpf.Counter, xb, xa, gb, ga map[string]uint64) string {
	var parts []string
	for d, dir := range []string{"from guest", "to guest"} {
		for _, r := range verdict.Reasons() {
			if n := after[d][r].Packets - before[d][r].Packets; n > 0 && r != verdict.AllowControl {
				parts = append(parts, fmt.Sprintf("fast path %s %s ×%d", dir, r, n))
			}
		}
	}
	var xs []string
	for k, v := range xa {
		if v > xb[k] {
			xs = append(xs, fmt.Sprintf("host XFRM %s ×%d", k, v-xb[k]))
		}
	}
	for k, v := range ga {
		if v > gb[k] {
			xs = append(xs, fmt.Sprintf("guest XFRM %s ×%d", k, v-gb[k]))
		}
	}
	sort.Strings(xs)
	return strings.Join(append(parts, xs...), "; ")
}

// probe is a snapshot of the counters a flow's verdict is read from.
type probe struct {
	fp         [2][verdict.NumReasons]bpf.Counter
	host, gx   map[string]uint64
	srv        map[string]uint64
	start      time.Time
	g          guestDriver
	s          *scenario
	sentDirect int64 // packets the flow sent itself, when it counts them; -1 otherwise
}

func (s *scenario) probe(g guestDriver) *probe {
	return &probe{fp: s.counters(), host: xfrmStat(), gx: guestXFRMStat(g), srv: s.serverStats(), start: time.Now(), g: g, s: s, sentDirect: -1}
}

// guestXFRMStat is the guest kernel's XFRM statistics, empty when they
// cannot be read (a flow whose check needs them then fails).
func guestXFRMStat(g guestDriver) map[string]uint64 {
	m, err := g.XFRMStat()
	if err != nil {
		return map[string]uint64{}
	}
	return m
}

// done waits for the flow's last packets and reads what it changed: the
// printed enforcement and the observation its expectation is checked on.
func (p *probe) done() (string, observed) {
	time.Sleep(200 * time.Millisecond)
	fp, host, gx := p.s.counters(), xfrmStat(), guestXFRMStat(p.g)
	o := observed{FastPath: counterDelta(p.fp, fp), GuestX: statDelta(p.gx, gx), Sent: p.sentDirect, Servers: statDelta(p.srv, p.s.serverStats())}
	return enforcement(p.fp, fp, p.host, host, p.gx, gx), o
}

// read is the browser of guest g loading pg: it asks the guest's own label
// mapper for the URL's label, refuses a label outside the guest's range
// (as the paper's SELinux policy in the guest does), and loads the page
// over a TCP socket created at that label, so that the guest's XFRM picks
// the SA of that label. The page must come back 200 from the server's
// listener of that label and name the context the server saw the request
// arrive with (the SA's). It records the flow and returns the load time.
func (s *scenario) read(g *loader.Guest, app *policystore.Application, pg page, what string) time.Duration {
	from := g.Name + " (" + app.Name + ")"
	want := expect{"delivered", enforcer{Kind: byFastPath, Reason: verdict.AllowLabeled}}
	if !app.Guest.Contains(pg.Label) {
		want = expect{"refused", enforcer{Kind: byGuestPolicy}}
	}
	gd, err := s.guest(g)
	if err != nil {
		s.record(flow{What: what, From: from, To: pg.URL, Result: "error", Detail: err.Error(), Want: want}, observed{})
		return 0
	}
	ans, err := gd.Label(pg.URL)
	if err != nil {
		s.record(flow{What: what, From: from, To: pg.URL, Result: "error", Detail: "guest mapper: " + err.Error(), Want: want}, observed{})
		return 0
	}
	l := ans.Label
	f := flow{What: what, From: from, To: pg.URL, Label: l.String(), Want: want}
	if l != pg.Label {
		f.Result, f.Detail = "error", fmt.Sprintf("the guest's mapper labels %s %s (from %s), the application %s", pg.URL, l, ans.Source, pg.Label)
		s.record(f, observed{})
		return 0
	}
	if !app.Guest.Contains(l) {
		f.Result, f.By = "refused", byGuestPolicy
		f.Detail = fmt.Sprintf("label %s (from %s) is outside the guest's range %s: the browser asks VMLoad for another guest", l, ans.Source, app.Guest)
		s.record(f, observed{})
		return 0
	}
	u, _ := url.Parse(pg.URL)
	dst := netip.AddrPortFrom(s.addrs[u.Hostname()], uint16(labelPort(l)))
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	pr := s.probe(gd)
	status, body, err := gd.Fetch(secCtx(app.Type, l), dst, http.MethodGet, u.Host, path, 10*time.Second)
	took := time.Since(pr.start)
	var o observed
	f.By, o = pr.done()
	wantBody := fmt.Sprintf("%s GET %s at %s for %s\n", pg.Server.Name, path, l, secCtx(app.Type, l))
	switch {
	case err != nil:
		f.Result, f.Detail = "refused", err.Error()
	case status != http.StatusOK || string(body) != wantBody:
		f.Result, f.Detail = "error", fmt.Sprintf("HTTP %d %q, want 200 %q", status, body, wantBody)
	default:
		f.Result, f.Detail = "delivered", fmt.Sprintf("HTTP 200, %d bytes in %v", len(body), took.Round(time.Millisecond))
	}
	s.record(f, o)
	if f.Result != "delivered" {
		return 0
	}
	return took
}

// post is a (compromised) guest sending data over HTTP from a socket of
// context ctx (none when empty) toward dst. Every such attempt must be
// refused, so the connection is bounded by a short timeout, and the
// packets the flow sent are the socket's own count of its segments.
func (s *scenario) post(g guestDriver, from, ctx string, dst netip.AddrPort, host, lbl, what string, want expect) {
	pr := s.probe(g)
	status, segs, err := g.Post(ctx, dst, host, "data at "+lbl, 2*time.Second)
	pr.sentDirect = segs
	f := flow{What: what, From: from, To: host, Label: lbl, Want: want}
	if err != nil {
		f.Result, f.Detail = "refused", err.Error()
	} else {
		f.Result, f.Detail = "delivered", fmt.Sprintf("HTTP %d", status)
	}
	var o observed
	f.By, o = pr.done()
	s.record(f, o)
}

// record checks a flow against its expectation and prints it.
func (s *scenario) record(f flow, o observed) {
	if f.Result == "error" {
		f.Problem = f.Detail
	} else if err := check(f.Want, f.Result, f.By, o); err != nil {
		f.Problem = err.Error()
	}
	s.flows = append(s.flows, f)
	fmt.Fprintf(s.out, "  %-9s %s: %s → %s %s %s\n", f.Result, f.What, f.From, f.To, f.Label, ifNotEmpty("["+f.By+"]", f.By))
	if f.Problem != "" {
		fmt.Fprintf(s.out, "  ✗ want %s by %s: %s\n    (%s; servers: %v; packets sent %d)\n", f.Want.Result, f.Want.By, f.Problem, f.Detail, o.Servers, o.Sent)
	}
}

func ifNotEmpty(s, cond string) string {
	if cond == "" {
		return ""
	}
	return s
}

// loadFromGuest is the browser of g asking VMLoad for rawURL, over its
// link.
func (s *scenario) loadFromGuest(g *loader.Guest, rawURL string) (*loader.Result, error) {
	gd, err := s.guest(g)
	if err != nil {
		return nil, err
	}
	return gd.Load(netip.AddrPortFrom(g.HostAddr, demoAPIPort), rawURL)
}

// guest is the driver of g, opened on first use and kept until the
// scenario ends.
func (s *scenario) guest(g *loader.Guest) (guestDriver, error) {
	s.driversMu.Lock()
	d, ok := s.drivers[g.VM]
	s.driversMu.Unlock()
	if ok {
		return d, nil
	}
	// Opening may wait for the guest (seconds on Xen): the lock is not
	// held meanwhile, so a guest the pool boots in the background does
	// not hold up the flows of another.
	d, err := s.drive(g)
	if err != nil {
		return nil, err
	}
	s.driversMu.Lock()
	defer s.driversMu.Unlock()
	if old, ok := s.drivers[g.VM]; ok {
		d.Close()
		return old, nil
	}
	s.drivers[g.VM] = d
	return d, nil
}

func (s *scenario) closeDrivers() {
	s.driversMu.Lock()
	defer s.driversMu.Unlock()
	for vm, d := range s.drivers {
		d.Close()
		delete(s.drivers, vm)
	}
}

// hostMapperPolicy is the host's labeling policy: every application's
// label rules and server hosts.
func hostMapperPolicy(apps []*policystore.Application) string {
	var b strings.Builder
	for _, a := range apps {
		for _, r := range a.Labels {
			fmt.Fprintf(&b, "map %s %s %s\n", r.URL, "system_u:object_r:"+a.Type+":"+r.Label.Secrecy.String(), r.Label.Integrity)
		}
	}
	for _, a := range apps {
		for _, s := range a.Servers {
			for _, h := range s.Hosts {
				fmt.Fprintf(&b, "map https?://%s(:[0-9]+)?(/.*)? %s\n", strings.ReplaceAll(h, ".", `\.`), s.DefaultLabel())
			}
		}
	}
	b.WriteString("default s0/i0\n")
	return b.String()
}

func runScenario(ctx context.Context, out io.Writer, appsDir string, xo xenDemoOptions) (err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	apps, err := policystore.LoadDir(appsDir)
	if err != nil {
		return err
	}
	plan, err := planDemo(apps)
	if err != nil {
		return fmt.Errorf("applications in %s: %w", appsDir, err)
	}
	s := &scenario{out: out, plan: plan, addrs: map[string]netip.Addr{}, drivers: map[uint32]guestDriver{},
		drive: func(g *loader.Guest) (guestDriver, error) { return netnsGuest(g.VM) }}
	defer s.closeDrivers()
	integ := map[string]label.Integrity{}
	for _, a := range apps {
		for t, i := range a.Integrity {
			integ[t] = i
		}
		integ[a.Type] = a.IntegrityPolicy().Of(a.Type)
		for _, srv := range a.Servers {
			for _, h := range srv.Hosts {
				s.addrs[h] = srv.Addresses[0]
			}
		}
	}
	state, err := os.MkdirTemp("", "mlsgate-demo-state-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(state)
	logf, err := os.Create(filepath.Join(state, "demo.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	defer func() {
		if job := os.Getenv("XENDOM0_JOB"); err != nil && job != "" {
			// The harness collects the *.log files of its job
			// directory: the agent's denial events name the vif of
			// every deny, the backend's steps their times.
			image.CopyFile(filepath.Join(state, "demo.log"), filepath.Join(job, "demo-log.log"), 0o644)
		}
	}()
	log := slog.New(slog.NewJSONHandler(logf, nil))

	// The host agent.
	cfg := agent.DefaultConfig()
	cfg.StateDir, cfg.PinDir, cfg.Listen, cfg.Socket = filepath.Join(state, "agent"), "/sys/fs/bpf/mlsgate-demo", "", filepath.Join(state, "agent.sock")
	cfg.APIPort, cfg.SPISlots, cfg.Integrity, cfg.EventRate = demoAPIPort, 4096, integ, 5
	a, k, err := agent.Start(cfg, log, nil)
	if err != nil {
		return err
	}
	defer bpf.RemovePins(cfg.PinDir)
	defer k.Close()
	s.k = k
	go a.Run(ctx)
	go a.ReadEvents(ctx, k.Objs.Events)
	for i := 0; i < 500 && !a.Ready(); i++ {
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Fprintf(out, "Host agent: fast path loaded and pinned (%s), following the kernel's SAs.\n", cfg.PinDir)

	hostX, err := xfrm.NewHandle()
	if err != nil {
		return err
	}
	defer hostX.Close()
	servers, stopServers, err := startServers(apps, guestNet, hostX)
	defer stopServers()
	s.servers = servers
	if err != nil {
		return fmt.Errorf("web servers: %w", err)
	}
	fmt.Fprintf(out, "Web servers: ")
	for _, sv := range servers {
		fmt.Fprintf(out, "%s %s (%s) ", sv.srv.Name, sv.srv.Addresses[0], sv.srv.Range)
	}
	fmt.Fprintln(out, "\n  each reached from the host through labeled IPsec at its labels.")
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0); err != nil {
		return err
	}

	// The host's label mapper, served with VMLoad on the API port.
	hm, err := mapper.New(mapper.Config{})
	if err != nil {
		return err
	}
	if err := hm.LoadBytes("host.policy", []byte(hostMapperPolicy(apps))); err != nil {
		return err
	}
	exe, _ := os.Executable()
	var be loader.Backend = &backend.Netns{Binary: exe, StateDir: filepath.Join(state, "guests")}
	var stepTimeout time.Duration // the loader's default
	if xo.Backend == "xen" {
		stepTimeout = xo.BootWait
	}
	if xo.Backend == "xen" {
		xb, err := xo.backend(exe, cfg.Socket, filepath.Join(state, "xen"), log)
		if err != nil {
			return err
		}
		be = xb
		s.beforeModules, s.beforeTook = map[uint32]map[string]error{}, map[uint32]time.Duration{}
		xb.Ready = func(ctx context.Context, g *loader.Guest) error {
			if err := backend.WaitReady(ctx, g); err != nil {
				return err
			}
			return s.socketsBefore(g, apps)
		}
		// vif-mlsgate declares each new vif to the agent on its socket
		// (root only) before the loader does, as in a real dom0.
		lns, err := bindListeners("", "", cfg.Socket, "the agent's socket", "")
		if err != nil {
			return err
		}
		defer lns.close()
		go lns.serve(ctx, daemon{log: log, public: a.PublicHandler(), admin: a.AdminHandler(), ready: a.ReadyC(), onRefuse: a.APIRefused})
		undo, err := vifDefaults(exe, cfg.Socket)
		if err != nil {
			return err
		}
		defer undo()
		s.drive = func(g *loader.Guest) (guestDriver, error) { return xenConsoleGuest(g.Name, g.VM, xo.ProbeWait) }
	}
	v, err := startLoader(ctx, loaderSetup{
		StateDir: filepath.Join(state, "loader"), AppsDir: appsDir, APIPort: demoAPIPort, PoolSize: 1, MaxLoads: 8,
		Backend: be, Agent: loader.InProcessAgent{Agent: a}, HostXFRM: hostX, StepTimeout: stepTimeout,
		SPIBase: cfg.SPIBase, SPISlots: cfg.SPISlots, Rotation: demoRotation(),
	})
	if err != nil {
		return err
	}
	defer v.close()
	defer func() {
		dctx, c := context.WithTimeout(context.Background(), time.Minute)
		defer c()
		for _, e := range v.pool.List() {
			v.pool.Remove(dctx, e.Guest.VM)
		}
	}()
	v.api.Mapper = hm.Handler()
	srv := v.api.Server()
	// Guests reach VMLoad and the mapper only on their own links.
	v.listeners.Serve(srv)
	defer srv.Close()

	home := s.plan.Home
	first := s.plan.Pages[0]
	// 1. Cold: the analyst opens the browser from the host; the pool is empty.
	fmt.Fprintf(out, "\n1. The analyst asks VMLoad, from the host, for %s (empty pool: a guest boots).\n", first.URL)
	// A boot is bounded by backend.DefaultBootTimeout unless the caller
	// gives a deadline; Xen under QEMU's emulation on a loaded host needs
	// more (xo.BootWait).
	bootCtx := func() (context.Context, context.CancelFunc) {
		if xo.Backend == "xen" {
			return context.WithTimeout(ctx, xo.BootWait)
		}
		return context.WithCancel(ctx)
	}
	lctx, lcancel := bootCtx()
	cold, err := v.loader.Load(lctx, loader.Caller{Host: true}, first.URL)
	lcancel()
	if err != nil {
		return fmt.Errorf("cold load: %w", err)
	}
	printResult(out, cold)
	browser := cold.Guest
	// Let the pool pre-load an idle guest, as it does in the background.
	rctx, rcancel := bootCtx()
	err = v.pool.Refill(rctx)
	rcancel()
	if err != nil {
		return fmt.Errorf("pool refill: %w", err)
	}

	fmt.Fprintf(out, "\n2. The %s browser loads a page of every label of its servers (one guest, range %s):\n", home.Name, home.Guest)
	for i, pg := range s.plan.Pages {
		took := s.read(&browser, home, pg, "read "+pg.Server.Name+" page")
		if i == 0 {
			s.timings, s.firstPage = append(s.timings, cold), append(s.firstPage, took)
		}
	}

	bns, err := s.guest(&browser)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "\n3. Data of each server must never reach a server whose range excludes its label:")
	from := browser.Name + " (" + home.Name + ")"
	for _, lk := range s.plan.Leaks {
		dst := netip.AddrPortFrom(lk.To.Addresses[0], uint16(labelPort(lk.Label)))
		s.post(bns, from, secCtx(home.Type, lk.Label), dst, lk.To.Hosts[0], lk.Label.String(),
			fmt.Sprintf("send %s data to %s", lk.Via.Name, lk.To.Name), expect{"refused", enforcer{Kind: byGuestXFRM}})
	}
	lk := s.plan.Leaks[0]
	s.inClear(bns, &browser, lk.To)
	for _, lk := range s.plan.Leaks {
		s.compromisedSA(bns, &browser, home, lk)
	}

	var og loader.Guest // the other application's guest
	if s.plan.Other == nil {
		fmt.Fprintln(out, "\n4. (no other application loadable from the analyst's guest with a label outside its range: skipped)")
	} else {
		other, opg := s.plan.Other, s.plan.OtherPage
		fmt.Fprintf(out, "\n4. %s, at %s outside the %s guest's range, must be handled in a guest of its own:\n", opg.URL, opg.Label, home.Name)
		s.read(&browser, home, opg, "read "+opg.Server.Name+" page")
		res, err := s.loadFromGuest(&browser, opg.URL)
		if err != nil {
			return fmt.Errorf("the %s browser asked VMLoad for %s: %w", home.Name, opg.URL, err)
		}
		fmt.Fprintln(out, "   VMLoad, asked by the browser over its link, gives the page a guest of its own:")
		printResult(out, res)
		og = res.Guest
		took := s.read(&og, other, opg, "read "+opg.Server.Name+" page")
		s.timings, s.firstPage = append(s.timings, res), append(s.firstPage, took)
		ons, err := s.guest(&og)
		if err != nil {
			return err
		}
		ofrom := og.Name + " (" + other.Name + ")"
		hs := s.plan.Foreign
		s.post(ons, ofrom, secCtx(other.Type, opg.Label), netip.AddrPortFrom(hs.Addresses[0], uint16(labelPort(opg.Label))), hs.Hosts[0], opg.Label.String(),
			fmt.Sprintf("%s guest sends to %s", other.Name, hs.Name), expect{"refused", enforcer{Kind: byGuestXFRM}})
		withoutPolicies(ons, func(p xfrm.Policy) bool { return p.Action == xfrm.ActionBlock }, func() {
			s.forgedESP(ons, &og, &browser, ofrom, fmt.Sprintf("forge ESP on the %s guest's SA", home.Name))
		})
		want := expect{"refused", enforcer{Kind: byLoader}}
		if home.MayBeLoadedBy(other.Name) {
			want.Result = "delivered"
		}
		f := flow{What: fmt.Sprintf("%s guest asks VMLoad for %s", other.Name, home.Name), From: ofrom, To: "VMLoad", By: byLoader, Want: want}
		if _, err := s.loadFromGuest(&og, first.URL); err != nil {
			f.Result, f.Detail = "refused", err.Error()
		} else {
			f.Result = "delivered"
		}
		s.record(f, observed{})
	}
	step := 5
	if s.beforeModules != nil {
		step++
		fmt.Fprintln(out, "\n5. Each guest's SELinux knows an application's type only from the module of its bundle:")
		s.modules(&browser, home)
		if s.plan.Other != nil {
			s.modules(&og, s.plan.Other)
		}
	}

	fmt.Fprintf(out, "\n%d. The loader rotates the %s browser's SAs (make-before-break), and the browser reads a page again:\n", step, home.Name)
	if err := rotateOnce(ctx, out, v.loader, &browser, hostX.States); err != nil {
		return err
	}
	s.read(&browser, home, first, "read "+first.Server.Name+" page after the SA rotation")

	if err := demoReadyHit(ctx, out, v, appsDir, home.Name); err != nil { // demo_ready.go
		return err
	}
	err = s.report(out, xo.Backend)
	fmt.Fprintf(out, "\nDemo finished in %v.\n", time.Since(start).Round(100*time.Millisecond))
	return err
}

// compromisedSA: the guest, compromised, sends lk.Via's data (at
// lk.Label) to lk.To through the SA it holds toward lk.Via at that label:
// the fast path sees a valid SA of the guest, and after the host's XFRM
// decrypts it, a packet for lk.To at a label outside lk.To's range.
func (s *scenario) compromisedSA(h guestDriver, g *loader.Guest, app *policystore.Application, lk leak) {
	what := fmt.Sprintf("reroute %s data to %s through %s's SA", lk.Via.Name, lk.To.Name, lk.Via.Name)
	want := expect{"refused", enforcer{Kind: byFastPath, Reason: verdict.DenyPeerRange}}
	fail := func(err error) {
		s.record(flow{What: what, From: g.Name + " (compromised)", To: lk.To.Hosts[0], Label: lk.Label.String(), Result: "error", Detail: err.Error(), Want: want}, observed{})
	}
	pols, err := h.Policies()
	if err != nil {
		fail(err)
		return
	}
	var via *xfrm.Policy
	for i := range pols {
		if pols[i].Dir == xfrm.DirOut && pols[i].Dst.Addr() == lk.Via.Addresses[0] && len(pols[i].Templates) > 0 {
			via = &pols[i]
		}
	}
	if via == nil {
		fail(fmt.Errorf("the guest has no outbound policy toward %s (%s)", lk.Via.Name, lk.Via.Addresses[0]))
		return
	}
	evil := *via
	evil.Dst = netip.PrefixFrom(lk.To.Addresses[0], 32)
	evil.Priority = 10
	evil.Index = 0
	if err := h.AddPolicy(evil); err != nil {
		fail(err)
		return
	}
	defer h.DeletePolicy(evil)
	dst := netip.AddrPortFrom(lk.To.Addresses[0], uint16(labelPort(lk.Label)))
	s.post(h, g.Name+" (compromised)", secCtx(app.Type, lk.Label), dst, lk.To.Hosts[0], lk.Label.String(), what, want)
}

// forgedESP: guest g sends ESP on an SPI of victim's SA toward its host.
func (s *scenario) forgedESP(gd guestDriver, g, victim *loader.Guest, from, what string) {
	want := expect{"refused", enforcer{Kind: byFastPath, Reason: verdict.DenyForeignSA}}
	state, err := s.k.ReadState()
	if err != nil || len(state.Slots) == 0 {
		s.record(flow{What: what, From: from, Result: "error", Detail: fmt.Sprintf("read the fast path's SAs: %v (%d slots)", err, len(state.Slots)), Want: want}, observed{})
		return
	}
	var slot uint32 = ^uint32(0)
	for k, sa := range state.Slots {
		d := netip.AddrFrom4([4]byte{sa.Daddr[0], sa.Daddr[1], sa.Daddr[2], sa.Daddr[3]})
		if sa.OwnerVm == victim.VM && d == victim.HostAddr && k < slot {
			slot = k
		}
	}
	if slot == ^uint32(0) {
		s.record(flow{What: what, From: from, Result: "error", Detail: fmt.Sprintf("the fast path holds no SA of %s toward its host %s", victim.Name, victim.HostAddr), Want: want}, observed{})
		return
	}
	spi := bpf.DefaultOptions().SPIBase + slot
	chosen := state.Slots[slot]
	daddr := netip.AddrFrom4([4]byte(chosen.Daddr[:4]))
	const forged = 3
	pr := s.probe(gd)
	sent, err := gd.SendESP(daddr, spi, forged)
	pr.sentDirect = int64(sent)
	f := flow{What: what, From: from, To: "host " + daddr.String(), Label: fmt.Sprintf("spi %#x", spi), Result: "refused", Want: want}
	var o observed
	f.By, o = pr.done()
	if err != nil {
		f.Result, f.Detail = "error", err.Error()
	}
	s.record(f, o)
}

// report prints the flow table and the timings, and fails when a flow's
// outcome or enforcer is not the one its applications require.
func (s *scenario) report(out io.Writer, where string) error {
	fmt.Fprintln(out, "\nFlows (every verdict is the kernel's: the fast path's reason counters on the vifs, or XFRM's statistics;")
	fmt.Fprintln(out, "each checked against the enforcer its applications require):")
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FLOW\tFROM\tTO\tLABEL\tRESULT\tENFORCED BY")
	var bad []string
	for _, f := range s.flows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", f.What, f.From, f.To, orDash(f.Label), f.Result, orDash(f.By))
		if f.Problem != "" {
			bad = append(bad, fmt.Sprintf("  %s (%s → %s, %s): want %s by %s: %s", f.What, f.From, f.To, orDash(f.Label), f.Want.Result, f.Want.By, f.Problem))
		}
	}
	tw.Flush()
	fmt.Fprintln(out, "\nConfiguration phase (the paper's Table 1: configure 4.90 s + load 18.50 s from scratch; 0.90 s + 2.80 s pre-loaded):")
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LOAD\tGUEST FROM\tSTEPS\tTOTAL\tFIRST PAGE")
	for i, r := range s.timings {
		var steps []string
		for _, st := range r.Steps {
			if st.Duration > 0 {
				steps = append(steps, fmt.Sprintf("%s %v", st.Name, st.Duration.Round(time.Millisecond)))
			}
		}
		page := "-"
		if s.firstPage[i] > 0 {
			page = s.firstPage[i].Round(time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\n", r.URL, r.How, strings.Join(steps, ", "), r.Total.Round(time.Millisecond), page)
	}
	tw.Flush()
	if where == "xen" {
		fmt.Fprintln(out, "(Xen PV guests: \"boot\" is xl create -p of Debian's kernel, the vif attached, unpause, the update daemon;")
		fmt.Fprintln(out, "Xen and dom0 run under QEMU with software emulation (TCG): the times are emulated, not hardware figures.")
	} else {
		fmt.Fprintln(out, "(netns guests: \"boot\" is a namespace and an update daemon, not a kernel; see the bench for QEMU and Xen.")
	}
	fmt.Fprintln(out, "FIRST PAGE is the guest's first HTTP GET through its labeled tunnel, after the load.)")
	if len(bad) > 0 {
		fmt.Fprintf(out, "\n%d of %d flows not as their applications require:\n%s\n", len(bad), len(s.flows), strings.Join(bad, "\n"))
		return fmt.Errorf("%d of %d flows were not carried or stopped by the enforcer their applications require", len(bad), len(s.flows))
	}
	fmt.Fprintf(out, "\nAll %d flows carried or stopped by the enforcer their applications require.\n", len(s.flows))
	return nil
}

// withoutPolicies runs fn while the (compromised) guest has deleted its own
// XFRM policies that match: a guest with root can, and the host must not
// depend on it.
func withoutPolicies(h guestDriver, match func(xfrm.Policy) bool, fn func()) {
	pols, _ := h.Policies()
	var removed []xfrm.Policy
	for _, p := range pols {
		if match(p) && h.DeletePolicy(p) == nil {
			p.Index = 0
			removed = append(removed, p)
		}
	}
	defer func() {
		for _, p := range removed {
			h.AddPolicy(p)
		}
	}()
	fn()
}

// inClear: the compromised guest deletes its policies toward to and its
// catch-all block, and sends in clear.
func (s *scenario) inClear(ns guestDriver, g *loader.Guest, to policystore.Server) {
	dst := netip.AddrPortFrom(to.Addresses[0], 80)
	match := func(p xfrm.Policy) bool {
		return p.Action == xfrm.ActionBlock || p.Dst.Contains(dst.Addr()) || p.Src.Contains(dst.Addr())
	}
	withoutPolicies(ns, match, func() {
		s.post(ns, g.Name+" (compromised)", "", dst, to.Hosts[0], "none", "send in clear to "+to.Name+", own IPsec policies deleted",
			expect{"refused", enforcer{Kind: byFastPath, Reason: verdict.DenyUnlabeled}})
	})
}
