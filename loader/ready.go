package loader

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/mlsgate/mlsgate/label"
	"github.com/mlsgate/mlsgate/policystore"
)

// ReadyWant asks the pool to keep N guests of Template configured for App
// at Range ahead of demand (the application's `pool: {ready: N}`).
// Fingerprint names everything the configuration was built from (the
// application's definition, the templates, the CA): a ready guest built
// under another fingerprint is stale, and the pool replaces it.
type ReadyWant struct {
	App         string
	Range       label.Bounds
	Template    string
	N           int
	Fingerprint string
}

type readyKey struct{}

// WithReadyFingerprint marks ctx for Acquire: a guest kept ready for the
// application may be handed out, but only one built under fingerprint fp
// (the current one). Without the mark Acquire hands out no ready guest.
func WithReadyFingerprint(ctx context.Context, fp string) context.Context {
	return context.WithValue(ctx, readyKey{}, fp)
}

// ReadyFingerprint returns the fingerprint ctx was marked with.
func ReadyFingerprint(ctx context.Context) (string, bool) {
	fp, ok := ctx.Value(readyKey{}).(string)
	return fp, ok && fp != ""
}

// Fingerprint names everything a configuration of app is built from: the
// application's definition, the system policy it is checked against, and
// Config.ReadyBasis (CA, templates, build). Two configurations with one
// fingerprint differ only in their keys, certificates and SPIs.
func (l *Loader) Fingerprint(app *policystore.Application) string {
	h := sha256.New()
	enc := json.NewEncoder(h)
	// Encoding plain data cannot fail; a failure would only make every
	// fingerprint differ, which is the safe side.
	_ = enc.Encode(app)
	_ = enc.Encode(l.cfg.System)
	_ = enc.Encode(l.cfg.ReadyBasis)
	return hex.EncodeToString(h.Sum(nil)[:12])
}

// ReadyWants lists the ready guests the applications ask for (their
// `pool: {ready: N}`), each at the application's range from the loader's
// template, under its current fingerprint. Applications cached from an
// authority and expired ask for none: they are fetched again on their
// next load.
func (l *Loader) ReadyWants(context.Context) ([]ReadyWant, error) {
	var out []ReadyWant
	now := l.now()
	for _, e := range l.catalog.Store.Entries() {
		if e.App == nil || e.App.Pool.Ready <= 0 || e.Expired(now) {
			continue
		}
		out = append(out, ReadyWant{App: e.App.Name, Range: e.App.Guest, Template: l.cfg.Template, N: e.App.Pool.Ready, Fingerprint: l.Fingerprint(e.App)})
	}
	return out, nil
}

// Prepare configures g, a guest the pool took for w, ahead of demand:
// bundle with the guest's own SA keys, compliance, push,
// host policy, exactly as a load would. It fails if the application
// changed since w was made. On failure it undoes its host-side work; the
// pool then destroys the guest. The steps are returned for reports.
func (l *Loader) Prepare(ctx context.Context, g *Guest, w ReadyWant) ([]Step, error) {
	e, ok := l.catalog.Store.Get(w.App)
	if !ok || e.App == nil {
		return nil, fmt.Errorf("prepare %s for %s: the application is gone", g.Name, w.App)
	}
	app := e.App
	if fp := l.Fingerprint(app); fp != w.Fingerprint || app.Guest != w.Range {
		return nil, fmt.Errorf("prepare %s for %s: the application changed (fingerprint %s, asked for %s)", g.Name, w.App, fp, w.Fingerprint)
	}
	var (
		steps []Step
		undo  []func(context.Context) error
	)
	step := func(name string, fn func(ctx context.Context) error) error {
		sctx, cancel := context.WithTimeout(ctx, l.cfg.StepTimeout)
		defer cancel()
		t0 := l.now()
		err := fn(sctx)
		steps = append(steps, Step{Name: name, Duration: l.now().Sub(t0)})
		if err != nil {
			return &StepError{Step: name, Err: err}
		}
		return nil
	}
	b, err := l.configure(app, g, step, &steps, &undo)
	if err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.cfg.StepTimeout)
		defer cancel()
		var rb []error
		for i := len(undo) - 1; i >= 0; i-- {
			rb = append(rb, undo[i](rctx))
		}
		if rerr := errors.Join(rb...); rerr != nil {
			err = fmt.Errorf("%w; rollback incomplete: %v", err, rerr)
		}
		return steps, fmt.Errorf("prepare %s for %s: %w", g.Name, w.App, err)
	}
	l.rememberBundle(g, b) // in force from now on: rotated like a served guest's
	return steps, nil
}
