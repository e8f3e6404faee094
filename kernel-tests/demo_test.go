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
	t.Run("analyst", func(t *testing.T) { checkDemoAnalyst(t, bin) })
	t.Run("analyst-cats", func(t *testing.T) { checkDemoCategories(t, bin) })
}

// runDemo runs the demo on an application set and returns its flow table.
func runDemo(t *testing.T, bin, apps string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "demo", "--apps", apps).CombinedOutput()
	text := string(out)
	if err != nil {
		t.Fatalf("demo --apps %s: %v\n%s", apps, err, out)
	}
	i := strings.Index(text, "Flows")
	if i < 0 {
		t.Fatalf("demo --apps %s printed no flow table:\n%s", apps, text)
	}
	t.Logf("\n%s", text[i:])
	return text[i:]
}

func checkDemoAnalyst(t *testing.T, bin string) {
	table := runDemo(t, bin, "../examples/analyst")
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

// checkDemoCategories runs the demo on applications whose labels carry
// category sets: the reroute of ws1's data (s10:c1.c5) through ws1's SA
// must reach the fast path and be refused there, not die in the guest's
// own XFRM for want of an SA at a label the application never uses.
func checkDemoCategories(t *testing.T, bin string) {
	table := runDemo(t, bin, "../examples/analyst-cats")
	for _, w := range []struct{ flow, result, by string }{
		{"read secret profile", "delivered", "fast path from guest allow_labeled"},
		{"reroute secret data through ws1's SA", "refused", "fast path from guest deny_peer_range"},
	} {
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(w.flow) + `.*\s` + w.result + `\s+.*` + regexp.QuoteMeta(w.by))
		if !re.MatchString(table) {
			t.Errorf("flow %q: want %s by %s", w.flow, w.result, w.by)
		}
	}
}
