// Package inguest holds tests that run only inside the QEMU guest of
// kernel-tests/guestvm, on Debian's own kernel with the ESP transform,
// SELinux and a loaded MLS policy: XFRM states and policies that keep their
// security context, labeled IPsec between network namespaces, the fast
// path attached on a kernel older than tcx, and the update daemon installing
// a bundle's SELinux module with semodule into the image's module store
// (TestGuestSemoduleBundle, which reads examples/ from the share at
// MLSGATE_EXAMPLES).
//
// Every test begins with requireGuest, which skips unless MLSGATE_IN_GUEST=1
// (the guest's init sets it), so `go test ./...` on a host skips them all.
// kernel-tests' TestPrivilegedGuestKernel builds this package as a static
// binary and runs it in the guest; MLSGATE_GUEST_RUN selects tests there.
// Tests use guest-wide state freely (the guest lives for one run) but work in
// network namespaces of their own, and call iproute2 as /usr/sbin/ip: the
// guest's busybox has an ip applet of its own that knows no XFRM contexts.
package inguest
