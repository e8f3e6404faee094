// Package ca is the policy store's certificate authority: the paper's
// policy store "creates a new key for each of the web servers and signs it"
// so that IPsec tunnels can be authenticated, and VMLoad talks to the update
// daemon inside each guest over mutually authenticated TLS.
//
// # Trust model
//
// One self-signed root (ECDSA P-256, path length 0: it signs leaves only)
// lives in a directory on the host, readable by the policy store alone. Every
// party that trusts the CA holds ca.pem and nothing else; every leaf gets its
// own fresh key, generated here and handed to its owner once. The kinds of
// leaf and where each is used:
//
//   - Server: a web server taking part in an application. It proves its
//     identity to the host when an IPsec tunnel is set up to it (the paper's
//     "IPsec certificates ... installed during the VM load"). Extended key
//     usage serverAuth; at least one DNS name or IP.
//   - Guest: a guest VM. Its update daemon is a TLS server that the loader
//     connects to, and the guest is also an IPsec peer of its dom0, so it is
//     both a server and a client: serverAuth and clientAuth.
//   - Client: the loader (VMLoad) itself, the client of every update daemon.
//     clientAuth only, so a stolen web server key cannot push policy into a
//     guest.
//
// Verify, ServerTLS and ClientTLS accept a peer only if its certificate
// chains to this CA (never the system roots), is inside its validity period
// at the CA's clock, carries the usage the role needs and is not revoked.
// Revocation is checked against the CA's live list at every handshake, also
// on TLS session resumption, so Revoke takes effect for new connections at
// once; peers that do not share the process use the CRL.
//
// # Storage
//
// The directory is created 0700; an existing one must be a real directory
// owned by this uid that group and others cannot write (it is then made
// 0700), and the key and certificate are read with O_NOFOLLOW, so a local
// user cannot plant a key or a link to one (package secretfile). It holds ca.pem (0644), ca-key.pem (0600,
// PKCS#8), issued/<serial>.pem (every certificate ever issued, the serial in
// lower-case hex, as `openssl ca` keeps newcerts/), revoked/<serial>.json
// (reason and time) and crlnumber (the last CRL number, decimal). Each file
// is written to a temporary file, synced, renamed into place and the
// directory synced, so a crash leaves either the old or the new file, never
// half of one; temporaries left behind by a crash are removed by the next
// Open. A file that does not parse is an error naming the file and the fix.
//
// One process at a time owns the directory: Open takes an exclusive flock on
// the file LOCK (from the standard syscall package), which the kernel
// releases when the process dies, so a crash never leaves a stale lock to
// clean by hand. Systems without flock fall back to creating LOCK with
// O_EXCL; there a crashed holder leaves it behind and the error says to
// remove it. Within the process a CA is safe for concurrent use.
//
// The package uses the standard library only; like the rest of policystore
// it must not import netlink, ebpf or golang.org/x/sys.
package ca
