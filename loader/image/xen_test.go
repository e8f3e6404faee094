package image

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestPruneXenImages: the dom0 images age out like guest images, the Xen
// packages no remaining dom0 image names go with them, and a dom0 image in
// use keeps the kernel package it was built from.
func TestPruneXenImages(t *testing.T) {
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
	dom0 := func(name, release, version string, debs []string, used time.Time) {
		m, _ := json.Marshal(xenManifest{KernelRelease: release, PackageVersion: version, Kernel: "vmlinux", XenDebs: debs})
		write("xen/images/"+name+"/manifest.json", m, old)
		for _, f := range []string{"xen", "vmlinux", "dom0.cpio"} {
			write("xen/images/"+name+"/"+f, nil, old)
		}
		write("xen/images/"+name+"/"+usedStamp, nil, used)
	}
	dom0("live", "6.1.0-57-amd64", "6.1.192-3", []string{"xen-utils-4.17_4.17.5-1_amd64.deb"}, now)
	dom0("stale", "6.1.0-50-amd64", "6.1.180-1", []string{"xen-utils-4.17_4.17.3-1_amd64.deb"}, old)
	keptXen := write("xen/debs/xen-utils-4.17_4.17.5-1_amd64.deb", nil, old)
	oldXen := write("xen/debs/xen-utils-4.17_4.17.3-1_amd64.deb", nil, old)
	keptKernel := write("debs/linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb", nil, old)
	oldKernel := write("debs/linux-image-6.1.0-50-amd64_6.1.180-1_amd64.deb", nil, old)

	entries, err := List(cache)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, e := range entries {
		kinds = append(kinds, e.Kind+":"+filepath.Base(e.Path))
	}
	for _, want := range []string{"xen-image:live", "xen-image:stale", "xen-package:" + filepath.Base(keptXen)} {
		if !slices.Contains(kinds, want) {
			t.Errorf("List shows %v, want %s among them", kinds, want)
		}
	}

	removed, err := Prune(context.Background(), cache, PruneAge, now)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(cache, "xen/images/stale"), oldXen, oldKernel}
	slices.Sort(removed)
	slices.Sort(want)
	if !slices.Equal(removed, want) {
		t.Errorf("removed %q, want %q", removed, want)
	}
	for _, p := range []string{filepath.Join(cache, "xen/images/live/dom0.cpio"), keptXen, keptKernel} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s was removed: %v", p, err)
		}
	}
}

// TestXenKeyFollowsInputs: the dom0 image's key changes with the vif
// script, the test guest and the packages, and with nothing else here.
func TestXenKeyFollowsInputs(t *testing.T) {
	if cmds, _ := missingTools(); len(cmds) > 0 {
		t.Skipf("host tools missing: %s", strings.Join(cmds, ", "))
	}
	debs := []string{"/c/xen-hypervisor-4.17-amd64_4.17.5%3a1_amd64.deb", "/c/xen-utils-4.17_4.17.5_amd64.deb"}
	base := XenOptions{VifScript: "#!/bin/sh\n", VifScriptName: "vif-mlsgate"}
	k0, ver, err := xenInputKey("/c/linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb", debs, base)
	if err != nil {
		t.Fatal(err)
	}
	if ver != "4.17.5:1" {
		t.Errorf("Xen version %q, want 4.17.5:1 (from the hypervisor package's name)", ver)
	}
	again, _, _ := xenInputKey("/c/linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb", debs, base)
	if again != k0 {
		t.Errorf("same inputs gave keys %s and %s", k0, again)
	}
	other := map[string]func() (string, string, error){
		"vif script": func() (string, string, error) {
			o := base
			o.VifScript += "# changed\n"
			return xenInputKey("/c/linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb", debs, o)
		},
		"test guest": func() (string, string, error) {
			o := base
			o.TestGuestInit = "#!/bin/sh\n"
			return xenInputKey("/c/linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb", debs, o)
		},
		"kernel": func() (string, string, error) {
			return xenInputKey("/c/linux-image-6.1.0-58-amd64_6.1.193-1_amd64.deb", debs, base)
		},
		"xen package": func() (string, string, error) {
			return xenInputKey("/c/linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb", []string{debs[0], "/c/xen-utils-4.17_4.17.6_amd64.deb"}, base)
		},
	}
	for what, f := range other {
		k, _, err := f()
		if err != nil {
			t.Fatal(err)
		}
		if k == k0 {
			t.Errorf("a different %s gave the same key %s", what, k)
		}
	}
}
