// Package label is mlsgate's model of SELinux MLS labels: sensitivities
// s0..s15, category sets c0..c1023, integrity levels i0..i15, the
// dominance order on them, and the parsers and printers for the text forms
// users write in policy ("s2:c1-s9:c1.c4", "s3:c1,c2/i5", "s6-s15/i5-i15").
//
// It is the Go reference for every label decision: the BPF fast path
// compares the same values in C, and a differential test holds the two
// equal. For that reason CategorySet uses the kernel's bit layout, and the
// hot comparisons (Dominates, Contains) never allocate.
//
// Integrity is not part of SELinux MLS. Following the paper's PIDSI idea,
// the policy assigns an integrity level to each SELinux type
// (IntegrityPolicy), so program and trusted-server types rank above data.
//
// This package is pure decision logic and must stay that way: it uses the
// standard library only and must not import netlink, ebpf (cilium/ebpf) or
// golang.org/x/sys, so that it builds and tests anywhere, without privileges.
package label
