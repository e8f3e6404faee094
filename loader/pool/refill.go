package pool

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Refill runs one refill pass and returns when it is done: it destroys the
// Failed guests (one whose destroy failed only once its backoff ended:
// BackoffBase·2^(n-1) after n failures in a row, at most BackoffMax), then boots Idle guests until each template has Size of
// them (counting boots in flight), one boot at a time per template and at
// most Config.Parallel templates at once. A template whose boots failed is
// skipped until its backoff ends; a pass stops booting for a template at
// its first failure. Last, with Config.Ready set, it replaces stale ready
// guests and prepares ready guests until each application has the number
// it asks for (see readyPass). The error joins what failed in the pass.
func (p *Pool) Refill(ctx context.Context) error {
	var errs []error
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	var failed []uint64
	now := p.cfg.Now()
	for _, e := range p.entries {
		if r, ok := p.retry[e.ID]; ok && now.Before(r.at) {
			continue
		}
		if e.State == Failed {
			failed = append(failed, e.ID)
		}
	}
	names := make([]string, 0, len(p.cfg.Templates))
	for name := range p.cfg.Templates {
		names = append(names, name)
	}
	p.mu.Unlock()
	slices.Sort(failed)
	slices.Sort(names)

	for _, id := range failed {
		if ctx.Err() != nil {
			break
		}
		if err := p.destroy(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}

	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		sem = make(chan struct{}, p.cfg.Parallel)
	)
	for _, name := range names {
		wg.Go(func() {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-sem }()
			if err := p.fill(ctx, name); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if ctx.Err() == nil {
		if err := p.readyPass(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// fill boots Idle guests of one template until it has Size of them, or a
// boot fails, or ctx ends. Only one fill runs per template at a time.
func (p *Pool) fill(ctx context.Context, name string) error {
	p.mu.Lock()
	ts := p.tmplFor(name)
	if ts.filling {
		p.mu.Unlock()
		return nil
	}
	ts.filling = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		ts.filling = false
		p.mu.Unlock()
	}()

	size := p.cfg.Templates[name].Size
	for ctx.Err() == nil {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return ErrClosed
		}
		have := 0
		for _, e := range p.entries {
			if e.Template == name && (e.State == Idle || e.State == Booting && e.App == "") {
				have++
			}
		}
		now := p.cfg.Now()
		if have >= size || now.Before(ts.retryAt) {
			p.mu.Unlock()
			return nil
		}
		slot, err := p.insert(Entry{
			State:    Booting,
			Template: name,
			Since:    now,
			Guest:    guestOf(name),
		})
		p.mu.Unlock()
		if err != nil {
			return err
		}
		p.emit([]event{{EventBooting, slot}})

		g, err := p.boot(ctx, slot.ID, name)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			p.mu.Lock()
			ts.consecutive++
			wait := p.backoff(ts.consecutive)
			ts.retryAt = p.cfg.Now().Add(wait)
			p.mu.Unlock()
			return fmt.Errorf("pool: refill template %s: %w (retrying in %v)", name, err, wait)
		}

		// A boot that succeeded is kept even if ctx ended meanwhile: the
		// guest is sound and the table survives the stop.
		p.mu.Lock()
		ts.consecutive, ts.retryAt = 0, time.Time{}
		e := p.entries[slot.ID]
		e.Guest = *g
		e.State, e.Since = Idle, p.cfg.Now()
		if err := p.commit(e); err != nil {
			p.forget(e.ID)
			p.mu.Unlock()
			dctx, cancel := p.opCtx(ctx)
			derr := p.cfg.Destroy(dctx, g)
			cancel()
			if derr != nil {
				err = errors.Join(err, fmt.Errorf("destroy vm %d (%s): %w", g.VM, g.Name, derr))
			}
			return fmt.Errorf("pool: refill template %s: record booted vm %d: %w", name, g.VM, err)
		}
		p.mu.Unlock()
		p.emit([]event{{EventBooted, e}})
	}
	return nil
}

// backoff is the wait after n consecutive boot failures.
func (p *Pool) backoff(n int) time.Duration {
	d := p.cfg.BackoffBase
	for i := 1; i < n && d < p.cfg.BackoffMax; i++ {
		d *= 2
	}
	return min(d, p.cfg.BackoffMax)
}

// Run keeps the pool filled until ctx ends: a Refill pass at once, then
// whenever a guest leaves the idle set, a configuration fails, a template's
// backoff ends, or Config.Interval passes. Boots in flight when ctx ends
// are cancelled through their context and waited for: a boot that still
// succeeds is kept as Idle, one that fails is dropped (or destroyed, when
// its guest was announced). Run returns nil when ctx ends and ErrClosed if
// the pool is closed under it; the errors of single passes are visible in
// Stats and through Config.Progress, not returned.
func (p *Pool) Run(ctx context.Context) error {
	for {
		if err := p.Refill(ctx); errors.Is(err, ErrClosed) {
			return ErrClosed
		}
		wait := p.cfg.Interval
		p.mu.Lock()
		now := p.cfg.Now()
		for _, ts := range p.tmpl {
			if ts.consecutive > 0 {
				wait = min(wait, ts.retryAt.Sub(now))
			}
		}
		for _, r := range p.retry {
			wait = min(wait, r.at.Sub(now))
		}
		for _, rs := range p.ready {
			if rs.consecutive > 0 {
				wait = min(wait, rs.retryAt.Sub(now))
			}
		}
		p.mu.Unlock()
		// A clock that stands still (in tests) must not make Run spin.
		wait = max(wait, time.Millisecond)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-p.kick:
		case <-t.C:
		}
		t.Stop()
	}
}
