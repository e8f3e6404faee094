package assemble

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/pool"
	"github.com/mlsgate/mlsgate/policystore"
)

// keyPusher records what each guest was pushed: its bundle's version and
// the keys of its SAs.
type keyPusher struct {
	mu     sync.Mutex
	pushes map[string][]string // guest name → SA keys of each push
	n      int
}

func (k *keyPusher) Push(_ context.Context, g *loader.Guest, b *policystore.Bundle) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.pushes == nil {
		k.pushes = map[string][]string{}
	}
	k.n++
	for _, s := range b.States {
		k.pushes[g.Name] = append(k.pushes[g.Name], fmt.Sprintf("%x", s.AEAD.Key))
	}
	return nil
}

func (k *keyPusher) count() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.n
}

// readyRig is the real loader on the real pool, with osint asking for
// ready guests.
type readyRig struct {
	t     *testing.T
	dir   string // the application files
	store *policystore.Store
	p     *pool.Pool
	l     *loader.Loader
	push  *keyPusher
	path  string
}

func writeApps(t *testing.T, dir string, osintExtra string) {
	t.Helper()
	for _, f := range []string{"analyst.yaml", "osint.yaml"} {
		b, err := os.ReadFile(filepath.Join("../../examples/analyst", f))
		if err != nil {
			t.Fatal(err)
		}
		if f == "osint.yaml" {
			b = append(b, []byte(osintExtra)...)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func newReadyRig(t *testing.T) *readyRig {
	t.Helper()
	r := &readyRig{t: t, dir: t.TempDir(), push: &keyPusher{}, path: filepath.Join(t.TempDir(), "pool.db")}
	writeApps(t, r.dir, "pool: {ready: 2}\n")
	st, err := policystore.OpenStore(filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := st.SyncDir(r.dir); err != nil {
		t.Fatal(err)
	}
	r.store = st
	r.open()
	l, err := loader.New(loader.Config{Template: "default", SPIBase: 0xc0000000, SPISlots: 65536, ReadyBasis: "ca-1"},
		&policystore.Catalog{Store: st}, nil, &poolAdapter{p: r.p}, r.push, &loader.Host{Agent: nullAgent{}})
	if err != nil {
		t.Fatal(err)
	}
	r.l = l
	return r
}

func (r *readyRig) open() {
	r.t.Helper()
	next := uint32(1)
	if r.p != nil {
		for _, e := range r.p.List() {
			next = max(next, e.Guest.VM)
		}
		r.p.Close()
	}
	p, err := pool.Open(r.path, pool.Config{
		Templates: map[string]pool.TemplateConfig{"default": {MaxActive: 8}},
		Boot: func(ctx context.Context, template string) (*loader.Guest, error) {
			next++
			addr, host := GuestAddrs(next)
			g := loader.Guest{VM: next, Name: fmt.Sprintf("vm%d", next), Interface: fmt.Sprintf("vif%d.0", next), Addr: addr, HostAddr: host}
			return &g, pool.Announce(ctx, g)
		},
		Destroy: func(context.Context, *loader.Guest) error { return nil },
		Ready:   func(ctx context.Context) ([]loader.ReadyWant, error) { return r.l.ReadyWants(ctx) },
		Prepare: func(ctx context.Context, g *loader.Guest, w loader.ReadyWant) error {
			_, err := r.l.Prepare(ctx, g, w)
			return err
		},
	})
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { p.Close() })
	r.p = p
}

func (r *readyRig) ready() []pool.Entry {
	var out []pool.Entry
	for _, e := range r.p.List() {
		if e.State == pool.Prepared {
			out = append(out, e)
		}
	}
	return out
}

func stepNames(res *loader.Result) string {
	var names []string
	for _, s := range res.Steps {
		names = append(names, s.Name)
	}
	return strings.Join(names, ",")
}

// TestReadyPoolHitIsResolveAuthorizeHandOut: osint asks for two ready
// guests; each is prepared with its own keys, and a load that finds one
// pushes nothing.
func TestReadyPoolHitIsResolveAuthorizeHandOut(t *testing.T) {
	r := newReadyRig(t)
	ctx := context.Background()
	if err := r.p.Refill(ctx); err != nil {
		t.Fatal(err)
	}
	ready := r.ready()
	if len(ready) != 2 || r.push.count() != 2 {
		t.Fatalf("%d ready guests after %d pushes, want 2 and 2", len(ready), r.push.count())
	}
	// Every SA key of every ready guest is its own.
	seen := map[string]string{}
	for name, keys := range r.push.pushes {
		for _, k := range keys {
			if other, dup := seen[k]; dup {
				t.Fatalf("guests %s and %s share an SA key", other, name)
			}
			seen[k] = name
		}
	}
	// A prepared guest is no caller: it serves no one yet.
	if _, app, ok := (&poolAdapter{p: r.p}).Find(ready[0].Guest.Addr); !ok || app != "" {
		t.Fatalf("Find(ready guest) = %q %v, want no application", app, ok)
	}

	res, err := r.l.Load(ctx, loader.Caller{Host: true}, "http://feed.osint.example/today")
	if err != nil {
		t.Fatal(err)
	}
	if res.How != "ready" || res.Guest.VM != ready[0].Guest.VM {
		t.Fatalf("load: %s vm %d, want the ready vm %d", res.How, res.Guest.VM, ready[0].Guest.VM)
	}
	if got := stepNames(res); got != "resolve,authorize,acquire,ready" {
		t.Errorf("steps of a ready hit: %s", got)
	}
	if r.push.count() != 2 {
		t.Errorf("a ready hit pushed: %d pushes", r.push.count())
	}
	t.Logf("ready hit: %v total %v", res.Steps, res.Total)
	// The refill replaces it, with a guest of its own.
	if err := r.p.Refill(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(r.ready()); n != 2 {
		t.Errorf("%d ready guests after the refill, want 2", n)
	}
	for _, e := range r.ready() {
		if e.Guest.VM == res.Guest.VM {
			t.Errorf("handed-out vm %d is ready again", e.Guest.VM)
		}
	}
}

// TestReadyPoolApplicationChangeReplacesReadyGuests: after the application
// changes, no load gets a guest configured for the old one, and the refill
// replaces every ready guest (counted).
func TestReadyPoolApplicationChangeReplacesReadyGuests(t *testing.T) {
	r := newReadyRig(t)
	ctx := context.Background()
	if err := r.p.Refill(ctx); err != nil {
		t.Fatal(err)
	}
	old := r.ready()
	// The feed's server moves: a guest prepared before would talk to the
	// old address.
	b, _ := os.ReadFile(filepath.Join(r.dir, "osint.yaml"))
	if err := os.WriteFile(filepath.Join(r.dir, "osint.yaml"), bytes.Replace(b, []byte("10.70.9.1"), []byte("10.70.9.7"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.store.SyncDir(r.dir); err != nil {
		t.Fatal(err)
	}
	res, err := r.l.Load(ctx, loader.Caller{Host: true}, "http://feed.osint.example/today")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range old {
		if res.Guest.VM == o.Guest.VM {
			t.Fatalf("load after the change got vm %d, prepared for the old application", o.Guest.VM)
		}
	}
	if err := r.p.Refill(ctx); err != nil {
		t.Fatal(err)
	}
	now := r.ready()
	if len(now) != 2 {
		t.Fatalf("%d ready guests, want 2", len(now))
	}
	for _, n := range now {
		for _, o := range old {
			if n.Guest.VM == o.Guest.VM {
				t.Errorf("vm %d, prepared for the old application, is still ready", o.Guest.VM)
			}
		}
	}
	if s := r.p.Stats(); s.Invalidated != 2 {
		t.Errorf("Invalidated %d, want 2", s.Invalidated)
	}
}

// TestReadyPoolRestartResumesWithoutPushing: ready guests survive a
// restart of VMLoad unpushed, and are handed out after it.
func TestReadyPoolRestartResumesWithoutPushing(t *testing.T) {
	r := newReadyRig(t)
	ctx := context.Background()
	if err := r.p.Refill(ctx); err != nil {
		t.Fatal(err)
	}
	before := r.ready()
	r.open()
	r.l, _ = loader.New(loader.Config{Template: "default", SPIBase: 0xc0000000, SPISlots: 65536, ReadyBasis: "ca-1"},
		&policystore.Catalog{Store: r.store}, nil, &poolAdapter{p: r.p}, r.push, &loader.Host{Agent: nullAgent{}})
	if err := r.p.Refill(ctx); err != nil {
		t.Fatal(err)
	}
	if r.push.count() != 2 {
		t.Errorf("%d pushes after a restart with nothing changed, want the first 2", r.push.count())
	}
	res, err := r.l.Load(ctx, loader.Caller{Host: true}, "http://feed.osint.example/today")
	if err != nil {
		t.Fatal(err)
	}
	if res.How != "ready" || res.Guest.VM != before[0].Guest.VM {
		t.Errorf("after the restart: %s vm %d, want ready vm %d", res.How, res.Guest.VM, before[0].Guest.VM)
	}
	// A new CA (another basis) makes them stale.
	r.open()
	r.l, _ = loader.New(loader.Config{Template: "default", SPIBase: 0xc0000000, SPISlots: 65536, ReadyBasis: "ca-2"},
		&policystore.Catalog{Store: r.store}, nil, &poolAdapter{p: r.p}, r.push, &loader.Host{Agent: nullAgent{}})
	res, err = r.l.Load(ctx, loader.Caller{Host: true}, "http://feed.osint.example/today")
	if err != nil {
		t.Fatal(err)
	}
	if res.How == "ready" {
		t.Errorf("after a CA change a load got ready vm %d", res.Guest.VM)
	}
	if err := r.p.Refill(ctx); err != nil {
		t.Fatal(err)
	}
	if s := r.p.Stats(); s.Invalidated != 1 || len(r.ready()) != 2 {
		t.Errorf("after the CA change: %d invalidated, %d ready; want 1 and 2", s.Invalidated, len(r.ready()))
	}
}

// peerAgent records the last peer table.
type peerAgent struct {
	nullAgent
	mu    sync.Mutex
	peers []agent.PeerSpec
}

func (a *peerAgent) SetPeers(p []agent.PeerSpec) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.peers = p
	return nil
}

func (a *peerAgent) has(prefix string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range a.peers {
		if p.Prefix.String() == prefix {
			return true
		}
	}
	return false
}

// TestRestartGivesBoundGuestsTheirServersBack: a guest bound to osint
// before a restart of VMLoad (served, or kept ready) keeps its servers in
// the fast path's peer table after it.
func TestRestartGivesBoundGuestsTheirServersBack(t *testing.T) {
	s := setup(t, &plainBackend{}, false)
	s.PoolSize = 0
	r, err := Start(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	rng, _ := label.ParseBounds("s0-s0/i0-i0")
	l, err := r.API.Pool.Acquire(context.Background(), "osint", rng, "default")
	if err != nil {
		t.Fatal(err)
	}
	l.Done(true)
	r.Close()

	a := &peerAgent{}
	s.Agent = a
	r, err = Start(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if !a.has("10.70.9.1/32") {
		t.Fatalf("after the restart the peer table %v lacks osint's feed server 10.70.9.1", a.peers)
	}
	_, host := GuestAddrs(l.Guest().VM)
	if !a.has(host.String() + "/32") {
		t.Errorf("after the restart the peer table %v lacks the guest's host address %s", a.peers, host)
	}
}
