package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	deployxen "github.com/mlsgate/mlsgate/deploy/xen"
	"github.com/mlsgate/mlsgate/loader/image"
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
	for kind, want := range map[string]string{"dom0": "kinds: guest, qemu, xen", "vmware": "kinds: guest, qemu, xen"} {
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

// TestImageBuildXen: `image build --kind xen --out` writes the hypervisor,
// the dom0 kernel and a dom0 initrd that is the cached image's with the
// mlsgate binary and the guests' ramdisk appended. It runs where the
// default cache already holds a dom0 image (kernel-tests' Xen test or
// `mlsgate image build --kind xen` made one), so it never downloads;
// busybox stands in for a static mlsgate.
func TestImageBuildXen(t *testing.T) {
	entries, _ := image.List("")
	var have, guest bool
	for _, e := range entries {
		have = have || e.Kind == "xen-image"
		guest = guest || e.Kind == "image"
	}
	if !have || !guest {
		t.Skip("no cached guest and dom0 images in " + image.DefaultCacheDir() + " (mlsgate image build --kind xen makes them)")
	}
	if os.Geteuid() != 0 {
		t.Skip("the default image cache is root's")
	}
	bb, err := image.FindTool("busybox")
	if err != nil || image.CheckStatic(bb) != nil {
		t.Skip("no static busybox to stand in for mlsgate")
	}
	out := t.TempDir()
	os.Chmod(out, 0o700)
	var w strings.Builder
	if err := run([]string{"image", "build", "--kind", "xen", "--out", out, "--binary", bb}, &w); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kind:", "xen", "dom0 initrd:", filepath.Join(out, "initrd-xen.cpio"), "--xen-ramdisk " + image.XenGuestRamdisk} {
		if !strings.Contains(w.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, w.String())
		}
	}
	x, err := image.PrepareXen(t.Context(), "", image.XenOptions{VifScript: deployxen.VifScript, VifScriptName: "vif-mlsgate"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	base, err := os.ReadFile(x.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(out, "initrd-xen.cpio"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) <= len(base) || !bytes.Equal(got[:len(base)], base) {
		t.Fatalf("initrd-xen.cpio (%d bytes) does not begin with the cached dom0 initrd (%d bytes)", len(got), len(base))
	}
	extra := got[len(base):]
	for _, name := range []string{strings.TrimPrefix(image.XenMlsgate, "/"), strings.TrimPrefix(image.XenGuestRamdisk, "/")} {
		if !bytes.Contains(extra, []byte(name+"\x00")) {
			t.Errorf("the appended archive has no %s", name)
		}
	}
	for _, f := range []string{"xen", "vmlinux"} {
		if fi, err := os.Stat(filepath.Join(out, f)); err != nil || fi.Size() == 0 {
			t.Errorf("--out has no %s: %v", f, err)
		}
	}
}
