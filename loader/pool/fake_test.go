package pool

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/loader"
)

// fakeClock is a clock that moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fakeVMs is a backend in memory: it numbers guests from 1, keeps the live
// ones, and fails or holds boots on request.
type fakeVMs struct {
	mu          sync.Mutex
	next        uint32
	live        map[uint32]loader.Guest
	destroyed   map[uint32]int // destroy calls per VM
	boots       int            // Boot calls
	failBoots   int            // fail this many of the next boots
	failDestroy bool
	announce    bool          // call Announce and make the guest before waiting
	gate        chan struct{} // when set, Boot waits for it (or ctx)
	started     chan uint32   // when set, receives each VM as its boot begins
}

var errFakeBoot = errors.New("fake boot failure")

func newFake() *fakeVMs {
	return &fakeVMs{live: map[uint32]loader.Guest{}, destroyed: map[uint32]int{}, announce: true}
}

func (f *fakeVMs) Boot(ctx context.Context, template string) (*loader.Guest, error) {
	f.mu.Lock()
	f.boots++
	if f.failBoots > 0 {
		f.failBoots--
		f.mu.Unlock()
		return nil, errFakeBoot
	}
	f.next++
	vm := f.next
	g := loader.Guest{
		VM:        vm,
		Name:      fmt.Sprintf("mlsg-vm%d", vm),
		Backend:   "fake",
		Interface: fmt.Sprintf("vif%d.0", vm),
		Addr:      netip.AddrFrom4([4]byte{10, 9, byte(vm >> 8), byte(vm)}),
		Handle:    fmt.Sprintf("h%d", vm),
		Template:  template,
	}
	announce, gate, started := f.announce, f.gate, f.started
	f.mu.Unlock()
	if announce {
		if err := Announce(ctx, g); err != nil {
			return nil, err
		}
		f.mu.Lock()
		f.live[vm] = g
		f.mu.Unlock()
	}
	if started != nil {
		started <- vm
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			f.mu.Lock()
			delete(f.live, vm) // a failed boot leaves nothing
			f.mu.Unlock()
			return nil, ctx.Err()
		}
	}
	f.mu.Lock()
	f.live[vm] = g
	f.mu.Unlock()
	return &g, nil
}

func (f *fakeVMs) Destroy(ctx context.Context, g *loader.Guest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failDestroy {
		return errors.New("fake destroy failure")
	}
	f.destroyed[g.VM]++
	delete(f.live, g.VM)
	return nil
}

func (f *fakeVMs) Check(ctx context.Context, g *loader.Guest) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.live[g.VM]
	return ok
}

func (f *fakeVMs) isLive(vm uint32) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.live[vm]
	return ok
}

func (f *fakeVMs) destroyCount(vm uint32) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.destroyed[vm]
}

func (f *fakeVMs) bootCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.boots
}

func (f *fakeVMs) set(fn func(f *fakeVMs)) {
	f.mu.Lock()
	fn(f)
	f.mu.Unlock()
}

// env is one test's pool with its fakes.
type env struct {
	t    *testing.T
	path string
	cfg  Config
	vms  *fakeVMs
	clk  *fakeClock
	p    *Pool
}

// newEnv opens a pool in a temporary file with templates "web" (Size
// idle, MaxLoads loads) and "mail" (no idle guests, 2 loads).
func newEnv(t *testing.T, size, maxLoads int) *env {
	t.Helper()
	e := &env{t: t, path: filepath.Join(t.TempDir(), "pool.db"), vms: newFake(), clk: newClock()}
	e.cfg = Config{
		Templates: map[string]TemplateConfig{
			"web":  {Size: size, MaxLoads: maxLoads},
			"mail": {Size: 0, MaxLoads: 2},
		},
		Boot:        e.vms.Boot,
		Destroy:     e.vms.Destroy,
		Check:       e.vms.Check,
		Now:         e.clk.Now,
		BackoffBase: time.Second,
		BackoffMax:  8 * time.Second,
		OpTimeout:   5 * time.Second,
	}
	e.open()
	return e
}

func (e *env) open() {
	e.t.Helper()
	p, err := Open(e.path, e.cfg)
	if err != nil {
		e.t.Fatalf("Open: %v", err)
	}
	e.p = p
	e.t.Cleanup(func() { p.Close() })
}

func (e *env) reopen() {
	e.t.Helper()
	if err := e.p.Close(); err != nil {
		e.t.Fatalf("Close: %v", err)
	}
	e.open()
}

func (e *env) acquire(app, rng, template string) Lease {
	e.t.Helper()
	l, err := e.p.Acquire(context.Background(), app, bounds(e.t, rng), template)
	if err != nil {
		e.t.Fatalf("Acquire(%s, %s, %s): %v", app, rng, template, err)
	}
	return l
}

func (e *env) done(l Lease, ok bool) {
	e.t.Helper()
	if err := l.Done(ok); err != nil {
		e.t.Fatalf("Done(%v) on vm %d: %v", ok, l.Entry.Guest.VM, err)
	}
}

func (e *env) refill() {
	e.t.Helper()
	if err := e.p.Refill(context.Background()); err != nil {
		e.t.Fatalf("Refill: %v", err)
	}
}

// entry returns the table's row for vm.
func (e *env) entry(vm uint32) (Entry, bool) {
	for _, r := range e.p.List() {
		if r.Guest.VM == vm && r.State != Booting {
			return r, true
		}
	}
	return Entry{}, false
}

// count returns the number of entries of a template in a state.
func (e *env) count(template string, s State) int {
	n := 0
	for _, r := range e.p.List() {
		if r.Template == template && r.State == s {
			n++
		}
	}
	return n
}

func bounds(t testing.TB, s string) label.Bounds {
	t.Helper()
	b, err := label.ParseBounds(s)
	if err != nil {
		t.Fatalf("ParseBounds(%q): %v", s, err)
	}
	return b
}

// waitFor polls cond until it holds or a few seconds pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
