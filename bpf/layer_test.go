package bpf

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestKernelLayerImportsNothingAbove: bpf -> verdict -> label, never
// upward. The kernel layer and the reference decision must not depend on
// the daemons (agent, loader, store, mapper), the binary or the harness.
func TestKernelLayerImportsNothingAbove(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(goTool, "list", "-deps", "./bpf", "./verdict", "./label")
	cmd.Dir = ".."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	const mod = "github.com/mlsgate/mlsgate/"
	allowed := map[string]bool{mod + "bpf": true, mod + "verdict": true, mod + "label": true}
	var bad []string
	seen := false
	for _, p := range strings.Fields(string(out)) {
		if !strings.HasPrefix(p, mod) {
			continue
		}
		seen = true
		if !allowed[p] {
			bad = append(bad, p)
		}
	}
	if !seen {
		t.Fatalf("go list shows none of the project's packages; the check is not looking at the project:\n%.2000s", out)
	}
	if len(bad) > 0 {
		t.Errorf("bpf, verdict or label import a higher layer: %s", strings.Join(bad, ", "))
	}
}
