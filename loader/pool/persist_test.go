package pool

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestReopenRestoresTable(t *testing.T) {
	e := newEnv(t, 2, 3)
	e.refill()
	a := e.acquire("bank", rngLow, "web")
	e.done(a, true)
	b := e.acquire("news", rngHigh, "mail")
	e.done(b, true)
	c := e.acquire("bank", rngLow, "web")
	e.done(c, true)
	e.clk.Advance(time.Minute)
	e.refill()
	before := e.p.List()

	e.reopen()
	after := e.p.List()
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("table changed across a reopen:\nbefore %+v\nafter  %+v", before, after)
	}
	// The restored table keeps its promises: bank reuses its guest, and
	// new slots are numbered after the old ones.
	d := e.acquire("bank", rngLow, "web")
	if d.How != HowReuse || d.Entry.Guest.VM != a.Entry.Guest.VM || d.Entry.Loads != 3 || d.Entry.State != Full {
		t.Errorf("after reopen: %s %+v, want reuse of vm %d, third load, full", d.How, d.Entry, a.Entry.Guest.VM)
	}
	e.done(d, true)
	n := e.acquire("other", rngLow, "mail")
	for _, r := range before {
		if n.Entry.ID <= r.ID {
			t.Errorf("new slot %d is not numbered after old slot %d", n.Entry.ID, r.ID)
		}
	}
}

// crashDuringBoot leaves a Booting record in the pool file: it starts an
// Acquire whose boot announces its guest and then blocks, and closes the
// pool under it, as a crash would. It returns the VM and a func that lets
// the stranded boot finish (the old pool, being closed, cannot record it).
func crashDuringBoot(t *testing.T, e *env) (uint32, func()) {
	t.Helper()
	gate := make(chan struct{})
	started := make(chan uint32, 1)
	e.vms.set(func(f *fakeVMs) { f.gate, f.started = gate, started })
	res := make(chan error, 1)
	go func() {
		_, err := e.p.Acquire(context.Background(), "bank", bounds(t, rngLow), "web")
		res <- err
	}()
	vm := <-started
	if err := e.p.Close(); err != nil {
		t.Fatal(err)
	}
	e.vms.set(func(f *fakeVMs) { f.gate, f.started = nil, nil })
	return vm, func() {
		close(gate)
		if err := <-res; !errors.Is(err, ErrClosed) {
			t.Errorf("the stranded Acquire ended with %v, want ErrClosed", err)
		}
	}
}

func TestReopenAfterCrashDuringBoot(t *testing.T) {
	t.Run("guest alive becomes failed and is destroyed", func(t *testing.T) {
		e := newEnv(t, 0, 3)
		vm, finish := crashDuringBoot(t, e)
		defer finish()
		e.open()
		got, ok := e.entry(vm)
		if !ok || got.State != Failed || got.App != "bank" {
			t.Fatalf("after reopen: %+v, want vm %d failed", e.p.List(), vm)
		}
		if l := e.acquire("bank", rngLow, "web"); l.Entry.Guest.VM == vm {
			t.Errorf("the half-booted vm %d was handed out", vm)
		}
		e.refill()
		if _, ok := e.entry(vm); ok || e.vms.isLive(vm) || e.vms.destroyCount(vm) != 1 {
			t.Errorf("Refill left the half-booted vm %d (live %v, destroyed %d times)", vm, e.vms.isLive(vm), e.vms.destroyCount(vm))
		}
	})
	t.Run("guest gone is dropped", func(t *testing.T) {
		e := newEnv(t, 0, 3)
		vm, finish := crashDuringBoot(t, e)
		defer finish()
		e.vms.set(func(f *fakeVMs) { delete(f.live, vm) })
		e.open()
		if rows := e.p.List(); len(rows) != 0 {
			t.Errorf("after reopen: %+v, want an empty table", rows)
		}
		if e.vms.destroyCount(vm) != 0 {
			t.Errorf("a guest that was gone was destroyed")
		}
	})
	t.Run("no check: failed", func(t *testing.T) {
		e := newEnv(t, 0, 3)
		vm, finish := crashDuringBoot(t, e)
		defer finish()
		e.cfg.Check = nil
		e.open()
		if got, ok := e.entry(vm); !ok || got.State != Failed {
			t.Errorf("without Check: %+v, want vm %d failed", e.p.List(), vm)
		}
	})
	t.Run("never announced: dropped", func(t *testing.T) {
		e := newEnv(t, 0, 3)
		e.vms.set(func(f *fakeVMs) { f.announce = false })
		_, finish := crashDuringBoot(t, e)
		defer finish()
		e.open()
		if rows := e.p.List(); len(rows) != 0 {
			t.Errorf("after reopen: %+v, want the unannounced slot dropped", rows)
		}
	})
}

func TestReopenAfterCrashDuringFirstConfiguration(t *testing.T) {
	e := newEnv(t, 1, 3)
	e.refill()
	fresh := e.acquire("bank", rngLow, "web") // never Done: the agent dies
	old := e.acquire("news", rngHigh, "web")
	e.done(old, true)
	again := e.acquire("news", rngHigh, "web") // a reuse in flight at the crash
	e.reopen()

	got, _ := e.entry(fresh.Entry.Guest.VM)
	if got.State != Failed || got.Pending || got.Active != 0 {
		t.Errorf("guest in its first configuration at the crash: %+v, want failed", got)
	}
	got, _ = e.entry(again.Entry.Guest.VM)
	if got.State != Ready || got.App != "news" || got.Active != 0 || got.Loads != 2 {
		t.Errorf("reused guest at the crash: %+v, want ready for news, no lease, 2 loads", got)
	}
	if err := fresh.Done(true); !errors.Is(err, ErrClosed) {
		t.Errorf("Done on a lease from before the restart: %v, want ErrClosed", err)
	}
	e.refill()
	if _, ok := e.entry(fresh.Entry.Guest.VM); ok || e.vms.isLive(fresh.Entry.Guest.VM) {
		t.Errorf("Refill did not destroy vm %d", fresh.Entry.Guest.VM)
	}
}

func TestReopenDropsGuestsThatAreGone(t *testing.T) {
	e := newEnv(t, 2, 3)
	e.refill()
	l := e.acquire("bank", rngLow, "web")
	e.done(l, true)
	e.p.Close()
	e.vms.set(func(f *fakeVMs) { delete(f.live, l.Entry.Guest.VM) }) // died while the agent was down
	e.open()
	if _, ok := e.entry(l.Entry.Guest.VM); ok {
		t.Errorf("vm %d is gone but still listed", l.Entry.Guest.VM)
	}
	if n := e.count("web", Idle); n != 1 {
		t.Errorf("%d idle guests, want the 1 still running", n)
	}
}
