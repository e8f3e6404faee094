package main

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestNothingShippedImportsKernelTests: the binary, the bench, the loader
// and the agent (with their tests) must not depend on the test harness
// under kernel-tests; the guest images they boot come from loader/image.
func TestNothingShippedImportsKernelTests(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(goTool, "list", "-deps", "-test", "./cmd/mlsgate", "./bench", "./loader/...", "./agent/...")
	cmd.Dir = "../.."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	var bad []string
	for _, p := range strings.Fields(string(out)) {
		if strings.Contains(p, "/kernel-tests") {
			bad = append(bad, p)
		}
	}
	if len(bad) > 0 {
		t.Errorf("shipped packages depend on the test harness: %s; move what they need into a product package (the guest image is loader/image)", strings.Join(bad, ", "))
	}
	if !strings.Contains(string(out), "github.com/mlsgate/mlsgate/loader/image") {
		t.Errorf("go list shows no loader/image among the dependencies; the check is not looking at the project:\n%.2000s", out)
	}
}
