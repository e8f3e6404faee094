// Package xfrm installs IPsec security associations (SAs) and security
// policies, each with its SELinux security context, through the kernel's XFRM
// netlink interface (NETLINK_XFRM), reads them back, and reports the kernel's
// changes to them as they happen. The agent uses it to put the policy store's
// SAs and policies into the kernel and to mirror the kernel's SAs, with their
// contexts, into the fast path's BPF maps.
//
// It exists because github.com/vishvananda/netlink neither sends nor parses
// XFRMA_SEC_CTX, and a labeled SA without its label is worse than none. It
// speaks the protocol itself on a raw netlink socket and keeps to the small
// part of it this project needs. [Handle.Apply] sends many changes in one
// batch (one sendmsg, an ack and an error per change).
//
// # Kernel interface
//
// Every request and answer is a netlink message whose payload is one fixed
// struct from include/uapi/linux/xfrm.h, in host byte order except SPIs,
// ports and addresses, followed by netlink attributes. The sizes on x86-64
// (and every 64-bit Linux ABI), checked by the tests against a C compile of
// the header and against github.com/vishvananda/netlink/nl:
//
//	struct xfrm_selector         56   addresses 0/16, ports 32-38, family 40,
//	                                  prefix lengths 42/43, proto 44, ifindex 48
//	struct xfrm_usersa_info     224   sel 0, id 56 (daddr, spi 72, proto 76),
//	                                  saddr 80, lft 96, curlft 160, stats 192,
//	                                  seq 204, reqid 208, family 212, mode 214,
//	                                  replay_window 215, flags 216
//	struct xfrm_usersa_id        24   daddr 0, spi 16, family 20, proto 22
//	struct xfrm_userpolicy_info 168   sel 0, lft 56, curlft 120, priority 152,
//	                                  index 156, dir 160, action 161
//	struct xfrm_userpolicy_id    64   sel 0, index 56, dir 60
//	struct xfrm_user_tmpl        64   id 0 (daddr, spi 16, proto 20), family 24,
//	                                  saddr 28, reqid 44, mode 48, share 49,
//	                                  optional 50, aalgos/ealgos/calgos 52/56/60
//	struct xfrm_user_expire     232   state 0, hard 224
//	struct xfrm_user_polexpire  176   pol 0, hard 168
//	struct xfrm_algo             68   name[64], key length in bits, key
//	struct xfrm_algo_aead        72   name[64], key bits, ICV bits, key
//	struct xfrm_algo_auth        72   name[64], key bits, truncation bits, key
//	struct xfrm_user_sec_ctx      8   len 0, exttype 2, ctx_alg 4, ctx_doi 5,
//	                                  ctx_len 6, then the context
//
// Note that xfrm_user_sec_ctx is {u16 len; u16 exttype; u8 ctx_alg;
// u8 ctx_doi; u16 ctx_len}: the algorithm comes before the DOI, and both are
// bytes.
//
// # Security contexts
//
// A context is sent as XFRMA_SEC_CTX with DOI 1 (XFRM_SC_DOI_LSM) and
// algorithm 1 (XFRM_SC_ALG_SELINUX), the only pair SELinux accepts, and with
// a trailing NUL counted in ctx_len, exactly as ip-xfrm(8) sends it. The
// kernel checks that len equals 8 + ctx_len, keeps ctx_len bytes as given and
// dumps them back unchanged; the parser drops trailing NULs, so a context
// reads back equal whether its writer sent the NUL or not. With SELinux
// active, a context the loaded policy does not know is refused with EINVAL and
// no further reason; [Handle] then checks the context with
// github.com/opencontainers/selinux (SecurityCheckContext) and, when SELinux
// confirms it is invalid, wraps
// [ErrInvalidContext]. Without an LSM that keeps contexts the kernel accepts
// the attribute and drops it: dumps and events then carry no context.
//
// The kernel's SA notifications (new, updated and deleted SAs) carry the SA's
// context; its policy notifications do not (xfrm_notify_policy puts no
// XFRMA_SEC_CTX), and neither do expire messages. A consumer that needs a
// policy's context re-reads the policies with [Handle.Policies].
//
// # What is supported
//
// SAs in transport and tunnel mode for any protocol the kernel offers (ESP is
// what the project uses), with one AEAD or an authentication and/or
// encryption algorithm, a replay window (in the header up to 255, through
// XFRMA_REPLAY_ESN_VAL above), byte, packet and time limits, an optional
// selector; policies of the main policy type with a selector on addresses,
// protocol and ports, a direction, an action, a priority, a context and up to
// six templates. Not supported: extended sequence numbers, NAT-T
// encapsulation, compression algorithms, marks, interface ids, hardware
// offload, sub-policies (skipped in dumps), SPI allocation and acquire
// messages. Attributes the package does not know are skipped; a malformed
// message is a [*ParseError] naming the message type and the byte offset.
//
// Keys are part of [State] because the kernel needs them and dumps return
// them, but no String, GoString or error of this package prints one.
//
// This package is part of the kernel-facing layer: it makes netlink syscalls
// and may switch network namespaces (on a locked thread that is discarded if
// it cannot switch back). Everything above it should reach it through a small
// interface so it can be tested without privileges.
package xfrm
