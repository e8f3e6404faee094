package xendom0

import (
	"context"
	_ "embed"
	"io"
	"path/filepath"

	deployxen "github.com/mlsgate/mlsgate/deploy/xen"
	"github.com/mlsgate/mlsgate/loader/image"
)

//go:embed guest-init.sh
var guestInit string

// The image types, under the names the tests use.
type (
	Image      = image.XenImage
	RunOptions = image.XenRunOptions
	Result     = image.XenResult
)

// Paths and addresses inside dom0, for the tests that run there.
const (
	// GuestKernel is the guests' raw vmlinux.
	GuestKernel = image.XenGuestKernel
	// GuestRamdisk is the tiny test guest's initramfs (guest-init.sh).
	GuestRamdisk = image.XenTestGuestRamdisk
	// VifScript is mlsgate's hotplug script (deploy/xen/vif-mlsgate) in
	// /etc/xen/scripts, for the xl config's vif script=
	// (loader/backend.Xen.Script). It reads its settings from VifDefaults.
	VifScript   = deployxen.VifScriptName
	VifDefaults = image.XenVifDefaults
	// XenBin holds xl's helpers and the Xen daemons.
	XenBin = image.XenBin
	// DefaultTimeout bounds a Run without its own.
	DefaultTimeout = image.XenDefaultTimeout
)

// XenPackages, Dom0Modules and GuestModules are loader/image's lists.
var (
	XenPackages  = image.XenPackages
	Dom0Modules  = image.XenDom0Modules
	GuestModules = image.XenTestGuestModules
)

// Options are what the tests' dom0 image is built with: mlsgate's vif
// script and the tiny test guest.
func Options() image.XenOptions {
	return image.XenOptions{VifScript: deployxen.VifScript, VifScriptName: deployxen.VifScriptName, TestGuestInit: guestInit}
}

// CacheDir is where the dom0 images are kept when Prepare gets no
// directory: the xen folder of the guest image cache.
func CacheDir() string { return image.XenCacheDir("") }

// Prepare is image.PrepareXen with Options. cacheDir, when set, is the xen
// folder of a guest image cache (CacheDir's form).
func Prepare(ctx context.Context, cacheDir string, log io.Writer) (*Image, error) {
	root := ""
	if cacheDir != "" {
		root = filepath.Dir(cacheDir)
	}
	return image.PrepareXen(ctx, root, Options(), log)
}
