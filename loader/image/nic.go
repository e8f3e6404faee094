package image

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// virtioNetModules are the module files, in load order, of the virtio-net
// driver a QEMU-backend guest needs for its NIC: the test image does not
// pack them (its guests talk over 9p and veth pairs only).
var virtioNetModules = []string{"net/core/failover.ko", "drivers/net/net_failover.ko", "drivers/net/virtio_net.ko"}

// xenNetfrontModules are the module files of the Xen PV network driver a
// Xen-backend guest needs for its vif.
var xenNetfrontModules = []string{"drivers/net/xen-netfront.ko"}

// KernelPackagePath is the cached .deb the image's kernel came from, in
// cacheDir/debs (DefaultCacheDir when empty).
func (img *Image) KernelPackagePath(cacheDir string) (string, error) {
	if cacheDir == "" {
		cacheDir = DefaultCacheDir()
	}
	deb := filepath.Join(cacheDir, "debs", debName("linux-image-"+img.KernelRelease, img.PackageVersion))
	if _, err := os.Stat(deb); err != nil {
		return "", fmt.Errorf("no kernel package for %s under %s/debs: %w (prune removed it? remove %s and build the image again)",
			img.KernelRelease, cacheDir, err, img.Dir)
	}
	return deb, nil
}

// VirtioNet extracts the virtio-net driver's modules from the image's
// kernel package (cacheDir as for KernelPackagePath) into dir and returns
// their host paths in load order.
func (img *Image) VirtioNet(ctx context.Context, cacheDir, dir string) ([]string, error) {
	return img.extractModules(ctx, cacheDir, dir, "virtio-net", virtioNetModules)
}

// XenNetfront extracts the Xen PV network driver (xen-netfront) from the
// image's kernel package into dir, as VirtioNet does for QEMU guests.
func (img *Image) XenNetfront(ctx context.Context, cacheDir, dir string) ([]string, error) {
	return img.extractModules(ctx, cacheDir, dir, "xen-netfront", xenNetfrontModules)
}

func (img *Image) extractModules(ctx context.Context, cacheDir, dir, what string, modules []string) ([]string, error) {
	deb, err := img.KernelPackagePath(cacheDir)
	if err != nil {
		return nil, err
	}
	if _, err := findTool("dpkg-deb"); err != nil {
		return nil, fmt.Errorf("%w: %v (apt-get install dpkg)", ErrMissingTools, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	rel := "./lib/modules/" + img.KernelRelease + "/kernel/"
	members := make([]string, len(modules))
	for i, m := range modules {
		members[i] = rel + m
	}
	script := `deb=$1 dir=$2; shift 2; dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir" "$@"`
	cmd := exec.CommandContext(ctx, "sh", append([]string{"-c", script, "sh", deb, dir}, members...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("extract %s from %s: %v\n%s", what, deb, err, tail(string(out), 1000))
	}
	paths := make([]string, len(members))
	for i, m := range members {
		paths[i] = filepath.Join(dir, m)
	}
	return paths, nil
}
