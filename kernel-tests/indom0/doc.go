// Package indom0 holds tests that run only inside the Xen dom0 of
// kernel-tests/xendom0 (Debian's kernel as a PV dom0 under Xen 4.17, in
// QEMU): the mlsgate agent on real netback vifs of guests created with
// `xl create` through loader/backend.Xen.
//
// Every test begins with requireDom0, which skips unless MLSGATE_IN_DOM0=1
// (xendom0.Run sets it), so `go test ./...` on a host skips them all.
// kernel-tests' TestPrivilegedXen builds this package as a static binary and
// runs it in dom0, with the static mlsgate binary beside it.
package indom0
