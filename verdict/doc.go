// Package verdict is the Go reference of the fast-path decision in bpf/lib/ (fastpath.h and the headers it includes):
// given the policy the agent installs (guests on vifs, SAs with labels, peers) and one
// frame, it returns the reason the kernel must return for it.
//
// It exists so that the C verdict has an oracle: kernel-tests runs both on random
// inputs and holds them equal. It is also what `mlsgate status` and dry runs use to
// explain a decision without the kernel. Change it together with bpf/lib.
//
// The package is pure: it must not import netlink, ebpf or x/sys.
package verdict
