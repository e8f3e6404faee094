package pool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/mlsgate/mlsgate/loader"
)

// fakeReady is an application catalog and a configurer in memory: it says
// which ready guests are wanted, under which fingerprint, and records
// every guest it prepares.
type fakeReady struct {
	mu       sync.Mutex
	wants    []loader.ReadyWant
	prepared map[uint32]loader.ReadyWant // every guest ever prepared, and for what
	calls    int
	fail     int // fail this many of the next Prepare calls
	dup      []string
}

var errFakePrepare = errors.New("fake prepare failure")

func newFakeReady() *fakeReady { return &fakeReady{prepared: map[uint32]loader.ReadyWant{}} }

func (f *fakeReady) Ready(context.Context) ([]loader.ReadyWant, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]loader.ReadyWant(nil), f.wants...), nil
}

func (f *fakeReady) Prepare(_ context.Context, g *loader.Guest, w loader.ReadyWant) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if prev, ok := f.prepared[g.VM]; ok {
		// Each ready guest gets its own keys once: preparing a guest twice
		// would mean two bundles' keys on one guest.
		f.dup = append(f.dup, fmt.Sprintf("vm %d prepared for %v and again for %v", g.VM, prev, w))
	}
	f.prepared[g.VM] = w
	if f.fail > 0 {
		f.fail--
		return errFakePrepare
	}
	return nil
}

func (f *fakeReady) set(fn func(f *fakeReady)) {
	f.mu.Lock()
	fn(f)
	f.mu.Unlock()
}

func (f *fakeReady) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// newReadyEnv is newEnv with a fakeReady wanting n ready guests of bank at
// rngLow from web, under fingerprint "fp1".
func newReadyEnv(t *testing.T, size, n int) (*env, *fakeReady) {
	t.Helper()
	e := newEnv(t, size, 3)
	r := newFakeReady()
	r.wants = []loader.ReadyWant{{App: "bank", Range: bounds(t, rngLow), Template: "web", N: n, Fingerprint: "fp1"}}
	e.cfg.Ready, e.cfg.Prepare = r.Ready, r.Prepare
	e.reopen()
	return e, r
}

func (e *env) prepared(app, fp string) []Entry {
	var out []Entry
	for _, r := range e.p.List() {
		if r.State == Prepared && r.App == app && (fp == "" || r.Fingerprint == fp) {
			out = append(out, r)
		}
	}
	return out
}

// joined reports whether an Acquire waits for another's boot.
func (e *env) joined() bool {
	e.p.mu.Lock()
	defer e.p.mu.Unlock()
	return e.p.joined > 0
}

func readyCtx(fp string) context.Context {
	return loader.WithReadyFingerprint(context.Background(), fp)
}

func TestReadyHitHandsOutAPreparedGuest(t *testing.T) {
	e, r := newReadyEnv(t, 1, 2)
	e.refill()
	ready := e.prepared("bank", "fp1")
	if len(ready) != 2 || r.callCount() != 2 {
		t.Fatalf("after a refill: %d prepared guests, %d Prepare calls; want 2 and 2", len(ready), r.callCount())
	}
	for _, p := range ready {
		if p.Pending || p.Loads != 0 || p.Active != 0 {
			t.Errorf("prepared guest %+v is pending or in use", p)
		}
	}

	// Without the current fingerprint no ready guest is handed out.
	l, err := e.p.Acquire(context.Background(), "bank", bounds(t, rngLow), "web")
	if err != nil {
		t.Fatal(err)
	}
	if l.How == HowReady {
		t.Fatalf("a load without a fingerprint got ready guest vm %d", l.Entry.Guest.VM)
	}
	e.done(l, false) // its guest is destroyed: fresh and failed

	// With a stale one neither.
	if l, err = e.p.Acquire(readyCtx("fp0"), "news", bounds(t, rngLow), "web"); err != nil {
		t.Fatal(err)
	}
	if l.How == HowReady {
		t.Fatalf("a load of another application got ready guest vm %d", l.Entry.Guest.VM)
	}
	e.done(l, false)

	hit, err := e.p.Acquire(readyCtx("fp1"), "bank", bounds(t, rngLow), "web")
	if err != nil {
		t.Fatal(err)
	}
	if hit.How != HowReady || hit.Entry.Guest.VM != ready[0].Guest.VM {
		t.Fatalf("hit %s vm %d, want ready vm %d", hit.How, hit.Entry.Guest.VM, ready[0].Guest.VM)
	}
	if hit.Entry.State == Prepared || !hit.Entry.Pending || hit.Entry.Loads != 1 {
		t.Errorf("handed-out guest %+v: want bound, pending until Done, one load", hit.Entry)
	}
	calls := r.callCount()
	e.done(hit, true)
	if got, _ := e.entry(hit.Entry.Guest.VM); got.State != Ready || got.Pending {
		t.Errorf("after Done(true): %+v, want Ready", got)
	}
	// The refill replaces it; the handed-out guest is never prepared again.
	e.refill()
	if n := len(e.prepared("bank", "fp1")); n != 2 {
		t.Errorf("after the refill %d ready guests, want 2", n)
	}
	if r.callCount() != calls+1 {
		t.Errorf("%d Prepare calls for one replacement", r.callCount()-calls)
	}
	for _, p := range e.prepared("bank", "") {
		if p.Guest.VM == hit.Entry.Guest.VM {
			t.Errorf("handed-out vm %d is in the ready set again", p.Guest.VM)
		}
	}
	if len(r.dup) > 0 {
		t.Errorf("guests prepared twice: %v", r.dup)
	}
	if s := e.p.Stats(); s.Hits[HowReady] != 1 || s.Prepared != 3 {
		t.Errorf("stats: %d ready hits, %d prepared; want 1 and 3", s.Hits[HowReady], s.Prepared)
	}
}

func TestReadyFailedHandOutDestroysTheGuest(t *testing.T) {
	e, _ := newReadyEnv(t, 0, 1)
	e.refill()
	hit, err := e.p.Acquire(readyCtx("fp1"), "bank", bounds(t, rngLow), "web")
	if err != nil || hit.How != HowReady {
		t.Fatalf("Acquire: %v %v, want a ready hit", hit.How, err)
	}
	vm := hit.Entry.Guest.VM
	e.done(hit, false)
	if e.vms.isLive(vm) {
		t.Errorf("vm %d: a failed hand-out left it running", vm)
	}
	if _, ok := e.entry(vm); ok {
		t.Errorf("vm %d is still in the table", vm)
	}
}

func TestReadyInvalidationReplacesEveryStaleGuest(t *testing.T) {
	e, r := newReadyEnv(t, 0, 3)
	e.refill()
	old := e.prepared("bank", "fp1")
	if len(old) != 3 {
		t.Fatalf("%d ready guests, want 3", len(old))
	}
	r.set(func(f *fakeReady) { f.wants[0].Fingerprint = "fp2" })
	// Before the refill sees the change, a load with the new fingerprint
	// takes no stale guest.
	l, err := e.p.Acquire(readyCtx("fp2"), "bank", bounds(t, rngLow), "web")
	if err != nil {
		t.Fatal(err)
	}
	if l.How == HowReady {
		t.Fatalf("a load under fp2 got vm %d, built under fp1", l.Entry.Guest.VM)
	}
	e.done(l, true)
	e.refill()
	for _, o := range old {
		if e.vms.isLive(o.Guest.VM) {
			t.Errorf("stale ready vm %d still runs", o.Guest.VM)
		}
	}
	if n, stale := len(e.prepared("bank", "fp2")), len(e.prepared("bank", "fp1")); n != 3 || stale != 0 {
		t.Errorf("after the refill: %d ready under fp2, %d under fp1; want 3 and 0", n, stale)
	}
	if s := e.p.Stats(); s.Invalidated != 3 {
		t.Errorf("Invalidated %d, want 3", s.Invalidated)
	}
	// The application stops asking: every ready guest goes.
	r.set(func(f *fakeReady) { f.wants = nil })
	e.refill()
	if n := len(e.prepared("bank", "")); n != 0 {
		t.Errorf("%d ready guests after the application stopped asking", n)
	}
	if s := e.p.Stats(); s.Invalidated != 6 {
		t.Errorf("Invalidated %d, want 6", s.Invalidated)
	}
}

func TestReadyPrepareFailureDestroysAndBacksOff(t *testing.T) {
	e, r := newReadyEnv(t, 0, 1)
	r.set(func(f *fakeReady) { f.fail = 1 })
	if err := e.p.Refill(context.Background()); !errors.Is(err, errFakePrepare) {
		t.Fatalf("Refill: %v, want the prepare failure", err)
	}
	for vm := range r.prepared {
		if e.vms.isLive(vm) {
			t.Errorf("vm %d: its preparation failed but it runs", vm)
		}
	}
	calls := r.callCount()
	e.refill() // backing off: nothing is tried
	if r.callCount() != calls {
		t.Errorf("Prepare called during the backoff")
	}
	e.clk.Advance(e.cfg.BackoffBase)
	e.refill()
	if n := len(e.prepared("bank", "fp1")); n != 1 {
		t.Errorf("after the backoff %d ready guests, want 1", n)
	}
	if s := e.p.Stats(); s.PrepareFailures != 1 {
		t.Errorf("PrepareFailures %d, want 1", s.PrepareFailures)
	}
}

func TestReadyRestartResumesWithoutPreparingAgain(t *testing.T) {
	e, r := newReadyEnv(t, 0, 2)
	e.refill()
	before := e.prepared("bank", "fp1")
	calls := r.callCount()
	e.reopen()
	e.refill()
	after := e.prepared("bank", "fp1")
	if len(after) != 2 || after[0].Guest.VM != before[0].Guest.VM || after[1].Guest.VM != before[1].Guest.VM {
		t.Fatalf("ready guests across a restart: %+v, want %+v", after, before)
	}
	if r.callCount() != calls {
		t.Errorf("%d Prepare calls after a restart with nothing changed", r.callCount()-calls)
	}
	// What changed while the agent was down is replaced.
	r.set(func(f *fakeReady) { f.wants[0].Fingerprint = "fp2" })
	e.reopen()
	e.refill()
	if n := len(e.prepared("bank", "fp2")); n != 2 || r.callCount() != calls+2 {
		t.Errorf("after a restart under fp2: %d ready, %d Prepare calls; want 2 and 2", n, r.callCount()-calls)
	}
	for _, b := range before {
		if e.vms.isLive(b.Guest.VM) {
			t.Errorf("stale vm %d survived the restart", b.Guest.VM)
		}
	}
}

func TestReadyRestartDuringPrepareDestroysTheGuest(t *testing.T) {
	e, r := newReadyEnv(t, 0, 1)
	started := make(chan uint32, 1)
	gate := make(chan struct{})
	e.cfg.Prepare = func(ctx context.Context, g *loader.Guest, w loader.ReadyWant) error {
		started <- g.VM
		<-gate
		return r.Prepare(ctx, g, w)
	}
	e.reopen()
	done := make(chan error, 1)
	go func() { done <- e.p.Refill(context.Background()) }()
	vm := <-started
	// A crash mid-preparation: the next agent finds it pending.
	old := e.p
	old.Close()
	e.open()
	close(gate)
	<-done
	if got, ok := e.entry(vm); !ok || got.State != Failed {
		t.Fatalf("vm %d after a restart mid-preparation: %+v, want Failed", vm, got)
	}
	e.cfg.Prepare = r.Prepare
	e.reopen()
	e.refill()
	if e.vms.isLive(vm) {
		t.Errorf("vm %d, half prepared, still runs", vm)
	}
	if n := len(e.prepared("bank", "fp1")); n != 1 {
		t.Errorf("%d ready guests, want 1", n)
	}
}

func TestConcurrentLoadsShareOneBoot(t *testing.T) {
	e := newEnv(t, 0, 3)
	gate := make(chan struct{})
	started := make(chan uint32, 1)
	e.vms.set(func(f *fakeVMs) { f.gate, f.started = gate, started })
	type res struct {
		l   Lease
		err error
	}
	first, second := make(chan res, 1), make(chan res, 1)
	go func() {
		l, err := e.p.Acquire(context.Background(), "bank", bounds(t, rngLow), "web")
		first <- res{l, err}
	}()
	<-started // the first load's slot is booting
	go func() {
		l, err := e.p.Acquire(context.Background(), "bank", bounds(t, rngLow), "web")
		second <- res{l, err}
	}()
	waitFor(t, "the second load to wait for the first's boot", e.joined)
	close(gate)
	a := <-first
	if a.err != nil || a.l.How != HowBoot {
		t.Fatalf("first load: %v %v, want a boot", a.l.How, a.err)
	}
	e.done(a.l, true) // configured
	b := <-second
	if b.err != nil {
		t.Fatal(b.err)
	}
	if b.l.How != HowReuse || b.l.Entry.Guest.VM != a.l.Entry.Guest.VM {
		t.Errorf("second load: %s vm %d, want reuse of vm %d", b.l.How, b.l.Entry.Guest.VM, a.l.Entry.Guest.VM)
	}
	e.done(b.l, true)
	if n := e.vms.bootCount(); n != 1 {
		t.Errorf("%d boots for two concurrent loads of one application and range, want 1", n)
	}
}

func TestConcurrentLoadBootsAgainWhenTheSharedGuestFails(t *testing.T) {
	e := newEnv(t, 0, 3)
	gate := make(chan struct{})
	started := make(chan uint32, 2)
	e.vms.set(func(f *fakeVMs) { f.gate, f.started = gate, started })
	first, second := make(chan Lease, 1), make(chan Lease, 1)
	go func() {
		l, err := e.p.Acquire(context.Background(), "bank", bounds(t, rngLow), "web")
		if err != nil {
			t.Error(err)
		}
		first <- l
	}()
	<-started
	go func() {
		l, err := e.p.Acquire(context.Background(), "bank", bounds(t, rngLow), "web")
		if err != nil {
			t.Error(err)
		}
		second <- l
	}()
	waitFor(t, "the second load to wait for the first's boot", e.joined)
	close(gate)
	a := <-first
	// The first load's configuration fails: the waiting load must not be
	// handed the half-configured guest, and boots its own.
	e.done(a, false)
	b := <-second
	if b.How != HowBoot || b.Entry.Guest.VM == a.Entry.Guest.VM {
		t.Errorf("after the shared guest failed: %s vm %d, want a boot of its own (not vm %d)", b.How, b.Entry.Guest.VM, a.Entry.Guest.VM)
	}
	e.done(b, true)
}

// TestReuseOnlyTakesNoReadyGuest: a caller held to reuse (it has the
// fresh guests it may have) must not take a ready guest either: the refill
// boots a replacement for every one taken, so draining ready guests would
// make the host boot guests for it past its cap.
func TestReuseOnlyTakesNoReadyGuest(t *testing.T) {
	e, _ := newReadyEnv(t, 0, 2)
	e.refill()
	boots := e.vms.bootCount()
	ctx := loader.WithReuseOnly(readyCtx("fp1"))
	l, err := e.p.Acquire(ctx, "bank", bounds(t, rngLow), "web")
	if err == nil {
		e.done(l, true)
		t.Fatalf("a reuse-only load took vm %d by %s", l.Entry.Guest.VM, l.How)
	}
	if !errors.Is(err, loader.ErrReuseOnly) {
		t.Fatalf("Acquire: %v, want ErrReuseOnly", err)
	}
	e.refill()
	if n := e.vms.bootCount(); n != boots {
		t.Errorf("%d boots after a refused reuse-only load", n-boots)
	}
}
