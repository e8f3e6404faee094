// Package backend holds the loader's VM backends, each a loader.Backend:
//
//   - Netns: a network namespace per guest, joined to the host by a veth pair
//     whose host end is vif<VM>.0, with the update daemon started inside it.
//     For development and tests: no kernel of its own, but the same
//     host-side interface names, addresses and daemon as a real guest.
//   - QEMU: a QEMU/KVM (or TCG) guest with a tap named vif<VM>.0.
//   - Xen: a paravirtualized domain created paused with the xl toolstack;
//     its backend interface is vif<domid>.0, named by the toolstack and
//     routed by mlsgate's hotplug script (deploy/xen/vif-mlsgate), and the
//     guest runs only once the agent reports that vif attached.
//
// All three give the guest its link addresses the same way the guest's init
// expects them (InitScript, the mlsgate.* kernel command-line keys) and wait,
// bounded by the caller's context, until the guest's update daemon accepts
// TCP connections from the host side. A Boot that fails removes what it made;
// Destroy is idempotent.
//
// The backends run host commands (ip, qemu-system-x86_64, xl) and change the
// host's network configuration; they never log, and report progress only
// through an optional callback. This package must not import the agent, the
// BPF loader or the policy store: it knows guests, not policies.
package backend
