package pool

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestRefillToSize(t *testing.T) {
	e := newEnv(t, 3, 2)
	e.refill()
	if n := e.count("web", Idle); n != 3 {
		t.Fatalf("after Refill: %d idle web guests, want 3", n)
	}
	if n := e.count("mail", Idle); n != 0 {
		t.Errorf("mail has Size 0 but %d idle guests", n)
	}
	e.refill()
	if n := e.vms.bootCount(); n != 3 {
		t.Errorf("a second Refill of a full pool booted: %d boots in all, want 3", n)
	}
	s := e.p.Stats()
	if s.Boots != 3 || s.Templates["web"].States[Idle] != 3 || s.Templates["web"].Size != 3 {
		t.Errorf("Stats %+v, want 3 boots and 3 idle of Size 3", s)
	}
}

func TestRefillBacksOffAfterFailures(t *testing.T) {
	e := newEnv(t, 2, 2) // BackoffBase 1s, BackoffMax 8s
	e.vms.set(func(f *fakeVMs) { f.failBoots = 1000 })
	ctx := context.Background()

	wantWaits := []time.Duration{1, 2, 4, 8, 8}
	for i, w := range wantWaits {
		before := e.vms.bootCount()
		err := e.p.Refill(ctx)
		if !errors.Is(err, errFakeBoot) {
			t.Fatalf("failure %d: Refill returned %v, want the boot error", i+1, err)
		}
		if n := e.vms.bootCount() - before; n != 1 {
			t.Fatalf("failure %d: the pass tried %d boots, want 1 (stop at the first failure)", i+1, n)
		}
		ts := e.p.Stats().Templates["web"]
		if ts.ConsecutiveFailures != i+1 || ts.BootFailures != i+1 || ts.LastError == "" {
			t.Errorf("failure %d: %+v", i+1, ts)
		}
		if got := ts.RetryAt.Sub(e.clk.Now()); got != w*time.Second {
			t.Errorf("failure %d: retry in %v, want %v", i+1, got, w*time.Second)
		}
		// Before the backoff ends a pass does not boot.
		e.clk.Advance(w*time.Second - time.Millisecond)
		if err := e.p.Refill(ctx); err != nil || e.vms.bootCount() != before+1 {
			t.Fatalf("failure %d: a pass during the backoff: %v, %d boots", i+1, err, e.vms.bootCount()-before)
		}
		e.clk.Advance(time.Millisecond)
	}
	if got := e.p.Stats().BootFailures; got != len(wantWaits) {
		t.Errorf("Stats.BootFailures %d, want %d", got, len(wantWaits))
	}
	if rows := e.p.List(); len(rows) != 0 {
		t.Errorf("failed boots left entries: %+v", rows)
	}

	e.vms.set(func(f *fakeVMs) { f.failBoots = 0 })
	e.refill()
	ts := e.p.Stats().Templates["web"]
	if e.count("web", Idle) != 2 || ts.ConsecutiveFailures != 0 || !ts.RetryAt.IsZero() {
		t.Errorf("after recovery: %d idle, %+v; want 2 idle and no backoff", e.count("web", Idle), ts)
	}
}

func TestBootFailureOfAnnouncedSlotDestroysIt(t *testing.T) {
	e := newEnv(t, 1, 2)
	gate := make(chan struct{})
	started := make(chan uint32, 1)
	e.vms.set(func(f *fakeVMs) { f.gate, f.started = gate, started })
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() { res <- e.p.Refill(ctx) }()
	vm := <-started
	cancel()
	if err := <-res; err != nil {
		t.Fatalf("Refill ended by its context: %v, want nil", err)
	}
	if rows := e.p.List(); len(rows) != 0 {
		t.Errorf("a cancelled boot left %+v", rows)
	}
	if e.vms.destroyCount(vm) != 1 {
		t.Errorf("the announced guest vm %d of a cancelled boot was destroyed %d times, want 1", vm, e.vms.destroyCount(vm))
	}
	if s := e.p.Stats(); s.BootFailures != 0 || s.Templates["web"].ConsecutiveFailures != 0 {
		t.Errorf("a cancelled boot counted as a failure: %+v", s)
	}
}

func TestRunKeepsSizeAndStopsCleanly(t *testing.T) {
	e := newEnv(t, 2, 2)
	e.p.cfg.Now = time.Now
	e.p.cfg.BackoffBase, e.p.cfg.BackoffMax = time.Millisecond, 4*time.Millisecond

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- e.p.Run(ctx) }()
	waitFor(t, "2 idle guests", func() bool { return e.count("web", Idle) == 2 })

	// Taking an idle guest wakes Run, which boots a replacement.
	l := e.acquire("bank", rngLow, "web")
	e.done(l, true)
	waitFor(t, "the replacement", func() bool { return e.count("web", Idle) == 2 })

	// Boot failures back off and are retried without waking Run.
	e.vms.set(func(f *fakeVMs) { f.failBoots = 3 })
	l = e.acquire("news", rngLow, "web")
	e.done(l, true)
	waitFor(t, "recovery after 3 failures", func() bool { return e.count("web", Idle) == 2 })
	if s := e.p.Stats(); s.BootFailures != 3 {
		t.Errorf("BootFailures %d, want 3", s.BootFailures)
	}

	// Stop during a boot: the boot is cancelled, Run waits for it and
	// leaves no Booting entry and no stray guest.
	gate := make(chan struct{})
	started := make(chan uint32, 1)
	e.vms.set(func(f *fakeVMs) { f.gate, f.started = gate, started })
	l = e.acquire("mail-app", rngLow, "web")
	vm := <-started
	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Errorf("Run: %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop")
	}
	if e.vms.isLive(vm) {
		t.Errorf("the guest of the cancelled boot (vm %d) is still running", vm)
	}
	for _, r := range e.p.List() {
		if r.State == Booting || r.State == Failed {
			t.Errorf("entry left after Run stopped: %+v", r)
		}
		if !e.vms.isLive(r.Guest.VM) {
			t.Errorf("entry %d lists vm %d, which is not running", r.ID, r.Guest.VM)
		}
	}
	e.done(l, true)
}

func TestRunStopsWhenClosed(t *testing.T) {
	e := newEnv(t, 0, 2)
	e.p.cfg.Interval = time.Millisecond
	ran := make(chan error, 1)
	go func() { ran <- e.p.Run(context.Background()) }()
	if err := e.p.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ran:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("Run on a closed pool: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not notice the pool closing")
	}
}
