package loader

import (
	"context"

	"github.com/mlsgate/mlsgate/label"
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
