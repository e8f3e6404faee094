package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseImageAge(t *testing.T) {
	for in, want := range map[string]time.Duration{"14d": 14 * 24 * time.Hour, "36h": 36 * time.Hour, "90m": 90 * time.Minute} {
		if got, err := parseImageAge(in); err != nil || got != want {
			t.Errorf("parseImageAge(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"0", "0d", "-1h", "-3d", "1.5d", "soon", ""} {
		if got, err := parseImageAge(in); err == nil {
			t.Errorf("parseImageAge(%q) = %v; want an error (a non-positive age would remove images in use)", in, got)
		}
	}
}

func TestImageBuildRefusesUnknownKind(t *testing.T) {
	var out strings.Builder
	for kind, want := range map[string]string{"xen": "kernel-tests/xendom0", "vmware": "kinds: guest, qemu"} {
		err := run([]string{"image", "build", "--kind", kind, "--cache", t.TempDir()}, &out)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("--kind %s: error %v, want one containing %q", kind, err, want)
		}
	}
	err := run([]string{"image", "build", "--kind", "qemu", "--cache", t.TempDir()}, &out)
	if err == nil || !strings.Contains(err.Error(), "--out") {
		t.Errorf("--kind qemu without --out: error %v, want one naming --out", err)
	}
}

// TestImageListAndPrune: list shows an image of a temporary cache, prune
// removes it once it is older than --older-than and leaves it otherwise.
func TestImageListAndPrune(t *testing.T) {
	cache := t.TempDir()
	dir := filepath.Join(cache, "images", "6.1.0-57-amd64_6.1.192-3_0123456789ab")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m, _ := json.Marshal(map[string]any{"kernel_release": "6.1.0-57-amd64", "package_version": "6.1.192-3", "built": time.Now().UTC()})
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), m, 0o644); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := run([]string{"image", "list", "--cache", cache}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "0123456789ab") || !strings.Contains(out.String(), "1 entries") {
		t.Errorf("list output lacks the image:\n%s", out.String())
	}
	out.Reset()
	if err := run([]string{"image", "prune", "--cache", cache, "--older-than", "1d"}, &out); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("prune --older-than 1d removed an image built now: %v\n%s", err, out.String())
	}
	old := time.Now().Add(-48 * time.Hour)
	os.Chtimes(filepath.Join(dir, "manifest.json"), old, old)
	out.Reset()
	if err := run([]string{"image", "prune", "--cache", cache, "--older-than", "1d"}, &out); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("prune --older-than 1d kept an image unused for 2 days:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "removed "+dir) {
		t.Errorf("prune did not say what it removed:\n%s", out.String())
	}
}
