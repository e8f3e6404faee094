package loader

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"sync"
	"time"

	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/policystore"
)

// Lease is a guest taken from the pool for one load.
type Lease interface {
	Guest() *Guest
	// How is "reuse" (a guest already serving the application), "idle"
	// (an idle pre-loaded guest taken over) or "boot".
	How() string
	// Done returns the guest: ok=false after a failed configuration, so the
	// pool does not keep a half-configured guest.
	Done(ok bool)
}

// Pool hands out guests (package pool, through an adapter).
type Pool interface {
	Acquire(ctx context.Context, app string, rng label.Bounds, template string) (Lease, error)
	// Find returns the guest at addr and the application it serves ("" for
	// an idle guest), for authorizing its requests.
	Find(addr netip.Addr) (g *Guest, app string, ok bool)
}

// Pusher delivers the guest part of a bundle to a guest's update daemon
// (package updatedaemon's Client).
type Pusher interface {
	Push(ctx context.Context, g *Guest, b *policystore.Bundle) error
}

// PartsPusher is a Pusher that says where a push's time went: connect,
// TLS handshake, body transfer, the daemon's own parts (validation,
// SELinux modules, mapper policy, XFRM apply, state write), the answer.
type PartsPusher interface {
	PushParts(ctx context.Context, g *Guest, b *policystore.Bundle) ([]Step, error)
}

// HostSide applies the host part of a bundle (fast-path maps, host XFRM,
// host SELinux modules) and returns how to undo it.
type HostSide interface {
	Apply(ctx context.Context, g *Guest, app *policystore.Application, appID uint32, b *policystore.Bundle) (undo func(context.Context) error, err error)
}

// Config is the loader's own settings.
type Config struct {
	// Template is the pool template guests are taken from.
	Template string
	// System is the host's system policy bundles must comply with.
	System policystore.SystemPolicy
	// MapperPort is the port of the host mapper guests forward misses to,
	// at the host's address on their link (default 7070). Serving the
	// mapper on the API port (API.Mapper) lets the fast path pass it as
	// host control traffic.
	MapperPort uint16
	// SPIBase and SPISlots: the host's SPI range, shared with the fast path.
	SPIBase, SPISlots uint32
	// StepTimeout bounds each step (default 60 s; a boot under emulation
	// is slow).
	StepTimeout time.Duration
	// Limits bound what one guest can make the host do; zero fields take
	// DefaultLimits.
	Limits Limits
	// ReadyBasis names what ready guests are built from besides their
	// application and the system policy: the CA's certificate, the
	// templates, the build. Guests kept ready under another basis are
	// stale (see ReadyWants).
	ReadyBasis string
}

// Loader is VMLoad: it runs the configuration phase for a URL.
type Loader struct {
	cfg       Config
	catalog   *policystore.Catalog
	templates *policystore.Templates
	pool      Pool
	push      Pusher
	host      HostSide
	now       func() time.Time

	mu      sync.Mutex
	spiNext uint32
	// spiInUse holds the SPIs handed out, each with the interface of the
	// guest holding it ("" when not known: see spis.go).
	spiInUse map[uint32]string
	held     map[string]HeldGuest // by interface
	// Guests' loads in progress, by caller and by application, and the
	// guests each guest caller took fresh that still run (by VM).
	activeBy  map[string]int
	activeApp map[string]int
	fresh     map[string]map[uint32]bool
	metrics   *loadMetrics
	rot       *rotations // rotation_run.go; nil: rotation off
	modules   moduleChecks
}

// New builds a loader from its parts.
func New(cfg Config, cat *policystore.Catalog, t *policystore.Templates, pool Pool, push Pusher, host HostSide) (*Loader, error) {
	if cat == nil || pool == nil || push == nil || host == nil {
		return nil, errors.New("loader.New: catalog, pool, pusher and host side are required")
	}
	if cfg.SPISlots == 0 {
		return nil, errors.New("loader: SPISlots is 0: the loader allocates SPIs from the host's range")
	}
	if cfg.StepTimeout == 0 {
		cfg.StepTimeout = 60 * time.Second
	}
	lim, err := cfg.Limits.withDefaults()
	if err != nil {
		return nil, err
	}
	cfg.Limits = lim
	return &Loader{cfg: cfg, catalog: cat, templates: t, pool: pool, push: push, host: host,
		now: time.Now, spiInUse: map[uint32]string{}, held: map[string]HeldGuest{},
		activeBy: map[string]int{}, activeApp: map[string]int{}, fresh: map[string]map[uint32]bool{}, metrics: newLoadMetrics()}, nil
}

// Caller is who asks for a load, as established by the connection (never
// by what the request claims).
type Caller struct {
	Host      bool       // the host's own command line (Unix socket)
	Addr      netip.Addr // the guest's address
	VM        uint32
	Interface string // the guest's host-side interface its request arrived on
	App       string // the application the calling guest serves; "" for idle
}

// key identifies a guest caller in the loader's limits.
func (c Caller) key() string {
	if c.Host {
		return "host"
	}
	return fmt.Sprintf("vm%d/%s", c.VM, c.Addr)
}

func (c Caller) String() string {
	if c.Host {
		return "host"
	}
	return fmt.Sprintf("vm%d (%s, %s)", c.VM, c.Addr, c.App)
}

// Step is one phase of the configuration with its duration, and where
// that went when the phase reports it (the push: see PartsPusher). Parts
// are inside the step's duration, never added to it.
type Step struct {
	Name     string        `json:"name"`
	Duration time.Duration `json:"duration_ns"`
	Parts    []Step        `json:"parts,omitempty"`
}

// Result is the answer to a load.
type Result struct {
	URL     string        `json:"url"`
	App     string        `json:"app"`
	Server  string        `json:"server,omitempty"`
	Range   label.Bounds  `json:"range"`
	Guest   Guest         `json:"guest"`
	How     string        `json:"how"`
	Version uint64        `json:"bundle_version"`
	Steps   []Step        `json:"steps"`
	Total   time.Duration `json:"total_ns"`
	Notes   []string      `json:"notes,omitempty"`
}

// Errors a load can end with; each wraps the detail.
var (
	ErrUnauthorized = errors.New("not authorized")
	ErrUnknownURL   = errors.New("unknown URL")
	ErrNotCompliant = policystore.ErrNotCompliant
)

// StepError says which step failed.
type StepError struct {
	Step string
	Err  error
}

func (e *StepError) Error() string { return "load: " + e.Step + ": " + e.Err.Error() }
func (e *StepError) Unwrap() error { return e.Err }

// AppID is the application's id in the fast path: a stable hash of its
// name, never 0 (0 means "every application" in the peer table).
func AppID(name string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	if v := h.Sum32() & 0x7fffffff; v != 0 {
		return v
	}
	return 1
}

// Load runs the configuration phase (the paper's section 3.2) for url on
// behalf of caller: authorize, resolve, bundle, compliance, acquire a
// guest, push the guest policy, apply the host policy, ready. A failure
// undoes what the earlier steps installed on the host, and the guest goes
// back to the pool as failed.
func (l *Loader) Load(ctx context.Context, caller Caller, url string) (res *Result, err error) {
	start := l.now()
	res = &Result{URL: url}
	var undo []func(context.Context) error
	step := func(name string, fn func(ctx context.Context) error) error {
		sctx, cancel := context.WithTimeout(ctx, l.cfg.StepTimeout)
		defer cancel()
		t0 := l.now()
		err := fn(sctx)
		d := l.now().Sub(t0)
		res.Steps = append(res.Steps, Step{Name: name, Duration: d})
		l.metrics.observe(name, d, err)
		if err != nil {
			return &StepError{Step: name, Err: err}
		}
		return nil
	}
	var lease Lease
	defer func() {
		res.Total = l.now().Sub(start)
		if err == nil {
			l.metrics.observe("total", res.Total, nil)
			return
		}
		l.metrics.failed(err)
		rctx, cancel := context.WithTimeout(context.Background(), l.cfg.StepTimeout)
		defer cancel()
		var rbErrs []error
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](rctx); uerr != nil {
				rbErrs = append(rbErrs, uerr)
			}
		}
		if lease != nil {
			lease.Done(false)
		}
		if len(rbErrs) > 0 {
			err = fmt.Errorf("%w; rollback incomplete: %v", err, errors.Join(rbErrs...))
		}
	}()

	var resolved policystore.Resolution
	if err := step("resolve", func(ctx context.Context) (err error) {
		resolved, err = l.catalog.Resolve(ctx, url)
		if errors.Is(err, policystore.ErrNoApplication) || errors.Is(err, policystore.ErrBadURL) {
			return fmt.Errorf("%w: %v", ErrUnknownURL, err)
		}
		return err
	}); err != nil {
		return res, err
	}
	app := resolved.App
	res.App, res.Range = app.Name, app.Guest
	if resolved.Server != nil {
		res.Server = resolved.Server.Name
	}
	if err := step("authorize", func(context.Context) error {
		who := caller.App
		if caller.Host {
			who = policystore.HostCaller
		}
		if who == "" || !app.MayBeLoadedBy(who) {
			return fmt.Errorf("%w: %s may not load %q (its loadable_from: %v)", ErrUnauthorized, caller, app.Name, app.LoadableFrom)
		}
		return nil
	}); err != nil {
		return res, err
	}
	var reuseOnly bool
	if !caller.Host {
		release, ro, err := l.admit(caller, app.Name)
		if err != nil {
			return res, &StepError{Step: "authorize", Err: err}
		}
		defer release()
		reuseOnly = ro
	}
	if err := step("acquire", func(ctx context.Context) (err error) {
		actx := WithReadyFingerprint(ctx, l.Fingerprint(app))
		if reuseOnly {
			actx = WithReuseOnly(actx)
		}
		lease, err = l.pool.Acquire(actx, app.Name, app.Guest, l.cfg.Template)
		if errors.Is(err, ErrReuseOnly) {
			l.metrics.refused("fresh_guest_cap")
			return fmt.Errorf("%w: %s already took %d fresh guests that still run (the cap on fresh guests per guest); its loads may only reuse a guest serving %s: %v",
				ErrLimited, caller, l.cfg.Limits.FreshPerGuest, app.Name, err)
		}
		return err
	}); err != nil {
		return res, err
	}
	if !caller.Host && lease.How() != "reuse" {
		l.tookFresh(caller, lease.Guest().VM)
	}
	g := lease.Guest()
	res.Guest, res.How = *g, lease.How()
	if res.How == "reuse" || res.How == "ready" {
		// Already configured for this application and range (a guest
		// serving it, or one prepared for it under the current
		// fingerprint): the pool matched both, so there is nothing to
		// push.
		res.Steps = append(res.Steps, Step{Name: "ready"})
		lease.Done(true)
		lease = nil
		return res, nil
	}

	b, err := l.configure(app, g, step, &res.Steps, &undo)
	if b != nil {
		res.Version, res.Notes = b.Version, b.Notes
	}
	if err != nil {
		return res, err
	}
	res.Steps = append(res.Steps, Step{Name: "ready"})
	l.rememberBundle(g, b) // for SA rotation
	lease.Done(true)
	lease = nil
	return res, nil
}

// configure runs the configuration steps for a guest taken fresh for app:
// bundle (with the guest's own SA keys), compliance, push
// the guest part, apply the host part. It appends to undo what reverses
// its host-side work, and returns the bundle once it is generated.
//
// step runs and times a step, appending it to *steps.
func (l *Loader) configure(app *policystore.Application, g *Guest, step func(string, func(context.Context) error) error, steps *[]Step, undo *[]func(context.Context) error) (*policystore.Bundle, error) {
	var b *policystore.Bundle
	if err := step("bundle", func(ctx context.Context) (err error) {
		port := l.cfg.MapperPort
		if port == 0 {
			port = 7070
		}
		upstream := "http://" + netip.AddrPortFrom(g.HostAddr, port).String()
		req := policystore.BundleRequest{
			Guest: g.Name, GuestAddr: g.Addr, HostAddr: g.HostAddr, MapperUpstream: upstream,
			Now: l.now(),
			// The bundle carries no certificates: the guest's update
			// daemon presents the Guest certificate of its boot (issued
			// per guest, revoked at its teardown) and installs none of a
			// bundle's, and no server is given keys through the loader.
			// Each one issued was a key, a signature and two fsyncs on
			// the load's path, and a record in the CA never revoked.
			NoCertificatesBecause: "the guest's update daemon presents the certificate of its boot, and the servers' certificates are not the loader's to deliver",
		}
		var spis []uint32
		req.SPI = func() (uint32, error) {
			s, err := l.allocSPIFor(g.Interface)
			if err == nil {
				spis = append(spis, s)
			}
			return s, err
		}
		*undo = append(*undo, func(context.Context) error { l.freeSPIs(spis); return nil })
		if req.Version, err = l.catalog.Store.NextVersion(app.Name); err != nil {
			return err
		}
		b, err = policystore.GenerateBundle(app, req, l.templates)
		return err
	}); err != nil {
		return nil, err
	}
	if err := step("compliance", func(ctx context.Context) error {
		if err := policystore.CheckBundle(app, b, l.cfg.System); err != nil {
			return err
		}
		return l.modules.check(ctx, b) // modules.go
	}); err != nil {
		return b, err
	}
	var parts []Step
	err := step("push guest policy", func(ctx context.Context) (err error) {
		if pp, ok := l.push.(PartsPusher); ok {
			parts, err = pp.PushParts(ctx, g, b.GuestPart())
			return err
		}
		return l.push.Push(ctx, g, b.GuestPart())
	})
	if n := len(*steps); n > 0 && (*steps)[n-1].Name == "push guest policy" {
		(*steps)[n-1].Parts = parts
	}
	if err != nil {
		return b, err
	}
	if err := step("host policy", func(ctx context.Context) error {
		u, err := l.host.Apply(ctx, g, app, AppID(app.Name), b)
		if u != nil {
			*undo = append(*undo, u)
		}
		return err
	}); err != nil {
		return b, err
	}
	return b, nil
}

// allocSPI hands out SPIs of the host's range, never one in use. Its
// holder is not recorded (SA rotation's successors; see spis.go).
func (l *Loader) allocSPI() (uint32, error) { return l.allocSPIFor("") }

// allocSPIFor hands out an SPI of the host's range, never one in use, held
// by the guest on interface iface (freed when it is torn down).
func (l *Loader) allocSPIFor(iface string) (uint32, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for range l.cfg.SPISlots {
		s := l.cfg.SPIBase + l.spiNext%l.cfg.SPISlots
		l.spiNext++
		if _, used := l.spiInUse[s]; s >= 256 && !used {
			l.spiInUse[s] = iface
			return s, nil
		}
	}
	return 0, fmt.Errorf("all %d SPIs of the host's range are in use: raise spi_slots", l.cfg.SPISlots)
}

func (l *Loader) freeSPIs(spis []uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range spis {
		delete(l.spiInUse, s)
	}
}

// MarkSPIsInUse records SPIs already installed (from the host's SAs at
// start), so that the allocator never hands them out again. An SPI already
// recorded keeps its holder.
func (l *Loader) MarkSPIsInUse(spis []uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range spis {
		if _, ok := l.spiInUse[s]; !ok {
			l.spiInUse[s] = ""
		}
	}
}

// admit takes one of caller's and one of app's active-load slots, and
// says whether caller may only reuse guests (it holds its cap of fresh
// guests). release gives the slots back.
func (l *Loader) admit(caller Caller, app string) (release func(), reuseOnly bool, err error) {
	lim := l.cfg.Limits
	key := caller.key()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.activeBy[key] >= lim.ActivePerGuest {
		l.metrics.refused("active_per_guest")
		return nil, false, fmt.Errorf("%w: %s already has %d loads in progress (the limit per guest)", ErrLimited, caller, lim.ActivePerGuest)
	}
	if l.activeApp[app] >= lim.ActivePerApp {
		l.metrics.refused("active_per_app")
		return nil, false, fmt.Errorf("%w: %d guest-requested loads of %s are in progress (the limit per application)", ErrLimited, lim.ActivePerApp, app)
	}
	l.activeBy[key]++
	l.activeApp[app]++
	var once sync.Once
	release = func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.activeBy[key]--; l.activeBy[key] <= 0 {
				delete(l.activeBy, key)
			}
			if l.activeApp[app]--; l.activeApp[app] <= 0 {
				delete(l.activeApp, app)
			}
		})
	}
	return release, len(l.fresh[key]) >= lim.FreshPerGuest, nil
}

// tookFresh records that caller's load took guest vm fresh.
func (l *Loader) tookFresh(caller Caller, vm uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := caller.key()
	if l.fresh[key] == nil {
		l.fresh[key] = map[uint32]bool{}
	}
	l.fresh[key][vm] = true
}

// forgetFresh drops guest g from every caller's fresh guests, and g's own
// record as a caller. The caller holds l.mu.
func (l *Loader) forgetFresh(g *Guest) {
	for key, vms := range l.fresh {
		delete(vms, g.VM)
		if len(vms) == 0 {
			delete(l.fresh, key)
		}
	}
	delete(l.fresh, Caller{VM: g.VM, Addr: g.Addr}.key())
}
