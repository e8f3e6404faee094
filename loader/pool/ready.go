package pool

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/loader"
)

// readyKey names a ready want without its fingerprint and count: one
// application at one range from one template.
type readyKey struct {
	app      string
	rng      label.Bounds
	template string
}

func keyOf(w loader.ReadyWant) readyKey { return readyKey{w.App, w.Range, w.Template} }

// readyState is the refill's memory of one ready want.
type readyState struct {
	preparing   bool
	consecutive int
	retryAt     time.Time
	lastErr     string
}

// checkWant refuses a want the pool cannot act on.
func (p *Pool) checkWant(w loader.ReadyWant) error {
	switch {
	case w.App == "":
		return errors.New("a ready want without an application; name the application")
	case w.N < 0:
		return fmt.Errorf("%s: %d ready guests; want 0 or more", w.App, w.N)
	case w.Fingerprint == "":
		return fmt.Errorf("%s: a ready want without a fingerprint; ready guests could never be told stale", w.App)
	}
	if _, ok := p.cfg.Templates[w.Template]; !ok {
		return fmt.Errorf("%s: %w %q; add it to Config.Templates", w.App, ErrUnknownTemplate, w.Template)
	}
	if err := w.Range.Validate(); err != nil {
		return fmt.Errorf("%s: range %s: %w", w.App, w.Range, err)
	}
	return nil
}

// readyPass keeps the guests Config.Ready asks for: it invalidates the
// Prepared guests no want accounts for (built under an older fingerprint,
// of an application that no longer asks, or beyond its count), destroys
// them, and prepares guests until each want has its count.
func (p *Pool) readyPass(ctx context.Context) error {
	if p.cfg.Ready == nil {
		return nil
	}
	wants, err := p.cfg.Ready(ctx)
	if err != nil {
		return fmt.Errorf("pool: ready guests: %w", err)
	}
	var errs []error
	byKey := map[readyKey]loader.ReadyWant{}
	for _, w := range wants {
		if err := p.checkWant(w); err != nil {
			errs = append(errs, fmt.Errorf("pool: ready guests: %w", err))
			continue
		}
		if _, dup := byKey[keyOf(w)]; dup {
			errs = append(errs, fmt.Errorf("pool: ready guests: %s at %s from %s is asked for twice", w.App, w.Range, w.Template))
			continue
		}
		byKey[keyOf(w)] = w
	}

	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	now := p.cfg.Now()
	kept := map[readyKey]int{}
	var (
		stale []uint64
		evs   []event
	)
	rows := slices.SortedFunc(maps.Values(p.entries), func(a, b Entry) int { return cmp.Compare(a.ID, b.ID) })
	for _, e := range rows {
		// A guest still being prepared is judged once it is done.
		if e.State != Prepared || e.Pending {
			continue
		}
		k := readyKey{e.App, e.Range, e.Template}
		w, ok := byKey[k]
		var why string
		switch {
		case !ok:
			why = fmt.Sprintf("%s no longer asks for ready guests at %s", e.App, e.Range)
		case w.Fingerprint != e.Fingerprint:
			why = fmt.Sprintf("built for %s under fingerprint %s; the template, CA or application changed (now %s)", e.App, e.Fingerprint, w.Fingerprint)
		case kept[k] >= w.N:
			why = fmt.Sprintf("%s asks for only %d ready guests", e.App, w.N)
		default:
			kept[k]++
			continue
		}
		e.State, e.Since, e.Err = Failed, now, "invalidated: "+why
		if err := p.commit(e); err != nil {
			errs = append(errs, err)
			continue
		}
		p.invalidated++
		stale = append(stale, e.ID)
		evs = append(evs, event{EventInvalidated, e}, event{EventFailed, e})
	}
	p.mu.Unlock()
	p.emit(evs)
	for _, id := range stale {
		if err := p.destroy(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}

	keys := slices.SortedFunc(maps.Keys(byKey), func(a, b readyKey) int {
		return cmp.Or(cmp.Compare(a.app, b.app), cmp.Compare(a.template, b.template), cmp.Compare(a.rng.String(), b.rng.String()))
	})
	for _, k := range keys {
		if ctx.Err() != nil {
			break
		}
		if err := p.prepareFor(ctx, byKey[k]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// prepareFor prepares guests for w until it has w.N of them (counting
// those being prepared), a preparation fails (then the want backs off
// like a template's boots), or ctx ends. One preparation runs per want at
// a time; it takes an Idle guest of the template, else boots one.
func (p *Pool) prepareFor(ctx context.Context, w loader.ReadyWant) error {
	k := keyOf(w)
	p.mu.Lock()
	rs := p.ready[k]
	if rs == nil {
		rs = &readyState{}
		p.ready[k] = rs
	}
	if rs.preparing {
		p.mu.Unlock()
		return nil
	}
	rs.preparing = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		rs.preparing = false
		p.mu.Unlock()
	}()

	for range w.N {
		if ctx.Err() != nil {
			return nil
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return ErrClosed
		}
		have := 0
		for _, e := range p.entries {
			if (e.State == Prepared || e.State == Booting) && e.Fingerprint == w.Fingerprint && e.App == w.App && e.Range == w.Range && e.Template == w.Template {
				have++
			}
		}
		now := p.cfg.Now()
		if have >= w.N || now.Before(rs.retryAt) {
			p.mu.Unlock()
			return nil
		}
		var g loader.Guest
		var id uint64
		if e, ok := p.pick(func(e Entry) bool { return e.State == Idle && e.Template == w.Template }); ok {
			e.State, e.Since, e.Pending = Prepared, now, true
			e.App, e.Range, e.Fingerprint = w.App, w.Range, w.Fingerprint
			if err := p.commit(e); err != nil {
				p.mu.Unlock()
				return err
			}
			p.mu.Unlock()
			p.wake() // the idle set is one short
			g, id = e.Guest, e.ID
		} else {
			slot, err := p.insert(Entry{
				State: Booting, App: w.App, Range: w.Range, Template: w.Template,
				Fingerprint: w.Fingerprint, Guest: guestOf(w.Template), Since: now,
			})
			p.mu.Unlock()
			if err != nil {
				return err
			}
			p.emit([]event{{EventBooting, slot}})
			bg, err := p.boot(ctx, slot.ID, w.Template)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return p.prepareFailed(rs, w, 0, err)
			}
			p.mu.Lock()
			e := p.entries[slot.ID]
			e.Guest = *bg
			e.State, e.Since, e.Pending = Prepared, p.cfg.Now(), true
			if err := p.commit(e); err != nil {
				p.forget(e.ID)
				p.mu.Unlock()
				dctx, cancel := p.opCtx(ctx)
				derr := p.cfg.Destroy(dctx, bg)
				cancel()
				return errors.Join(fmt.Errorf("pool: ready guest for %s: record booted vm %d: %w", w.App, bg.VM, err), derr)
			}
			p.mu.Unlock()
			p.emit([]event{{EventBooted, e}})
			g, id = e.Guest, e.ID
		}

		err := p.cfg.Prepare(ctx, &g, w)
		p.mu.Lock()
		e, ok := p.entries[id]
		if err == nil && ok && e.State == Prepared {
			e.Pending, e.Since = false, p.cfg.Now()
			if cerr := p.commit(e); cerr != nil {
				p.mu.Unlock()
				return cerr
			}
			p.prepared++
			rs.consecutive, rs.retryAt, rs.lastErr = 0, time.Time{}, ""
			p.mu.Unlock()
			p.emit([]event{{EventPrepared, e}})
			continue
		}
		p.mu.Unlock()
		if err == nil {
			err = errors.New("the guest was removed while being prepared")
		}
		return p.prepareFailed(rs, w, id, err)
	}
	return nil
}

// prepareFailed records a failed preparation of slot id (0: the boot
// failed and the boot already cleaned up), destroys the guest, since it
// may hold part of the application's policy, and backs the want off.
func (p *Pool) prepareFailed(rs *readyState, w loader.ReadyWant, id uint64, cause error) error {
	p.mu.Lock()
	p.prepareFails++
	rs.consecutive++
	wait := p.backoff(rs.consecutive)
	rs.retryAt = p.cfg.Now().Add(wait)
	rs.lastErr = cause.Error()
	var evs []event
	var errs []error
	if e, ok := p.entries[id]; ok && id != 0 && e.State != Failed {
		e.State, e.Since, e.Pending = Failed, p.cfg.Now(), false
		e.Err = fmt.Sprintf("preparing it for %s failed: %v", w.App, cause)
		if err := p.commit(e); err != nil {
			errs = append(errs, err)
		}
		evs = append(evs, event{EventFailed, e})
	}
	p.mu.Unlock()
	p.emit(evs)
	if id != 0 {
		ctx, cancel := p.opCtx(nil)
		errs = append(errs, p.destroy(ctx, id))
		cancel()
	}
	return errors.Join(append([]error{fmt.Errorf("pool: ready guest for %s at %s: %w (retrying in %v)", w.App, w.Range, cause, wait)}, errs...)...)
}
