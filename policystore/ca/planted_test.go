package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestOpenRefusesPlantedDir plays a local user who prepared the CA
// directory (or something in it) before root opens it: the CA must not
// start on a key the user knows, nor write its key where the user reads it.
func TestOpenRefusesPlantedDir(t *testing.T) {
	attackerKey := func(t *testing.T, path string) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, _ := x509.MarshalPKCS8PrivateKey(k)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cases := map[string]struct {
		root  bool
		plant func(t *testing.T, dir, elsewhere string)
		want  string
	}{
		"world-writable": {
			plant: func(t *testing.T, dir, _ string) { mkdirMode(t, dir, 0o777) },
			want:  "mode",
		},
		"group-writable": {
			plant: func(t *testing.T, dir, _ string) { mkdirMode(t, dir, 0o770) },
			want:  "mode",
		},
		"directory is a symlink": {
			plant: func(t *testing.T, dir, elsewhere string) {
				if err := os.Symlink(elsewhere, dir); err != nil {
					t.Fatal(err)
				}
			},
			want: "symbolic link",
		},
		"key is a symlink to a key the attacker knows": {
			plant: func(t *testing.T, dir, elsewhere string) {
				mkdirMode(t, dir, 0o700)
				attackerKey(t, filepath.Join(elsewhere, "k.pem"))
				if err := os.Symlink(filepath.Join(elsewhere, "k.pem"), filepath.Join(dir, keyFile)); err != nil {
					t.Fatal(err)
				}
			},
			want: keyFile,
		},
		"planted 0666 key": {
			plant: func(t *testing.T, dir, _ string) {
				mkdirMode(t, dir, 0o700)
				attackerKey(t, filepath.Join(dir, keyFile))
				if err := os.Chmod(filepath.Join(dir, keyFile), 0o666); err != nil {
					t.Fatal(err)
				}
			},
			want: keyFile,
		},
		"world-writable issued directory": {
			plant: func(t *testing.T, dir, _ string) {
				mkdirMode(t, dir, 0o700)
				mkdirMode(t, filepath.Join(dir, issuedDir), 0o777)
			},
			want: issuedDir,
		},
		"owned by another user": {
			root: true,
			plant: func(t *testing.T, dir, _ string) {
				mkdirMode(t, dir, 0o700)
				if err := os.Chown(dir, 65534, 65534); err != nil {
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
			base := t.TempDir()
			dir, elsewhere := filepath.Join(base, "ca"), filepath.Join(base, "elsewhere")
			mkdirMode(t, elsewhere, 0o777)
			tc.plant(t, dir, elsewhere)
			c, err := Open(dir, Options{})
			if err == nil {
				c.Close()
				t.Fatalf("Open accepted a planted CA directory (%s)", name)
			}
			if !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q: want one naming %s and %q", err, dir, tc.want)
			}
			if ents, _ := os.ReadDir(elsewhere); len(ents) > 1 {
				t.Errorf("files written through the planted symlink: %v", ents)
			}
		})
	}
}

// TestOpenFreshDirIsPrivate: a new CA directory and its subdirectories are
// 0700, the key 0600, and nothing in it is writable by group or others.
func TestOpenFreshDirIsPrivate(t *testing.T) {
	for pre, mode := range map[string]fs.FileMode{"missing": 0, "empty 0700": 0o700, "empty 0755 (tightened)": 0o755} {
		t.Run(pre, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ca")
			if mode != 0 {
				mkdirMode(t, dir, mode)
			}
			c := openCA(t, dir, Options{})
			issue(t, c, guestReq())
			err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				fi, err := os.Lstat(p)
				if err != nil {
					return err
				}
				switch {
				case d.IsDir() && fi.Mode().Perm() != 0o700:
					t.Errorf("%s: mode %#o, want 0700", p, fi.Mode().Perm())
				case !d.IsDir() && !fi.Mode().IsRegular():
					t.Errorf("%s: %v, want a regular file", p, fi.Mode())
				case !d.IsDir() && fi.Mode().Perm()&0o022 != 0:
					t.Errorf("%s: mode %#o, writable by group or others", p, fi.Mode().Perm())
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Stat(filepath.Join(dir, keyFile)); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: %v %v, want mode 0600", keyFile, fi.Mode(), err)
			}
		})
	}
}

func mkdirMode(t *testing.T, p string, mode fs.FileMode) {
	t.Helper()
	if err := os.Mkdir(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}
