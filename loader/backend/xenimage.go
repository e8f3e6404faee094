package backend

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/mlsgate/mlsgate/loader/image"
)

// xenSkipModules are the guest image's modules a Xen guest does not load:
// the 9p share and virtio bus of the image's own runner, and those that
// serve only the in-guest tests.
var xenSkipModules = []string{"9pnet_virtio", "9p", "virtio_pci", "veth", "dummy", "sch_ingress", "cls_bpf"}

// XenGuestModules are the image's modules a Xen guest's init loads before
// its network: the random-number generators and the ESP transforms its
// update daemon installs SAs with.
func XenGuestModules(img *image.Image) []string {
	var out []string
	for _, m := range img.Modules {
		if !slices.Contains(xenSkipModules, m) {
			out = append(out, m)
		}
	}
	return out
}

// XenInitrd writes out: the guest image's initramfs (loader/image) with
// what a Xen-backend PV guest needs on top, as an overlay
// (AppendInitramfs): binary (a static mlsgate) as /sbin/mlsgate,
// xen-netfront from the image's kernel package (cacheDir as for
// image.Image.KernelPackagePath) under /lib/modules/extra, and an
// InitScript /init that loads opts.Modules (XenGuestModules when nil), then
// xen-netfront, and starts the update daemon. The guest boots the image's
// raw vmlinux (Xen.Kernel) with this as Xen.Ramdisk. It returns the modules
// the init loads, in order.
func XenInitrd(ctx context.Context, img *image.Image, cacheDir string, binary []byte, opts InitOptions, out string) ([]string, error) {
	tmp, err := os.MkdirTemp("", "mlsgate-xen-initrd-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	kos, err := img.XenNetfront(ctx, cacheDir, tmp)
	if err != nil {
		return nil, err
	}
	modules := opts.Modules
	if modules == nil {
		modules = XenGuestModules(img)
	}
	modules = slices.Clone(modules)
	files := []File{{Path: "sbin/mlsgate", Mode: 0o755, Data: binary}}
	for _, ko := range kos {
		data, err := os.ReadFile(ko)
		if err != nil {
			return nil, fmt.Errorf("xen-netfront module: %w", err)
		}
		p := "/lib/modules/extra/" + filepath.Base(ko)
		files = append(files, File{Path: p, Mode: 0o644, Data: data})
		modules = append(modules, p)
	}
	opts.Modules = modules
	files = append(files, File{Path: "init", Mode: 0o755, Data: []byte(InitScript(opts))})
	if err := AppendInitramfs(out, img.Initrd, files); err != nil {
		return nil, err
	}
	return modules, nil
}
