package pool

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/loader"
)

const (
	rngLow  = "s0-s3:c1.c5/i2-i9"
	rngHigh = "s4-s9:c1.c5/i2-i9"
)

func TestReuseReadyGuestOfSameAppAndRange(t *testing.T) {
	e := newEnv(t, 0, 3)
	first := e.acquire("bank", rngLow, "web")
	if first.How != HowBoot {
		t.Fatalf("first Acquire on an empty pool: How %q, want %q", first.How, HowBoot)
	}
	e.done(first, true)
	second := e.acquire("bank", rngLow, "web")
	if second.How != HowReuse || second.Entry.Guest.VM != first.Entry.Guest.VM {
		t.Fatalf("second Acquire for the same app and range: How %q vm %d, want reuse of vm %d",
			second.How, second.Entry.Guest.VM, first.Entry.Guest.VM)
	}
	if second.Entry.Loads != 2 || second.Entry.State != Ready {
		t.Errorf("after two loads: Loads %d State %v, want 2 ready", second.Entry.Loads, second.Entry.State)
	}
	e.done(second, true)
	if got := e.p.Stats().Hits; got[HowBoot] != 1 || got[HowReuse] != 1 {
		t.Errorf("Stats.Hits = %v, want one boot and one reuse", got)
	}
}

func TestOtherRangeOrAppDoesNotReuse(t *testing.T) {
	e := newEnv(t, 0, 5)
	a := e.acquire("bank", rngLow, "web")
	e.done(a, true)
	for _, c := range []struct{ app, rng string }{
		{"bank", rngHigh},          // same app, another range
		{"news", rngLow},           // same range, another app
		{"bank", "s0-s3:c1.c5/i2"}, // same secrecy, another integrity range
	} {
		l := e.acquire(c.app, c.rng, "web")
		if l.How == HowReuse || l.Entry.Guest.VM == a.Entry.Guest.VM {
			t.Errorf("Acquire(%s, %s) got vm %d (%s); vm %d serves bank at %s and must not be shared",
				c.app, c.rng, l.Entry.Guest.VM, l.How, a.Entry.Guest.VM, rngLow)
		}
		if l.Entry.App != c.app || l.Entry.Range != bounds(t, c.rng) {
			t.Errorf("lease for %s at %s shows app %q range %s", c.app, c.rng, l.Entry.App, l.Entry.Range)
		}
		e.done(l, true)
	}
}

func TestIdleTakeover(t *testing.T) {
	e := newEnv(t, 1, 3)
	e.refill()
	idle := e.p.List()
	if len(idle) != 1 || idle[0].State != Idle || idle[0].App != "" {
		t.Fatalf("after Refill with Size 1: %+v, want one idle entry", idle)
	}
	l := e.acquire("bank", rngLow, "web")
	if l.How != HowIdle || l.Entry.Guest.VM != idle[0].Guest.VM {
		t.Fatalf("Acquire with an idle guest: How %q vm %d, want idle vm %d", l.How, l.Entry.Guest.VM, idle[0].Guest.VM)
	}
	if l.Entry.App != "bank" || l.Entry.Range != bounds(t, rngLow) || l.Entry.State != Ready || !l.Entry.Pending {
		t.Errorf("taken idle guest: %+v, want ready and pending for bank at %s", l.Entry, rngLow)
	}
	e.done(l, true)
	// Bound for good: released, the guest is not idle again and another
	// application gets another guest.
	got, _ := e.entry(l.Entry.Guest.VM)
	if got.State != Ready || got.App != "bank" || got.Pending || got.Active != 0 {
		t.Errorf("after Done(true): %+v, want ready for bank, not pending, no active lease", got)
	}
	other := e.acquire("news", rngLow, "web")
	if other.Entry.Guest.VM == l.Entry.Guest.VM {
		t.Fatalf("news got vm %d, which serves bank", other.Entry.Guest.VM)
	}
	e.refill()
	if n := e.count("web", Idle); n != 1 {
		t.Errorf("Refill after the takeover: %d idle, want 1", n)
	}
}

func TestBootOnEmptyShowsBootingEntry(t *testing.T) {
	e := newEnv(t, 0, 3)
	gate := make(chan struct{})
	started := make(chan uint32, 1)
	e.vms.set(func(f *fakeVMs) { f.gate, f.started = gate, started })

	type result struct {
		l   Lease
		err error
	}
	res := make(chan result, 1)
	go func() {
		l, err := e.p.Acquire(context.Background(), "bank", bounds(t, rngLow), "web")
		res <- result{l, err}
	}()
	vm := <-started
	rows := e.p.List()
	if len(rows) != 1 || rows[0].State != Booting || rows[0].App != "bank" || rows[0].Guest.VM != vm {
		t.Fatalf("during the boot the table is %+v, want one booting entry for bank announcing vm %d", rows, vm)
	}
	close(gate)
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.l.How != HowBoot || r.l.Entry.State != Ready || r.l.Entry.Guest.VM != vm || r.l.Entry.Loads != 1 {
		t.Errorf("lease %+v (%s), want a booted ready guest vm %d with one load", r.l.Entry, r.l.How, vm)
	}
	e.done(r.l, true)
	if s := e.p.Stats(); s.Boots != 1 || s.States[Ready] != 1 {
		t.Errorf("Stats %+v, want one boot and one ready guest", s)
	}
}

func TestFullAfterMaxLoads(t *testing.T) {
	e := newEnv(t, 0, 2)
	a := e.acquire("bank", rngLow, "web")
	e.done(a, true)
	b := e.acquire("bank", rngLow, "web")
	if b.How != HowReuse || b.Entry.State != Full || b.Entry.Loads != 2 {
		t.Fatalf("second load with MaxLoads 2: %s %+v, want reuse and full", b.How, b.Entry)
	}
	e.done(b, true)
	c := e.acquire("bank", rngLow, "web")
	if c.How != HowBoot || c.Entry.Guest.VM == a.Entry.Guest.VM {
		t.Fatalf("third load: %s vm %d, want a new guest, vm %d is full", c.How, c.Entry.Guest.VM, a.Entry.Guest.VM)
	}
	e.done(c, true)

	// A failed load on a reused guest does not count: full becomes ready.
	d := e.acquire("bank", rngLow, "web")
	if d.How != HowReuse || d.Entry.Guest.VM != c.Entry.Guest.VM || d.Entry.State != Full {
		t.Fatalf("fourth load: %s %+v, want reuse of vm %d, full", d.How, d.Entry, c.Entry.Guest.VM)
	}
	e.done(d, false)
	got, _ := e.entry(c.Entry.Guest.VM)
	if got.State != Ready || got.Loads != 1 || got.App != "bank" {
		t.Errorf("after a failed reuse: %+v, want ready, 1 load, still bank", got)
	}
	if !e.vms.isLive(c.Entry.Guest.VM) {
		t.Errorf("a failed load on a reused guest destroyed it")
	}
}

func TestMaxLoadsOneIsFullAtOnce(t *testing.T) {
	e := newEnv(t, 1, 1)
	e.refill()
	l := e.acquire("bank", rngLow, "web")
	if l.How != HowIdle || l.Entry.State != Full {
		t.Fatalf("MaxLoads 1: %s %v, want idle takeover and full", l.How, l.Entry.State)
	}
	e.done(l, true)
	if again := e.acquire("bank", rngLow, "web"); again.Entry.Guest.VM == l.Entry.Guest.VM {
		t.Fatalf("a full guest was handed out again")
	}
}

func TestPendingGuestIsNotReused(t *testing.T) {
	e := newEnv(t, 0, 5)
	a := e.acquire("bank", rngLow, "web")
	b := e.acquire("bank", rngLow, "web")
	if b.Entry.Guest.VM == a.Entry.Guest.VM {
		t.Fatalf("vm %d was reused while its first configuration was still running", a.Entry.Guest.VM)
	}
	e.done(a, true)
	e.done(b, true)
	c := e.acquire("bank", rngLow, "web")
	if c.How != HowReuse || c.Entry.Guest.VM != a.Entry.Guest.VM {
		t.Errorf("after confirmation: %s vm %d, want reuse of vm %d (lowest id)", c.How, c.Entry.Guest.VM, a.Entry.Guest.VM)
	}
}

func TestFailedFirstConfigurationDestroysGuest(t *testing.T) {
	for _, how := range []How{HowIdle, HowBoot} {
		t.Run(string(how), func(t *testing.T) {
			e := newEnv(t, 1, 3)
			if how == HowIdle {
				e.refill()
			}
			var events []string
			var mu sync.Mutex
			e.p.cfg.Progress = func(ev string, _ Entry) { mu.Lock(); events = append(events, ev); mu.Unlock() }
			l := e.acquire("bank", rngLow, "web")
			if l.How != how {
				t.Fatalf("How %q, want %q", l.How, how)
			}
			vm := l.Entry.Guest.VM
			e.done(l, false)
			if e.vms.isLive(vm) || e.vms.destroyCount(vm) != 1 {
				t.Errorf("vm %d after a failed first configuration: live %v, destroyed %d times; want destroyed once",
					vm, e.vms.isLive(vm), e.vms.destroyCount(vm))
			}
			if _, ok := e.entry(vm); ok {
				t.Errorf("vm %d is still in the table", vm)
			}
			select {
			case <-e.p.kick:
			default:
				t.Errorf("the failed configuration did not wake the refill")
			}
			e.refill()
			if n := e.count("web", Idle); n != 1 {
				t.Errorf("after the refill: %d idle, want 1", n)
			}
			mu.Lock()
			got := strings.Join(events, " ")
			mu.Unlock()
			if !strings.Contains(got, "released failed destroyed") {
				t.Errorf("events %q, want released, failed, destroyed in order", got)
			}
			// The application gets a new guest, never the old one.
			if l2 := e.acquire("bank", rngLow, "web"); l2.Entry.Guest.VM == vm {
				t.Errorf("destroyed vm %d was handed out again", vm)
			}
		})
	}
}

func TestFailedDestroyIsRetriedByRefill(t *testing.T) {
	e := newEnv(t, 0, 3)
	l := e.acquire("bank", rngLow, "web")
	e.vms.set(func(f *fakeVMs) { f.failDestroy = true })
	if err := l.Done(false); err == nil {
		t.Fatalf("Done(false) with a failing Destroy returned nil")
	}
	got, ok := e.entry(l.Entry.Guest.VM)
	if !ok || got.State != Failed || !strings.Contains(got.Err, "fake destroy failure") {
		t.Fatalf("after the failed destroy: %+v, want failed with the destroy error", got)
	}
	// The retry waits for its backoff (BackoffBase after one failure,
	// doubling), so a stuck guest is not hammered.
	e.refill()
	if s := e.p.Stats(); s.DestroyFailures != 1 {
		t.Fatalf("Refill retried the destroy before its backoff: %d failures", s.DestroyFailures)
	}
	e.clk.Advance(time.Second)
	if err := e.p.Refill(context.Background()); err == nil {
		t.Errorf("Refill with a failing Destroy returned nil")
	}
	e.clk.Advance(time.Second)
	e.refill()
	if s := e.p.Stats(); s.DestroyFailures != 2 {
		t.Fatalf("Refill retried the destroy before its second backoff (2s): %d failures", s.DestroyFailures)
	}
	e.vms.set(func(f *fakeVMs) { f.failDestroy = false })
	e.clk.Advance(time.Second)
	e.refill()
	if _, ok := e.entry(l.Entry.Guest.VM); ok || e.vms.isLive(l.Entry.Guest.VM) {
		t.Errorf("the retried destroy left vm %d", l.Entry.Guest.VM)
	}
	if s := e.p.Stats(); s.DestroyFailures != 2 || s.Destroys != 1 {
		t.Errorf("Stats: %d destroys, %d failures; want 1 and 2", s.Destroys, s.DestroyFailures)
	}
}

func TestDoneTwice(t *testing.T) {
	e := newEnv(t, 0, 3)
	l := e.acquire("bank", rngLow, "web")
	e.done(l, true)
	if err := e.p.Release(l, true); !errors.Is(err, ErrReleased) {
		t.Errorf("second release: %v, want ErrReleased", err)
	}
	got, _ := e.entry(l.Entry.Guest.VM)
	if got.Active != 0 {
		t.Errorf("Active %d after a double release, want 0", got.Active)
	}
	if err := (Lease{}).Done(true); err == nil {
		t.Errorf("Done on a zero Lease returned nil")
	}
}

func TestRemove(t *testing.T) {
	e := newEnv(t, 1, 3)
	e.refill()
	l := e.acquire("bank", rngLow, "web")
	vm := l.Entry.Guest.VM
	if err := e.p.Remove(context.Background(), vm); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.entry(vm); ok || e.vms.isLive(vm) {
		t.Errorf("vm %d still there after Remove", vm)
	}
	if err := l.Done(true); !errors.Is(err, ErrGone) {
		t.Errorf("Done on a removed guest: %v, want ErrGone", err)
	}
	if err := e.p.Remove(context.Background(), vm); !errors.Is(err, ErrUnknownVM) {
		t.Errorf("second Remove: %v, want ErrUnknownVM", err)
	}
}

func TestAcquireRefusesBadInput(t *testing.T) {
	e := newEnv(t, 0, 3)
	ctx := context.Background()
	if _, err := e.p.Acquire(ctx, "bank", bounds(t, rngLow), "ftp"); !errors.Is(err, ErrUnknownTemplate) || !strings.Contains(err.Error(), "Config.Templates") {
		t.Errorf("unknown template: %v, want ErrUnknownTemplate naming the fix", err)
	}
	if _, err := e.p.Acquire(ctx, "", bounds(t, rngLow), "web"); err == nil {
		t.Errorf("empty application accepted")
	}
	inverted := label.Bounds{Low: bounds(t, "s5").Low, High: bounds(t, "s1").High}
	if _, err := e.p.Acquire(ctx, "bank", inverted, "web"); err == nil {
		t.Errorf("inverted range %v accepted", inverted)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := e.p.Acquire(cancelled, "bank", bounds(t, rngLow), "web"); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
	if n := e.vms.bootCount(); n != 0 {
		t.Errorf("refused requests booted %d guests", n)
	}
}

func TestOpenRefusesBadConfig(t *testing.T) {
	vms := newFake()
	base := func() Config {
		return Config{Templates: map[string]TemplateConfig{"web": {Size: 1, MaxLoads: 1}}, Boot: vms.Boot, Destroy: vms.Destroy}
	}
	for name, mutate := range map[string]func(*Config){
		"no boot":    func(c *Config) { c.Boot = nil },
		"maxloads 0": func(c *Config) { c.Templates["web"] = TemplateConfig{Size: 1} },
		"negative":   func(c *Config) { c.Templates["web"] = TemplateConfig{Size: -1, MaxLoads: 1} },
		"backoff":    func(c *Config) { c.BackoffBase, c.BackoffMax = 2e9, 1e9 },
		"empty name": func(c *Config) { c.Templates[""] = TemplateConfig{MaxLoads: 1} },
	} {
		c := base()
		mutate(&c)
		if p, err := Open(t.TempDir()+"/pool.db", c); err == nil {
			p.Close()
			t.Errorf("%s: Open accepted the config", name)
		}
	}
	if _, err := Open("", base()); err == nil {
		t.Errorf("Open with an empty path succeeded")
	}
}

func TestSecondOpenIsLocked(t *testing.T) {
	e := newEnv(t, 0, 1)
	if p, err := Open(e.path, e.cfg); !errors.Is(err, ErrLocked) {
		if err == nil {
			p.Close()
		}
		t.Fatalf("second Open of %s: %v, want ErrLocked", e.path, err)
	}
}

func TestStateText(t *testing.T) {
	for _, s := range []State{Idle, Ready, Full, Booting, Failed} {
		b, err := s.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back State
		if err := back.UnmarshalText(b); err != nil || back != s || s.String() != string(b) {
			t.Errorf("%v: text %q reads back as %v (%v)", s, b, back, err)
		}
	}
	if _, err := State(0).MarshalText(); err == nil {
		t.Errorf("the zero State has a name")
	}
	var s State
	if err := s.UnmarshalText([]byte("busy")); err == nil {
		t.Errorf("state %q accepted", "busy")
	}
}

// TestReuseOnlyNeverTakesAFreshGuest: a load marked reuse-only gets a
// Ready guest of its application or ErrReuseOnly, never a boot or an idle
// guest.
func TestReuseOnlyNeverTakesAFreshGuest(t *testing.T) {
	e := newEnv(t, 1, 3)
	e.refill()
	ctx := loader.WithReuseOnly(context.Background())
	if _, err := e.p.Acquire(ctx, "bank", bounds(t, rngLow), "web"); !errors.Is(err, loader.ErrReuseOnly) {
		t.Fatalf("reuse-only with only an idle guest: %v, want ErrReuseOnly", err)
	}
	if s := e.p.Stats(); s.States[Idle] != 1 || s.Boots != 1 {
		t.Fatalf("reuse-only took or booted a guest: %+v", s)
	}
	l := e.acquire("bank", rngLow, "web")
	e.done(l, true)
	l2, err := e.p.Acquire(ctx, "bank", bounds(t, rngLow), "web")
	if err != nil || l2.How != HowReuse || l2.Entry.Guest.VM != l.Entry.Guest.VM {
		t.Fatalf("reuse-only with a ready guest: %+v %v", l2, err)
	}
	e.done(l2, true)
}

// TestMaxActiveCountsLoadsInProgress: with MaxActive and no lifetime
// bound, a guest serves its application's loads one after the other
// without end (no boot per MaxLoads loads), is Full only while MaxActive
// leases are held, and is Ready again when one ends, across a restart too.
func TestMaxActiveCountsLoadsInProgress(t *testing.T) {
	e := newEnv(t, 0, 3)
	e.cfg.Templates["live"] = TemplateConfig{MaxActive: 2}
	e.reopen()
	first := e.acquire("bank", rngLow, "live")
	e.done(first, true)
	for i := range 100 {
		l := e.acquire("bank", rngLow, "live")
		if l.How != HowReuse || l.Entry.Guest.VM != first.Entry.Guest.VM || l.Entry.State != Ready {
			t.Fatalf("load %d: %s of vm %d (%v), want reuse of vm %d, ready", i+2, l.How, l.Entry.Guest.VM, l.Entry.State, first.Entry.Guest.VM)
		}
		e.done(l, true)
	}
	a := e.acquire("bank", rngLow, "live")
	b := e.acquire("bank", rngLow, "live")
	if b.Entry.State != Full || b.Entry.Guest.VM != a.Entry.Guest.VM {
		t.Fatalf("two loads at once: %+v, want the same guest, full", b.Entry)
	}
	c := e.acquire("bank", rngLow, "live")
	if c.How != HowBoot {
		t.Fatalf("a third load while two are in progress: %s, want a boot", c.How)
	}
	e.done(c, true)
	e.done(a, true)
	if got, _ := e.entry(a.Entry.Guest.VM); got.State != Ready || got.Active != 1 {
		t.Fatalf("after one load ended: %+v, want ready with 1 active", got)
	}
	e.reopen() // b's lease ends with the restart
	if got, _ := e.entry(a.Entry.Guest.VM); got.State != Ready || got.Active != 0 {
		t.Fatalf("after a restart: %+v, want ready with no load in progress", got)
	}
	e.vms.mu.Lock()
	boots := e.vms.boots
	e.vms.mu.Unlock()
	if boots != 2 {
		t.Fatalf("%d boots for 104 loads, want 2", boots)
	}
}
