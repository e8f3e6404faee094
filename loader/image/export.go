package image

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// The helpers below let other harnesses in kernel-tests (kernel-tests/xendom0
// builds a Xen dom0 from the same kernel) reuse this package's kernel
// download and initramfs writer. They behave exactly as Prepare's own steps.

// KernelPackage returns the cached .deb of the kernel linux-image-amd64 names
// today (downloading it into cacheDir/debs first if needed), with its
// release (uname -r) and Debian version. cacheDir empty means
// DefaultCacheDir.
func KernelPackage(ctx context.Context, cacheDir string, log io.Writer) (deb, release, version string, err error) {
	if log == nil {
		log = io.Discard
	}
	if cacheDir == "" {
		cacheDir = DefaultCacheDir()
	}
	if err := ensureTools(ctx, log); err != nil {
		return "", "", "", err
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", "", "", fmt.Errorf("guest cache %s: %w (set MLSGATE_GUEST_CACHE to a writable directory)", cacheDir, err)
	}
	pkg, release, version, err := resolveKernel(ctx, cacheDir, log)
	if err != nil {
		return "", "", "", err
	}
	unlock, err := lockDir(ctx, cacheDir)
	if err != nil {
		return "", "", "", err
	}
	defer unlock()
	deb, err = fetchKernel(ctx, cacheDir, pkg, version, log)
	return deb, release, version, err
}

// UnpackKernel unpacks the kernel package deb into dir/kroot, runs depmod on
// it and extracts the uncompressed vmlinux into dir. It returns kroot and the
// kernel's file name in dir ("vmlinux", or "vmlinuz" when no ELF could be
// extracted).
func UnpackKernel(ctx context.Context, deb, release, dir string) (kroot, kernel string, err error) {
	kroot = filepath.Join(dir, "kroot")
	if err := run(ctx, "", nil, "dpkg-deb", "-x", deb, kroot); err != nil {
		return "", "", fmt.Errorf("unpack %s: %w", deb, err)
	}
	if err := run(ctx, "", nil, "depmod", "-b", kroot, release); err != nil {
		return "", "", fmt.Errorf("depmod the unpacked kernel %s: %w", release, err)
	}
	kernel, err = extractVmlinux(ctx, filepath.Join(kroot, "boot", "vmlinuz-"+release), dir)
	return kroot, kernel, err
}

// StageBusybox copies the static busybox into the initramfs tree stage as
// /bin/busybox and links its applets, except ip (see StageDynamic).
func StageBusybox(ctx context.Context, stage string) error { return addBusybox(ctx, stage) }

// StageDynamic copies the host command name to dst in stage with its ELF
// interpreter and shared libraries.
func StageDynamic(stage, name, dst string) error { return addDynamic(stage, name, dst) }

// StageModules copies modules and their dependencies from the kernel
// unpacked at kroot into stage and runs depmod there; it returns how many
// module files it copied.
func StageModules(ctx context.Context, kroot, release, stage string, modules []string) (int, error) {
	return addModules(ctx, kroot, release, stage, modules)
}

// StageSELinux gives the initramfs tree stage what a guest's does to
// install SELinux modules at run time: SELinuxUserland with its libraries,
// and a module store built from BasePolicySource under /etc/selinux and
// /var/lib/selinux (BuildStore; work is a scratch directory). After
// load_policy, semodule -i installs a bundle's modules there, as the
// update daemon and the host agent (selinux.SELinux) do.
func StageSELinux(ctx context.Context, stage, work string) error {
	store := filepath.Join(work, "selinux-root")
	if err := BuildStore(ctx, store); err != nil {
		return err
	}
	return addSELinux(stage, store)
}

// WriteInitramfs packs the tree at stage into the newc archive out, as
// Prepare packs its own (deterministic, with /dev/console).
func WriteInitramfs(stage, out string) error { return writeArchive(stage, out) }

// CheckStatic fails for a dynamically linked executable.
func CheckStatic(path string) error { return checkStatic(path) }

// LockDir takes an exclusive lock on dir/.lock, waiting until ctx ends; the
// returned function releases it. Prepare serialises its builds with it.
func LockDir(ctx context.Context, dir string) (func(), error) { return lockDir(ctx, dir) }

// FindTool finds a host command in PATH or the sbin directories, which a
// normal user's PATH may lack.
func FindTool(name string) (string, error) { return findTool(name) }

// CopyFile copies src (following links) to dst with mode, creating dst's
// directory.
func CopyFile(src, dst string, mode fs.FileMode) error { return copyFile(src, dst, mode) }
