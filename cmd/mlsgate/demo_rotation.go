package main

import (
	"context"
	"fmt"
	"github.com/mlsgate/mlsgate/agent/xfrm"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/mlsgate/mlsgate/loader"
)

// The demo's SA rotation: the loader rotates the browser guest's SAs once,
// make-before-break, and the demo reads a page through the new SAs.

// demoRotation is the demo loader's rotation: by hand only (no lifetime),
// with a short grace window.
func demoRotation() *loader.RotationConfig {
	rc := loader.DefaultRotationConfig()
	rc.Lifetime, rc.Jitter, rc.Grace = 0, 0, 200*time.Millisecond
	return &rc
}

// rotateOnce rotates g's SAs and prints one line with the timing.
// host lists the host's SAs, to show how the successors were installed.
func rotateOnce(ctx context.Context, out io.Writer, l *loader.Loader, g *loader.Guest, host func() ([]xfrm.State, error)) error {
	res, err := l.RotateGuests(ctx, []string{g.Name}, false, "demo")
	if err != nil {
		return fmt.Errorf("rotate the SAs of %s: %w", g.Name, err)
	}
	r := res[0]
	esn := "the host's SAs unreadable"
	if states, err := host(); err == nil {
		n, on := 0, 0
		for _, s := range states {
			if slices.Contains(r.NewSPIs, s.SPI) {
				n++
				if s.ESN {
					on++
				}
			}
		}
		esn = fmt.Sprintf("ESN on %d of the host's %d new SAs", on, n)
	}
	fmt.Fprintf(out, "   SA rotation of %s: %s in %v from trigger to old states deleted (grace %v), %d SAs, SPIs %#x… → %#x…, each with its predecessor's label; %s\n      steps: %s\n",
		g.Name, r.Result, r.Took.Round(time.Millisecond), demoRotation().Grace, len(r.NewSPIs), r.OldSPIs[0], r.NewSPIs[0], esn, rotationSteps(r.Steps))
	return nil
}

// rotationSteps is a rotation's step timings on one line.
func rotationSteps(steps []loader.Step) string {
	if len(steps) == 0 {
		return "-"
	}
	parts := make([]string, len(steps))
	for i, st := range steps {
		parts[i] = fmt.Sprintf("%s %v", st.Name, st.Duration.Round(100*time.Microsecond))
	}
	return strings.Join(parts, ", ")
}
