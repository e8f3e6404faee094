// Package xendom0 is the kernel tests' view of the product dom0 image
// (loader/image.PrepareXen): Xen 4.17 with Debian's own kernel as its dom0,
// booted under QEMU, running one static binary in that dom0, for the tests
// that need a real Xen toolstack (xl create, netback vifs routed by
// mlsgate's hotplug script, pause, unpause, destroy).
//
// It builds nothing itself: it names loader/image's types and paths as the
// tests were written against them, and adds the tiny test guest
// (guest-init.sh, at GuestRamdisk) whose init brings eth0 up from the loader
// backend's mlsgate.* keys and pings the gateway from its own address and
// from a spoofed one (and, when asked, impersonates another guest). Only
// tests import this package; nothing shipped may (a layering test in
// cmd/mlsgate checks).
package xendom0
