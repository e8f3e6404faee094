package policystore

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestOpenStoreRefusesPlantedFile plays a local user who prepared the
// store's database (or its directory) before root opens it.
func TestOpenStoreRefusesPlantedFile(t *testing.T) {
	cases := map[string]struct {
		plant func(t *testing.T, dir, elsewhere string)
		want  string
	}{
		"world-writable directory": {
			plant: func(t *testing.T, dir, _ string) { os.Mkdir(dir, 0o700); os.Chmod(dir, 0o777) },
			want:  "mode",
		},
		"database is a symlink": {
			plant: func(t *testing.T, dir, elsewhere string) {
				os.Mkdir(dir, 0o700)
				os.Symlink(filepath.Join(elsewhere, "x.db"), filepath.Join(dir, "store.db"))
			},
			want: "symbolic link",
		},
		"planted 0666 database": {
			plant: func(t *testing.T, dir, _ string) {
				os.Mkdir(dir, 0o700)
				os.WriteFile(filepath.Join(dir, "store.db"), nil, 0o666)
				os.Chmod(filepath.Join(dir, "store.db"), 0o666)
			},
			want: "mode",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			base := t.TempDir()
			dir, elsewhere := filepath.Join(base, "db"), filepath.Join(base, "elsewhere")
			os.Mkdir(elsewhere, 0o777)
			tc.plant(t, dir, elsewhere)
			path := filepath.Join(dir, "store.db")
			s, err := OpenStore(path)
			if err == nil {
				s.Close()
				t.Fatalf("OpenStore accepted a planted database (%s)", name)
			}
			if !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q: want one naming %s and %q", err, dir, tc.want)
			}
			if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
				t.Errorf("database created through the planted symlink: %v", ents)
			}
		})
	}
}

// TestOpenStoreIsPrivate: a new store is a 0600 file in a 0700 directory.
func TestOpenStoreIsPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	s, err := OpenStore(filepath.Join(dir, "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	for p, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, "store.db"): 0o600} {
		fi, err := os.Lstat(p)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want %#o", p, fi.Mode(), err, want)
		}
	}
	// Reopening the store it made is fine.
	s, err = OpenStore(filepath.Join(dir, "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}
