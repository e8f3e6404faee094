// Package loader is VMLoad: it authorizes load requests, runs the configuration
// phase, boots guests through the Xen, QEMU/KVM and netns backends, keeps the
// pre-loaded pool and pushes policies to the in-guest update daemon.
//
// Not built yet: see the VMLoad issue. Kernel-facing code stays in backends
// behind small interfaces.
package loader
