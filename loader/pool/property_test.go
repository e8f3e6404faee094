package pool

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/loader"
)

var (
	seedFlag  = flag.Uint64("pool.seed", 0, "seed for TestPropertyOneAppPerGuest (0: from the clock)")
	stepsFlag = flag.Int("pool.steps", 400, "steps per seed in TestPropertyOneAppPerGuest")
)

// TestPropertyOneAppPerGuest drives the pool with random sequences of
// Acquire, Done (succeeding or failing), Refill, Remove, boot and destroy
// failures and restarts, across applications, ranges and templates, and
// after every step checks that no guest was ever leased for two
// applications or two ranges, that Acquire kept the paper's order, and that
// the table agrees with the leases and the running guests.
func TestPropertyOneAppPerGuest(t *testing.T) {
	seeds := []uint64{1, 2, uint64(time.Now().UnixNano())}
	if *seedFlag != 0 {
		seeds = []uint64{*seedFlag}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Logf("seed %d (rerun with -pool.seed=%d)", seed, seed)
			runProperty(t, seed, *stepsFlag)
		})
	}
}

type use struct{ app, rng, template string }

type held struct {
	l Lease
	u use
}

func runProperty(t *testing.T, seed uint64, steps int) {
	e := newEnv(t, 2, 3)
	// "live" guests take 2 loads at once and any number in their life.
	e.cfg.Templates["live"] = TemplateConfig{Size: 1, MaxActive: 2}
	// Ready guests: bank at the low range from web and news at the high
	// range from live, under fingerprints that change now and then (a
	// template, CA or application change).
	r := newFakeReady()
	fps := map[string]int{"bank": 1, "news": 1}
	wants := func() []loader.ReadyWant {
		return []loader.ReadyWant{
			{App: "bank", Range: bounds(t, rngLow), Template: "web", N: 2, Fingerprint: fmt.Sprintf("bank-%d", fps["bank"])},
			{App: "news", Range: bounds(t, rngHigh), Template: "live", N: 1, Fingerprint: fmt.Sprintf("news-%d", fps["news"])},
		}
	}
	r.wants = wants()
	e.cfg.Ready, e.cfg.Prepare = r.Ready, r.Prepare
	e.reopen()
	handed := map[uint32]bool{} // every guest ever handed out
	readyHits := 0
	rnd := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var (
		apps      = []string{"bank", "news", "mail"}
		rngs      = []string{rngLow, rngHigh}
		templates = []string{"web", "web", "mail", "live"}
		bound     = map[uint32]use{} // every guest ever leased, and for what
		leases    []held
		ctx       = context.Background()
	)
	fail := func(step int, format string, args ...any) {
		t.Helper()
		t.Fatalf("seed %d step %d: %s", seed, step, fmt.Sprintf(format, args...))
	}

	for step := range steps {
		e.clk.Advance(time.Second)
		switch op := rnd.IntN(100); {
		case op < 45: // Acquire
			u := use{apps[rnd.IntN(len(apps))], rngs[rnd.IntN(len(rngs))], templates[rnd.IntN(len(templates))]}
			actx, fp := ctx, ""
			if rnd.IntN(3) != 0 {
				// Mostly the current fingerprint, sometimes a stale one.
				fp = fmt.Sprintf("%s-%d", u.app, fps[u.app]-rnd.IntN(2))
				actx = loader.WithReadyFingerprint(ctx, fp)
			}
			want := expectHow(e.p.List(), u, bounds(t, u.rng), fp)
			l, err := e.p.Acquire(actx, u.app, bounds(t, u.rng), u.template)
			if err != nil {
				if want == HowBoot && errors.Is(err, errFakeBoot) {
					continue
				}
				fail(step, "Acquire(%v): %v", u, err)
			}
			vm := l.Entry.Guest.VM
			if l.How != want {
				fail(step, "Acquire(%v) found vm %d by %q, want %q", u, vm, l.How, want)
			}
			if l.Entry.App != u.app || l.Entry.Range != bounds(t, u.rng) || l.Entry.Template != u.template {
				fail(step, "lease for %v shows %q %s %q", u, l.Entry.App, l.Entry.Range, l.Entry.Template)
			}
			if prev, ok := bound[vm]; ok && prev != u {
				fail(step, "vm %d leased for %v, and before for %v", vm, u, prev)
			}
			if (l.How == HowReuse) != (bound[vm] == u) {
				fail(step, "vm %d: How %q but bound before: %v", vm, l.How, bound[vm] == u)
			}
			if e.vms.destroyCount(vm) != 0 || !e.vms.isLive(vm) {
				fail(step, "vm %d was handed out but is not running", vm)
			}
			if l.How == HowReady && l.Entry.Fingerprint != fp {
				fail(step, "vm %d built under %q handed out for a load under %q", vm, l.Entry.Fingerprint, fp)
			}
			bound[vm] = u
			handed[vm] = true
			if l.How == HowReady {
				readyHits++
			}
			leases = append(leases, held{l, u})
		case op < 75: // Done
			if len(leases) == 0 {
				continue
			}
			i := rnd.IntN(len(leases))
			h := leases[i]
			leases = append(leases[:i], leases[i+1:]...)
			if err := h.l.Done(rnd.IntN(5) != 0); err != nil && !errors.Is(err, ErrGone) && !isDestroyErr(err) {
				fail(step, "Done on vm %d: %v", h.l.Entry.Guest.VM, err)
			}
		case op < 85: // Refill
			err := e.p.Refill(ctx)
			if err != nil && !errors.Is(err, errFakeBoot) && !errors.Is(err, errFakePrepare) && !isDestroyErr(err) {
				fail(step, "Refill: %v", err)
			}
			// Invalidation replaced every ready guest built under an old
			// fingerprint.
			for _, row := range e.p.List() {
				if row.State == Prepared && row.Fingerprint != fmt.Sprintf("%s-%d", row.App, fps[row.App]) {
					fail(step, "after a refill vm %d is ready under stale %q", row.Guest.VM, row.Fingerprint)
				}
			}
		case op < 87: // a template, CA or application change
			fps[apps[rnd.IntN(2)]]++
			r.set(func(f *fakeReady) { f.wants = wants() })
		case op < 90: // Remove
			rows := e.p.List()
			if len(rows) == 0 {
				continue
			}
			r := rows[rnd.IntN(len(rows))]
			if err := e.p.Remove(ctx, r.Guest.VM); err != nil && !isDestroyErr(err) {
				fail(step, "Remove(%d): %v", r.Guest.VM, err)
			}
		case op < 95: // trouble
			e.vms.set(func(f *fakeVMs) {
				if rnd.IntN(2) == 0 {
					f.failBoots = rnd.IntN(3)
				} else {
					f.failDestroy = !f.failDestroy
				}
			})
			if rnd.IntN(4) == 0 {
				r.set(func(f *fakeReady) { f.fail = rnd.IntN(2) })
			}
		default: // restart
			before := e.p.List()
			e.reopen()
			if len(leases) == 0 && !reflect.DeepEqual(before, e.p.List()) {
				fail(step, "restart changed the table:\nbefore %+v\nafter  %+v", before, e.p.List())
			}
			leases = nil // leases do not survive a restart
		}
		checkTable(t, e, seed, step, bound, leases)
		for _, row := range e.p.List() {
			if row.State == Prepared && handed[row.Guest.VM] {
				fail(step, "vm %d was handed out and is in the ready set again", row.Guest.VM)
			}
		}
	}
	t.Logf("ready hits %d, guests prepared %d", readyHits, len(r.prepared))
	if len(r.dup) > 0 {
		t.Fatalf("seed %d: guests prepared twice (shared keys): %v", seed, r.dup)
	}
}

func isDestroyErr(err error) bool {
	return err != nil && strings.Contains(err.Error(), "fake destroy failure")
}

// expectHow is the paper's order, decided from the table before Acquire,
// with ready guests (built under fp) between reuse and idle.
func expectHow(rows []Entry, u use, rng label.Bounds, fp string) How {
	idle, ready := false, false
	for _, r := range rows {
		if r.State == Ready && !r.Pending && r.App == u.app && r.Range == rng && r.Template == u.template {
			return HowReuse
		}
		ready = ready || fp != "" && r.State == Prepared && !r.Pending && r.App == u.app && r.Range == rng && r.Template == u.template && r.Fingerprint == fp
		idle = idle || r.State == Idle && r.Template == u.template
	}
	if ready {
		return HowReady
	}
	if idle {
		return HowIdle
	}
	return HowBoot
}

// checkTable checks the table against the leases held, the guests running
// and every binding made so far.
func checkTable(t *testing.T, e *env, seed uint64, step int, bound map[uint32]use, leases []held) {
	t.Helper()
	active := map[uint64]int{}
	for _, h := range leases {
		active[h.l.Entry.ID]++
	}
	inTable := map[uint32]bool{}
	for _, r := range e.p.List() {
		bad := func(why string) {
			t.Helper()
			t.Fatalf("seed %d step %d: entry %+v: %s", seed, step, r, why)
		}
		inTable[r.Guest.VM] = true
		switch r.State {
		case Idle:
			if r.App != "" || r.Loads != 0 || r.Active != 0 || r.Pending {
				bad("idle but bound or in use")
			}
		case Ready, Full:
			if r.App == "" || r.Loads < 1 || (r.State == Full) != r.full() {
				bad("state does not match its loads")
			}
		case Booting:
			bad("booting with no boot in flight")
		case Prepared:
			if r.App == "" || r.Fingerprint == "" || r.Loads != 0 || r.Active != 0 || r.Pending {
				bad("prepared but unbound, in use or still being prepared")
			}
			if _, ok := bound[r.Guest.VM]; ok {
				bad("prepared but handed out before")
			}
		case Failed:
			if r.Err == "" {
				bad("failed without a reason")
			}
		}
		if u, ok := bound[r.Guest.VM]; ok && (r.App != u.app || r.Range != bounds(t, u.rng) || r.Template != u.template) {
			bad(fmt.Sprintf("once leased for %v", u))
		}
		if r.State != Failed && r.Active != active[r.ID] {
			bad(fmt.Sprintf("Active %d, but %d leases are held", r.Active, active[r.ID]))
		}
		if !e.vms.isLive(r.Guest.VM) {
			bad("its guest is not running")
		}
	}
	e.vms.mu.Lock()
	defer e.vms.mu.Unlock()
	for vm := range e.vms.live {
		if !inTable[vm] {
			t.Fatalf("seed %d step %d: vm %d runs but is not in the table", seed, step, vm)
		}
	}
}
