//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Test and benchmark programs, never attached to an interface.
 *
 * probe: the fast-path decision of fastpath.c, with the direction and the
 * secpath taken from skb->cb, because BPF_PROG_TEST_RUN cannot hand a
 * program a packet the host decrypted:
 *   cb[0] direction, cb[1] bit 0 when a secpath is present, bit 1 when a
 *   local socket owned by root sent the packet, cb[2] the secpath's SPI
 *   (host byte order), cb[3] its address family; the reason comes back in
 *   cb[4].
 * empty: the floor of a tc program, for benchmarks.
 * parse_only: the parser alone, for benchmarks.
 */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

static __always_inline int fp_secpath(struct __sk_buff *skb, struct bpf_xfrm_state *xs)
{
	if (!(skb->cb[1] & 1))
		return -2; /* -ENOENT, as the helper says for no secpath */
	xs->spi = bpf_htonl(skb->cb[2]);
	xs->family = skb->cb[3];
	return 0;
}

static __always_inline int fp_root_socket(struct __sk_buff *skb)
{
	return (skb->cb[1] & 2) != 0;
}

#include "lib/fastpath.h"

SEC("tc")
int probe(struct __sk_buff *skb)
{
	__u32 why = REASON_MAX;
	int verdict;

	verdict = handle(skb, skb->cb[0] == DIR_EGRESS ? DIR_EGRESS : DIR_INGRESS, &why);
	skb->cb[4] = why;
	return verdict;
}

SEC("tc")
int empty(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC;
}

SEC("tc")
int parse_only(struct __sk_buff *skb)
{
	struct pkt p = {};

	return parse(skb, &p) ? TC_ACT_SHOT : TC_ACT_UNSPEC;
}

char __license[] SEC("license") = "Dual BSD/GPL";
