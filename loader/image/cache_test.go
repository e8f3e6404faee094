package image

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestHashInputs: the key is a function of the texts and of each file's
// path, size and time, and nothing else; a missing input is an error, never
// a key.
func TestHashInputs(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, p := range []string{a, b} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, p := range []string{a, b} {
		if err := os.Chtimes(p, past, past); err != nil {
			t.Fatal(err)
		}
	}
	key := func(texts, files []string) string {
		t.Helper()
		k, err := hashInputs(texts, files)
		if err != nil {
			t.Fatal(err)
		}
		if len(k) != keyLen {
			t.Fatalf("key %q has %d digits, want %d", k, len(k), keyLen)
		}
		return k
	}
	base := key([]string{"v1", "init"}, []string{a, b})
	if again := key([]string{"v1", "init"}, []string{a, b}); again != base {
		t.Errorf("same inputs, keys %s and %s", base, again)
	}
	changed := map[string]func() string{
		"a text":          func() string { return key([]string{"v2", "init"}, []string{a, b}) },
		"text boundaries": func() string { return key([]string{"v1i", "nit"}, []string{a, b}) },
		"a file's path":   func() string { return key([]string{"v1", "init"}, []string{b, a}) },
		"a file left out": func() string { return key([]string{"v1", "init"}, []string{a}) },
		"a file's size": func() string {
			os.WriteFile(a, []byte("xy"), 0o644)
			os.Chtimes(a, past, past)
			return key([]string{"v1", "init"}, []string{a, b})
		},
		"a file's time": func() string {
			later := past.Add(time.Second)
			os.Chtimes(b, later, later)
			return key([]string{"v1", "init"}, []string{a, b})
		},
	}
	for name, f := range changed {
		if k := f(); k == base {
			t.Errorf("changing %s kept the key %s", name, base)
		}
	}
	if _, err := hashInputs([]string{"v1"}, []string{filepath.Join(dir, "missing")}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing input file gave %v, want an error wrapping ErrNotExist", err)
	}
}

// TestImageKey: Image.Key is the key part of the cache directory's name,
// which imageName builds.
func TestImageKey(t *testing.T) {
	img := &Image{Dir: filepath.Join("/cache/images", imageName("6.1.0-57-amd64", "6.1.192-3", "d5fc2dbb45cc"))}
	if got := img.Key(); got != "d5fc2dbb45cc" {
		t.Errorf("Key() = %q, want d5fc2dbb45cc", got)
	}
}

// TestPruneKeepsEpochPackage: a kernel whose Debian version has an epoch is
// cached with the colon escaped (as apt-get download names it); the package
// of an image still in use must survive pruning all the same.
func TestPruneKeepsEpochPackage(t *testing.T) {
	cache := t.TempDir()
	now := time.Now()
	old := now.Add(-PruneAge - time.Hour)
	img := filepath.Join(cache, "images", imageName("6.1.0-57-amd64", "1:6.1.192-3", "abc"))
	if err := os.MkdirAll(img, 0o755); err != nil {
		t.Fatal(err)
	}
	m, _ := json.Marshal(manifest{KernelRelease: "6.1.0-57-amd64", PackageVersion: "1:6.1.192-3"})
	if err := os.WriteFile(filepath.Join(img, "manifest.json"), m, 0o644); err != nil {
		t.Fatal(err)
	}
	deb := filepath.Join(cache, "debs", debName("linux-image-6.1.0-57-amd64", "1:6.1.192-3"))
	if filepath.Base(deb) != "linux-image-6.1.0-57-amd64_1%3a6.1.192-3_amd64.deb" {
		t.Fatalf("debName = %s", filepath.Base(deb))
	}
	os.MkdirAll(filepath.Dir(deb), 0o755)
	if err := os.WriteFile(deb, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(deb, old, old)
	removed, err := prune(cache, PruneAge, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 0 {
		t.Errorf("pruned %q; the image was built today and its package is in use", removed)
	}
}

// TestList: images (with their key, kernel and size) then kernel packages;
// builds in progress and incomplete entries are not listed; a cache that
// does not exist is empty, not an error.
func TestList(t *testing.T) {
	cache := t.TempDir()
	if got, err := List(filepath.Join(cache, "none")); err != nil || len(got) != 0 {
		t.Fatalf("List(missing) = %v, %v; want empty", got, err)
	}
	built := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	img := filepath.Join(cache, "images", imageName("6.1.0-57-amd64", "6.1.192-3", "d5fc2dbb45cc"))
	os.MkdirAll(img, 0o755)
	m, _ := json.Marshal(manifest{KernelRelease: "6.1.0-57-amd64", PackageVersion: "6.1.192-3", Built: built})
	os.WriteFile(filepath.Join(img, "manifest.json"), m, 0o644)
	os.WriteFile(filepath.Join(img, "initrd.cpio"), make([]byte, 1000), 0o644)
	used := built.Add(time.Hour)
	os.WriteFile(filepath.Join(img, usedStamp), nil, 0o644)
	os.Chtimes(filepath.Join(img, usedStamp), used, used)
	os.MkdirAll(filepath.Join(cache, "images", ".build-1"), 0o755)
	os.MkdirAll(filepath.Join(cache, "images", "incomplete"), 0o755)
	os.MkdirAll(filepath.Join(cache, "debs"), 0o755)
	os.WriteFile(filepath.Join(cache, "debs", debName("linux-image-6.1.0-57-amd64", "1:6.1.192-3")), make([]byte, 7), 0o644)

	got, err := List(cache)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("List = %+v, want one image and one package", got)
	}
	i, d := got[0], got[1]
	if i.Kind != "image" || i.Key != "d5fc2dbb45cc" || i.KernelRelease != "6.1.0-57-amd64" || !i.Built.Equal(built) || !i.LastUsed.Equal(used) || i.Bytes < 1000 {
		t.Errorf("image entry %+v", i)
	}
	if d.Kind != "kernel-package" || d.KernelRelease != "6.1.0-57-amd64" || d.PackageVersion != "1:6.1.192-3" || d.Bytes != 7 {
		t.Errorf("package entry %+v", d)
	}
}
