package guestvm

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestPruneRemovesOnlyUnusedImages(t *testing.T) {
	cache := t.TempDir()
	now := time.Now()
	old := now.Add(-PruneAge - time.Hour)
	write := func(rel string, data []byte, mtime time.Time) string {
		t.Helper()
		p := filepath.Join(cache, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
		return p
	}
	image := func(name, release, version string, built time.Time) {
		m, _ := json.Marshal(manifest{KernelRelease: release, PackageVersion: version})
		write("images/"+name+"/manifest.json", m, built)
	}
	// Used today although built long ago: kept, and so is its kernel package.
	image("fresh", "6.1.0-57-amd64", "6.1.192-3", old)
	write("images/fresh/"+usedStamp, nil, now)
	// Last used long ago, and built long ago without a stamp: removed.
	image("stale", "6.1.0-50-amd64", "6.1.180-1", old)
	write("images/stale/"+usedStamp, nil, old)
	image("unstamped", "6.1.0-50-amd64", "6.1.180-1", old)
	// A build in progress and a directory without a manifest: left alone.
	write("images/.build-123/x", nil, old)
	write("images/incomplete/x", nil, old)
	keptDeb := write("debs/linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb", nil, old)
	oldDeb := write("debs/linux-image-6.1.0-50-amd64_6.1.180-1_amd64.deb", nil, old)
	newDeb := write("debs/linux-image-6.1.0-58-amd64_6.1.193-1_amd64.deb", nil, now)
	xen := write("xen/dom0/manifest.json", nil, old)

	removed, err := Prune(context.Background(), cache, PruneAge, now)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(cache, "images/stale"), filepath.Join(cache, "images/unstamped"), oldDeb}
	slices.Sort(removed)
	slices.Sort(want)
	if !slices.Equal(removed, want) {
		t.Errorf("removed %q, want %q", removed, want)
	}
	for _, p := range []string{"images/fresh/manifest.json", "images/.build-123/x", "images/incomplete/x", keptDeb, newDeb, xen} {
		if !filepath.IsAbs(p) {
			p = filepath.Join(cache, p)
		}
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s was removed: %v", p, err)
		}
	}
	if _, err := Prune(context.Background(), cache, 0, now); err == nil {
		t.Error("Prune with age 0 would empty the cache; it must refuse")
	}
}
