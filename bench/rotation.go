package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/mlsgate/mlsgate/loader"
	"github.com/mlsgate/mlsgate/loader/image"
)

// The rotation benchmark: 100 make-before-break rotations of a guest's
// labeled SAs under continuous traffic between the guest and a server
// beyond the host, in Debian's kernel under QEMU. It runs the in-guest
// rotation test (kernel-tests/inguest, TestGuestSARotation) in its
// measuring mode: the loader, the update daemon and the agent are
// processes of their own, the traffic sequence-numbered datagrams counted
// at both ends. Building that test binary needs this source tree (as the
// xfrm benchmark's does).

// rotationPkg is the in-guest test package the benchmark runs.
const rotationPkg = "github.com/mlsgate/mlsgate/kernel-tests/inguest"

// RotationConfig sets the rotation benchmark.
type RotationConfig struct {
	// GuestCache is the guest image cache; "" is image.DefaultCacheDir.
	GuestCache string
	Progress   func(format string, args ...any)
}

// RotationResult is what the in-guest test measured; the test writes this
// type itself (kernel-tests/inguest), and the bench adds Kernel, Accel and
// Hardware.
type RotationResult struct {
	Rotations int `json:"rotations"`
	// P50, P99, Max: from a rotation's trigger to its old states deleted
	// (the grace window included).
	P50   time.Duration `json:"p50_ns"`
	P99   time.Duration `json:"p99_ns"`
	Max   time.Duration `json:"max_ns"`
	Grace time.Duration `json:"grace_ns"`
	// The s4 flow: datagrams the guest sent, that reached the server, and
	// that came back; Mislabeled arrived under an SA of another context.
	Sent       int `json:"sent"`
	AtServer   int `json:"at_server"`
	Echoed     int `json:"echoed"`
	Mislabeled int `json:"mislabeled"`
	// The s12 flow (outside the guest's range): sent, and arrived.
	DeniedSent    int `json:"denied_sent"`
	DeniedArrived int `json:"denied_arrived"`
	// The fast path's counters over the run.
	AllowIn   int            `json:"allow_labeled_ingress"`
	AllowOut  int            `json:"allow_labeled_egress"`
	DenyRange int            `json:"deny_label_range"`
	Denials   map[string]int `json:"other_denials"`
	// StepP50 is each rotation step's median (loader.RotationSteps order;
	// a step's journal write included).
	StepP50  []loader.Step `json:"step_p50"`
	Kernel   string        `json:"kernel"`
	Accel    string        `json:"accel"`
	Hardware string        `json:"hardware"`
}

// Lost is the datagrams of the s4 flow lost either way.
func (r *RotationResult) Lost() int { return r.Sent - r.Echoed }

// MeasureRotation boots the guest kernel with the in-guest test binary and
// runs TestGuestSARotation's 100 rotations. A run that lost a datagram,
// let one through under another label or denied one it should not have
// fails the test in the guest and is returned as an error with the
// measurements. Root only (QEMU, the guest image cache).
func MeasureRotation(ctx context.Context, cfg RotationConfig) (*RotationResult, error) {
	progress := cfg.Progress
	if progress == nil {
		progress = func(string, ...any) {}
	}
	img, err := image.Prepare(ctx, cfg.GuestCache, progressWriter(progress, "rotation: image: "))
	if err != nil {
		return nil, fmt.Errorf("guest image for the rotation measurement: %w", err)
	}
	share, err := os.MkdirTemp("", "mlsgate-rotation-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(share)
	bin := filepath.Join(share, "inguest.test")
	progress("rotation: building the in-guest test binary")
	if err := buildGuestBinary(ctx, rotationPkg, bin); err != nil {
		return nil, fmt.Errorf("build %s (the rotation benchmark needs the source tree): %w", rotationPkg, err)
	}
	const memory = 1024
	res, err := img.Run(ctx, image.RunOptions{
		Binary: bin, Args: []string{"-test.run", "^TestGuestSARotation$", "-test.v", "-test.count", "1", "-test.timeout", "15m"},
		Share: share, Memory: memory, Timeout: 20 * time.Minute,
		Env:      map[string]string{"MLSGATE_ROTATION_BENCH": "/mnt/rotation.json"},
		Progress: progressWriter(progress, "rotation (in guest): "),
	})
	if err != nil {
		return nil, fmt.Errorf("the rotation measurement in the guest kernel: %w", err)
	}
	var r RotationResult
	out, rerr := os.ReadFile(filepath.Join(share, "rotation.json"))
	if rerr == nil {
		rerr = json.Unmarshal(out, &r)
	}
	r.Kernel, r.Accel = img.KernelRelease, res.Accel
	r.Hardware = fmt.Sprintf("%d host cores; one QEMU %s VM, 1 vCPU, %d MiB%s", runtime.NumCPU(), strings.ToUpper(res.Accel), memory, noKVM(res.Accel))
	switch {
	case rerr != nil:
		return nil, fmt.Errorf("the guest wrote no rotation result (%v); test output:\n%s", rerr, tail(res.Output, 3000))
	case res.ExitCode != 0:
		return &r, fmt.Errorf("the rotation test failed in the guest kernel (exit %d): lost %d, mislabeled %d, other denials %v:\n%s", res.ExitCode, r.Lost(), r.Mislabeled, r.Denials, tail(res.Output, 3000))
	}
	return &r, nil
}

// FormatRotation is the rotation table.
func FormatRotation(r *RotationResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nSA rotation in the guest kernel, under QEMU %s (Debian's kernel %s; %s): %d make-before-break rotations of a guest's SAs at two labels (s4 within its range, s12 outside it) by a loader process, the guest's end applied by the update daemon process, while the guest sends sequence-numbered datagrams to a server beyond the host (s4 every 2 ms, echoed; s12 every 10 ms). Latency: from a rotation's trigger to its old states deleted, with a %v grace window.\n\n",
		strings.ToUpper(r.Accel), r.Kernel, r.Hardware, r.Rotations, r.Grace)
	b.WriteString("| rotations | p50 | p99 | max | s4 sent | lost guest→server | lost server→guest | under another label | s12 sent | s12 delivered | other denials |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	var den []string
	for k, v := range r.Denials {
		den = append(den, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(den)
	if len(den) == 0 {
		den = []string{"0"}
	}
	fmt.Fprintf(&b, "| %d | %v | %v | %v | %d | %d | %d | %d | %d | %d | %s |\n", r.Rotations,
		r.P50.Round(time.Millisecond), r.P99.Round(time.Millisecond), r.Max.Round(time.Millisecond),
		r.Sent, r.Sent-r.AtServer, r.AtServer-r.Echoed, r.Mislabeled, r.DeniedSent, r.DeniedArrived, strings.Join(den, ", "))
	if len(r.StepP50) > 0 {
		var parts []string
		for _, st := range r.StepP50 {
			parts = append(parts, fmt.Sprintf("%s %v", st.Name, st.Duration.Round(100*time.Microsecond)))
		}
		fmt.Fprintf(&b, "\nMedian per step (each with its journal write): %s.\n", strings.Join(parts, ", "))
	}
	fmt.Fprintf(&b, "\nThe fast path counted allow_labeled %d in and %d out, deny_label_range %d. Emulated, on a loaded host: the latency is an upper bound; packets lost must be 0.\n",
		r.AllowIn, r.AllowOut, r.DenyRange)
	return b.String()
}
