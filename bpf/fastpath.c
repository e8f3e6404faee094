//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The tc programs attached to both directions of every managed vif. */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

static __always_inline int fp_secpath(struct __sk_buff *skb, struct bpf_xfrm_state *xs)
{
	return bpf_skb_get_xfrm_state(skb, 0, xs, sizeof(*xs), 0);
}

static __always_inline int fp_root_socket(struct __sk_buff *skb)
{
	return bpf_get_socket_uid(skb) == 0; /* no socket: overflowuid */
}

#include "lib/fastpath.h"

/* Types that Go needs (bpf2go -type) but no map or program names. */
struct btf_anchor {
	enum direction dir;
	enum reason reason;
	enum vif_flag vif_flag;
	enum sa_flag sa_flag;
	enum peer_kind peer_kind;
	enum peer_flag peer_flag;
	struct event event;
};
const struct btf_anchor *_btf_anchor __attribute__((unused));

/* Hide the direction from the optimiser. With it constant, clang
 * specialises handle() into code that runs ~25 ns slower per ESP packet
 * (measured with BPF_PROG_TEST_RUN: 81 ns against 54 ns with this, on an
 * EPYC VM; the probe, whose direction comes from skb->cb, ran 51 ns); the
 * verdict is the same either way. */
#define opaque(x) asm volatile("" : "+r"(x))

SEC("tc")
int mlsg_ingress(struct __sk_buff *skb)
{
	__u32 why, dir = DIR_INGRESS;

	opaque(dir);
	return handle(skb, dir, &why);
}

SEC("tc")
int mlsg_egress(struct __sk_buff *skb)
{
	__u32 why, dir = DIR_EGRESS;

	opaque(dir);
	return handle(skb, dir, &why);
}

char __license[] SEC("license") = "Dual BSD/GPL";
