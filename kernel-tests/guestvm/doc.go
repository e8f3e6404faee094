// Package guestvm boots Debian's own kernel (the package behind
// linux-image-amd64) under QEMU and runs one static binary in it, for the
// tests the development kernel cannot run: the ESP transform, XFRM states and
// policies that keep their security context, and SELinux with a loaded MLS
// policy.
//
// Prepare installs what it needs (as root, with apt-get), downloads the
// kernel, extracts an uncompressed vmlinux (QEMU's PVH entry boots it seconds
// faster than the bzImage under TCG), compiles a small MLS policy written by
// PolicySource, builds offline an SELinux module store whose base is
// BasePolicySource (BuildStore) and packs an initramfs with busybox,
// iproute2's ip, the kernel modules of the tests, Debian's SELinux userland
// (SELinuxUserland: semodule, load_policy, checkmodule, ...), the store and
// this package's init. The init loads the test policy (PolicySource, which
// declares the test applications' types); `load_policy` in the guest swaps
// in the store's base, where an application's types come only from the
// module its bundle brings, installed with semodule. The result is cached under a
// directory keyed by the kernel's version and a hash of every input, so a
// second Prepare costs a few milliseconds. Each Prepare marks the image it
// returns as used; a build prunes the images unused for PruneAge and the
// kernel packages none of the others came from (Prune). (*Image).Run boots it, with KVM
// when /dev/kvm really runs a guest and TCG otherwise, and runs a binary from
// a host directory shared over 9p; its output and exit code come back through
// that directory, the serial console is kept for diagnostics.
//
// It is a test harness: it runs host commands (apt-get, dpkg-deb, depmod,
// modprobe, checkpolicy, checkmodule, semodule -p, xz, qemu-system-x86_64) and is imported only by
// tests. It never touches the host's network or kernel state.
package guestvm
