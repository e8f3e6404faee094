// Package policystore keeps applications, resolves URLs to applications, and
// generates policy bundles (SELinux modules, XFRM policies and SAs with contexts,
// label-mapper policy, certificates) with compliance checks.
//
// Not built yet: see the policy-store issue. It must not import netlink, ebpf
// or x/sys.
package policystore
