package assemble

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/updatedaemon"
	"github.com/mlsgate/mlsgate/policystore/ca"
)

// kernelXFRM is the host kernel's SA and policy database as the loader sees
// it through its XFRM handle, including the dumps a restarted loader reads.
// Like the agent, which keys its SA table by SPI within the host's range,
// it refuses a second SA with an SPI already installed (whatever its
// destination): two guests holding one SPI is the conflict that makes the
// older guest fail closed.
type kernelXFRM struct {
	mu       sync.Mutex
	states   map[uint32]xfrm.State
	policies map[string]xfrm.Policy
	// deleted lists the SPIs of deleted states, in order.
	deleted []uint32
}

func newKernelXFRM() *kernelXFRM {
	return &kernelXFRM{states: map[uint32]xfrm.State{}, policies: map[string]xfrm.Policy{}}
}

func (k *kernelXFRM) AddState(s xfrm.State) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if o, ok := k.states[s.SPI]; ok {
		return fmt.Errorf("spi %#x is already installed (%s → %s): file exists", s.SPI, o.Src, o.Dst)
	}
	k.states[s.SPI] = s
	return nil
}

func (k *kernelXFRM) DeleteState(dst netip.Addr, spi uint32, _ xfrm.Proto) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if o, ok := k.states[spi]; !ok || o.Dst != dst {
		return errors.New("no such SA")
	}
	delete(k.states, spi)
	k.deleted = append(k.deleted, spi)
	return nil
}

func (k *kernelXFRM) AddPolicy(p xfrm.Policy) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.policies[p.String()] = p
	return nil
}

func (k *kernelXFRM) DeletePolicy(p xfrm.Policy) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.policies[p.String()]; !ok {
		return errors.New("no such policy")
	}
	delete(k.policies, p.String())
	return nil
}

func (k *kernelXFRM) States() ([]xfrm.State, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []xfrm.State
	for _, s := range k.states {
		out = append(out, s)
	}
	return out, nil
}

func (k *kernelXFRM) Policies() ([]xfrm.Policy, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []xfrm.Policy
	for _, p := range k.policies {
		out = append(out, p)
	}
	return out, nil
}

// spisOf returns the installed SPIs whose SA ends at one of addrs.
func (k *kernelXFRM) spisOf(addrs ...netip.Addr) []uint32 {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []uint32
	for spi, s := range k.states {
		for _, a := range addrs {
			if s.Dst == a || s.Src == a {
				out = append(out, spi)
				break
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// daemonBackend boots each guest as an update daemon on loopback (a fake
// applier behind the real TLS and protocol), so that the real loader's
// pushes reach it. It outlives a restart of the loader, as guests do.
type daemonBackend struct {
	plainBackend
	t   *testing.T
	mu  sync.Mutex
	ca  *ca.CA // the running loader's CA, for the daemons' loopback certificates
	lns map[string]net.Listener
}

func (b *daemonBackend) setCA(c *ca.CA) {
	b.mu.Lock()
	b.ca = c
	b.mu.Unlock()
}

func (b *daemonBackend) Boot(ctx context.Context, s loader.BootSpec) (*loader.Guest, error) {
	g, err := b.plainBackend.Boot(ctx, s)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	authority := b.ca
	b.mu.Unlock()
	iss, err := authority.Issue(ca.Request{Kind: ca.Guest, CommonName: s.Name, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, TTL: time.Hour})
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(iss.CertPEM, iss.KeyPEM)
	if err != nil {
		return nil, err
	}
	v, err := updatedaemon.NewVerifier(updatedaemon.VerifierConfig{CAPEM: s.CAPEM})
	if err != nil {
		return nil, err
	}
	tc, err := updatedaemon.ServerTLS(cert, v)
	if err != nil {
		return nil, err
	}
	d, err := updatedaemon.New(updatedaemon.Config{TLS: tc, Identity: updatedaemon.Identity{Name: s.Name, Addrs: []netip.Addr{s.Addr}},
		StateDir: b.t.TempDir() + "/state", Applier: &updatedaemon.FakeApplier{}})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go d.Serve(ln)
	b.mu.Lock()
	if b.lns == nil {
		b.lns = map[string]net.Listener{}
	}
	b.lns[g.Name] = ln
	b.mu.Unlock()
	b.t.Cleanup(func() { ln.Close() })
	g.UpdatedAddr = ln.Addr().String()
	return g, nil
}

func (b *daemonBackend) Destroy(ctx context.Context, g *loader.Guest) error {
	b.mu.Lock()
	if ln, ok := b.lns[g.Name]; ok {
		ln.Close()
		delete(b.lns, g.Name)
	}
	b.mu.Unlock()
	return b.plainBackend.Destroy(ctx, g)
}

// spiRig runs the real wiring (Start) on a fake kernel XFRM, without SA
// rotation (whose saved bundles would otherwise be the only memory of the
// SPIs in use).
type spiRig struct {
	t  *testing.T
	b  *daemonBackend
	k  *kernelXFRM
	s  Setup
	r  *Running
	mu sync.Mutex
}

func newSPIRig(t *testing.T, slots uint32) *spiRig {
	b := &daemonBackend{t: t}
	s := setup(t, b, false)
	s.PoolSize = 0
	s.SPISlots = slots
	s.Rotation = nil
	k := newKernelXFRM()
	s.HostXFRM = k
	rig := &spiRig{t: t, b: b, k: k, s: s}
	rig.start()
	return rig
}

// start starts (or restarts) the loader on the same state directory and
// kernel; the guests keep running.
func (r *spiRig) start() {
	r.t.Helper()
	if r.r != nil {
		r.r.Close()
	}
	v, err := Start(context.Background(), r.s)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(v.Close)
	r.b.setCA(v.CA)
	r.r = v
}

func (r *spiRig) load(url string) *loader.Result {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := r.r.Loader.Load(ctx, loader.Caller{Host: true}, url)
	if err != nil {
		r.t.Fatalf("load %s: %v", url, err)
	}
	return res
}

func overlap(a, b []uint32) []uint32 {
	in := map[uint32]bool{}
	for _, s := range a {
		in[s] = true
	}
	var out []uint32
	for _, s := range b {
		if in[s] {
			out = append(out, s)
		}
	}
	return out
}

// TestRestartKeepsRunningGuestsSPIs: after a restart of the loader, a new
// guest never gets an SPI a running guest holds. Before the fix the
// restarted allocator started from scratch, handed the new guest the
// running guest's SPIs, and the host refused them (the agent would have
// made the older guest fail closed).
func TestRestartKeepsRunningGuestsSPIs(t *testing.T) {
	r := newSPIRig(t, 1024)
	first := r.load("http://feed.osint.example/today")
	held := r.k.spisOf(first.Guest.Addr, first.Guest.HostAddr)
	if len(held) == 0 {
		t.Fatalf("%s holds no host SA after its load", first.Guest.Name)
	}
	r.start()
	second := r.load("http://ws1.analyst.example/profile")
	if second.Guest.VM == first.Guest.VM {
		t.Fatalf("the analyst load took osint's guest %s", first.Guest.Name)
	}
	mine := r.k.spisOf(second.Guest.Addr, second.Guest.HostAddr)
	if o := overlap(held, mine); len(o) > 0 {
		t.Fatalf("after a restart %s got SPIs %#x that running %s holds", second.Guest.Name, o, first.Guest.Name)
	}
	if now := r.k.spisOf(first.Guest.Addr, first.Guest.HostAddr); len(overlap(held, now)) != len(held) {
		t.Fatalf("%s's SAs changed across the restart: %#x, then %#x", first.Guest.Name, held, now)
	}
	// The restarted loader knows the running guest's SAs: tearing it down
	// deletes them (and only then frees their SPIs).
	if err := r.r.Pool.Remove(context.Background(), first.Guest.VM); err != nil {
		t.Fatal(err)
	}
	if left := r.k.spisOf(first.Guest.Addr, first.Guest.HostAddr); len(left) > 0 {
		t.Fatalf("after %s was torn down its host SAs %#x are still installed", first.Guest.Name, left)
	}
}

// TestTeardownFreesSPIs: the SPIs of a guest torn down are free again, once
// its states are deleted. Before the fix they were never freed, so a host
// range that fits one guest's SAs served one load in its life.
func TestTeardownFreesSPIs(t *testing.T) {
	probe := newSPIRig(t, 1024)
	n := uint32(len(probe.k.spisOf(probe.load("http://ws1.analyst.example/profile").Guest.Addr)))
	// A range with room for one analyst guest's SAs (and no more than
	// half of a second one's).
	r := newSPIRig(t, n+n/2)
	for i := range 4 {
		res := r.load("http://ws1.analyst.example/profile")
		if res.How != "boot" {
			t.Fatalf("load %d: %s, want a boot (the guest before it was torn down)", i, res.How)
		}
		spis := r.k.spisOf(res.Guest.Addr)
		if err := r.r.Pool.Remove(context.Background(), res.Guest.VM); err != nil {
			t.Fatal(err)
		}
		// Every SPI of the guest was deleted from the host before the
		// next load could take it again.
		r.k.mu.Lock()
		deleted := map[uint32]bool{}
		for _, s := range r.k.deleted {
			deleted[s] = true
		}
		r.k.mu.Unlock()
		for _, s := range spis {
			if !deleted[s] {
				t.Fatalf("load %d: spi %#x of torn-down %s was never deleted", i, s, res.Guest.Name)
			}
		}
	}
}
