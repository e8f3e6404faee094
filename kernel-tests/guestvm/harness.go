package guestvm

import (
	"context"
	"io"

	"github.com/mlsgate/mlsgate/loader/image"
)

// The image types, under the names the tests use.
type (
	Image      = image.Image
	RunOptions = image.RunOptions
	Result     = image.Result
)

// ErrMissingTools is image.ErrMissingTools: tests skip on it.
var ErrMissingTools = image.ErrMissingTools

// The test policy's contexts the in-guest tests check against.
const (
	RunnerContext = image.RunnerContext
	OutsiderType  = image.OutsiderType
)

// Prepare is image.Prepare: the cached guest image, built when missing.
func Prepare(ctx context.Context, cacheDir string, log io.Writer) (*Image, error) {
	return image.Prepare(ctx, cacheDir, log)
}

// BuildTestBinary compiles the tests of pkg into the static binary out, for
// (*Image).Run.
func BuildTestBinary(ctx context.Context, pkg, out string) error {
	return image.BuildTestBinary(ctx, pkg, out)
}

// DefaultCacheDir is image.DefaultCacheDir.
func DefaultCacheDir() string { return image.DefaultCacheDir() }
