// Package updatedaemon is the paper's update daemon ("update-d", sections 3.1
// and 5.2.1): the service inside every guest that accepts policy updates
// from the host's VMLoad service, and from nothing else, and applies them to
// the guest. It holds both ends: the daemon (Daemon) that runs in the guest,
// and the Client the loader pushes bundles with.
//
// # Protocol
//
// HTTPS over TCP, TLS 1.3 only, mutually authenticated by the policy store's
// certificate authority (package policystore/ca):
//
//   - The daemon presents its Guest certificate. The loader checks it with
//     ca.CA.ClientTLS: chained to the CA, serverAuth, naming the guest's
//     address, not revoked.
//   - The loader presents a Client certificate. The daemon holds only the
//     CA certificate (ca.pem) and, optionally, a CRL file (crl.pem); it
//     accepts a client whose certificate chains to that CA, carries the
//     clientAuth usage, has the loader's common name (DefaultLoaderName unless
//     configured) and is not on the CRL. Anything else fails the TLS
//     handshake, before a byte of HTTP is read: no certificate, another CA's,
//     a Server certificate (serverAuth only), another guest's Guest
//     certificate (right usage, wrong name), a revoked one. The CRL's
//     signature is checked against the CA, an expired CRL refuses every
//     client, and the file is read again when it changes.
//
// Endpoints:
//
//	POST /v1/bundle   body: the JSON of policystore.Bundle.GuestPart, at most
//	                  MaxBundleBytes → 200 Report, or an error body
//	GET  /v1/status   → Status: the guest's identity and what it applied last
//
// Error bodies are JSON {"error": reason, "code": code, "report": ...} with
// 400 (malformed bundle), 413 (over MaxBundleBytes), 415 (not JSON),
// 409 (stale version, same version with other content, other application),
// 421 (a bundle for another guest) and 500 (applying failed; the report says
// what was rolled back and what was not). The Client turns them into *Error
// values that errors.Is matches against ErrStale, ErrConflict and the other
// sentinels.
//
// # Applying a bundle
//
// Daemon.Apply checks before it changes anything: that the bundle is for this
// guest (name and address), that it is for the application the guest
// serves, if it serves one (a guest keeps the application it was loaded for,
// as in the paper's pool: a guest that held one application's data is not
// handed to another), that its version is above the one applied (the same
// version with the same digest is a success that changes nothing), that the
// label-mapper policy parses and every SA and policy is valid, and that it
// carries nothing only the host may hold (server keys, host modules). Then,
// through an Applier, in this order: the guest's SELinux modules (the SAs'
// contexts must be known to the policy before the kernel takes them), the
// label-mapper policy, the XFRM SAs and policies; last the state directory
// records the version, the digest and the bundle (StateFile, written
// atomically), before the answer is sent. A restarted daemon reads it back,
// refuses what is older and, through Daemon.Restore, loads the mapper policy
// and the XFRM set again.
//
// What costs a push its time under emulation is kept off its path: parts
// equal to those in force (a rotation's modules and mapper policy) are not
// applied again; the XFRM changes go to the kernel as one netlink batch
// (xfrm.Handle.Apply); a guest whose SELinux is not active does not compile
// modules it cannot load (the loader checks them); and the daemon warms the
// kernel's ESP cipher before it serves (SystemApplier.Warm). The report
// times every part.
//
// A failure rolls back what came before it: the previous mapper policy, the
// previous XFRM set, and the SELinux modules (one semodule transaction
// removes the push's own modules and reinstalls the previous bundle's, from
// the bundle the state directory recorded). The report names what could not
// be rolled back, and why.
//
// SystemApplier is the production Applier: a mapper.Mapper the daemon serves
// itself, agent/xfrm in the daemon's network namespace, selinux.SELinux for the
// modules. FakeApplier records calls for tests of this package and of the
// loader.
//
// The package makes syscalls only through agent/xfrm and the SELinux tools,
// and only from SystemApplier; everything else is tested without privileges.
package updatedaemon
