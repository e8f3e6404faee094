package loader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/mlsgate/mlsgate/agent/xfrm"
	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/policystore"
)

type fakeLease struct {
	g    *Guest
	how  string
	pool *fakePool
}

func (l *fakeLease) Guest() *Guest { return l.g }
func (l *fakeLease) How() string   { return l.how }
func (l *fakeLease) Done(ok bool) {
	l.pool.mu.Lock()
	defer l.pool.mu.Unlock()
	l.pool.done = append(l.pool.done, ok)
	if ok {
		l.pool.apps[l.g.Addr] = l.pool.pending[l.g.Addr]
	}
}

// fakePool serves one guest per application, booting (in memory) the
// first time.
type fakePool struct {
	mu      sync.Mutex
	next    uint32
	guests  map[string]*Guest // by app
	apps    map[netip.Addr]string
	pending map[netip.Addr]string
	done    []bool
	fail    error
	// maxLoads, when set, makes a guest take that many loads in its life,
	// as package pool's MaxLoads does; boots counts guests booted.
	maxLoads int
	loads    map[uint32]int
	boots    int
}

func newFakePool() *fakePool {
	return &fakePool{next: 7, guests: map[string]*Guest{}, apps: map[netip.Addr]string{}, pending: map[netip.Addr]string{}}
}

func (p *fakePool) Acquire(ctx context.Context, app string, _ label.Bounds, _ string) (Lease, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail != nil {
		return nil, p.fail
	}
	if p.loads == nil {
		p.loads = map[uint32]int{}
	}
	if g, ok := p.guests[app]; ok && p.apps[g.Addr] == app && (p.maxLoads == 0 || p.loads[g.VM] < p.maxLoads) {
		p.loads[g.VM]++
		return &fakeLease{g: g, how: "reuse", pool: p}, nil
	}
	if ReuseOnly(ctx) {
		return nil, ErrReuseOnly
	}
	vm := p.next
	p.next++
	p.boots++
	p.loads[vm] = 1
	g := &Guest{VM: vm, Name: fmt.Sprintf("vm%d", vm), Backend: "fake", Interface: fmt.Sprintf("vif%d.0", vm),
		Addr: netip.AddrFrom4([4]byte{10, 71, byte(vm), 2}), HostAddr: netip.AddrFrom4([4]byte{10, 71, byte(vm), 1}),
		HostLL: netip.MustParseAddr("fe80::1"), MAC: GuestMAC(vm)}
	p.guests[app] = g
	p.pending[g.Addr] = app
	return &fakeLease{g: g, how: "boot", pool: p}, nil
}

func (p *fakePool) Find(a netip.Addr) (*Guest, string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, g := range p.guests {
		if g.Addr == a {
			return g, p.apps[a], true
		}
	}
	return nil, "", false
}

type fakePusher struct {
	mu     sync.Mutex
	pushed []string
	fail   error
}

func (f *fakePusher) Push(_ context.Context, g *Guest, b *policystore.Bundle) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	if len(b.ServerKeys) > 0 {
		return errors.New("server keys pushed to a guest")
	}
	f.pushed = append(f.pushed, fmt.Sprintf("%s v%d %s", g.Name, b.Version, b.Application))
	return nil
}

// fakeAgent keeps what the agent was told.
type fakeAgent struct {
	mu     sync.Mutex
	guests map[string]agent.GuestSpec
	peers  []agent.PeerSpec
}

func (a *fakeAgent) SetGuest(g agent.GuestSpec) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.guests == nil {
		a.guests = map[string]agent.GuestSpec{}
	}
	a.guests[g.Interface] = g
	return nil
}
func (a *fakeAgent) RemoveGuest(i string) (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.guests[i]
	delete(a.guests, i)
	return ok, nil
}
func (a *fakeAgent) SetPeers(p []agent.PeerSpec) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.peers = p
	return nil
}

// fakeXFRM is the host's SA and policy database; failAt makes the Nth
// policy add fail.
type fakeXFRM struct {
	states   map[uint32]bool
	policies map[string]bool
	adds     int
	failAt   int
}

func newFakeXFRM() *fakeXFRM {
	return &fakeXFRM{states: map[uint32]bool{}, policies: map[string]bool{}}
}
func (x *fakeXFRM) AddState(s xfrm.State) error {
	x.states[s.SPI] = true
	return nil
}
func (x *fakeXFRM) DeleteState(_ netip.Addr, spi uint32, _ xfrm.Proto) error {
	delete(x.states, spi)
	return nil
}
func (x *fakeXFRM) AddPolicy(p xfrm.Policy) error {
	x.adds++
	if x.failAt > 0 && x.adds == x.failAt {
		return errors.New("injected failure")
	}
	x.policies[p.String()] = true
	return nil
}
func (x *fakeXFRM) DeletePolicy(p xfrm.Policy) error {
	delete(x.policies, p.String())
	return nil
}

type rig struct {
	l     *Loader
	pool  *fakePool
	push  *fakePusher
	agent *fakeAgent
	xfrm  *fakeXFRM
	host  *Host
}

func newRig(t *testing.T, sys policystore.SystemPolicy) *rig {
	t.Helper()
	st, err := policystore.OpenStore(filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := st.SyncDir("../examples/analyst"); err != nil {
		t.Fatal(err)
	}
	r := &rig{pool: newFakePool(), push: &fakePusher{}, agent: &fakeAgent{}, xfrm: newFakeXFRM()}
	r.host = &Host{Agent: r.agent, XFRM: r.xfrm}
	r.l, err = New(Config{Template: "debian", System: sys, SPIBase: 0xc0000000, SPISlots: 4096},
		&policystore.Catalog{Store: st}, nil, r.pool, r.push, r.host)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestLoadConfiguresGuestAndHost(t *testing.T) {
	r := newRig(t, policystore.SystemPolicy{})
	res, err := r.l.Load(context.Background(), Caller{Host: true}, "http://ws1.analyst.example/profile")
	if err != nil {
		t.Fatal(err)
	}
	if res.App != "analyst" || res.Server != "ws1" || res.How != "boot" || res.Range.String() != "s0-s15/i5-i10" {
		t.Fatalf("result %+v", res)
	}
	var names []string
	for _, s := range res.Steps {
		names = append(names, s.Name)
	}
	if got := strings.Join(names, ","); got != "resolve,authorize,acquire,bundle,compliance,push guest policy,host policy,ready" {
		t.Fatalf("steps %s", got)
	}
	g := r.agent.guests[res.Guest.Interface]
	if g.App != AppID("analyst") || g.Range.String() != "s0-s15/i5-i10" || g.Addr4 != res.Guest.Addr {
		t.Fatalf("agent told %+v", g)
	}
	// The guest's link: the only addresses control traffic may reach, and
	// the only Ethernet source the guest may use.
	if g.HostAddr4 != res.Guest.HostAddr || g.HostAddr6 != res.Guest.HostLL || g.MAC != res.Guest.MAC || g.MAC == "" {
		t.Fatalf("agent told link host %s/%s mac %q; the guest's is %s/%s mac %q", g.HostAddr4, g.HostAddr6, g.MAC,
			res.Guest.HostAddr, res.Guest.HostLL, res.Guest.MAC)
	}
	if len(r.xfrm.states) != 10 || len(r.xfrm.policies) != 6 {
		t.Fatalf("host XFRM: %d SAs, %d policies; want the bundle's 10 SAs and a mirror of its 6 labeled policies", len(r.xfrm.states), len(r.xfrm.policies))
	}
	if len(r.agent.peers) != 4 { // ws1, ws2, ws3 and the host
		t.Fatalf("peers %+v", r.agent.peers)
	}
	// A second load of the same application reuses the configured guest.
	res2, err := r.l.Load(context.Background(), Caller{Host: true}, "http://ws3.analyst.example/public.html")
	if err != nil || res2.How != "reuse" || res2.Guest.VM != res.Guest.VM {
		t.Fatalf("second load: %+v %v", res2, err)
	}
	if len(r.push.pushed) != 1 {
		t.Fatalf("pushed %v", r.push.pushed)
	}
	// Destroying the guest takes the host's end of its tunnel with it.
	guest := res.Guest
	if err := r.host.Forget(&guest); err != nil {
		t.Fatal(err)
	}
	if len(r.xfrm.states) != 0 || len(r.xfrm.policies) != 0 || len(r.agent.guests) != 0 {
		t.Fatalf("after Forget: %d SAs, %d policies, guests %v", len(r.xfrm.states), len(r.xfrm.policies), r.agent.guests)
	}
}

func TestLoadRefusals(t *testing.T) {
	r := newRig(t, policystore.SystemPolicy{})
	// A guest serving osint may not load analyst (loadable_from: host, analyst).
	osint, err := r.l.Load(context.Background(), Caller{Host: true}, "http://feed.osint.example/today")
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.l.Load(context.Background(), Caller{Addr: osint.Guest.Addr, VM: osint.Guest.VM, App: "osint"}, "http://ws1.analyst.example/profile")
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), `may not load "analyst"`) {
		t.Fatalf("osint guest loading analyst: %v", err)
	}
	// An idle guest (serving nothing) may not load anything but "any".
	if _, err := r.l.Load(context.Background(), Caller{Addr: netip.MustParseAddr("10.9.9.9"), VM: 99}, "http://ws1.analyst.example/"); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("idle guest: %v", err)
	}
	if _, err := r.l.Load(context.Background(), Caller{Host: true}, "http://nobody.example/"); !errors.Is(err, ErrUnknownURL) {
		t.Fatalf("unknown URL: %v", err)
	}
	if _, err := r.l.Load(context.Background(), Caller{Host: true}, "ftp://ws1.analyst.example/"); !errors.Is(err, ErrUnknownURL) {
		t.Fatalf("bad URL: %v", err)
	}
}

// TestLoadRollsBack fails each later step and checks that the host is left
// as it was: no SA, no policy, the guest back in quarantine, no peers of
// the application, SPIs free again.
func TestLoadRollsBack(t *testing.T) {
	cases := []struct {
		name  string
		setup func(r *rig)
		step  string
	}{
		{"compliance", func(r *rig) {
			b, _ := label.ParseBounds("s0-s5/i0-i15")
			r.l.cfg.System.Clearance = b
		}, "compliance"},
		{"push", func(r *rig) { r.push.fail = errors.New("update daemon does not answer") }, "push guest policy"},
		{"host xfrm", func(r *rig) { r.xfrm.failAt = 4 }, "host policy"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, policystore.SystemPolicy{})
			c.setup(r)
			_, err := r.l.Load(context.Background(), Caller{Host: true}, "http://ws1.analyst.example/profile")
			var se *StepError
			if !errors.As(err, &se) || se.Step != c.step {
				t.Fatalf("error %v, want a failure in step %q", err, c.step)
			}
			if len(r.xfrm.states) != 0 || len(r.xfrm.policies) != 0 {
				t.Errorf("left behind: %d SAs, %d policies", len(r.xfrm.states), len(r.xfrm.policies))
			}
			for _, p := range r.agent.peers {
				if p.App != 0 {
					t.Errorf("left behind: peer %v of an application", p)
				}
			}
			for _, g := range r.agent.guests {
				if g.App != 0 || g.Range != (label.Bounds{}) {
					t.Errorf("guest %s not back in quarantine: %+v", g.Interface, g)
				}
			}
			if len(r.pool.done) != 1 || r.pool.done[0] {
				t.Errorf("lease returned %v, want one failed return", r.pool.done)
			}
			if n := len(r.l.spiInUse); n != 0 {
				t.Errorf("%d SPIs still allocated", n)
			}
		})
	}
}

func TestAPIAuthorizesByConnection(t *testing.T) {
	r := newRig(t, policystore.SystemPolicy{})
	api := &API{Loader: r.l, Pool: r.pool}
	srv := api.Server()
	sock := filepath.Join(t.TempDir(), "loader.sock")
	ul, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ul)
	go srv.Serve(tl)
	defer srv.Close()
	unixClient := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	post := func(c *http.Client, base, body string) (int, map[string]any) {
		resp, err := c.Post(base+"/v1/load", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	code, m := post(unixClient, "http://loader", `{"url":"http://ws1.analyst.example/profile","id":"a1"}`)
	if code != 200 || m["app"] != "analyst" {
		t.Fatalf("host load: %d %v", code, m)
	}
	if code, m = post(unixClient, "http://loader", `{"url":"http://ws1.analyst.example/profile","id":"a1"}`); code != 409 || m["reason"] != "replayed" {
		t.Fatalf("replay: %d %v", code, m)
	}
	// Over TCP from 127.0.0.1: not a guest of this host, whatever it claims.
	if code, m = post(http.DefaultClient, "http://"+tl.Addr().String(), `{"url":"http://ws1.analyst.example/profile"}`); code != 403 || m["reason"] != "unauthorized" {
		t.Fatalf("stranger: %d %v", code, m)
	}
	for _, body := range []string{`{"url":`, `{"url":"x","vm":7}`, `{"url":""}`, `{"url":"` + strings.Repeat("a", 20000) + `"}`} {
		if code, _ := post(unixClient, "http://loader", body); code < 400 || code >= 500 {
			t.Errorf("bad body %.30q: %d", body, code)
		}
	}
}
