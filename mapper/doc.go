// Package mapper is the label mapper: URL regex → label, miss-forwarding to
// other mappers with range limits on their answers, a default label and a cache.
//
// Not built yet: see the policy-store issue. It must not import netlink, ebpf
// or x/sys.
package mapper
