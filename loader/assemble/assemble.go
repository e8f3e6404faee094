package assemble

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"time"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/backend"
	"github.com/mlsgate/mlsgate/loader/pool"
	"github.com/mlsgate/mlsgate/loader/updatedaemon"
	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/policystore/ca"
	"github.com/mlsgate/mlsgate/selinux"
)

// Setup is everything VMLoad runs with.
type Setup struct {
	// StepTimeout bounds each step of a load, a guest's boot included
	// (loader.Config.StepTimeout; its default when 0).
	StepTimeout time.Duration
	// HostSemodule installs the host's modules with semodule: set it
	// where the host's running policy was loaded from its semodule store
	// (selinux.SELinux.Semodule).
	HostSemodule bool
	// StateDir holds the policy store, the CA and the pool's table.
	StateDir string
	// AppsDir, when set, is synced into the policy store at start.
	AppsDir string
	// APIPort is the host's API port, which is also the guests' update
	// daemon port and the port of the host mapper guests forward to.
	APIPort  uint16
	PoolSize int
	// MaxLoads is the number of loads a guest takes at once (the pool's
	// MaxActive): a guest serves its application's loads one after the
	// other without a bound over its life, so repeated loads never boot
	// new guests.
	MaxLoads int
	Backend  loader.Backend
	Agent    loader.AgentAPI
	// HostXFRM is nil where the host installs no SAs itself.
	HostXFRM  loader.XFRMWriter
	SPIBase   uint32
	SPISlots  uint32
	Clearance string
	// PauseIdle keeps pre-loaded guests paused until they are handed out
	// (the paper's section 5.2.1 on Xen: `xl pause` after boot, `xl
	// unpause` + policy push on a load), so idle guests cost no CPU. The
	// backend must implement Pauser.
	PauseIdle bool
	// Limits bound what one guest can make the host do (loader.Limits;
	// zero fields take loader.DefaultLimits).
	Limits loader.Limits
	// GuestListen opens a guest's API listener; nil means
	// loader.ListenGuest (its host-side address, bound to its interface).
	GuestListen func(g loader.Guest, port uint16) (net.Listener, error)
	// Rotation, when set, turns SA rotation on (its StateDir defaults to
	// StateDir/rotation); Start finishes rotations a crash interrupted.
	Rotation *loader.RotationConfig
}

// WarmTimeout bounds opening the connection to a freshly booted guest's
// update daemon ahead of its first push.
const WarmTimeout = 30 * time.Second

// Pauser is a backend that can pause and resume a guest (backend.Xen).
type Pauser interface {
	Pause(ctx context.Context, g *loader.Guest) error
	Unpause(ctx context.Context, g *loader.Guest) error
}

// Running is a started loader with its parts.
type Running struct {
	Loader *loader.Loader
	Pool   *pool.Pool
	// API serves the loader; its Pool is the same pool.
	API   *loader.API
	Host  *loader.Host
	CA    *ca.CA
	Store *policystore.Store
	// Updated is the loader's client of the guests' update daemons, with
	// its mutual-TLS identity (the CA's mlsgate-loader certificate).
	Updated *updatedaemon.Client
	// Listeners serve API to each guest on its own link; serve API's
	// server on them with Listeners.Serve. There is no other TCP listener
	// for guests.
	Listeners *loader.GuestListeners
	// CRLPath is where the CA's current CRL is published (PEM), rewritten
	// whenever a certificate is revoked.
	CRLPath string
	// Warnings are problems Start met and worked around (a pool guest
	// whose listener could not be reopened).
	Warnings []string
	// Precompiled is closed when the background compile of every
	// application's SELinux modules (Loader.Precompile), started by
	// Start, has ended; PrecompileErr is then what it could not compile.
	Precompiled   <-chan struct{}
	PrecompileErr error

	closers []func()
}

// Close closes the pool, the CA and the store, in the reverse order of
// their opening. Guests keep running: remove them from the pool first.
func (r *Running) Close() {
	for i := len(r.closers) - 1; i >= 0; i-- {
		r.closers[i]()
	}
	r.closers = nil
}

// GuestAddrs is the addressing plan: guest N on 10.71.N.2/24, the host on
// 10.71.N.1 (N ≤ 254).
func GuestAddrs(vm uint32) (guest, host netip.Addr) {
	return netip.AddrFrom4([4]byte{10, 71, byte(vm), 2}), netip.AddrFrom4([4]byte{10, 71, byte(vm), 1})
}

// GuestNet holds every guest address of the plan.
var GuestNet = netip.MustParsePrefix("10.71.0.0/16")

// Start opens the policy store, the CA and the pool under s.StateDir and
// builds the loader on them. Guests are numbered from 2 (the lowest number
// no guest in the pool uses), declared to the agent before they boot, and
// given a Guest certificate of the CA for their update daemon.
func Start(ctx context.Context, s Setup) (*Running, error) {
	v := &Running{}
	fail := func(err error) (*Running, error) { v.Close(); return nil, err }
	st, err := policystore.OpenStore(filepath.Join(s.StateDir, "policystore.db"))
	if err != nil {
		return fail(err)
	}
	v.closers = append(v.closers, func() { st.Close() })
	v.Store = st
	if s.AppsDir != "" {
		if _, err := st.SyncDir(s.AppsDir); err != nil {
			return fail(err)
		}
	}
	// A CRL outlives the guests' certificates (CertTTL), so that an idle
	// guest's daemon never sits behind an expired CRL.
	authority, err := ca.Open(filepath.Join(s.StateDir, "ca"), ca.Options{CommonName: "mlsgate policy store CA", CRLValidity: CRLValidity})
	if err != nil {
		return fail(err)
	}
	v.closers = append(v.closers, func() { authority.Close() })
	v.CA = authority
	loaderCert, err := authority.Issue(ca.Request{Kind: ca.Client, CommonName: LoaderName, TTL: CertTTL})
	if err != nil {
		return fail(err)
	}
	// The loader certificates of earlier runs are superseded: revoke them,
	// so that a copy of an old key cannot push to a guest's daemon.
	certs := &certLife{ca: authority, crlPath: filepath.Join(s.StateDir, CRLFile)}
	if err := certs.supersedeLoaders(loaderCert.Serial); err != nil {
		return fail(err)
	}
	if err := certs.publish(); err != nil {
		return fail(err)
	}
	v.CRLPath = certs.crlPath
	push := &updatedaemon.Client{TLS: authority.ClientTLS(loaderCert, "")}
	v.Updated = push
	var sys policystore.SystemPolicy
	if s.Clearance != "" {
		if sys.Clearance, err = label.ParseBounds(s.Clearance); err != nil {
			return fail(fmt.Errorf("clearance: %w", err))
		}
	}
	v.Listeners = &loader.GuestListeners{Port: s.APIPort, Listen: s.GuestListen}
	v.closers = append(v.closers, v.Listeners.CloseAll)
	hostSE := selinux.SELinux{Semodule: s.HostSemodule}
	checked := &compiledModules{}
	// Where nothing is installed the modules are only compiled (a check):
	// a module text compiled before needs no second compile.
	checkOnly := func() bool { return !hostSE.Active() || !hostSE.Semodule }
	install := func(ctx context.Context, mods []selinux.Module) (*selinux.ModuleReport, error) {
		dir, err := os.MkdirTemp("", "mlsgate-modules-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		return hostSE.Install(ctx, mods, dir)
	}
	v.Host = &loader.Host{Agent: s.Agent, XFRM: s.HostXFRM,
		SELinux: func(ctx context.Context, mods []selinux.Module) (*selinux.ModuleReport, error) {
			if !checkOnly() {
				return install(ctx, mods)
			}
			return checked.compile(ctx, mods, install)
		},
		// Compiled at start (Loader.Precompile), in the background: only
		// where the modules are only compiled; semodule installs at load.
		Precompile: func(ctx context.Context, mods []selinux.Module) error {
			if !checkOnly() {
				return nil
			}
			_, err := checked.compile(ctx, mods, install)
			return err
		},
	}

	// VM numbers: the lowest not used by a guest in the table and not
	// named by a Guest certificate that is still valid and unrevoked (a
	// destroyed guest's certificate is revoked before its number is free;
	// if that revocation failed, the number waits for the certificate to
	// expire).
	var vmMu sync.Mutex
	used := map[uint32]bool{}
	allocVM := func() (uint32, error) {
		vmMu.Lock()
		defer vmMu.Unlock()
		if v.Pool != nil {
			for _, e := range v.Pool.List() {
				used[e.Guest.VM] = true
			}
		}
		live := certs.liveGuestAddrs()
		for n := uint32(2); n < 255; n++ {
			addr, _ := GuestAddrs(n)
			if !used[n] && !live[addr] {
				used[n] = true
				return n, nil
			}
		}
		return 0, errors.New("no free VM number (2-254) without a live certificate: destroy idle guests or shrink the pool")
	}
	var pauser Pauser
	if s.PauseIdle {
		pz, ok := s.Backend.(Pauser)
		if !ok {
			return fail(fmt.Errorf("PauseIdle: the %s backend cannot pause guests (xen can)", s.Backend.Name()))
		}
		pauser = pz
	}
	// Declare every guest to the agent before its vif exists, so the agent
	// attaches the moment it appears and no packet of it is unfiltered. Where
	// the hypervisor chooses the id (Xen's domid), the vif's name is known
	// only during the boot: the backend's Created hook declares it then.
	var declMu sync.Mutex
	declared := map[string]loader.Guest{} // by guest name, while booting
	hypervisorIDs := false
	if xb, ok := s.Backend.(*backend.Xen); ok && xb.Created == nil {
		hypervisorIDs = true
		xb.Created = func(_ context.Context, g *loader.Guest) error {
			declMu.Lock()
			declared[g.Name] = *g
			declMu.Unlock()
			return v.Host.Quarantine(g)
		}
		if xb.Attached == nil {
			xb.Attached = waitAttached(s.Agent)
		}
	}
	// undeclare forgets the declaration made for the guest named name.
	undeclare := func(name string, g *loader.Guest) {
		declMu.Lock()
		d, ok := declared[name]
		delete(declared, name)
		declMu.Unlock()
		if hypervisorIDs {
			if ok {
				v.Host.Forget(&d)
			}
			return
		}
		v.Host.Forget(g)
	}
	boot := func(ctx context.Context, template string) (*loader.Guest, error) {
		vm, err := allocVM()
		if err != nil {
			return nil, err
		}
		addr, hostAddr := GuestAddrs(vm)
		name := fmt.Sprintf("vm%d", vm)
		cert, err := authority.Issue(ca.Request{Kind: ca.Guest, CommonName: name, IPs: []net.IP{addr.AsSlice()}, TTL: CertTTL})
		if err != nil {
			vmMu.Lock()
			delete(used, vm)
			vmMu.Unlock()
			return nil, err
		}
		g := loader.Guest{VM: vm, Name: name, Backend: s.Backend.Name(), Interface: backend.IfName(vm), Addr: addr, HostAddr: hostAddr, Template: template}
		if l, ok := s.Backend.(backend.Linker); ok {
			g.MAC, g.HostLL = l.Link(vm)
		}
		if err := pool.Announce(ctx, g); err != nil {
			// Nothing runs with this certificate: revoke it at once.
			return nil, errors.Join(err, certs.revokeGuest(&g))
		}
		crl, err := certs.current()
		if err != nil {
			return nil, err
		}
		if !hypervisorIDs {
			if err := v.Host.Quarantine(&g); err != nil {
				return nil, err
			}
		}
		spec := loader.BootSpec{VM: vm, Name: name, Addr: addr, HostAddr: hostAddr, PrefixLen: 24, Template: template,
			UpdatedCertPEM: cert.CertPEM, UpdatedKeyPEM: cert.KeyPEM, CAPEM: authority.CertPEM(), CRLPEM: crl, UpdatedPort: s.APIPort}
		out, err := s.Backend.Boot(ctx, spec)
		if err != nil {
			undeclare(name, &g)
			return nil, err
		}
		if !hypervisorIDs && (out.MAC != g.MAC || out.HostLL != g.HostLL || out.HostAddr != g.HostAddr) {
			// The backend gave the link more (or other) than it said
			// beforehand: declare what the guest really has.
			if err := v.Host.Quarantine(out); err != nil {
				s.Backend.Destroy(ctx, out)
				undeclare(name, &g)
				return nil, fmt.Errorf("declare %s's link: %w", out.Name, err)
			}
		}
		declMu.Lock()
		delete(declared, name)
		declMu.Unlock()
		// Its link exists now: serve it the API there, and only there. A
		// failure fails the boot; the pool destroys the announced guest.
		if err := v.Listeners.Open(*out); err != nil {
			return nil, err
		}
		if pauser == nil {
			// Open the authenticated connection the guest's first push will
			// use, off that push's path (see updatedaemon.KeepAliveIdle). A
			// failure costs only the speed-up: the push connects anew.
			warm := *out
			go func() {
				wctx, cancel := context.WithTimeout(context.Background(), WarmTimeout)
				defer cancel()
				push.Connect(wctx, warm.UpdatedAddr) //nolint:errcheck // best effort; the push reports its own errors
			}()
		}
		if pauser != nil {
			if err := pauser.Pause(ctx, out); err != nil {
				// The pool destroys the announced guest (and forgets it
				// only once that destroy succeeds).
				return nil, fmt.Errorf("pause pre-loaded guest %s: %w", out.Name, err)
			}
		}
		return out, nil
	}
	destroy := func(ctx context.Context, g *loader.Guest) error {
		// Whatever happens to the guest, VMLoad stops answering it and
		// its certificate is revoked (and the CRL republished) first.
		v.Listeners.Close(g.Interface)
		rerr := certs.revokeGuest(g)
		if err := s.Backend.Destroy(ctx, g); err != nil {
			// The guest may still run: it stays declared, deny-all, and the
			// pool destroys it again after a backoff. Never Forget it here.
			err = fmt.Errorf("destroy %s: %w; it stays declared deny-all and is retried", g.Name, err)
			ierr := v.Host.Isolate(g)
			if v.Loader != nil {
				v.Loader.TeardownFailed(g, err)
			}
			return errors.Join(err, ierr, rerr)
		}
		err := errors.Join(v.Host.Forget(g), rerr)
		if v.Loader != nil {
			v.Loader.TornDown(g)
		}
		// The number is free once no live certificate names it (allocVM
		// checks).
		vmMu.Lock()
		delete(used, g.VM)
		vmMu.Unlock()
		// The next guest may get this one's number and address: a kept-alive
		// connection to the old daemon would fail its first push.
		push.CloseIdleConnections()
		return err
	}
	// Ready guests (an application's `pool: {ready: N}`): the loader says
	// which, and configures each exactly as a load would. On a backend that
	// keeps idle guests paused, the guest runs only while it is configured,
	// and waits paused for its hand-out (unpause, in poolAdapter).
	readyWants := func(ctx context.Context) ([]loader.ReadyWant, error) {
		if v.Loader == nil {
			return nil, nil
		}
		return v.Loader.ReadyWants(ctx)
	}
	prepare := func(ctx context.Context, g *loader.Guest, w loader.ReadyWant) error {
		if v.Loader == nil {
			return errors.New("the loader is not started yet")
		}
		if pauser != nil {
			if err := pauser.Unpause(ctx, g); err != nil {
				return fmt.Errorf("unpause %s to prepare it: %w", g.Name, err)
			}
		}
		if _, err := v.Loader.Prepare(ctx, g, w); err != nil {
			return err
		}
		if pauser != nil {
			if err := pauser.Pause(ctx, g); err != nil {
				return fmt.Errorf("pause %s once prepared: %w", g.Name, err)
			}
		}
		return nil
	}
	p, err := pool.Open(filepath.Join(s.StateDir, "pool.db"), pool.Config{
		Templates: map[string]pool.TemplateConfig{"default": {Size: s.PoolSize, MaxActive: s.MaxLoads}},
		Boot:      boot, Destroy: destroy,
		Ready: readyWants, Prepare: prepare,
	})
	if err != nil {
		return fail(err)
	}
	v.closers = append(v.closers, func() { p.Close() })
	v.Pool = p
	// Guests that outlived a restart get their listeners back, and those
	// bound to an application (serving it, or kept ready for it) their
	// servers in the fast path's peer table.
	resumed := false
	for _, e := range p.List() {
		if e.State == pool.Booting || e.State == pool.Failed || e.Guest.VM == 0 {
			continue
		}
		if err := v.Listeners.Open(e.Guest); err != nil {
			v.Warnings = append(v.Warnings, fmt.Sprintf("guest %s keeps running without VMLoad: %v; remove it with the pool or fix its link", e.Guest.Name, err))
		}
		if e.App == "" || e.Pending {
			continue
		}
		if se, ok := st.Get(e.App); ok && se.App != nil {
			g := e.Guest
			v.Host.Resume(&g, se.App, loader.AppID(e.App))
			resumed = true
		} else {
			v.Warnings = append(v.Warnings, fmt.Sprintf("guest %s serves application %s, which the policy store no longer has: its servers stay out of the fast path; remove the guest", e.Guest.Name, e.App))
		}
	}
	if resumed {
		if err := v.Host.Push(); err != nil {
			v.Warnings = append(v.Warnings, fmt.Sprintf("the resumed guests' servers are not in the fast path: %v", err))
		}
	}
	pa := &poolAdapter{p: p, pauser: pauser}
	l, err := loader.New(loader.Config{Template: "default", System: sys, SPIBase: s.SPIBase, SPISlots: s.SPISlots, MapperPort: s.APIPort, Limits: s.Limits, StepTimeout: s.StepTimeout,
		ReadyBasis: readyBasis(authority.CertPEM())},
		&policystore.Catalog{Store: st}, nil, pa, &pusher{c: push, certs: certs}, v.Host)
	if err != nil {
		return fail(err)
	}
	v.Loader = l
	// Every application's modules are compiled now, in the background,
	// rather than by its first load (seconds under emulation); a load
	// that comes first waits for the compile it needs, or compiles.
	pctx, stopPrecompile := context.WithCancel(context.WithoutCancel(ctx))
	precompiled := make(chan struct{})
	v.Precompiled = precompiled
	go func() {
		defer close(precompiled)
		v.PrecompileErr = l.Precompile(pctx)
	}()
	v.closers = append(v.closers, func() { stopPrecompile(); <-precompiled })
	// The SPIs of the guests that outlived a restart stay theirs: every
	// SPI the kernel holds is reserved, and the SAs on a known guest's
	// link are its own again (deleted, then freed, at its teardown).
	var known []loader.Guest
	for _, e := range p.List() {
		if e.Guest.VM != 0 {
			known = append(known, e.Guest)
		}
	}
	if _, err := l.ReserveInstalled(known); err != nil {
		return fail(err)
	}
	l.Registry().MustRegister(p.Collectors()...)
	v.API = &loader.API{Loader: l, Pool: pa}
	if s.Rotation != nil {
		rc := *s.Rotation
		if rc.StateDir == "" {
			rc.StateDir = filepath.Join(s.StateDir, "rotation")
		}
		if err := l.EnableRotation(ctx, rc); err != nil {
			return fail(err)
		}
	}
	return v, nil
}

// poolAdapter presents package pool to the loader.
type poolAdapter struct {
	p      *pool.Pool
	pauser Pauser // set when pre-loaded guests are kept paused
}

type leaseAdapter struct{ l pool.Lease }

func (a leaseAdapter) Guest() *loader.Guest { g := a.l.Entry.Guest; return &g }
func (a leaseAdapter) How() string          { return string(a.l.How) }
func (a leaseAdapter) Done(ok bool)         { a.l.Done(ok) }

func (a *poolAdapter) Acquire(ctx context.Context, app string, rng label.Bounds, template string) (loader.Lease, error) {
	l, err := a.p.Acquire(ctx, app, rng, template)
	if err != nil {
		return nil, err
	}
	if a.pauser != nil && l.How != pool.HowReuse {
		// A fresh guest (idle or just booted) was paused after its boot:
		// the hand-out is unpause, then the policy push.
		g := l.Entry.Guest
		if err := a.pauser.Unpause(ctx, &g); err != nil {
			l.Done(false)
			return nil, fmt.Errorf("unpause %s: %w", g.Name, err)
		}
	}
	return leaseAdapter{l}, nil
}

func (a *poolAdapter) Find(addr netip.Addr) (*loader.Guest, string, bool) {
	for _, e := range a.p.List() {
		// A guest being destroyed (Failed) or not yet booted asks nothing.
		if e.Guest.Addr == addr && e.Guest.VM != 0 && e.State != pool.Failed && e.State != pool.Booting {
			g := e.Guest
			if e.State == pool.Prepared {
				// Kept ready, not yet handed out: it serves no one, so it
				// may ask for nothing in its application's name.
				return &g, "", true
			}
			return &g, e.App, true
		}
	}
	return nil, "", false
}

// readyBasis is what every ready guest is built from besides its
// application: the CA that signs its certificates, and this build of
// mlsgate (its bundle generator and built-in templates).
func readyBasis(caPEM []byte) string {
	h := sha256.New()
	h.Write(caPEM)
	if bi, ok := debug.ReadBuildInfo(); ok {
		h.Write([]byte(bi.Main.Path + "@" + bi.Main.Version))
		for _, st := range bi.Settings {
			if st.Key == "vcs.revision" || st.Key == "vcs.modified" {
				h.Write([]byte(st.Key + "=" + st.Value))
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// pusher pushes bundles with the CA's current CRL, which the guest's
// update daemon installs as its --crl file.
type pusher struct {
	c     *updatedaemon.Client
	certs *certLife
}

func (p *pusher) Push(ctx context.Context, g *loader.Guest, b *policystore.Bundle) error {
	_, err := p.PushParts(ctx, g, b)
	return err
}

// PushParts implements loader.PartsPusher: the client's view of the push
// (connect, TLS handshake, send, answer) with the daemon's own parts in
// place of its wait for the answer, and what of that wait the daemon's
// parts do not cover (HTTP, encoding the report) as "daemon, other".
func (p *pusher) PushParts(ctx context.Context, g *loader.Guest, b *policystore.Bundle) ([]loader.Step, error) {
	crl, err := p.certs.current()
	if err != nil {
		return nil, err
	}
	withCRL := *b
	withCRL.CRL = crl
	rep, err := p.c.Push(ctx, g.UpdatedAddr, &withCRL)
	if err != nil {
		return nil, err
	}
	return pushParts(rep), nil
}

func pushParts(rep *updatedaemon.Report) []loader.Step {
	var out []loader.Step
	for _, w := range rep.Wire {
		if w.Name != "daemon" {
			out = append(out, loader.Step{Name: w.Name, Duration: w.Duration})
			continue
		}
		left := w.Duration
		for _, d := range rep.Parts {
			out = append(out, loader.Step{Name: "guest: " + d.Name, Duration: d.Duration})
			left -= d.Duration
		}
		out = append(out, loader.Step{Name: "guest: other", Duration: max(left, 0)})
	}
	return out
}

// The Xen backend keeps idle guests paused.
var _ Pauser = (*backend.Xen)(nil)

// attachReporter is an agent that says whether its programs are attached to
// a declared guest's interface (loader.AgentClient).
type attachReporter interface {
	GuestAttached(iface string) (bool, error)
}

// statusReporter is the agent in the same process (*agent.Agent).
type statusReporter interface {
	Status() agent.Status
}

// waitAttached waits, polling the agent every 20 ms until ctx ends, until it
// reports the fast path attached to g's interface. An agent that cannot say
// fails the boot: the guest would run on a vif nobody checked.
func waitAttached(a loader.AgentAPI) func(ctx context.Context, g *loader.Guest) error {
	return func(ctx context.Context, g *loader.Guest) error {
		ask := func() (bool, error) {
			switch r := a.(type) {
			case attachReporter:
				return r.GuestAttached(g.Interface)
			case statusReporter:
				return loader.StatusAttached(r.Status(), g.Interface), nil
			}
			return false, fmt.Errorf("the agent API %T cannot report whether %s is attached; give one that can (loader.AgentClient)", a, g.Interface)
		}
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			ok, err := ask()
			if err != nil {
				return err
			}
			if ok {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s not attached: %w", g.Interface, ctx.Err())
			case <-tick.C:
			}
		}
	}
}

// compiledModules remembers the host module sets compiled (checked only,
// not installed), by their texts without version stamps
// (loader.ModuleDigest): an application's every bundle carries the same
// host modules but for the stamp. A set being compiled (by the precompile
// at start, or a load) is waited for, not compiled a second time at once.
type compiledModules struct {
	seen loader.Memo[[32]byte, compiledSet]
}

// compiledSet is one compile's outcome.
type compiledSet struct {
	rep *selinux.ModuleReport
	err error
}

func modulesKey(mods []selinux.Module) [32]byte {
	h := sha256.New()
	for _, m := range mods {
		d := loader.ModuleDigest(m)
		h.Write(d[:])
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// compile returns the report of mods' compile, from a compile of the same
// texts before or in progress, else from run (remembered if it compiled
// and loaded nothing). A compile in progress that ends without a result
// (failed or cut short) leaves this call to run its own.
func (c *compiledModules) compile(ctx context.Context, mods []selinux.Module, run func(context.Context, []selinux.Module) (*selinux.ModuleReport, error)) (*selinux.ModuleReport, error) {
	ran := false
	r, err := c.seen.Do(ctx, modulesKey(mods), func() (compiledSet, bool) {
		ran = true
		rep, err := run(ctx, mods)
		return compiledSet{rep, err}, err == nil && !rep.Loaded
	})
	switch {
	case err != nil:
		return nil, err
	case ran:
		return r.rep, r.err
	}
	// Remembered: the report of the same texts, named as these modules.
	rep := *r.rep
	rep.Modules = nil
	for _, m := range mods {
		rep.Modules = append(rep.Modules, m.Name)
	}
	return &rep, nil
}
