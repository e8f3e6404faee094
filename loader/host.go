package loader

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/agent/api"
	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/selinux"
	"github.com/mlsgate/mlsgate/verdict"
)

// AgentAPI is what the loader asks of the host agent (*agent.Agent in the
// same process, AgentClient over its socket).
type AgentAPI interface {
	SetGuest(g agent.GuestSpec) error
	RemoveGuest(iface string) (bool, error)
	SetPeers(p []agent.PeerSpec) error
}

// XFRMWriter installs and removes the host's SAs and policies
// (*xfrm.Handle).
type XFRMWriter interface {
	AddState(s xfrm.State) error
	DeleteState(dst netip.Addr, spi uint32, proto xfrm.Proto) error
	AddPolicy(p xfrm.Policy) error
	DeletePolicy(p xfrm.Policy) error
}

// Host applies bundles on the host: the guest and its servers in the fast
// path, the host's end of the guest's labeled tunnel, the host's SELinux
// modules.
type Host struct {
	Agent AgentAPI
	// XFRM is nil where the host installs no SAs itself (a host without
	// ESP: the fast path still gets the SAs as static entries).
	XFRM XFRMWriter
	// Lifetime is given to every SA the host installs (its soft limits
	// make the kernel announce when a guest's SAs are due for rotation).
	Lifetime xfrm.Lifetime
	// SELinux installs the bundle's host modules; nil skips them.
	SELinux func(ctx context.Context, mods []selinux.Module) (*selinux.ModuleReport, error)
	// Precompile, if set, compiles host modules ahead of their first
	// install without installing them (Loader.Precompile); SELinux is
	// then expected to find the result.
	Precompile func(ctx context.Context, mods []selinux.Module) error

	mu        sync.Mutex
	peers     map[string][]agent.PeerSpec // by guest interface
	base      []agent.PeerSpec            // the hosts' own addresses
	installed map[string]hostXFRM         // the host's end of each guest's tunnel
	// undeleted holds the SPIs of host states whose delete failed: they
	// may still be installed, so the loader never hands them out again
	// (until a restart finds them gone from the kernel).
	undeleted map[uint32]bool
}

type hostXFRM struct {
	states []xfrm.State
	pols   []xfrm.Policy
}

// Quarantine declares a freshly booted guest that serves no application
// yet: the fast path filters its vif from the first packet, and only
// control traffic (DHCP, ARP, ND, the update daemon's port with the host)
// passes until a bundle gives it a range.
func (h *Host) Quarantine(g *Guest) error {
	if err := h.addHostPeer(g.HostAddr); err != nil {
		return err
	}
	spec := linkSpec(g)
	spec.App, spec.Range = 0, label.Bounds{}
	return h.Agent.SetGuest(spec)
}

// Isolate is what the host does for a guest that may still run but must
// not serve anything (its destroy failed): the host's end of its tunnel and
// its servers go, and it stays declared to the agent with no application
// and an empty range, so its vif passes no data until it is gone. Never
// Forget such a guest: an undeclared vif is not filtered by its guest's
// rules.
func (h *Host) Isolate(g *Guest) error {
	h.mu.Lock()
	delete(h.peers, g.Interface)
	inst := h.installed[g.Interface]
	delete(h.installed, g.Interface)
	h.mu.Unlock()
	errs := h.deleteXFRM(inst)
	errs = append(errs, h.Quarantine(g))
	return errors.Join(errs...)
}

func (h *Host) deleteXFRM(inst hostXFRM) []error {
	var errs []error
	if h.XFRM != nil {
		for _, p := range inst.pols {
			errs = append(errs, ignoreGone(h.XFRM.DeletePolicy(p)))
		}
		for _, s := range inst.states {
			err := ignoreGone(h.XFRM.DeleteState(s.Dst, s.SPI, s.Proto))
			if err != nil {
				h.mu.Lock()
				if h.undeleted == nil {
					h.undeleted = map[uint32]bool{}
				}
				h.undeleted[s.SPI] = true
				h.mu.Unlock()
			}
			errs = append(errs, err)
		}
	}
	return errs
}

// Forget removes a guest from the fast path (its programs are detached)
// and the host's end of its tunnel. Call it only once the guest is gone
// (its backend's Destroy succeeded); until then, Isolate it.
func (h *Host) Forget(g *Guest) error {
	h.mu.Lock()
	delete(h.peers, g.Interface)
	inst := h.installed[g.Interface]
	delete(h.installed, g.Interface)
	h.mu.Unlock()
	errs := h.deleteXFRM(inst)
	if _, err := h.Agent.RemoveGuest(g.Interface); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, h.pushPeers())
	return errors.Join(errs...)
}

// linkSpec is the guest's declaration as far as its link goes: interface,
// VM, its address, the host's end of the link (the only address control
// traffic may reach) and its MAC (the only Ethernet source it may use).
func linkSpec(g *Guest) agent.GuestSpec {
	spec := agent.GuestSpec{Interface: g.Interface, VM: g.VM, HostAddr6: g.HostLL, MAC: g.MAC}
	if g.Addr.Is4() {
		spec.Addr4 = g.Addr
	} else {
		spec.Addr6 = g.Addr
	}
	if g.HostAddr.Is4() {
		spec.HostAddr4 = g.HostAddr
	}
	return spec
}

func (h *Host) addHostPeer(a netip.Addr) error {
	all := label.Bounds{High: label.Label{Secrecy: label.Level{Sens: label.MaxSensitivity}, Integrity: label.MaxIntegrity}}
	for c := 0; c <= label.MaxCategory; c++ {
		all.High.Secrecy.Cats.Add(c)
	}
	p := agent.PeerSpec{Prefix: netip.PrefixFrom(a, a.BitLen()), Range: all, Kind: verdict.PeerHost}
	h.mu.Lock()
	known := false
	for _, b := range h.base {
		known = known || b.Prefix == p.Prefix
	}
	if !known {
		h.base = append(h.base, p)
	}
	h.mu.Unlock()
	return h.pushPeers()
}

// pushPeers sends the union of every guest's peers and the hosts' own
// addresses. Two applications claiming one server address get one entry
// open to both (app 0) with the labels both ranges share.
func (h *Host) pushPeers() error {
	h.mu.Lock()
	byPrefix := map[netip.Prefix]agent.PeerSpec{}
	for _, p := range h.base {
		byPrefix[p.Prefix] = p
	}
	var errs []error
	for _, ps := range h.peers {
		for _, p := range ps {
			old, ok := byPrefix[p.Prefix]
			if !ok {
				byPrefix[p.Prefix] = p
				continue
			}
			if old.App != p.App {
				r, ok := old.Range.Intersect(p.Range)
				if !ok {
					errs = append(errs, fmt.Errorf("server %s belongs to two applications with disjoint ranges %s and %s", p.Prefix, old.Range, p.Range))
					continue
				}
				old.App, old.Range = 0, r
				byPrefix[p.Prefix] = old
			}
		}
	}
	h.mu.Unlock()
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	out := make([]agent.PeerSpec, 0, len(byPrefix))
	for _, p := range byPrefix {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Prefix.String() < out[j].Prefix.String() })
	return h.Agent.SetPeers(out)
}

// Resume gives the fast path back, after a restart of VMLoad, the servers
// of guest g, which kept running bound to app (a guest serving it, or one
// kept ready for it): Apply's peer table lives in this process only, and
// without it the next change to the table would drop g's servers. The
// agent keeps the guest's own entry itself. Call it for every such guest
// before the loader takes loads; the peers are pushed once, by Push.
func (h *Host) Resume(g *Guest, app *policystore.Application, appID uint32) {
	var peers []agent.PeerSpec
	for _, s := range app.Servers {
		for _, a := range s.Addresses {
			peers = append(peers, agent.PeerSpec{Prefix: netip.PrefixFrom(a, a.BitLen()), App: appID, Range: s.Range, Kind: verdict.PeerWeb})
		}
	}
	all := label.Bounds{High: label.Label{Secrecy: label.Level{Sens: label.MaxSensitivity}, Integrity: label.MaxIntegrity}}
	for c := 0; c <= label.MaxCategory; c++ {
		all.High.Secrecy.Cats.Add(c)
	}
	hp := agent.PeerSpec{Prefix: netip.PrefixFrom(g.HostAddr, g.HostAddr.BitLen()), Range: all, Kind: verdict.PeerHost}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.peers == nil {
		h.peers = map[string][]agent.PeerSpec{}
	}
	h.peers[g.Interface] = peers
	known := false
	for _, b := range h.base {
		known = known || b.Prefix == hp.Prefix
	}
	if !known {
		h.base = append(h.base, hp)
	}
}

// Push sends the peer table as it stands (after Resume).
func (h *Host) Push() error { return h.pushPeers() }

// HostXFRM is the host's end of a guest's tunnel: the same SAs, and for
// each of the guest's labeled policies the host's mirror (what the guest
// sends out arrives and is forwarded; what the guest receives the host
// sends out). Block and clear policies stay the guest's own.
func HostXFRM(b *policystore.Bundle) ([]xfrm.State, []xfrm.Policy) {
	var states []xfrm.State
	for _, s := range b.States {
		states = append(states, s)
	}
	var pols []xfrm.Policy
	for _, p := range b.Policies {
		if p.Action != xfrm.ActionAllow || len(p.Templates) == 0 || p.Context == "" {
			continue
		}
		hp := p
		switch p.Dir {
		case xfrm.DirOut:
			hp.Dir = xfrm.DirFwd // the guest's outbound is forwarded here
		case xfrm.DirIn:
			hp.Dir = xfrm.DirOut // the guest's inbound leaves here
		default:
			continue
		}
		pols = append(pols, hp)
	}
	return states, pols
}

// Apply implements HostSide.
func (h *Host) Apply(ctx context.Context, g *Guest, app *policystore.Application, appID uint32, b *policystore.Bundle) (func(context.Context) error, error) {
	var undo []func() error
	rollback := func(context.Context) error {
		var errs []error
		for i := len(undo) - 1; i >= 0; i-- {
			errs = append(errs, undo[i]())
		}
		return errors.Join(errs...)
	}
	// 1. The host's end of the labeled tunnel: one netlink batch where the
	// handle takes batches (hostxfrm.go), else one request each.
	if bw, ok := h.XFRM.(xfrm.BatchWriter); ok {
		states, pols := HostXFRM(b)
		u, err := h.applyBatch(bw, states, pols)
		undo = append(undo, u...)
		if err != nil {
			return rollback, err
		}
	} else if h.XFRM != nil {
		states, pols := HostXFRM(b)
		for _, s := range states {
			s.Lifetime = h.Lifetime
			if err := h.XFRM.AddState(s); err != nil {
				return rollback, fmt.Errorf("host SA spi %#x: %w", s.SPI, err)
			}
			undo = append(undo, func() error { return ignoreGone(h.XFRM.DeleteState(s.Dst, s.SPI, s.Proto)) })
		}
		for _, p := range pols {
			if err := h.XFRM.AddPolicy(p); err != nil {
				return rollback, fmt.Errorf("host policy %v: %w", p, err)
			}
			undo = append(undo, func() error { return ignoreGone(h.XFRM.DeletePolicy(p)) })
		}
	}
	if h.XFRM != nil {
		states, pols := HostXFRM(b)
		h.mu.Lock()
		if h.installed == nil {
			h.installed = map[string]hostXFRM{}
		}
		prev, had := h.installed[g.Interface]
		h.installed[g.Interface] = hostXFRM{states: states, pols: pols}
		h.mu.Unlock()
		undo = append(undo, func() error {
			h.mu.Lock()
			defer h.mu.Unlock()
			if had {
				h.installed[g.Interface] = prev
			} else {
				delete(h.installed, g.Interface)
			}
			return nil
		})
	}
	// 2. The fast path: the guest's range, its servers as peers.
	var peers []agent.PeerSpec
	for _, p := range b.Peers {
		for _, a := range p.Addresses {
			peers = append(peers, agent.PeerSpec{Prefix: netip.PrefixFrom(a, a.BitLen()), App: appID, Range: p.Range, Kind: verdict.PeerWeb})
		}
	}
	h.mu.Lock()
	if h.peers == nil {
		h.peers = map[string][]agent.PeerSpec{}
	}
	prevPeers, hadPeers := h.peers[g.Interface]
	h.peers[g.Interface] = peers
	h.mu.Unlock()
	undo = append(undo, func() error {
		h.mu.Lock()
		if hadPeers {
			h.peers[g.Interface] = prevPeers
		} else {
			delete(h.peers, g.Interface)
		}
		h.mu.Unlock()
		return h.pushPeers()
	})
	if err := h.addHostPeer(g.HostAddr); err != nil {
		return rollback, err
	}
	spec := linkSpec(g)
	spec.App, spec.Range = appID, b.Range
	if err := h.Agent.SetGuest(spec); err != nil {
		return rollback, fmt.Errorf("declare %s to the agent: %w", g.Interface, err)
	}
	undo = append(undo, func() error { return h.Quarantine(g) })
	// 3. The host's SELinux modules.
	if h.SELinux != nil {
		var mods []selinux.Module
		for _, m := range b.Modules {
			if m.Target == selinux.TargetHost {
				mods = append(mods, m)
			}
		}
		if _, err := h.SELinux(ctx, mods); err != nil {
			return rollback, fmt.Errorf("host SELinux modules: %w", err)
		}
	}
	return rollback, nil
}

// PrecompileModules calls Precompile, if set (ModulePrecompiler).
func (h *Host) PrecompileModules(ctx context.Context, mods []selinux.Module) error {
	if h.Precompile == nil {
		return nil
	}
	return h.Precompile(ctx, mods)
}

func ignoreGone(err error) error {
	if err != nil && strings.Contains(err.Error(), "no such") {
		return nil
	}
	return err
}

// AgentClient is AgentAPI over the agent's HTTP API (a Unix socket or
// host:port).
type AgentClient struct{ *api.Client }

// NewAgentClient talks to the agent at addr ("unix:/run/mlsgate/agent.sock"
// or "127.0.0.1:9471").
func NewAgentClient(addr string) *AgentClient {
	return &AgentClient{api.New(addr, 30*time.Second)}
}

func (c *AgentClient) do(method, path string, in any) (int, error) {
	return c.Do(context.Background(), method, path, in, nil)
}

// SetGuest implements AgentAPI.
func (c *AgentClient) SetGuest(g agent.GuestSpec) error {
	_, err := c.do("PUT", "/v1/guests/"+g.Interface, g)
	return err
}

// RemoveGuest implements AgentAPI.
func (c *AgentClient) RemoveGuest(iface string) (bool, error) {
	code, err := c.do("DELETE", "/v1/guests/"+iface, nil)
	if code == http.StatusNotFound {
		return false, nil
	}
	return err == nil, err
}

// SetPeers implements AgentAPI.
func (c *AgentClient) SetPeers(p []agent.PeerSpec) error {
	_, err := c.do("PUT", "/v1/peers", p)
	return err
}
