package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestGuestBinaryFromOwnTree: the guest's test binary is built from the
// tree this package was compiled from, whatever the working directory
// holds (here: no module at all, where `go test -c` alone fails).
func TestGuestBinaryFromOwnTree(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	out := filepath.Join(t.TempDir(), "cpio.test")
	t.Chdir(t.TempDir())
	if err := buildGuestBinary(t.Context(), "github.com/mlsgate/mlsgate/internal/cpio", out); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(out); err != nil || fi.Size() == 0 {
		t.Fatalf("no binary: %v", err)
	}
}
