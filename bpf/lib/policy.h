/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The decision on a parsed packet: anti-spoofing, link control, the SA of
 * an ESP packet or of a secpath, and the peer. Every dominance question
 * was answered by the planner (bpf/lattice.go): the decision tests flags
 * and bits. The includer defines fp_secpath() (fastpath.h).
 */
#ifndef MLSGATE_POLICY_H
#define MLSGATE_POLICY_H

#include <linux/bpf.h>
#include <bpf/bpf_endian.h>

#include "addr.h"
#include "control.h"
#include "maps.h"
#include "parse.h"

static __always_inline struct peer *peer_of(const struct pkt *p, int dir)
{
	struct peer_key k = {};

	k.family = p->family;
	k.prefixlen = 8 + (p->family == AF_INET ? 32 : 128);
	addr_copy(k.addr, dir == DIR_INGRESS ? p->daddr : p->saddr, p->family);
	return bpf_map_lookup_elem(&mlsg_peers, &k);
}

static __always_inline struct sa *sa_by_slot(__u32 spi, int family)
{
	__u32 slot = spi - cfg.spi_base;
	struct sa *sa;

	sa = bpf_map_lookup_elem(&mlsg_sa_slots, &slot);
	if (!sa || !(sa->flags & SA_F_VALID) || sa->family != family)
		return 0;
	return sa;
}

static __always_inline int spi_in_slots(__u32 spi)
{
	return spi >= cfg.spi_base && spi - cfg.spi_base < cfg.spi_slots;
}

/* The SA of an ESP packet on the wire: {family, outer daddr, SPI}. */
static __always_inline struct sa *sa_of_esp(const struct pkt *p)
{
	struct sa_key k = {};
	struct sa *sa;

	if (spi_in_slots(p->spi)) {
		sa = sa_by_slot(p->spi, p->family);
		if (!sa || !addr_eq(sa->daddr, p->daddr, p->family))
			return 0;
		return sa;
	}
	k.spi = p->spi;
	k.family = p->family;
	addr_copy(k.daddr, p->daddr, p->family);
	return bpf_map_lookup_elem(&mlsg_sas, &k);
}

/* The SA the host decrypted the packet with. Its destination is one of the
 * host's own addresses, which the secpath does not tell. */
static __always_inline struct sa *sa_of_secpath(__u32 spi, int family)
{
	struct sa_key k = {};

	if (spi_in_slots(spi))
		return sa_by_slot(spi, family);
	k.spi = spi;
	k.family = family;
	return bpf_map_lookup_elem(&mlsg_sas, &k);
}

/* An SA may carry only its owner's traffic, for its owner's application,
 * at a label within the owner's range. */
static __always_inline int check_sa(const struct sa *sa, const struct vif *vif)
{
	if (!sa)
		return REASON_DENY_UNKNOWN_SA;
	if (sa->owner_vm != vif->vm_id)
		return REASON_DENY_FOREIGN_SA;
	if (sa->app_id != vif->app_id)
		return REASON_DENY_APP_MISMATCH;
	if (!(sa->flags & SA_F_IN_OWNER_RANGE))
		return REASON_DENY_LABEL_RANGE;
	return REASON_ALLOW_LABELED;
}

/* The peer accepts the label: bit range_id of the label's accepts bitmap. */
static __always_inline int range_accepts(__u32 label_id, __u16 range_id)
{
	const struct label_accepts *a = bpf_map_lookup_elem(&mlsg_accepts, &label_id);
	__u32 r = range_id & (RANGES_MAX - 1);

	return a && (a->ranges[r / 64] >> (r % 64)) & 1;
}

/* The other end must accept this application and this label. */
static __always_inline int check_peer(const struct pkt *p, int dir, __u32 app_id, __u32 label_id)
{
	struct peer *peer;

	peer = peer_of(p, dir);
	if (!peer)
		return REASON_DENY_PEER_RANGE;
	if (peer->app_id && peer->app_id != app_id)
		return REASON_DENY_APP_MISMATCH;
	if (!range_accepts(label_id, peer->range_id))
		return REASON_DENY_PEER_RANGE;
	return REASON_ALLOW_LABELED;
}

/* Plain traffic travels at the default label: the peer must accept it
 * and the guest's application. */
static __always_inline int check_peer_default(const struct pkt *p, int dir, __u32 app_id)
{
	struct peer *peer;

	peer = peer_of(p, dir);
	if (!peer)
		return REASON_DENY_PEER_RANGE;
	if (peer->app_id && peer->app_id != app_id)
		return REASON_DENY_APP_MISMATCH;
	if (!(peer->flags & PEER_F_ACCEPTS_DEFAULT))
		return REASON_DENY_PEER_RANGE;
	return REASON_ALLOW_DEFAULT;
}

/* The verdict on a parsed packet. A global function: the verifier checks
 * it once with the packet's fields unknown, not once for every way the
 * parser can end (inlined, that walked ~820,000 instructions of the
 * verifier's 1,000,000 limit). The pointers are never NULL; the check is
 * for the verifier. */
static __always_inline int decide(struct __sk_buff *skb, struct pkt *p, const struct vif *vif,
				  __u32 dir, __u32 *label_id)
{
	struct sa *sa;
	int r;

	const __u8 *guest;
	int own;

	if (!p || !vif || !label_id)
		return REASON_DENY_MALFORMED;
	/* Anti-spoof first: every frame from the guest carries its MAC. */
	if (dir == DIR_INGRESS && !mac_zero(vif->mac) &&
	    (p->smac_hi != *(const __u32 *)vif->mac || p->smac_lo != *(const __u16 *)(vif->mac + 4)))
		return REASON_DENY_SPOOFED;
	if (p->family == 0)
		return p->ethertype == bpf_htons(ETH_P_ARP) ? mlsg_arp(skb, p, vif, dir)
							       : REASON_DENY_UNLABELED;

	/* The guest's side of the packet: its source from the guest, its
	 * destination toward it. A family without a declared address has no
	 * source the guest may use but the link-control ones (:: and its
	 * link-local address for ND/MLD/DHCPv6, 0.0.0.0 for DHCP). */
	guest = p->family == AF_INET ? vif->addr4 : vif->addr6;
	own = set_and_eq(guest, dir == DIR_INGRESS ? p->saddr : p->daddr, p->family);
	if (p->proto == IPPROTO_ESP) {
		/* never control: the source (from the guest) or destination
		 * (toward it) is the guest's, then the SA decides */
		if (!own)
			return REASON_DENY_SPOOFED;
		sa = sa_of_esp(p);
		if (sa)
			*label_id = sa->label_id;
		return check_sa(sa, vif);
	}
	r = maybe_control(p) ? mlsg_control(skb, p, vif, dir, own) : 0;
	if (r == REASON_ALLOW_CONTROL)
		return r;
	if (dir == DIR_INGRESS) {
		/* ND and MLD may come from the guest's link-local address or
		 * ::; everything else only from the guest's address. */
		if (r == REASON_DENY_CONTROL)
			return own || set_and_eq(vif->ll6, p->saddr, AF_INET6) || addr_zero(p->saddr, AF_INET6)
				       ? REASON_DENY_CONTROL
				       : REASON_DENY_SPOOFED;
		if (!own)
			return REASON_DENY_SPOOFED;
	} else if (r) {
		return r;
	} else if (!own) {
		/* Toward the guest, data is addressed to the guest: on a shared
		 * bridge another guest's frames (to the host, to broadcast or
		 * multicast) would otherwise reach it. */
		return REASON_DENY_SPOOFED;
	}

	struct bpf_xfrm_state xs = {};

	if (fp_secpath(skb, &xs) == 0) {
		p->spi = bpf_ntohl(xs.spi);
		sa = sa_of_secpath(p->spi, xs.family);
		r = check_sa(sa, vif);
		if (r != REASON_ALLOW_LABELED)
			return r;
		*label_id = sa->label_id;
		return check_peer(p, dir, sa->app_id, sa->label_id);
	}

	if (!(vif->flags & VIF_F_ALLOW_UNLABELED))
		return REASON_DENY_UNLABELED;
	if (!(vif->flags & VIF_F_DEFAULT_IN_RANGE))
		return REASON_DENY_LABEL_RANGE;
	return check_peer_default(p, dir, vif->app_id);
}

#endif
