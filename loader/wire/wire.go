package wire

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/backend"
	"github.com/mlsgate/mlsgate/loader/pool"
	"github.com/mlsgate/mlsgate/loader/updated"
	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/policystore/ca"
)

// Setup is everything VMLoad runs with.
type Setup struct {
	// StateDir holds the policy store, the CA and the pool's table.
	StateDir string
	// AppsDir, when set, is synced into the policy store at start.
	AppsDir string
	// APIPort is the host's API port, which is also the guests' update
	// daemon port and the port of the host mapper guests forward to.
	APIPort  uint16
	PoolSize int
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
}

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
	Updated *updated.Client

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
	authority, err := ca.Open(filepath.Join(s.StateDir, "ca"), ca.Options{CommonName: "mlsgate policy store CA"})
	if err != nil {
		return fail(err)
	}
	v.closers = append(v.closers, func() { authority.Close() })
	v.CA = authority
	loaderCert, err := authority.Issue(ca.Request{Kind: ca.Client, CommonName: "mlsgate-loader", TTL: 30 * 24 * time.Hour})
	if err != nil {
		return fail(err)
	}
	push := &updated.Client{TLS: authority.ClientTLS(loaderCert, "")}
	v.Updated = push
	var sys policystore.SystemPolicy
	if s.Clearance != "" {
		if sys.Clearance, err = label.ParseBounds(s.Clearance); err != nil {
			return fail(fmt.Errorf("clearance: %w", err))
		}
	}
	v.Host = &loader.Host{Agent: s.Agent, XFRM: s.HostXFRM, SELinux: func(ctx context.Context, mods []policystore.Module) (*agent.ModuleReport, error) {
		dir, err := os.MkdirTemp("", "mlsgate-modules-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		return agent.SELinux{}.Install(ctx, mods, dir)
	}}

	// VM numbers: the lowest not used by a guest in the table.
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
		for n := uint32(2); n < 255; n++ {
			if !used[n] {
				used[n] = true
				return n, nil
			}
		}
		return 0, errors.New("no free VM number (2-254): destroy idle guests or shrink the pool")
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
		cert, err := authority.Issue(ca.Request{Kind: ca.Guest, CommonName: name, IPs: []net.IP{addr.AsSlice()}, TTL: 30 * 24 * time.Hour})
		if err != nil {
			return nil, err
		}
		g := loader.Guest{VM: vm, Name: name, Backend: s.Backend.Name(), Interface: backend.IfName(vm), Addr: addr, HostAddr: hostAddr, Template: template}
		if l, ok := s.Backend.(backend.Linker); ok {
			g.MAC, g.HostLL = l.Link(vm)
		}
		if err := pool.Announce(ctx, g); err != nil {
			return nil, err
		}
		if !hypervisorIDs {
			if err := v.Host.Quarantine(&g); err != nil {
				return nil, err
			}
		}
		spec := loader.BootSpec{VM: vm, Name: name, Addr: addr, HostAddr: hostAddr, PrefixLen: 24, Template: template,
			UpdatedCertPEM: cert.CertPEM, UpdatedKeyPEM: cert.KeyPEM, CAPEM: authority.CertPEM(), UpdatedPort: s.APIPort}
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
		if pauser != nil {
			if err := pauser.Pause(ctx, out); err != nil {
				s.Backend.Destroy(ctx, out)
				v.Host.Forget(out)
				return nil, fmt.Errorf("pause pre-loaded guest %s: %w", out.Name, err)
			}
		}
		return out, nil
	}
	destroy := func(ctx context.Context, g *loader.Guest) error {
		err := s.Backend.Destroy(ctx, g)
		if ferr := v.Host.Forget(g); err == nil {
			err = ferr
		}
		vmMu.Lock()
		delete(used, g.VM)
		vmMu.Unlock()
		// The next guest may get this one's number and address: a kept-alive
		// connection to the old daemon would fail its first push.
		push.CloseIdleConnections()
		return err
	}
	p, err := pool.Open(filepath.Join(s.StateDir, "pool.db"), pool.Config{
		Templates: map[string]pool.TemplateConfig{"default": {Size: s.PoolSize, MaxLoads: s.MaxLoads}},
		Boot:      boot, Destroy: destroy,
	})
	if err != nil {
		return fail(err)
	}
	v.closers = append(v.closers, func() { p.Close() })
	v.Pool = p
	pa := &poolAdapter{p: p, pauser: pauser}
	l, err := loader.New(loader.Config{Template: "default", System: sys, SPIBase: s.SPIBase, SPISlots: s.SPISlots, MapperPort: s.APIPort},
		&policystore.Catalog{Store: st}, nil, policystore.CAIssuer(authority, 30*24*time.Hour), pa, &pusher{c: push}, v.Host)
	if err != nil {
		return fail(err)
	}
	v.Loader = l
	v.API = &loader.API{Loader: l, Pool: pa}
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
		if e.Guest.Addr == addr && e.Guest.VM != 0 {
			g := e.Guest
			return &g, e.App, true
		}
	}
	return nil, "", false
}

type pusher struct{ c *updated.Client }

func (p *pusher) Push(ctx context.Context, g *loader.Guest, b *policystore.Bundle) error {
	_, err := p.c.Push(ctx, g.UpdatedAddr, b)
	return err
}

// The Xen backend keeps idle guests paused.
var _ Pauser = (*backend.Xen)(nil)
