package ca

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	if err := writeFileAtomic(dir, "f", []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := writeFileAtomic(dir, "f", []byte("two"), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(mustRead(t, filepath.Join(dir, "f"))); got != "two" || st.Mode().Perm() != 0o644 {
		t.Errorf("content %q mode %#o, want \"two\" 0644", got, st.Mode().Perm())
	}

	// A write that fails at the rename (the target is a non-empty
	// directory) leaves the target alone and no temporary behind.
	if err := os.MkdirAll(filepath.Join(dir, "d", "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	err = writeFileAtomic(dir, "d", []byte("x"), 0o600)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "d")) {
		t.Fatalf("write over a directory: %v, want an error naming it", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tempPrefix) {
			t.Errorf("temporary %s left behind", e.Name())
		}
	}
}
