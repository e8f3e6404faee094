package pool

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/loader"
)

// Errors a caller can test for with errors.Is.
var (
	// ErrClosed: the pool was closed.
	ErrClosed = errors.New("pool is closed")
	// ErrUnknownTemplate: the template is not in Config.Templates.
	ErrUnknownTemplate = errors.New("unknown template")
	// ErrUnknownVM: no entry holds the VM.
	ErrUnknownVM = errors.New("no such vm in the pool")
	// ErrReleased: Done was called twice on one lease.
	ErrReleased = errors.New("lease already released")
	// ErrGone: the leased guest was removed from the pool before Done.
	ErrGone = errors.New("leased guest is no longer in the pool")
)

// TemplateConfig is how the pool treats guests of one template.
type TemplateConfig struct {
	// Size is the number of Idle guests the refill keeps; 0 keeps none,
	// so every first request for an application boots.
	Size int
	// MaxLoads is the number of loads a guest takes in its life before it
	// is Full for good; 0 sets no such bound (then MaxActive must be set).
	MaxLoads int
	// MaxActive, when set, is the number of loads a guest takes at once
	// (leases not yet released): it is Full while it holds them and Ready
	// again when one ends. A guest can then serve its application's loads
	// one after the other without end, so that repeated loads never boot
	// new guests.
	MaxActive int
}

// Config is what Open needs. Boot and Destroy are required.
type Config struct {
	// Templates lists the templates the pool may boot, by name.
	Templates map[string]TemplateConfig
	// Boot starts a guest of the template and returns it once it can be
	// configured; when it fails it must leave nothing behind (as
	// loader.Backend.Boot promises). It should call Announce with the
	// guest's identity before it creates anything, so that a crash during
	// the boot leaves a record that Check and Destroy can act on.
	Boot func(ctx context.Context, template string) (*loader.Guest, error)
	// Destroy stops a guest; a guest already gone is not an error.
	Destroy func(ctx context.Context, g *loader.Guest) error
	// Check reports whether a guest still exists. Optional: without it,
	// Open trusts the table, and entries that were Booting are destroyed.
	Check func(ctx context.Context, g *loader.Guest) bool
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Progress, when set, is called after each change with an event name
	// and the entry as changed (see the Event constants). It runs outside
	// the pool's lock and must not block for long.
	Progress func(event string, e Entry)
	// Parallel is the number of templates the refill boots for at once;
	// each template boots one guest at a time. Default 2.
	Parallel int
	// BackoffBase and BackoffMax bound the refill's wait after consecutive
	// boot failures of a template: BackoffBase·2^(n-1), at most BackoffMax.
	// Defaults 1s and 5m.
	BackoffBase, BackoffMax time.Duration
	// Interval is how often Run looks at the pool when nothing wakes it
	// (to retry destroys that failed). Default 30s.
	Interval time.Duration
	// Ready, when set, lists the guests to keep configured for
	// applications ahead of demand; each Refill pass asks it. Prepare
	// configures one such guest (a booted guest, bound to w.App at
	// w.Range), and must leave it fully configured or fail; a guest whose
	// Prepare failed is destroyed. Both or neither.
	Ready   func(ctx context.Context) ([]loader.ReadyWant, error)
	Prepare func(ctx context.Context, g *loader.Guest, w loader.ReadyWant) error
	// OpTimeout bounds the Check calls in Open and the Destroy calls that
	// run without a caller's context (Lease.Done, cleanup after a failed
	// boot). Default 2m.
	OpTimeout time.Duration
}

// Events passed to Config.Progress.
const (
	EventBooting       = "booting"        // a slot was made and Boot called
	EventAnnounced     = "announced"      // Boot announced the guest's identity
	EventBooted        = "booted"         // Boot returned a guest
	EventBootFailed    = "boot-failed"    // Boot failed; the entry is as it was last
	EventBootCancelled = "boot-cancelled" // Boot ended with its context
	EventAcquired      = "acquired"       // a lease was handed out (Reuse, Idle or Boot)
	EventReleased      = "released"       // a lease ended
	EventFailed        = "failed"         // an entry became Failed
	EventDestroyed     = "destroyed"      // a guest was destroyed and its entry dropped
	EventDestroyFailed = "destroy-failed" // Destroy failed; the entry stays Failed
	EventDropped       = "dropped"        // an entry was dropped without a Destroy
	EventPrepared      = "prepared"       // a guest was configured ahead of demand
	EventInvalidated   = "invalidated"    // a Prepared guest went stale and is replaced
)

// Pool is VMLoad's table of guests. Its methods are safe for concurrent
// use.
type Pool struct {
	cfg Config
	st  *store

	mu         sync.Mutex
	closed     bool
	entries    map[uint64]Entry
	destroying map[uint64]bool
	// retry is when the refill next tries to destroy a Failed entry whose
	// destroy failed, and how many times in a row it failed: backoff as
	// for boots, so a stuck guest is retried but not hammered.
	retry      map[uint64]destroyRetry
	tmpl       map[string]*tmplState
	boots      int
	bootFails  int
	destroys   int
	destroyErr int
	hits       map[How]int
	// ready is the refill's memory of each ready want, by application,
	// range and template; prepared, prepareFails and invalidated count
	// Prepare calls that succeeded or failed and Prepared guests dropped
	// as stale.
	ready                               map[readyKey]*readyState
	prepared, prepareFails, invalidated int

	kick chan struct{}
	// changed is closed, and replaced, on every change to the table, so
	// that an Acquire waiting for another's boot wakes.
	changed chan struct{}
	// joined counts Acquires waiting for another's boot (for tests).
	joined int
}

// destroyRetry is the refill's memory of a guest whose destroy failed.
type destroyRetry struct {
	fails int
	at    time.Time
}

// tmplState is the refill's memory of one template.
type tmplState struct {
	filling     bool // a refill is booting for it
	boots       int
	fails       int
	consecutive int
	lastErr     string
	retryAt     time.Time
}

// event is a Progress call waiting for the lock to be released.
type event struct {
	name string
	e    Entry
}

// Open opens or creates the pool file at path and restores its table.
// Entries are reconciled with the world before the pool is returned:
//
//   - leases do not survive a restart, so Active is reset;
//   - a guest that was in its first configuration (Pending) becomes Failed,
//     as if that configuration had failed, so it is never left bound with
//     partial policy;
//   - a Booting slot whose guest was never announced is dropped (there is
//     nothing to check or destroy); an announced one is dropped if Check
//     says its guest is gone, and otherwise becomes Failed: its boot never
//     finished, so it cannot be trusted as an Idle guest, and the refill
//     destroys it;
//   - with Check set, any other entry whose guest is gone (a host reboot) is
//     dropped.
//
// Failed entries are destroyed by the next Refill or by Run.
func Open(path string, cfg Config) (*Pool, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	st, err := openStore(path)
	if err != nil {
		return nil, err
	}
	rows, err := st.load()
	if err != nil {
		st.close()
		return nil, fmt.Errorf("pool file %s: %w", path, err)
	}
	p := &Pool{
		cfg:        cfg,
		st:         st,
		entries:    make(map[uint64]Entry, len(rows)),
		destroying: map[uint64]bool{},
		retry:      map[uint64]destroyRetry{},
		tmpl:       map[string]*tmplState{},
		hits:       map[How]int{},
		ready:      map[readyKey]*readyState{},
		kick:       make(chan struct{}, 1),
		changed:    make(chan struct{}),
	}
	for name := range cfg.Templates {
		p.tmpl[name] = &tmplState{}
	}
	evs, err := p.reconcile(rows)
	if err != nil {
		st.close()
		return nil, fmt.Errorf("pool file %s: reconcile: %w", path, err)
	}
	p.emit(evs)
	return p, nil
}

func (c *Config) fill() error {
	if c.Boot == nil || c.Destroy == nil {
		return errors.New("pool: Config.Boot and Config.Destroy are required; pass the backend's Boot and Destroy")
	}
	for name, t := range c.Templates {
		if name == "" {
			return errors.New("pool: Config.Templates has an empty template name; name every template")
		}
		if t.Size < 0 {
			return fmt.Errorf("pool: template %s: Size %d is negative; use 0 to keep no idle guests", name, t.Size)
		}
		if t.MaxLoads < 0 || t.MaxActive < 0 || t.MaxLoads == 0 && t.MaxActive == 0 {
			return fmt.Errorf("pool: template %s: MaxLoads %d, MaxActive %d; set at least one of them, at least 1 (a guest must take at least 1 load)", name, t.MaxLoads, t.MaxActive)
		}
	}
	if (c.Ready == nil) != (c.Prepare == nil) {
		return errors.New("pool: Config.Ready and Config.Prepare go together; set both to keep guests ready for applications, or neither")
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Parallel <= 0 {
		c.Parallel = 2
	}
	if c.BackoffBase <= 0 {
		c.BackoffBase = time.Second
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = 5 * time.Minute
	}
	if c.BackoffMax < c.BackoffBase {
		return fmt.Errorf("pool: BackoffMax %v is below BackoffBase %v; raise BackoffMax", c.BackoffMax, c.BackoffBase)
	}
	if c.Interval <= 0 {
		c.Interval = 30 * time.Second
	}
	if c.OpTimeout <= 0 {
		c.OpTimeout = 2 * time.Minute
	}
	return nil
}

// reconcile installs the stored rows, fixing what a restart invalidates;
// see Open.
func (p *Pool) reconcile(rows []Entry) ([]event, error) {
	var (
		put []Entry
		del []uint64
		evs []event
	)
	now := p.cfg.Now()
	alive := func(g Entry) bool {
		if p.cfg.Check == nil {
			return true
		}
		ctx, cancel := context.WithTimeout(context.Background(), p.cfg.OpTimeout)
		defer cancel()
		return p.cfg.Check(ctx, &g.Guest)
	}
	for _, e := range rows {
		n := e
		n.Active = 0
		if n.State == Full && !n.full() {
			n.State, n.Since = Ready, now // its leases ended with the restart
		}
		switch {
		case e.State == Booting && !e.announced():
			del = append(del, e.ID)
			evs = append(evs, event{EventDropped, e})
			continue
		case e.State == Booting:
			if !alive(e) {
				del = append(del, e.ID)
				evs = append(evs, event{EventDropped, e})
				continue
			}
			n.State, n.Since, n.Err = Failed, now, "boot interrupted by a restart"
			evs = append(evs, event{EventFailed, n})
		case e.State == Failed:
		case !alive(e):
			del = append(del, e.ID)
			evs = append(evs, event{EventDropped, e})
			continue
		case e.Pending:
			n.State, n.Since = Failed, now
			n.Err = fmt.Sprintf("restart during its first configuration for %s", e.App)
			n.Pending = false
			evs = append(evs, event{EventFailed, n})
		}
		if n != e {
			put = append(put, n)
		}
		p.entries[n.ID] = n
	}
	if err := p.st.apply(put, del); err != nil {
		return nil, err
	}
	return evs, nil
}

// emit calls Progress for each event. The caller must not hold p.mu.
func (p *Pool) emit(evs []event) {
	if p.cfg.Progress == nil {
		return
	}
	for _, ev := range evs {
		p.cfg.Progress(ev.name, ev.e)
	}
}

// commit persists the changes and only then installs them in the table.
// The caller holds p.mu.
func (p *Pool) commit(put ...Entry) error {
	if p.closed {
		return ErrClosed
	}
	if err := p.st.apply(put, nil); err != nil {
		return fmt.Errorf("pool: write pool file: %w", err)
	}
	for _, e := range put {
		p.entries[e.ID] = e
	}
	p.signal()
	return nil
}

// signal wakes the Acquires waiting for a change. The caller holds p.mu.
func (p *Pool) signal() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// insert persists a new entry, numbered by the store, and installs it.
// The caller holds p.mu.
func (p *Pool) insert(e Entry) (Entry, error) {
	if p.closed {
		return Entry{}, ErrClosed
	}
	id, err := p.st.insert(e)
	if err != nil {
		return Entry{}, fmt.Errorf("pool: write pool file: %w", err)
	}
	e.ID = id
	p.entries[id] = e
	return e, nil
}

// forget drops an entry. It leaves the table even when the delete cannot
// be written: the record left behind is one that Open reconciles (a
// Booting slot or a Failed guest already destroyed, which Destroy
// tolerates). The caller holds p.mu.
func (p *Pool) forget(id uint64) error {
	delete(p.entries, id)
	delete(p.retry, id)
	p.signal()
	if p.closed {
		return ErrClosed
	}
	if err := p.st.apply(nil, []uint64{id}); err != nil {
		return fmt.Errorf("pool: write pool file: %w", err)
	}
	return nil
}

// wake asks Run for a refill pass.
func (p *Pool) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// opCtx is the context for work done without a caller's context, or that
// must finish although the caller's context has ended.
func (p *Pool) opCtx(parent context.Context) (context.Context, context.CancelFunc) {
	if parent == nil {
		parent = context.Background()
	}
	return context.WithTimeout(context.WithoutCancel(parent), p.cfg.OpTimeout)
}

// Acquire finds a guest for a load of app at the secrecy/integrity range
// rng from the template, in the paper's order: a Ready guest of the
// template already serving app at exactly rng, else (for a ctx marked
// loader.WithReadyFingerprint) a Prepared guest built for app at rng under
// that fingerprint, handed out whole (HowReady), else an Idle guest of the
// template (bound to app and rng from then on), else a guest booted for
// this request. While another Acquire boots a guest for the same app, rng
// and template that can take a second load, Acquire waits for that guest
// and reuses it instead of booting one more. The boot runs without the pool's lock; meanwhile the table
// shows a Booting entry for app. The caller configures the guest and then
// calls Lease.Done. For a ctx marked loader.WithReuseOnly, only the first
// choice is made: without a Ready guest, Acquire fails with
// loader.ErrReuseOnly.
func (p *Pool) Acquire(ctx context.Context, app string, rng label.Bounds, template string) (Lease, error) {
	if app == "" {
		return Lease{}, errors.New("pool: acquire with an empty application id; pass the policy store's application id")
	}
	if err := rng.Validate(); err != nil {
		return Lease{}, fmt.Errorf("pool: acquire for %s: range %s: %w", app, rng, err)
	}
	tc, ok := p.cfg.Templates[template]
	if !ok {
		return Lease{}, fmt.Errorf("pool: acquire for %s: %w %q; add it to Config.Templates", app, ErrUnknownTemplate, template)
	}
	if err := ctx.Err(); err != nil {
		return Lease{}, err
	}

	fp, wantReady := loader.ReadyFingerprint(ctx)
	var now time.Time
	for joins := 0; ; joins++ {
		p.mu.Lock()
		now = p.cfg.Now()
		if e, ok := p.pick(func(e Entry) bool {
			return e.State == Ready && !e.Pending && e.App == app && e.Range == rng && e.Template == template
		}); ok {
			e.Loads++
			e.Active++
			if e.full() {
				e.State, e.Since = Full, now
			}
			return p.handOut(e, HowReuse)
		}
		// A ready guest is a fresh one (the refill boots its replacement):
		// a caller held to reuse takes none.
		if loader.ReuseOnly(ctx) {
			p.mu.Unlock()
			return Lease{}, fmt.Errorf("pool: acquire for %s: %w", app, loader.ErrReuseOnly)
		}
		if wantReady {
			if e, ok := p.pick(func(e Entry) bool {
				return e.State == Prepared && !e.Pending && e.App == app && e.Range == rng && e.Template == template && e.Fingerprint == fp
			}); ok {
				// Configured ahead of demand: the hand-out is the whole
				// load. Pending until Done, so that a failed hand-out
				// destroys it like any fresh guest's failed first
				// configuration.
				p.bind(&e, app, rng, tc, now)
				l, err := p.handOut(e, HowReady)
				if err == nil {
					p.wake()
				}
				return l, err
			}
		}
		// Another load for the same application and range is booting a
		// guest that can take this load too: wait for it to be booted and
		// configured, then reuse it, rather than boot a second guest.
		if joins < maxJoins && tc.shareable() {
			if e, ok := p.pick(func(e Entry) bool {
				return e.State == Booting && e.Fingerprint == "" && e.App == app && e.Range == rng && e.Template == template
			}); ok {
				p.joined++
				p.mu.Unlock()
				err := p.awaitConfigured(ctx, e.ID)
				p.mu.Lock()
				p.joined--
				p.mu.Unlock()
				if err != nil {
					return Lease{}, fmt.Errorf("pool: acquire for %s: waiting for the boot of slot %d: %w", app, e.ID, err)
				}
				continue
			}
		}
		break
	}
	if e, ok := p.pick(func(e Entry) bool {
		return e.State == Idle && e.Template == template
	}); ok {
		p.bind(&e, app, rng, tc, now)
		l, err := p.handOut(e, HowIdle)
		if err == nil {
			p.wake()
		}
		return l, err
	}
	slot, err := p.insert(Entry{
		State:     Booting,
		App:       app,
		Range:     rng,
		Template:  template,
		MaxLoads:  tc.MaxLoads,
		MaxActive: tc.MaxActive,
		Guest:     guestOf(template),
		Since:     now,
	})
	p.mu.Unlock()
	if err != nil {
		return Lease{}, err
	}
	p.emit([]event{{EventBooting, slot}})

	g, err := p.boot(ctx, slot.ID, template)
	if err != nil {
		return Lease{}, fmt.Errorf("pool: acquire for %s: %w", app, err)
	}
	p.mu.Lock()
	e, ok := p.entries[slot.ID]
	if !ok {
		// Only a reconcile drops a Booting slot, and that runs in Open.
		p.mu.Unlock()
		return Lease{}, fmt.Errorf("pool: acquire for %s: slot %d vanished while booting vm %d", app, slot.ID, g.VM)
	}
	e.Guest = *g
	p.bind(&e, app, rng, tc, p.cfg.Now())
	return p.handOut(e, HowBoot)
}

// maxJoins bounds how many other loads' boots one Acquire waits for
// before it boots a guest of its own.
const maxJoins = 4

// shareable reports whether a guest of the template can take a second
// load while its first is in progress.
func (t TemplateConfig) shareable() bool {
	return t.MaxLoads != 1 && t.MaxActive != 1
}

// awaitConfigured waits until the slot id has been booted and its first
// configuration has ended (or the slot is gone or failed), or ctx ends.
// The wait is event-driven and bounded by ctx; the loop by maxWaits changes.
func (p *Pool) awaitConfigured(ctx context.Context, id uint64) error {
	const maxWaits = 1 << 16
	for range maxWaits {
		p.mu.Lock()
		e, ok := p.entries[id]
		if !ok || e.State == Failed || e.State != Booting && !e.Pending || p.closed {
			p.mu.Unlock()
			return nil
		}
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// guestOf is the Guest of a slot not yet announced.
func guestOf(template string) loader.Guest { return loader.Guest{Template: template} }

// pick returns the matching entry with the lowest ID, so that choices are
// deterministic. The caller holds p.mu.
func (p *Pool) pick(match func(Entry) bool) (Entry, bool) {
	var best Entry
	found := false
	for _, e := range p.entries {
		if match(e) && (!found || e.ID < best.ID) {
			best, found = e, true
		}
	}
	return best, found
}

// bind makes e a guest of app at rng, taking its first load.
func (p *Pool) bind(e *Entry, app string, rng label.Bounds, tc TemplateConfig, now time.Time) {
	e.App, e.Range = app, rng
	e.MaxLoads, e.MaxActive = tc.MaxLoads, tc.MaxActive
	e.Loads, e.Active = 1, 1
	e.Pending = true
	e.State, e.Since = Ready, now
	if e.full() {
		e.State = Full
	}
}

// handOut commits e and returns a lease on it. The caller holds p.mu;
// handOut releases it. A guest that was booted for the request but cannot
// be recorded is destroyed.
func (p *Pool) handOut(e Entry, how How) (Lease, error) {
	if err := p.commit(e); err != nil {
		if how == HowBoot {
			p.forget(e.ID)
			p.mu.Unlock()
			ctx, cancel := p.opCtx(nil)
			defer cancel()
			if derr := p.cfg.Destroy(ctx, &e.Guest); derr != nil {
				err = errors.Join(err, fmt.Errorf("destroy %s: %w", e.Guest.Name, derr))
			}
			return Lease{}, err
		}
		p.mu.Unlock()
		return Lease{}, err
	}
	p.hits[how]++
	p.mu.Unlock()
	p.emit([]event{{EventAcquired, e}})
	var done atomic.Bool
	id := e.ID
	return Lease{Entry: e, How: how, release: func(ok bool) error {
		if done.Swap(true) {
			return fmt.Errorf("pool: vm %d: %w", e.Guest.VM, ErrReleased)
		}
		return p.release(id, how, ok)
	}}, nil
}

// Release ends a lease; it is l.Done(ok).
func (p *Pool) Release(l Lease, ok bool) error { return l.Done(ok) }

func (p *Pool) release(id uint64, how How, ok bool) error {
	p.mu.Lock()
	e, found := p.entries[id]
	if !found {
		p.mu.Unlock()
		return fmt.Errorf("pool: slot %d: %w", id, ErrGone)
	}
	e.Active = max(e.Active-1, 0)
	fresh := how != HowReuse && e.Pending
	switch {
	case e.State == Failed:
		// Removed while leased: only the count changes.
	case ok:
		e.Pending = false
	case fresh:
		e.State, e.Since, e.Pending = Failed, p.cfg.Now(), false
		e.Err = fmt.Sprintf("first configuration for %s failed; the guest may hold part of its policy", e.App)
	default:
		// A failed load on a guest already serving the application: the
		// load did not happen.
		e.Loads = max(e.Loads-1, 0)
	}
	if (e.State == Full) && !e.full() {
		// Below its limits again: a load ended (MaxActive) or did not
		// happen.
		e.State, e.Since = Ready, p.cfg.Now()
	}
	if err := p.commit(e); err != nil {
		p.mu.Unlock()
		return err
	}
	p.mu.Unlock()
	evs := []event{{EventReleased, e}}
	if !ok && fresh {
		evs = append(evs, event{EventFailed, e})
	}
	p.emit(evs)
	if !ok && fresh {
		ctx, cancel := p.opCtx(nil)
		defer cancel()
		err := p.destroy(ctx, id)
		p.wake()
		return err
	}
	return nil
}

// boot runs Config.Boot for the Booting slot id and returns the guest. On
// failure the slot is gone: dropped if its guest was never announced,
// else destroyed (Destroy tolerates a guest that Boot already cleaned up),
// or left Failed when that destroy fails too.
func (p *Pool) boot(ctx context.Context, id uint64, template string) (*loader.Guest, error) {
	g, err := p.cfg.Boot(context.WithValue(ctx, slotKey{}, slotRef{p, id}), template)
	if err == nil && g == nil {
		err = fmt.Errorf("boot of template %s returned no guest and no error; fix the Boot function", template)
	}
	p.mu.Lock()
	ts := p.tmplFor(template)
	dup := false
	if err == nil {
		if o, ok := p.holder(g.VM, id); ok {
			// Destroying what Boot returned could hit the other guest,
			// if the backend finds guests by number: leave it alone.
			err = fmt.Errorf("boot of template %s returned vm %d, which the pool already holds (slot %d); Boot must not reuse a live VM number (the new guest %q was left running: destroy it by hand)", template, g.VM, o.ID, g.Name)
			dup = true
		}
	}
	if err == nil {
		if g.Template == "" {
			g.Template = template
		}
		p.boots++
		ts.boots++
		e := p.entries[id]
		e.Guest = *g
		p.mu.Unlock()
		p.emit([]event{{EventBooted, e}})
		return g, nil
	}
	cancelled := ctx.Err() != nil
	if !cancelled {
		p.bootFails++
		ts.fails++
		ts.lastErr = err.Error()
	}
	e, found := p.entries[id]
	if !found || !e.announced() || dup {
		var ferr error
		if found {
			ferr = p.forget(id)
		}
		p.mu.Unlock()
		p.emitBootEnd(cancelled, e)
		return nil, errors.Join(err, ferr)
	}
	e.State, e.Since, e.Err = Failed, p.cfg.Now(), "boot failed: "+err.Error()
	cerr := p.commit(e)
	p.mu.Unlock()
	p.emitBootEnd(cancelled, e)
	if cerr != nil {
		return nil, errors.Join(err, cerr)
	}
	dctx, cancel := p.opCtx(ctx)
	defer cancel()
	return nil, errors.Join(err, p.destroy(dctx, id))
}

func (p *Pool) emitBootEnd(cancelled bool, e Entry) {
	if cancelled {
		p.emit([]event{{EventBootCancelled, e}})
	} else {
		p.emit([]event{{EventBootFailed, e}})
	}
}

// tmplFor returns the refill's state for a template, making it for a
// template found only in the table. The caller holds p.mu.
func (p *Pool) tmplFor(name string) *tmplState {
	ts := p.tmpl[name]
	if ts == nil {
		ts = &tmplState{}
		p.tmpl[name] = ts
	}
	return ts
}

// destroy destroys the Failed entry id's guest and drops the entry; when
// Destroy fails the entry stays Failed with the error, for the refill to
// retry.
func (p *Pool) destroy(ctx context.Context, id uint64) error {
	p.mu.Lock()
	e, ok := p.entries[id]
	if !ok || e.State != Failed || p.destroying[id] {
		p.mu.Unlock()
		return nil
	}
	p.destroying[id] = true
	p.mu.Unlock()

	err := p.cfg.Destroy(ctx, &e.Guest)

	p.mu.Lock()
	delete(p.destroying, id)
	if err != nil {
		p.destroyErr++
		r := p.retry[id]
		r.fails++
		r.at = p.cfg.Now().Add(p.backoff(r.fails))
		p.retry[id] = r
		err = fmt.Errorf("pool: destroy vm %d (%s): %w", e.Guest.VM, e.Guest.Name, err)
		if cur, ok := p.entries[id]; ok {
			cur.Err = err.Error()
			if cerr := p.commit(cur); cerr != nil {
				err = errors.Join(err, cerr)
			}
			e = cur
		}
		p.mu.Unlock()
		p.emit([]event{{EventDestroyFailed, e}})
		return err
	}
	p.destroys++
	delete(p.retry, id)
	ferr := p.forget(id)
	p.mu.Unlock()
	p.emit([]event{{EventDestroyed, e}})
	return ferr
}

// holder returns the entry other than slot that holds vm: any entry past
// Booting, or a Booting one whose guest was announced. The caller holds
// p.mu.
func (p *Pool) holder(vm uint32, slot uint64) (Entry, bool) {
	return p.pick(func(o Entry) bool {
		return o.ID != slot && o.Guest.VM == vm && (o.State != Booting || o.announced())
	})
}

// slotKey marks a Boot call's context with the slot it boots for.
type slotKey struct{}

type slotRef struct {
	p  *Pool
	id uint64
}

// Announce records the identity of the guest a Boot function is about to
// create (its VM number, name, handle) in the Booting entry, and persists
// it, so that a crash during the boot leaves an entry that Config.Check
// and Config.Destroy can act on. Boot functions should call it once they
// know the identity and before they create anything; if it fails they
// should not boot. Outside a Boot called by a Pool it does nothing.
func Announce(ctx context.Context, g loader.Guest) error {
	ref, ok := ctx.Value(slotKey{}).(slotRef)
	if !ok {
		return nil
	}
	return ref.p.announce(ref.id, g)
}

func (p *Pool) announce(id uint64, g loader.Guest) error {
	p.mu.Lock()
	e, ok := p.entries[id]
	if !ok || e.State != Booting {
		p.mu.Unlock()
		return fmt.Errorf("pool: announce vm %d: slot %d is not booting", g.VM, id)
	}
	if o, held := p.holder(g.VM, id); held {
		p.mu.Unlock()
		return fmt.Errorf("pool: announce vm %d: the pool already holds it (slot %d); Boot must pick a free VM number", g.VM, o.ID)
	}
	if g.Template == "" {
		g.Template = e.Template
	}
	e.Guest = g
	err := p.commit(e)
	p.mu.Unlock()
	if err != nil {
		return err
	}
	p.emit([]event{{EventAnnounced, e}})
	return nil
}

// Remove destroys the guest vm and drops its entry, whatever its state.
// Its entry is first made Failed, so that if Destroy fails or the agent
// stops, the guest is still destroyed later. Leases on it end with ErrGone.
// If the guest is already being destroyed, Remove returns at once.
func (p *Pool) Remove(ctx context.Context, vm uint32) error {
	p.mu.Lock()
	e, ok := p.pick(func(e Entry) bool { return e.State != Booting && e.Guest.VM == vm })
	if !ok {
		_, booting := p.pick(func(e Entry) bool { return e.State == Booting && e.Guest.VM == vm })
		p.mu.Unlock()
		if booting {
			return fmt.Errorf("pool: remove vm %d: it is still booting; remove it once its boot ends", vm)
		}
		return fmt.Errorf("pool: remove vm %d: %w; see List for the pool's guests", vm, ErrUnknownVM)
	}
	if e.State != Failed {
		e.State, e.Since, e.Err, e.Pending = Failed, p.cfg.Now(), "removed", false
		if err := p.commit(e); err != nil {
			p.mu.Unlock()
			return err
		}
	}
	p.mu.Unlock()
	p.emit([]event{{EventFailed, e}})
	p.wake()
	return p.destroy(ctx, e.ID)
}

// List returns the table, ordered by entry ID.
func (p *Pool) List() []Entry {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.SortedFunc(maps.Values(p.entries), func(a, b Entry) int { return cmp.Compare(a.ID, b.ID) })
}

// Stats is a summary of the pool. Counters count since Open.
type Stats struct {
	// States counts entries by state.
	States map[State]int
	// Templates summarises each template in Config or in the table.
	Templates map[string]TemplateStats
	// Boots and BootFailures count Boot calls that returned a guest and
	// that failed (a boot ended by its context is neither).
	Boots, BootFailures int
	// Destroys and DestroyFailures count Destroy calls.
	Destroys, DestroyFailures int
	// Hits counts leases by where Acquire found the guest.
	Hits map[How]int
	// Prepared and PrepareFailures count guests configured ahead of
	// demand and preparations that failed; Invalidated counts Prepared
	// guests dropped as stale (mlsgate_pool_invalidated_total).
	Prepared, PrepareFailures, Invalidated int
}

// TemplateStats is the summary of one template.
type TemplateStats struct {
	States map[State]int
	// Size is the configured number of Idle guests.
	Size                int
	Boots, BootFailures int
	// ConsecutiveFailures counts refill boot failures since the last
	// success; RetryAt is when the refill tries again (zero when it is
	// not backing off) and LastError the last boot error.
	ConsecutiveFailures int
	RetryAt             time.Time
	LastError           string
}

// Stats returns the pool's summary.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := Stats{
		States:          map[State]int{},
		Templates:       map[string]TemplateStats{},
		Boots:           p.boots,
		BootFailures:    p.bootFails,
		Destroys:        p.destroys,
		DestroyFailures: p.destroyErr,
		Hits:            maps.Clone(p.hits),
		Prepared:        p.prepared,
		PrepareFailures: p.prepareFails,
		Invalidated:     p.invalidated,
	}
	tstats := func(name string) TemplateStats {
		t, ok := s.Templates[name]
		if !ok {
			t = TemplateStats{States: map[State]int{}, Size: p.cfg.Templates[name].Size}
			if ts := p.tmpl[name]; ts != nil {
				t.Boots, t.BootFailures = ts.boots, ts.fails
				t.ConsecutiveFailures, t.LastError = ts.consecutive, ts.lastErr
				if ts.consecutive > 0 {
					t.RetryAt = ts.retryAt
				}
			}
		}
		return t
	}
	for name := range p.tmpl {
		s.Templates[name] = tstats(name)
	}
	for _, e := range p.entries {
		s.States[e.State]++
		t := tstats(e.Template)
		t.States[e.State]++
		s.Templates[e.Template] = t
	}
	return s
}

// Close closes the pool file. Guests keep running and the table stays in
// the file for the next Open. Stop Run first; boots still in flight when
// the pool closes destroy their guests, and their Booting records are
// reconciled by the next Open.
func (p *Pool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	p.signal()
	return p.st.close()
}
