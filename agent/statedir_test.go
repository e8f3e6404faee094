package agent

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNewRefusesPlantedStateDir plays a local user who writes the agent's
// desired state before it starts (a guest declared with audit and
// allow_unlabeled): a state directory others can write, or a desired.json
// that is a symlink or writable by others, is refused, not enforced.
func TestNewRefusesPlantedStateDir(t *testing.T) {
	planted := []byte(`{"guests":[{"interface":"vif7.0","vm":7,"app":1,"range":"s0-s15/i0-i15","audit":true,"allow_unlabeled":true}]}`)
	cases := map[string]struct {
		plant func(t *testing.T, dir, elsewhere string)
		want  string
	}{
		"world-writable state directory": {
			plant: func(t *testing.T, dir, _ string) {
				os.Mkdir(dir, 0o700)
				os.Chmod(dir, 0o777)
				os.WriteFile(filepath.Join(dir, desiredFile), planted, 0o600)
			},
			want: "mode",
		},
		"desired.json is a symlink": {
			plant: func(t *testing.T, dir, elsewhere string) {
				os.Mkdir(dir, 0o700)
				os.WriteFile(filepath.Join(elsewhere, "d.json"), planted, 0o666)
				os.Symlink(filepath.Join(elsewhere, "d.json"), filepath.Join(dir, desiredFile))
			},
			want: desiredFile,
		},
		"desired.json writable by others": {
			plant: func(t *testing.T, dir, _ string) {
				os.Mkdir(dir, 0o700)
				os.WriteFile(filepath.Join(dir, desiredFile), planted, 0o666)
				os.Chmod(filepath.Join(dir, desiredFile), 0o666)
			},
			want: desiredFile,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			base := t.TempDir()
			dir, elsewhere := filepath.Join(base, "state"), filepath.Join(base, "elsewhere")
			os.Mkdir(elsewhere, 0o777)
			tc.plant(t, dir, elsewhere)
			cfg := testConfig(t)
			cfg.StateDir = dir
			k := &fakeKernel{}
			_, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Maps: k, Attacher: k, Links: &fakeLinks{}, SAs: &fakeSAs{}})
			if err == nil {
				t.Fatalf("agent started on a planted desired state (%s)", name)
			}
			if !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q: want one naming %s and %q", err, dir, tc.want)
			}
		})
	}
}

// TestSaveDesiredIsPrivate: the state directory is created 0700 and
// desired.json written 0600.
func TestSaveDesiredIsPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := saveDesired(dir, Desired{}); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, desiredFile): 0o600} {
		fi, err := os.Lstat(p)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want %#o", p, fi.Mode(), err, want)
		}
	}
	if err := saveDesired(dir, Desired{}); err != nil {
		t.Fatalf("rewrite: %v", err)
	}
}
