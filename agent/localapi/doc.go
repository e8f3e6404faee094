// Package localapi serves the host's admin APIs (agent, loader, policy
// store, label mapper) on Unix sockets and decides who may use them.
//
// Everything that changes or reveals policy is served only here: TCP
// listeners carry metrics and health (and the loader's guest-facing
// endpoints). Each connection's peer is read with SO_PEERCRED when it is
// accepted; a request is served only when the peer is root, the user the
// server runs as, or a member (primary or supplementary, as os/user sees
// it) of the configured group. Anyone else gets 403 with the rule. The
// socket file is made 0660 root:group (0600 without a group) in a 0750
// directory, so the file mode and the peer check agree; the peer check is
// the one that counts.
//
// The package also holds the client side (dial a socket, refuse a TCP
// address for an admin command) and a small sd_notify for readiness.
//
// It sits in the agent layer because it makes syscalls (x/sys/unix):
// policystore, mapper and label stay pure, and the commands that serve
// them wrap their handlers with it.
package localapi
