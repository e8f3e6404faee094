package updatedaemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStateDirRefusesPlanted plays a local user (of the guest) who
// prepared the update daemon's state before it starts: the state records
// the applied bundle and its SA keys, and decides which versions are stale.
func TestStateDirRefusesPlanted(t *testing.T) {
	cases := map[string]struct {
		plant func(t *testing.T, dir, elsewhere string)
		want  string
	}{
		"world-writable state directory": {
			plant: func(t *testing.T, dir, _ string) { os.Mkdir(dir, 0o700); os.Chmod(dir, 0o777) },
			want:  "mode",
		},
		"state.json is a symlink": {
			plant: func(t *testing.T, dir, elsewhere string) {
				os.Mkdir(dir, 0o700)
				os.WriteFile(filepath.Join(elsewhere, "s.json"), []byte(`{}`), 0o666)
				os.Symlink(filepath.Join(elsewhere, "s.json"), filepath.Join(dir, StateFile))
			},
			want: StateFile,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			base := t.TempDir()
			dir, elsewhere := filepath.Join(base, "state"), filepath.Join(base, "elsewhere")
			os.Mkdir(elsewhere, 0o777)
			tc.plant(t, dir, elsewhere)
			err := prepareStateDir(dir)
			if err == nil {
				_, err = loadState(dir)
			}
			if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("planted state (%s): %v; want an error naming %s and %q", name, err, dir, tc.want)
			}
		})
	}
}

// TestSaveStateIsPrivate: state.json is 0600 in a 0700 directory.
func TestSaveStateIsPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := prepareStateDir(dir); err != nil {
		t.Fatal(err)
	}
	if err := saveState(dir, &persisted{Format: stateFormat}); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, StateFile): 0o600} {
		fi, err := os.Lstat(p)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want %#o", p, fi.Mode(), err, want)
		}
	}
}
