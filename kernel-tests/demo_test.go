package kerneltests

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestPrivilegedDemo runs `mlsgate demo` as `make demo` does (in the
// Debian guest kernel when this one lacks ESP or SELinux) and checks the
// verdict and the enforcer of every flow against the paper's section
// 5.3.1: secret and open sources readable by the analyst's guest, secret
// data never reaching the open server, low-integrity content refused where
// secret data is handled and given a guest of its own.
func TestPrivilegedDemo(t *testing.T) {
	requirePrivileged(t)
	if testing.Short() {
		t.Skip("boots a QEMU guest; run without -short")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 missing: make deps-guest")
	}
	bin := filepath.Join(t.TempDir(), "mlsgate")
	build := exec.Command("go", "build", "-o", bin, "github.com/mlsgate/mlsgate/cmd/mlsgate")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "demo", "--apps", "../examples/analyst")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	text := string(out)
	t.Logf("\n%s", text[strings.Index(text, "Flows"):])
	want := []struct{ flow, result, by string }{
		{"read secret profile", "delivered", "fast path from guest allow_labeled"},
		{"read secret report", "delivered", "fast path to guest allow_labeled"},
		{"read open source", "delivered", "fast path to guest allow_labeled"},
		{"send secret data to open server", "refused", "guest XFRM"},
		{"send in clear, own IPsec policies deleted", "refused", "fast path from guest deny_unlabeled"},
		{"reroute secret data through ws1's SA", "refused", "fast path from guest deny_peer_range"},
		{"read untrusted feed ", "refused", "guest policy"},
		{"forge ESP on the analyst guest's SA", "refused", "fast path from guest deny_foreign_sa"},
		{"osint guest asks VMLoad for the analyst application", "refused", "loader"},
	}
	table := text[strings.Index(text, "Flows"):]
	for _, w := range want {
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(w.flow) + `.*\s` + w.result + `\s+.*` + regexp.QuoteMeta(w.by))
		if !re.MatchString(table) {
			t.Errorf("flow %q: want %s by %s", w.flow, w.result, w.by)
		}
	}
	// The osint guest, from the pool, reads the feed.
	if !regexp.MustCompile(`(?m)^read untrusted feed\s+vm\d+ \(osint\).*delivered`).MatchString(table) {
		t.Errorf("the osint guest did not read the feed")
	}
	if !strings.Contains(table, " idle ") || !strings.Contains(table, " boot ") {
		t.Errorf("timings lack a cold boot and a pool hit")
	}
}
