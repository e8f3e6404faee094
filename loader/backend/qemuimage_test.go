package backend

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/loader/image"
)

// TestQEMUInitrd builds a stand-in kernel package holding the three
// virtio-net module files and checks the overlay QEMUInitrd puts on an
// image: the binary, the modules where the init loads them from, and an
// init that loads the caller's modules first.
func TestQEMUInitrd(t *testing.T) {
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb is not installed (apt-get install dpkg)")
	}
	cache := t.TempDir()
	const release, version = "6.1.0-99-amd64", "6.1.999-1"
	pkg := filepath.Join(t.TempDir(), "pkg")
	kmods := filepath.Join(pkg, "lib/modules", release, "kernel")
	for _, ko := range []string{"net/core/failover.ko", "drivers/net/net_failover.ko", "drivers/net/virtio_net.ko"} {
		p := filepath.Join(kmods, ko)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("module "+filepath.Base(ko)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(pkg, "DEBIAN"), 0o755)
	control := "Package: linux-image-" + release + "\nVersion: " + version + "\nArchitecture: amd64\nMaintainer: test <t@example.invalid>\nDescription: stand-in\n"
	os.WriteFile(filepath.Join(pkg, "DEBIAN/control"), []byte(control), 0o644)
	os.MkdirAll(filepath.Join(cache, "debs"), 0o755)
	deb := filepath.Join(cache, "debs", "linux-image-"+release+"_"+version+"_amd64.deb")
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "-Zgzip", "--build", pkg, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --build: %v\n%s", err, out)
	}
	imgDir := t.TempDir()
	base := filepath.Join(imgDir, "initrd.cpio")
	os.WriteFile(base, []byte("BASE"), 0o644)
	img := &image.Image{Dir: imgDir, Initrd: base, KernelRelease: release, PackageVersion: version}

	out := filepath.Join(t.TempDir(), "initrd")
	mods, err := QEMUInitrd(context.Background(), img, cache, []byte("ELF mlsgate"), InitOptions{Modules: []string{"esp4"}}, out)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"esp4", "virtio_pci", "/lib/modules/extra/failover.ko", "/lib/modules/extra/net_failover.ko", "/lib/modules/extra/virtio_net.ko"}
	if !slices.Equal(mods, want) {
		t.Errorf("modules %q, want %q", mods, want)
	}
	b, _ := os.ReadFile(out)
	if !bytes.HasPrefix(b, []byte("BASE")) {
		t.Fatal("the overlay does not start with the image's initramfs")
	}
	got, _ := readNewc(t, b[4:])
	if string(got["sbin/mlsgate"].Data) != "ELF mlsgate" {
		t.Error("sbin/mlsgate is not the binary given")
	}
	if string(got["lib/modules/extra/virtio_net.ko"].Data) != "module virtio_net.ko" {
		t.Error("virtio_net.ko is not the kernel package's")
	}
	init := string(got["init"].Data)
	if i, j := strings.Index(init, "esp4"), strings.Index(init, "/lib/modules/extra/virtio_net.ko"); i < 0 || j < 0 || i > j {
		t.Errorf("init does not load esp4 and then virtio_net.ko:\n%s", init)
	}

	// The image's kernel package pruned away: the error names the fix.
	os.Remove(deb)
	if _, err := QEMUInitrd(context.Background(), img, cache, nil, InitOptions{}, out+"2"); err == nil || !strings.Contains(err.Error(), "build the image again") {
		t.Errorf("missing kernel package: error %v, want one naming the fix", err)
	}
}
