package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// bundleArgs runs 'store bundle' for the analyst example into out, with a
// CA of its own, so that the bundle carries private keys.
func bundleArgs(dir, out string) []string {
	return []string{"store", "bundle", "analyst", "--apps", "../../examples/analyst",
		"--ca", filepath.Join(dir, "ca"), "--out", out, "--guest", "vm7", "--guest-addr", "10.70.0.7"}
}

// TestStoreBundleOutRefusesPlantedDir plays a local user who prepares the
// output directory before root writes a bundle (keys included) into it:
// every prepared directory is refused, nothing is written, and the error
// names the directory and the fix.
func TestStoreBundleOutRefusesPlantedDir(t *testing.T) {
	cases := map[string]struct {
		root  bool // needs root to plant (chown to another uid)
		plant func(t *testing.T, out, elsewhere string)
		want  string
	}{
		"world-writable": {
			plant: func(t *testing.T, out, _ string) {
				mkdir(t, out, 0o700)
				chmod(t, out, 0o777)
			},
			want: "mode",
		},
		"planted 0666 file": {
			plant: func(t *testing.T, out, _ string) {
				mkdir(t, out, 0o700)
				writeFile(t, filepath.Join(out, "bundle.json"), 0o666)
			},
			want: "not empty",
		},
		"planted key symlink": {
			plant: func(t *testing.T, out, elsewhere string) {
				mkdir(t, out, 0o700)
				mkdir(t, filepath.Join(out, "certs"), 0o777)
				if err := os.Symlink(filepath.Join(elsewhere, "stolen-key.pem"), filepath.Join(out, "certs", "vm7-key.pem")); err != nil {
					t.Fatal(err)
				}
			},
			want: "not empty",
		},
		"directory is a symlink": {
			plant: func(t *testing.T, out, elsewhere string) {
				if err := os.Symlink(elsewhere, out); err != nil {
					t.Fatal(err)
				}
			},
			want: "symbolic link",
		},
		"owned by another user": {
			root: true,
			plant: func(t *testing.T, out, _ string) {
				mkdir(t, out, 0o700)
				if err := os.Chown(out, 65534, 65534); err != nil {
					t.Fatal(err)
				}
			},
			want: "owned by uid 65534",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if tc.root && os.Geteuid() != 0 {
				t.Skip("needs root to give the directory to another uid")
			}
			dir := t.TempDir()
			out := filepath.Join(dir, "out")
			elsewhere := filepath.Join(dir, "elsewhere")
			mkdir(t, elsewhere, 0o777)
			tc.plant(t, out, elsewhere)
			var o strings.Builder
			err := run(bundleArgs(dir, out), &o)
			if err == nil {
				t.Fatalf("bundle written into a planted directory (%s):\n%s", name, o.String())
			}
			if !strings.Contains(err.Error(), out) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q: want one naming %s and saying %q", err, out, tc.want)
			}
			ents, _ := os.ReadDir(elsewhere)
			if len(ents) != 0 {
				t.Errorf("files written through the planted symlink: %v", ents)
			}
			if b, err := os.ReadFile(filepath.Join(out, "bundle.json")); err == nil && len(b) > 0 {
				t.Errorf("bundle.json written into the planted directory")
			}
		})
	}
}

// TestStoreBundleOutFresh: a new directory ends 0700 (and so does every
// directory under it), every file in it 0600.
func TestStoreBundleOutFresh(t *testing.T) {
	for _, pre := range []string{"missing", "empty 0700"} {
		t.Run(pre, func(t *testing.T) {
			dir := t.TempDir()
			out := filepath.Join(dir, "out")
			if pre != "missing" {
				mkdir(t, out, 0o700)
			}
			var o strings.Builder
			if err := run(bundleArgs(dir, out), &o); err != nil {
				t.Fatal(err)
			}
			n := 0
			err := filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				fi, err := os.Lstat(p)
				if err != nil {
					return err
				}
				want := fs.FileMode(0o600)
				if d.IsDir() {
					want = 0o700
				} else {
					n++
				}
				if !fi.Mode().IsDir() && !fi.Mode().IsRegular() {
					t.Errorf("%s: %v, want a regular file", p, fi.Mode())
				}
				if fi.Mode().Perm() != want {
					t.Errorf("%s: mode %#o, want %#o", p, fi.Mode().Perm(), want)
				}
				if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
					t.Errorf("%s: owned by uid %d", p, st.Uid)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if n < 5 {
				t.Errorf("only %d files written", n)
			}
			// A second run into the same (now full) directory is refused:
			// it would mix two bundles' keys.
			if err := run(bundleArgs(dir, out), &o); err == nil || !strings.Contains(err.Error(), "not empty") {
				t.Errorf("second bundle into a full directory: %v", err)
			}
		})
	}
}

func mkdir(t *testing.T, p string, mode fs.FileMode) {
	t.Helper()
	if err := os.Mkdir(p, mode); err != nil {
		t.Fatal(err)
	}
	chmod(t, p, mode)
}

func chmod(t *testing.T, p string, mode fs.FileMode) {
	t.Helper()
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, p string, mode fs.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, nil, mode); err != nil {
		t.Fatal(err)
	}
	chmod(t, p, mode)
}
