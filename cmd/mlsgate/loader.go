package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/backend"
	"github.com/mlsgate/mlsgate/loader/pool"
	"github.com/mlsgate/mlsgate/loader/updated"
	"github.com/mlsgate/mlsgate/policystore"
	"github.com/mlsgate/mlsgate/policystore/ca"
)

// loaderSetup is everything VMLoad runs with.
type loaderSetup struct {
	StateDir  string
	AppsDir   string
	APIPort   uint16 // the host's API port = the guests' update daemon port
	PoolSize  int
	MaxLoads  int
	Backend   loader.Backend
	Agent     loader.AgentAPI
	HostXFRM  loader.XFRMWriter
	SPIBase   uint32
	SPISlots  uint32
	Clearance string
}

// vmload is a running loader with its parts.
type vmload struct {
	loader *loader.Loader
	pool   *pool.Pool
	api    *loader.API
	host   *loader.Host
	ca     *ca.CA
	store  *policystore.Store
	close  func()
}

// guestAddrs is the addressing plan: guest N on 10.71.N.2/24, the host on
// 10.71.N.1 (N ≤ 254).
func guestAddrs(vm uint32) (guest, host netip.Addr) {
	return netip.AddrFrom4([4]byte{10, 71, byte(vm), 2}), netip.AddrFrom4([4]byte{10, 71, byte(vm), 1})
}

// guestNet holds every guest address of the plan.
var guestNet = netip.MustParsePrefix("10.71.0.0/16")

func startLoader(ctx context.Context, s loaderSetup) (*vmload, error) {
	v := &vmload{}
	var closers []func()
	v.close = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	fail := func(err error) (*vmload, error) { v.close(); return nil, err }
	st, err := policystore.OpenStore(filepath.Join(s.StateDir, "policystore.db"))
	if err != nil {
		return fail(err)
	}
	closers = append(closers, func() { st.Close() })
	v.store = st
	if s.AppsDir != "" {
		if _, err := st.SyncDir(s.AppsDir); err != nil {
			return fail(err)
		}
	}
	authority, err := ca.Open(filepath.Join(s.StateDir, "ca"), ca.Options{CommonName: "mlsgate policy store CA"})
	if err != nil {
		return fail(err)
	}
	closers = append(closers, func() { authority.Close() })
	v.ca = authority
	loaderCert, err := authority.Issue(ca.Request{Kind: ca.Client, CommonName: "mlsgate-loader", TTL: 30 * 24 * time.Hour})
	if err != nil {
		return fail(err)
	}
	push := &updated.Client{TLS: authority.ClientTLS(loaderCert, "")}
	var sys policystore.SystemPolicy
	if s.Clearance != "" {
		if sys.Clearance, err = label.ParseBounds(s.Clearance); err != nil {
			return fail(fmt.Errorf("clearance: %w", err))
		}
	}
	v.host = &loader.Host{Agent: s.Agent, XFRM: s.HostXFRM, SELinux: func(ctx context.Context, mods []policystore.Module) (*agent.ModuleReport, error) {
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
		if v.pool != nil {
			for _, e := range v.pool.List() {
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
	boot := func(ctx context.Context, template string) (*loader.Guest, error) {
		vm, err := allocVM()
		if err != nil {
			return nil, err
		}
		addr, hostAddr := guestAddrs(vm)
		name := fmt.Sprintf("vm%d", vm)
		cert, err := authority.Issue(ca.Request{Kind: ca.Guest, CommonName: name, IPs: []net.IP{addr.AsSlice()}, TTL: 30 * 24 * time.Hour})
		if err != nil {
			return nil, err
		}
		g := loader.Guest{VM: vm, Name: name, Backend: s.Backend.Name(), Interface: backend.IfName(vm), Addr: addr, HostAddr: hostAddr, Template: template}
		if err := pool.Announce(ctx, g); err != nil {
			return nil, err
		}
		// Declared before it exists: the agent attaches the moment its vif
		// appears, so no packet of it is ever unfiltered.
		if err := v.host.Quarantine(&g); err != nil {
			return nil, err
		}
		spec := loader.BootSpec{VM: vm, Name: name, Addr: addr, HostAddr: hostAddr, PrefixLen: 24, Template: template,
			UpdatedCertPEM: cert.CertPEM, UpdatedKeyPEM: cert.KeyPEM, CAPEM: authority.CertPEM(), UpdatedPort: s.APIPort}
		out, err := s.Backend.Boot(ctx, spec)
		if err != nil {
			v.host.Forget(&g)
			return nil, err
		}
		return out, nil
	}
	destroy := func(ctx context.Context, g *loader.Guest) error {
		err := s.Backend.Destroy(ctx, g)
		if ferr := v.host.Forget(g); err == nil {
			err = ferr
		}
		vmMu.Lock()
		delete(used, g.VM)
		vmMu.Unlock()
		return err
	}
	p, err := pool.Open(filepath.Join(s.StateDir, "pool.db"), pool.Config{
		Templates: map[string]pool.TemplateConfig{"default": {Size: s.PoolSize, MaxLoads: s.MaxLoads}},
		Boot:      boot, Destroy: destroy,
	})
	if err != nil {
		return fail(err)
	}
	closers = append(closers, func() { p.Close() })
	v.pool = p
	pa := &poolAdapter{p: p}
	l, err := loader.New(loader.Config{Template: "default", System: sys, SPIBase: s.SPIBase, SPISlots: s.SPISlots, MapperPort: s.APIPort},
		&policystore.Catalog{Store: st}, nil, policystore.CAIssuer(authority, 30*24*time.Hour), pa, &pusher{c: push}, v.host)
	if err != nil {
		return fail(err)
	}
	v.loader = l
	v.api = &loader.API{Loader: l, Pool: pa}
	return v, nil
}

// poolAdapter presents package pool to the loader.
type poolAdapter struct{ p *pool.Pool }

type leaseAdapter struct{ l pool.Lease }

func (a leaseAdapter) Guest() *loader.Guest { g := a.l.Entry.Guest; return &g }
func (a leaseAdapter) How() string          { return string(a.l.How) }
func (a leaseAdapter) Done(ok bool)         { a.l.Done(ok) }

func (a *poolAdapter) Acquire(ctx context.Context, app string, rng label.Bounds, template string) (loader.Lease, error) {
	l, err := a.p.Acquire(ctx, app, rng, template)
	if err != nil {
		return nil, err
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

const defaultLoaderSocket = "/run/mlsgate/loader.sock"

func newLoadCmd() *cobra.Command {
	var sock, output string
	cmd := &cobra.Command{
		Use:   "load URL",
		Short: "ask VMLoad for a guest that serves URL's application",
		Long: `Ask the loader (on its Unix socket, as the host) to configure a guest for the
application URL belongs to: a guest already serving it, an idle pre-loaded
guest, or a new one. Prints the guest and the time of each configuration step.`,
		Example: "  mlsgate load http://ws1.analyst.example/profile",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			}}}
			body, _ := json.Marshal(loader.LoadRequest{URL: args[0]})
			resp, err := c.Post("http://loader/v1/load", "application/json", strings.NewReader(string(body)))
			if err != nil {
				return fmt.Errorf("loader at %s: %w (is 'mlsgate loader' running?)", sock, err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 {
				var le loader.LoadError
				json.Unmarshal(b, &le)
				return fmt.Errorf("load refused (%s): %s", le.Reason, le.Error)
			}
			if output == "json" {
				_, err := cmd.OutOrStdout().Write(b)
				return err
			}
			var res loader.Result
			if err := json.Unmarshal(b, &res); err != nil {
				return err
			}
			printResult(cmd.OutOrStdout(), &res)
			return nil
		},
	}
	cmd.Flags().StringVar(&sock, "socket", defaultLoaderSocket, "the loader's Unix socket")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

func printResult(w io.Writer, r *loader.Result) {
	fmt.Fprintf(w, "%s → application %s (server %s, range %s) on guest %s (%s, %s) from %s, bundle v%d, in %v\n",
		r.URL, r.App, orDash(r.Server), r.Range, r.Guest.Name, r.Guest.Interface, r.Guest.Addr, r.How, r.Version, r.Total.Round(time.Millisecond))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, s := range r.Steps {
		fmt.Fprintf(tw, "  %s\t%v\n", s.Name, s.Duration.Round(100*time.Microsecond))
	}
	tw.Flush()
}
