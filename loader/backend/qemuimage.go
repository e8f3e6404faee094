package backend

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/mlsgate/mlsgate/loader/image"
)

// QEMUInitrd writes out: the guest image's initramfs (loader/image) with
// what a QEMU-backend guest needs on top, as an overlay (AppendInitramfs):
// binary (a static mlsgate) as /sbin/mlsgate, the virtio-net driver from the
// image's kernel package (cacheDir as for image.Image.KernelPackagePath)
// under /lib/modules/extra, and an InitScript /init that loads opts.Modules,
// then virtio_pci and virtio-net, and starts the update daemon. It returns
// the modules the init loads, in order.
func QEMUInitrd(ctx context.Context, img *image.Image, cacheDir string, binary []byte, opts InitOptions, out string) ([]string, error) {
	return nicInitrd(ctx, img, (*image.Image).VirtioNet, cacheDir, binary, opts, out, "qemu", "virtio-net", "virtio_pci")
}

// XenInitrd writes out: the guest image's initramfs with what a Xen PV
// guest of the Xen backend needs on top, as QEMUInitrd does for QEMU:
// binary as /sbin/mlsgate, xen-netfront from the image's kernel package
// under /lib/modules/extra, and an InitScript /init that loads
// opts.Modules then xen-netfront and starts the update daemon. The guest
// kernel is the image's (Debian's kernel boots as a PV domain; dom0 may
// hold its own copy of the same release). It returns the modules the init
// loads, in order.
func XenInitrd(ctx context.Context, img *image.Image, cacheDir string, binary []byte, opts InitOptions, out string) ([]string, error) {
	return nicInitrd(ctx, img, (*image.Image).XenNetfront, cacheDir, binary, opts, out, "xen", "xen-netfront")
}

// nicInitrd is QEMUInitrd and XenInitrd: it fetches the NIC driver modules
// of img with fetch (named nic in errors) into a temporary directory (named
// after backend), and writes out as img's initramfs plus binary as /sbin/mlsgate, the
// modules under /lib/modules/extra and an InitScript /init that loads
// opts.Modules, then before (modules already in the kernel package, by
// name), then the fetched ones. It returns the modules the init loads, in
// order.
func nicInitrd(ctx context.Context, img *image.Image, fetch func(img *image.Image, ctx context.Context, cacheDir, dir string) ([]string, error), cacheDir string, binary []byte, opts InitOptions, out, backend, nic string, before ...string) ([]string, error) {
	tmp, err := os.MkdirTemp("", "mlsgate-"+backend+"-initrd-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	kos, err := fetch(img, ctx, cacheDir, tmp)
	if err != nil {
		return nil, err
	}
	modules := append(append([]string(nil), opts.Modules...), before...)
	files := []File{{Path: "sbin/mlsgate", Mode: 0o755, Data: binary}}
	for _, ko := range kos {
		data, err := os.ReadFile(ko)
		if err != nil {
			return nil, fmt.Errorf("%s module: %w", nic, err)
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
