// Package policystore is the policy store of the paper's Loader VM
// (sections 3.1, 3.2 and 5.1): it keeps the web applications the host may
// load, resolves URLs to them, and generates and checks the policy bundles
// that configure a guest for one application.
//
//   - Applications are data (Application, loaded from YAML by LoadFile and
//     LoadDir with file:line errors): servers with their secrecy/integrity
//     ranges, URL patterns, finer label rules, PIDSI integrity per SELinux
//     type, and who may ask for the application. examples/analyst holds the
//     paper's analyst application.
//   - Store keeps them in a bbolt file, local applications replaced as a
//     whole set and applications cached from an upstream authority with an
//     expiry; its Index resolves a URL by host and longest path prefix.
//     Catalog asks the authority (AuthorityClient) on a miss or an expired
//     entry; Handler serves the same API, so a store is also an authority.
//   - GenerateBundle renders the administrator-editable templates
//     (templates/, or a directory given to LoadTemplates) into a Bundle:
//     SELinux modules for guest and host, XFRM policies and SAs carrying
//     SELinux contexts, the guest's label-mapper policy, and certificates
//     from the store's CA (package ca, through CAIssuer).
//   - CheckBundle runs the compliance checks of section 4 (package
//     compliance) before any bundle leaves the store; Catalog.BundleFor is
//     the whole request VMLoad makes.
//
// The package builds plain values and never touches the kernel: it must not
// import netlink, ebpf or x/sys. It starts no program: the bundle's SELinux
// modules are selinux.Module values, which package selinux compiles.
package policystore
