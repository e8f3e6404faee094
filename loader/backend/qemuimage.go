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
	tmp, err := os.MkdirTemp("", "mlsgate-qemu-initrd-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	kos, err := img.VirtioNet(ctx, cacheDir, tmp)
	if err != nil {
		return nil, err
	}
	modules := append(append([]string(nil), opts.Modules...), "virtio_pci")
	files := []File{{Path: "sbin/mlsgate", Mode: 0o755, Data: binary}}
	for _, ko := range kos {
		data, err := os.ReadFile(ko)
		if err != nil {
			return nil, fmt.Errorf("virtio-net module: %w", err)
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

// XenInitrd writes out: the guest image's initramfs with what a Xen PV
// guest of the Xen backend needs on top, as QEMUInitrd does for QEMU:
// binary as /sbin/mlsgate, xen-netfront from the image's kernel package
// under /lib/modules/extra, and an InitScript /init that loads
// opts.Modules then xen-netfront and starts the update daemon. The guest
// kernel is the image's (Debian's kernel boots as a PV domain; dom0 may
// hold its own copy of the same release). It returns the modules the init
// loads, in order.
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
	modules := append([]string(nil), opts.Modules...)
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
