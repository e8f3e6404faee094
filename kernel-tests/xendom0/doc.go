// Package xendom0 boots Xen 4.17 with Debian's own kernel as its dom0 under
// QEMU and runs one static binary in that dom0, for the tests that need a
// real Xen toolstack: guests created with `xl create`, netback vifs
// (vif<domid>.0) routed by mlsgate's hotplug script, pause, unpause and
// destroy.
//
// Prepare builds the image from Debian packages at test time: the kernel
// through kernel-tests/guestvm (the same package, download cache and
// initramfs writer), the hypervisor and the Xen userspace from
// xen-hypervisor-4.17-amd64, xen-utils-4.17 and their libraries (downloaded
// with apt-get download, never installed on the host). The dom0 initramfs
// holds busybox, iproute2's ip, the Xen daemons and xl with their libraries,
// the dom0 modules (xen-netback, the fast path's clsact and cls_bpf, the
// ESP transform for the demo's labeled IPsec),
// mlsgate's vif hotplug script (deploy/xen/vif-mlsgate, as VifScript) and a
// guest payload: the raw vmlinux (GuestKernel) and a tiny guest initramfs
// (GuestRamdisk) whose init brings eth0 up from the loader backend's
// mlsgate.* keys and pings the gateway from its own address and from a
// spoofed one (and, when asked, impersonates another guest). The result is
// cached beside guestvm's images, keyed by every input.
//
// (*Image).Run boots it with QEMU's TCG (nested Xen has no KVM here): Xen
// gets two vCPUs, dom0 one, pinned. The dom0 init starts xenstored,
// xen-init-dom0 and xenconsoled (no bridge: each vif is routed), mounts the
// host's 9p share at /mnt and runs the job there; output and exit code come
// back through the share.
//
// It is a test harness, imported only by tests: it runs host commands
// (apt-get, dpkg-deb, depmod, modprobe, xz, qemu-system-x86_64) and never
// touches the host's network or kernel state.
package xendom0
