package secretfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOpenCreatesPrivateDir(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a", "b")
	d, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, q := range []string{p, filepath.Dir(p)} {
		if fi, err := os.Lstat(q); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v %v, want 0700", q, fi.Mode(), err)
		}
	}
	if err := d.WriteNew("k", []byte("secret")); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteNew("k", []byte("again")); err == nil || !errors.Is(err, ErrUnsafe) {
		t.Errorf("second WriteNew: %v, want a refusal", err)
	}
	if fi, err := os.Lstat(filepath.Join(p, "k")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("k: %v %v, want 0600", fi.Mode(), err)
	}
	if err := d.Replace("r", []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.Replace("r", []byte("two"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := d.ReadFile("r"); err != nil || string(b) != "two" {
		t.Errorf("ReadFile after Replace: %q %v", b, err)
	}
	if fi, _ := os.Lstat(filepath.Join(p, "r")); fi.Mode().Perm() != 0o600 {
		t.Errorf("r: mode %v after Replace with 0600", fi.Mode())
	}
	if err := d.Replace("w", nil, 0o666); err == nil {
		t.Error("Replace with a world-writable mode accepted")
	}
	ents, _ := os.ReadDir(p)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), TempPrefix) {
			t.Errorf("temporary %s left behind", e.Name())
		}
	}
}

func TestRefusals(t *testing.T) {
	cases := map[string]struct {
		plant func(t *testing.T, p, elsewhere string)
		empty bool
		want  string
	}{
		"0777":           {plant: func(t *testing.T, p, _ string) { os.Mkdir(p, 0o700); os.Chmod(p, 0o777) }, want: "mode 0777"},
		"0750 output":    {plant: func(t *testing.T, p, _ string) { os.Mkdir(p, 0o700); os.Chmod(p, 0o750) }, empty: true, want: "mode 0750"},
		"0770":           {plant: func(t *testing.T, p, _ string) { os.Mkdir(p, 0o700); os.Chmod(p, 0o770) }, want: "mode 0770"},
		"0755 tightened": {plant: func(t *testing.T, p, _ string) { os.Mkdir(p, 0o700); os.Chmod(p, 0o755) }},
		"symlink":        {plant: func(t *testing.T, p, e string) { os.Symlink(e, p) }, want: "symbolic link"},
		"file":           {plant: func(t *testing.T, p, _ string) { os.WriteFile(p, nil, 0o600) }, want: "not a directory"},
		"not empty":      {plant: func(t *testing.T, p, _ string) { os.Mkdir(p, 0o700); os.WriteFile(filepath.Join(p, "x"), nil, 0o666) }, empty: true, want: "not empty (x)"},
		"empty is fine":  {plant: func(t *testing.T, p, _ string) { os.Mkdir(p, 0o700) }, empty: true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			base := t.TempDir()
			p, e := filepath.Join(base, "d"), filepath.Join(base, "e")
			os.Mkdir(e, 0o700)
			tc.plant(t, p, e)
			open := Open
			if tc.empty {
				open = CreateEmpty
			}
			d, err := open(p)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				d.Close()
				if fi, err := os.Lstat(p); err != nil || fi.Mode().Perm() != 0o700 {
					t.Errorf("%s: %v %v, want 0700", p, fi.Mode(), err)
				}
				return
			}
			if err == nil {
				d.Close()
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q: want ErrUnsafe naming %s and %q", err, p, tc.want)
			}
		})
	}
}

func TestReadFileRefusesLinksAndWritableFiles(t *testing.T) {
	p := filepath.Join(t.TempDir(), "d")
	d, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	os.WriteFile(filepath.Join(p, "target"), []byte("x"), 0o600)
	os.Symlink("target", filepath.Join(p, "inside"))
	os.WriteFile(filepath.Join(p, "open"), []byte("x"), 0o600)
	os.Chmod(filepath.Join(p, "open"), 0o666)
	for name, want := range map[string]string{"inside": "symbolic link", "open": "mode 0666"} {
		if _, err := d.ReadFile(name); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ReadFile(%s): %v, want %q", name, err, want)
		}
	}
	if _, err := d.ReadFile("missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadFile(missing): %v, want ErrNotExist", err)
	}
	// A link planted where a new file goes is not followed.
	os.Symlink(filepath.Join(p, "target"), filepath.Join(p, "new"))
	if err := d.WriteNew("new", []byte("secret")); err == nil {
		t.Error("WriteNew followed a planted link")
	}
	if b, _ := os.ReadFile(filepath.Join(p, "target")); string(b) != "x" {
		t.Errorf("target overwritten: %q", b)
	}
	// OpenAppend: the same refusals, a planted link never written through,
	// and a new file 0600 that is appended to.
	for name, want := range map[string]string{"inside": "symbolic link", "open": "mode 0666", "new": "symbolic link"} {
		if f, err := d.OpenAppend(name); err == nil || !strings.Contains(err.Error(), want) {
			if f != nil {
				f.Close()
			}
			t.Errorf("OpenAppend(%s): %v, want %q", name, err, want)
		}
	}
	for _, rec := range []string{"a\n", "b\n"} {
		f, err := d.OpenAppend("log")
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(rec)
		f.Close()
	}
	if fi, err := os.Stat(filepath.Join(p, "log")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("appended file: %v, want mode 0600", err)
	}
	if b, _ := os.ReadFile(filepath.Join(p, "log")); string(b) != "a\nb\n" {
		t.Errorf("appended file holds %q, want both records", b)
	}
	if b, _ := os.ReadFile(filepath.Join(p, "target")); string(b) != "x" {
		t.Errorf("target written through a link: %q", b)
	}
}

func TestPrepareFile(t *testing.T) {
	base := t.TempDir()
	db := filepath.Join(base, "dir", "x.db")
	if err := PrepareFile(db); err != nil {
		t.Fatal(err)
	}
	if err := PrepareFile(db); err != nil {
		t.Fatalf("again: %v", err)
	}
	// A directory others may read but not write is fine for it.
	os.Chmod(filepath.Dir(db), 0o755)
	if err := PrepareFile(db); err != nil {
		t.Fatalf("in a 0755 directory: %v", err)
	}
	os.Chmod(filepath.Dir(db), 0o777)
	if err := PrepareFile(db); err == nil || !strings.Contains(err.Error(), "mode 0777") {
		t.Fatalf("in a 0777 directory: %v", err)
	}
	os.Chmod(filepath.Dir(db), 0o700)
	if fi, err := os.Lstat(db); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: %v %v", db, fi.Mode(), err)
	}
	os.Chmod(db, 0o644)
	if err := PrepareFile(db); err == nil || !strings.Contains(err.Error(), "mode 0644") {
		t.Errorf("0644 database: %v", err)
	}
	os.Remove(db)
	os.Symlink(filepath.Join(base, "elsewhere.db"), db)
	if err := PrepareFile(db); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("symlinked database: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(base, "elsewhere.db")); err == nil {
		t.Error("created through the link")
	}
}
