//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Test and benchmark programs, never attached to an interface.
 *
 * mlsg_probe: the fast-path decision of fastpath.c, with the direction and the
 * secpath taken from skb->cb, because BPF_PROG_TEST_RUN cannot hand a
 * program a packet the host decrypted:
 *   cb[0] direction, cb[1] bit 0 when a secpath is present, bit 1 when a
 *   local socket owned by root sent the packet, cb[2] the secpath's SPI
 *   (host byte order), cb[3] its address family; the reason comes back in
 *   cb[4].
 * mlsg_empty: the floor of a tc program, for benchmarks.
 * mlsg_parse: the parser alone, for benchmarks.
 * mlsg_st_*: the per-packet path cut after one step, for the per-step cost
 *   of benchmarks (each stores what it found in cb[4] so that nothing is
 *   optimised away): mlsg_st_vif the vif lookup and the counter; mlsg_st_parse
 *   adds the parser; mlsg_st_sa adds the SA lookup of an ESP packet; mlsg_st_xfrm
 *   adds bpf_skb_get_xfrm_state (the secpath helper of the vif programs);
 *   mlsg_st_peer adds the peer LPM lookup; mlsg_st_accepts adds the accepts
 *   lookup of the default label.
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
int mlsg_probe(struct __sk_buff *skb)
{
	__u32 why = REASON_MAX;
	int verdict;

	verdict = handle(skb, skb->cb[0] == DIR_EGRESS ? DIR_EGRESS : DIR_INGRESS, &why);
	skb->cb[4] = why;
	return verdict;
}

SEC("tc")
int mlsg_empty(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC;
}

SEC("tc")
int mlsg_parse(struct __sk_buff *skb)
{
	struct pkt p = {};

	return parse(skb, &p) ? TC_ACT_SHOT : TC_ACT_UNSPEC;
}

static __always_inline struct vif *step_vif_of(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct vif *vif = bpf_map_lookup_elem(&mlsg_vifs, &ifindex);

	if (!vif)
		vif = bpf_map_lookup_elem(&mlsg_vifs_big, &ifindex);
	return vif;
}

SEC("tc")
int mlsg_st_vif(struct __sk_buff *skb)
{
	struct vif *vif = step_vif_of(skb);

	skb->cb[4] = vif ? vif->flags : 0;
	count(DIR_INGRESS, REASON_ALLOW_LABELED, skb->len);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int mlsg_st_parse(struct __sk_buff *skb)
{
	struct vif *vif = step_vif_of(skb);
	struct pkt p = {};

	if (!vif || parse(skb, &p))
		return TC_ACT_SHOT;
	skb->cb[4] = vif->flags ^ p.proto;
	count(DIR_INGRESS, REASON_ALLOW_LABELED, skb->len);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int mlsg_st_sa(struct __sk_buff *skb)
{
	struct vif *vif = step_vif_of(skb);
	struct pkt p = {};
	struct sa *sa;

	if (!vif || parse(skb, &p))
		return TC_ACT_SHOT;
	sa = sa_of_esp(&p);
	skb->cb[4] = vif->flags ^ (sa ? sa->flags : 0);
	count(DIR_INGRESS, REASON_ALLOW_LABELED, skb->len);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int mlsg_st_xfrm(struct __sk_buff *skb)
{
	struct vif *vif = step_vif_of(skb);
	struct bpf_xfrm_state xs = {};
	struct pkt p = {};

	if (!vif || parse(skb, &p))
		return TC_ACT_SHOT;
	skb->cb[4] = vif->flags ^ bpf_skb_get_xfrm_state(skb, 0, &xs, sizeof(xs), 0);
	count(DIR_INGRESS, REASON_ALLOW_LABELED, skb->len);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int mlsg_st_peer(struct __sk_buff *skb)
{
	struct vif *vif = step_vif_of(skb);
	struct pkt p = {};
	struct peer *peer;

	if (!vif || parse(skb, &p))
		return TC_ACT_SHOT;
	peer = peer_of(&p, DIR_INGRESS);
	skb->cb[4] = vif->flags ^ (peer ? peer->flags : 0);
	count(DIR_INGRESS, REASON_ALLOW_LABELED, skb->len);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int mlsg_st_accepts(struct __sk_buff *skb)
{
	struct vif *vif = step_vif_of(skb);
	struct pkt p = {};
	struct peer *peer;

	if (!vif || parse(skb, &p))
		return TC_ACT_SHOT;
	peer = peer_of(&p, DIR_INGRESS);
	skb->cb[4] = vif->flags ^ (peer ? range_accepts(0, peer->range_id) : 0);
	count(DIR_INGRESS, REASON_ALLOW_LABELED, skb->len);
	return TC_ACT_UNSPEC;
}

char __license[] SEC("license") = "Dual BSD/GPL";
