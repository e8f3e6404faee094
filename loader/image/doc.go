// Package image builds and caches the guest images the loader's backends
// boot: Debian's own kernel (the package behind linux-image-amd64), its
// modules, an initramfs with busybox, iproute2's ip, Debian's SELinux
// userland and an offline-built SELinux module store, and boots them under
// QEMU to run one static binary (the demo and the bench run their scenario
// that way; the tests run their test binaries that way).
//
// Prepare installs what it needs (as root, with apt-get), downloads the
// kernel, extracts an uncompressed vmlinux (QEMU's PVH entry boots it seconds
// faster than the bzImage under TCG), compiles a small MLS policy written by
// PolicySource, builds offline an SELinux module store whose base is
// BasePolicySource (BuildStore) and packs an initramfs with busybox,
// iproute2's ip, the kernel modules in Modules, Debian's SELinux userland
// (SELinuxUserland: semodule, load_policy, checkmodule, ...), the store and
// this package's init. The init loads PolicySource's policy (which declares
// the applications' types); `load_policy` in the guest swaps in the store's
// base, where an application's types come only from the module its bundle
// brings, installed with semodule. The result is cached under a directory
// keyed by the kernel's version and a hash of every input (Key), so a second
// Prepare costs a few milliseconds. Each Prepare marks the image it returns
// as used; a build prunes the images unused for PruneAge and the kernel
// packages none of the others came from (Prune; List shows the cache).
// (*Image).Run boots an image, with KVM when /dev/kvm really runs a guest and
// TCG otherwise, and runs a binary from a host directory shared over 9p; its
// output and exit code come back through that directory, the serial console
// is kept for diagnostics. `mlsgate image build|list|prune` is the operator's
// front end.
//
// PrepareXen builds the Xen host the xen backend runs on: Xen 4.17's
// hypervisor and userspace (Debian packages, downloaded and unpacked, never
// installed), the same Debian kernel as dom0 (and as the PV guests' raw
// vmlinux), mlsgate's vif hotplug script (XenOptions.VifScript, from
// deploy/xen) and the SELinux userland with the module store, so the host's
// modules are installed with semodule in dom0 as the guests' are. It is
// cached beside the guest images (XenCacheDir), keyed the same way, listed
// and pruned with them; (*XenImage).Run boots it under QEMU and runs one
// static binary in dom0. kernel-tests/xendom0 is the tests' view of it.
//
// The Stage* helpers, LockDir, FindTool and CopyFile let other image builders
// reuse the same download cache and initramfs writer.
//
// It runs host commands (apt-get, dpkg-deb, depmod, modprobe, checkpolicy,
// checkmodule, semodule -p, xz, qemu-system-x86_64) and never touches the
// host's network or kernel state. It imports nothing of mlsgate (callers
// pass the vif script, deploy/xen's VifScript): the
// loader, its backends, bench, cmd/mlsgate and kernel-tests import it, and it
// must never import kernel-tests (a layering test in cmd/mlsgate checks).
package image
