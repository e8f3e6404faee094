package pool

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

func TestConcurrentAcquiresNeverShareAGuest(t *testing.T) {
	const idle, callers = 8, 24
	e := newEnv(t, idle, 4)
	e.refill()

	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		leases = map[uint32]string{}
		hows   = map[How]int{}
	)
	for i := range callers {
		wg.Go(func() {
			app := fmt.Sprintf("app%d", i)
			l, err := e.p.Acquire(context.Background(), app, bounds(t, rngLow), "web")
			if err != nil {
				t.Errorf("Acquire(%s): %v", app, err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if other, dup := leases[l.Entry.Guest.VM]; dup {
				t.Errorf("vm %d handed to %s and %s", l.Entry.Guest.VM, other, app)
			}
			leases[l.Entry.Guest.VM] = app
			hows[l.How]++
		})
	}
	wg.Wait()
	if hows[HowIdle] != idle || hows[HowBoot] != callers-idle {
		t.Errorf("leases by how %v, want %d idle and %d boot", hows, idle, callers-idle)
	}
	if n := e.vms.bootCount(); n != callers {
		t.Errorf("%d boots, want %d: each slot booted once", n, callers)
	}
}

// TestConcurrentMixedLoad runs Acquire, Done, Refill and Remove from many
// goroutines at once (for the race detector) and then checks that no guest
// was leased for two applications or two ranges.
func TestConcurrentMixedLoad(t *testing.T) {
	e := newEnv(t, 3, 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var refill sync.WaitGroup
	refill.Go(func() { e.p.Run(ctx) })

	type use struct{ app, rng string }
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		bound = map[uint32]use{}
	)
	rngs := []string{rngLow, rngHigh}
	for w := range 8 {
		wg.Go(func() {
			for i := range 40 {
				u := use{fmt.Sprintf("app%d", (w+i)%3), rngs[(w*i)%2]}
				l, err := e.p.Acquire(context.Background(), u.app, bounds(t, u.rng), "web")
				if err != nil {
					t.Errorf("Acquire: %v", err)
					return
				}
				vm := l.Entry.Guest.VM
				mu.Lock()
				if prev, ok := bound[vm]; ok && prev != u {
					t.Errorf("vm %d leased for %v and %v", vm, prev, u)
				}
				bound[vm] = u
				mu.Unlock()
				if i%7 == 3 {
					e.p.Remove(context.Background(), vm)
				}
				l.Done(i%5 != 0)
				e.p.Stats()
			}
		})
	}
	wg.Wait()
	cancel()
	refill.Wait()
	for _, r := range e.p.List() {
		if r.State == Booting || r.Active != 0 {
			t.Errorf("entry after the load ended: %+v", r)
		}
	}
}
