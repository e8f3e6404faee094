package updatedaemon

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/mlsgate/mlsgate/policystore"
)

// warmBundle is the guest part of a bundle of the analyst example, with
// SA keys from a fixed seed (they never reach a kernel: WarmPush only
// decodes and checks it). TestWarmBundle regenerates it with -update-warm.
//
//go:embed testdata/warm-bundle.json
var warmBundle []byte

// WarmPush runs a push's decode, validation, mapper policy parse and state
// encoding once on a throwaway bundle, changing nothing. A daemon's first
// push pays for each code path's first run (under emulation the
// translation of its code, and the JSON decoder's and the regexp
// compiler's first use), which in a QEMU TCG guest made an idle guest's
// first decode and validation tens of milliseconds each instead of a
// few; run before serving, it is paid before the guest waits in the pool.
func WarmPush() (time.Duration, error) {
	t0 := time.Now()
	var b policystore.Bundle
	dec := json.NewDecoder(bytes.NewReader(warmBundle))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return time.Since(t0), fmt.Errorf("warm-up bundle: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return time.Since(t0), fmt.Errorf("warm-up bundle: data follows the bundle")
	}
	if err := checkHeader(&b); err != nil {
		return time.Since(t0), fmt.Errorf("warm-up bundle: %w", err)
	}
	digest, err := Digest(&b)
	if err != nil {
		return time.Since(t0), fmt.Errorf("warm-up bundle: %w", err)
	}
	if err := checkContent(&b); err != nil {
		return time.Since(t0), fmt.Errorf("warm-up bundle: %w", err)
	}
	rep := &Report{Guest: b.Guest, Application: b.Application, Version: b.Version, Digest: digest, AppliedAt: time.Now(),
		Parts: []Part{{Name: "decode"}}}
	if _, err := json.Marshal(&persisted{Format: stateFormat, Guest: b.Guest, Application: b.Application, Version: b.Version,
		Digest: digest, AppliedAt: rep.AppliedAt, Report: rep, Bundle: withoutCertKeys(&b)}); err != nil {
		return time.Since(t0), fmt.Errorf("warm-up state: %w", err)
	}
	return time.Since(t0), nil
}
