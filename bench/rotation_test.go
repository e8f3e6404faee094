package bench

import (
	"strings"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/loader"
)

func TestFormatRotation(t *testing.T) {
	r := &RotationResult{Rotations: 100, P50: 310 * time.Millisecond, P99: 1200 * time.Millisecond, Max: 1300 * time.Millisecond, Grace: 50 * time.Millisecond,
		Sent: 9000, AtServer: 9000, Echoed: 8999, DeniedSent: 1800, Denials: map[string]int{"egress/deny_unknown_sa": 2}, Kernel: "6.1", Accel: "tcg",
		StepP50: []loader.Step{{Name: "declare", Duration: 12 * time.Millisecond}, {Name: "host_in", Duration: 3 * time.Millisecond}}}
	got := FormatRotation(r)
	for _, want := range []string{"| 100 | 310ms | 1.2s | 1.3s | 9000 | 0 | 1 | 0 | 1800 | 0 | egress/deny_unknown_sa 2 |", "50ms grace", "Median per step (each with its journal write): declare 12ms, host_in 3ms."} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q:\n%s", want, got)
		}
	}
	if r.Lost() != 1 {
		t.Errorf("lost %d, want 1", r.Lost())
	}
}
