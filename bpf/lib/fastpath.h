/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The fast-path verdict. Included by fastpath.c (the programs on vifs) and
 * fastpath_test.c (the same decision with a secpath taken from skb->cb, so
 * that BPF_PROG_TEST_RUN can exercise the decrypted-by-host path).
 *
 * The includer defines, before including this file:
 *   static __always_inline int fp_secpath(struct __sk_buff *skb,
 *                                         struct bpf_xfrm_state *xs);
 * returning 0 when the packet carries an XFRM state, and
 *   static __always_inline int fp_root_socket(struct __sk_buff *skb);
 * returning 1 when a local socket owned by uid 0 sent the packet.
 *
 * The same decision is written in Go in verdict/; the differential test
 * in kernel-tests holds the two equal. Change both or neither.
 */
#ifndef MLSGATE_FASTPATH_H
#define MLSGATE_FASTPATH_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "types.h"

#define AF_INET 2
#define AF_INET6 10

#define ETH_P_ARP_ 0x0806
#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define VLAN_MAX 2       /* stacked VLAN tags we look through */
#define IPV6_EXT_MAX 8   /* IPv6 extension headers we walk before giving up */
#define PARSE_MAX 512    /* headers must lie in the first PARSE_MAX bytes */
#define ARP_FRAME_MAX 60 /* a 28-byte ARP body padded to the minimum frame */
#define CTRL_L4_MAX 576  /* DHCP, DHCPv6, ND and MLD: UDP or ICMPv6 bytes */

#define IPPROTO_HOPOPTS_ 0
#define IPPROTO_ROUTING_ 43
#define IPPROTO_FRAGMENT_ 44
#define IPPROTO_ESP_ 50
#define IPPROTO_AH_ 51
#define IPPROTO_ICMPV6_ 58
#define IPPROTO_NONE_ 59
#define IPPROTO_DSTOPTS_ 60

#define VERDICT_ALLOW TC_ACT_UNSPEC /* tcx: next program, then pass */
#define VERDICT_DROP TC_ACT_SHOT

volatile const struct config cfg = {
	.enforce = 1,
	.event_sample = 1,
};

/* ifindex -> guest, for ifindex < VIFS_MAX */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, VIFS_MAX);
	__type(key, __u32);
	__type(value, struct vif);
} vifs SEC(".maps");

/* ifindex -> guest, for ifindex >= VIFS_MAX */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VIFS_BIG_MAX);
	__type(key, __u32);
	__type(value, struct vif);
} vifs_big SEC(".maps");

/* label id -> label; id 0 is the default label (s0, i0) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LABELS_MAX);
	__type(key, __u32);
	__type(value, struct mls_label);
} labels SEC(".maps");

/* spi - cfg.spi_base -> SA, for SPIs the host allocated */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SA_SLOTS_MAX);
	__type(key, __u32);
	__type(value, struct sa);
} sa_slots SEC(".maps");

/* {spi, family, daddr} -> SA, for SPIs outside the host's range */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SAS_MAX);
	__type(key, struct sa_key);
	__type(value, struct sa);
} sas SEC(".maps");

/* label id -> the peer ranges that contain the label */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LABELS_MAX);
	__type(key, __u32);
	__type(value, struct label_accepts);
} accepts SEC(".maps");

/* {family, address prefix} -> peer */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, PEERS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct peer_key);
	__type(value, struct peer);
} peers SEC(".maps");

/* dir * REASON_MAX + reason -> packets and bytes */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DIR_MAX * REASON_MAX);
	__type(key, __u32);
	__type(value, struct counter);
} verdicts SEC(".maps");

/* [0]: denials that did not fit in the events ring buffer */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} events_lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_BYTES);
} events SEC(".maps");

/* What the parser found. Addresses are kept in network byte order; an IPv4
 * address sits in the first four bytes. */
struct pkt {
	__u16 ethertype; /* innermost, network byte order */
	__u8 family;     /* AF_INET, AF_INET6, 0 for ARP and other non-IP */
	__u8 proto;  /* L4 protocol, IPPROTO_NONE_ when not reachable */
	__u16 sport, dport;
	__u8 icmp_type;
	__u8 hop;  /* IPv4 TTL, IPv6 hop limit */
	__u16 l3off; /* where the IP (or ARP) header starts */
	__u16 l4off; /* where the L4 header starts */
	__u16 l4len; /* bytes from the L4 header to the end of the IP payload */
	__u32 smac_hi; /* the frame's source MAC, as loaded */
	__u16 smac_lo;
	__u32 spi;
	__u8 saddr[16];
	__u8 daddr[16];
};

static __always_inline int addr_eq(const __u8 *a, const __u8 *b, int family)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	if (family == AF_INET)
		return x[0] == y[0];
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

static __always_inline int addr_zero(const __u8 *a, int family)
{
	const __u32 *x = (const __u32 *)a;

	if (family == AF_INET)
		return x[0] == 0;
	return (x[0] | x[1] | x[2] | x[3]) == 0;
}

static __always_inline void addr_copy(__u8 *dst, const void *src, int family)
{
	__builtin_memcpy(dst, src, 4);
	if (family == AF_INET6)
		__builtin_memcpy(dst + 4, (const __u8 *)src + 4, 12);
}

/* Returns 0 when headers parse, -1 when the packet is malformed. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 avail = skb->len < PARSE_MAX ? skb->len : PARSE_MAX;
	struct ethhdr *eth = data;
	__u16 proto;
	__u32 off, l3, l4len;

	/* Headers may sit in paged data (GRO, veth); make the part we read
	 * linear. Test-run packets are linear already. */
	if (data + avail > data_end) {
		if (bpf_skb_pull_data(skb, avail))
			return -1;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		eth = data;
	}

	if ((void *)(eth + 1) > data_end)
		return -1;
	proto = *(__u16 *)(data + 12); /* ethhdr is packed: one load, not two */
	p->smac_hi = *(__u32 *)(data + 6);
	p->smac_lo = *(__u16 *)(data + 10);
	off = sizeof(*eth);

#pragma unroll
	for (int i = 0; i < VLAN_MAX; i++) {
		if (proto != bpf_htons(ETH_P_8021Q_) && proto != bpf_htons(ETH_P_8021AD_))
			break;
		__u16 *tag = data + off;
		if ((void *)(tag + 2) > data_end)
			return -1;
		proto = tag[1];
		off += 4;
	}
	if (proto == bpf_htons(ETH_P_8021Q_) || proto == bpf_htons(ETH_P_8021AD_))
		return -1; /* more tags than we look through */
	p->ethertype = proto;
	p->l3off = off;

	p->proto = IPPROTO_NONE_;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + off;
		__u32 hl, tot;

		if ((void *)(ip + 1) > data_end)
			return -1;
		hl = ip->ihl * 4;
		tot = bpf_ntohs(ip->tot_len);
		if (ip->version != 4 || hl < sizeof(*ip) || tot < hl || tot > skb->len - off)
			return -1;
		if (data + off + hl > data_end)
			return -1;
		p->family = AF_INET;
		p->hop = ip->ttl;
		addr_copy(p->saddr, &ip->saddr, AF_INET);
		addr_copy(p->daddr, &ip->daddr, AF_INET);
		if (ip->frag_off & bpf_htons(0x1fff))
			return 0; /* a later fragment: no L4 header */
		p->proto = ip->protocol;
		l3 = off;
		off += hl;
		l4len = tot - hl;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + off;
		__u8 next;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		if (ip6->version != 6 || bpf_ntohs(ip6->payload_len) > skb->len - off - sizeof(*ip6))
			return -1;
		p->family = AF_INET6;
		p->hop = ip6->hop_limit;
		addr_copy(p->saddr, &ip6->saddr, AF_INET6);
		addr_copy(p->daddr, &ip6->daddr, AF_INET6);
		l3 = off;
		next = ip6->nexthdr;
		off += sizeof(*ip6);

		for (int i = 0; i < IPV6_EXT_MAX; i++) {
			__u8 *ext = data + off;

			if (next != IPPROTO_HOPOPTS_ && next != IPPROTO_ROUTING_ &&
			    next != IPPROTO_DSTOPTS_ && next != IPPROTO_FRAGMENT_ && next != IPPROTO_AH_)
				break;
			if ((void *)(ext + 8) > data_end)
				return -1;
			if (next == IPPROTO_FRAGMENT_) {
				/* offset bits nonzero: a later fragment */
				if ((ext[2] << 8 | ext[3]) & 0xfff8)
					return 0;
				next = ext[0];
				off += 8;
			} else if (next == IPPROTO_AH_) {
				next = ext[0];
				off += ((__u32)ext[1] + 2) * 4;
			} else {
				next = ext[0];
				off += ((__u32)ext[1] + 1) * 8;
			}
			if (off > PARSE_MAX)
				return -1;
		}
		if (next == IPPROTO_HOPOPTS_ || next == IPPROTO_ROUTING_ || next == IPPROTO_DSTOPTS_ ||
		    next == IPPROTO_FRAGMENT_ || next == IPPROTO_AH_)
			return -1; /* chain longer than IPV6_EXT_MAX */
		p->proto = next;
		l4len = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
		if (off - l3 > l4len)
			return -1;
		l4len -= off - l3;
	} else {
		p->family = 0;
		p->proto = 0;
		return 0;
	}

	if (off > PARSE_MAX)
		return -1;
	p->l4len = l4len;
	p->l4off = off;

	switch (p->proto) {
	case IPPROTO_UDP: {
		__u8 *u = data + off;

		if (l4len < 8 || (void *)(u + 8) > data_end)
			return -1;
		p->sport = bpf_ntohs(*(__u16 *)u);
		p->dport = bpf_ntohs(*(__u16 *)(u + 2));
		break;
	}
	case IPPROTO_TCP: {
		__u8 *t = data + off;

		if (l4len < 20 || (void *)(t + 20) > data_end)
			return -1;
		p->sport = bpf_ntohs(*(__u16 *)t);
		p->dport = bpf_ntohs(*(__u16 *)(t + 2));
		break;
	}
	case IPPROTO_ICMPV6_: {
		__u8 *c = data + off;

		if (p->family != AF_INET6)
			break;
		if (l4len < 4 || (void *)(c + 4) > data_end)
			return -1;
		p->icmp_type = c[0];
		break;
	}
	case IPPROTO_ESP_: {
		__u8 *e = data + off;

		if (l4len < 8 || (void *)(e + 8) > data_end)
			return -1;
		p->spi = bpf_ntohl(*(__u32 *)e);
		break;
	}
	}
	return 0;
}

static __always_inline struct peer *peer_of(const struct pkt *p, int dir)
{
	struct peer_key k = {};

	k.family = p->family;
	k.prefixlen = 8 + (p->family == AF_INET ? 32 : 128);
	addr_copy(k.addr, dir == DIR_INGRESS ? p->daddr : p->saddr, p->family);
	return bpf_map_lookup_elem(&peers, &k);
}

/* a is a set (nonzero) address equal to b, of the family. */
static __always_inline int set_and_eq(const __u8 *a, const __u8 *b, int family)
{
	return !addr_zero(a, family) && addr_eq(a, b, family);
}

static __always_inline int mac_zero(const __u8 *m)
{
	return *(const __u32 *)m == 0 && *(const __u16 *)(m + 4) == 0;
}

/* ff02::1 (all nodes), ff02::2 (all routers), ff02::16 (MLDv2 reports),
 * or the solicited-node group ff02::1:ffXX:XXXX of a or b (when set). */
static __always_inline int link_group(const __u8 *d, const __u8 *a, const __u8 *b)
{
	const __u32 *w = (const __u32 *)d;

	if (w[0] != bpf_htonl(0xff020000) || w[1] != 0)
		return 0;
	if (w[2] == 0)
		return w[3] == bpf_htonl(1) || w[3] == bpf_htonl(2) || w[3] == bpf_htonl(0x16);
	if (w[2] != bpf_htonl(1) || d[12] != 0xff)
		return 0;
	if (!addr_zero(a, AF_INET6) && d[13] == a[13] && d[14] == a[14] && d[15] == a[15])
		return 1;
	return !addr_zero(b, AF_INET6) && d[13] == b[13] && d[14] == b[14] && d[15] == b[15];
}

/* ARP between the guest and its host-side address, and nothing else:
 * untagged Ethernet/IPv4 ARP in a minimum-size frame, the sender's hardware
 * address the frame's source. From the guest: sender its address (0.0.0.0 for a
 * probe), target the host. Toward it: the mirror. */
static __always_inline int arp_verdict(struct __sk_buff *skb, const struct pkt *p,
				       const struct vif *vif, int dir)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 off = p->l3off;
	__u8 *a;

	if (skb->len > ARP_FRAME_MAX || off != ETH_HLEN)
		return REASON_DENY_CONTROL;
	a = data + off;
	if ((void *)(a + 28) > data_end)
		return REASON_DENY_CONTROL;
	if (*(__u16 *)a != bpf_htons(1) || *(__u16 *)(a + 2) != bpf_htons(ETH_P_IP) || a[4] != 6 ||
	    a[5] != 4)
		return REASON_DENY_CONTROL;
	if (*(__u16 *)(a + 6) != bpf_htons(1) && *(__u16 *)(a + 6) != bpf_htons(2))
		return REASON_DENY_CONTROL;
	if (*(__u32 *)(a + 8) != p->smac_hi || *(__u16 *)(a + 12) != p->smac_lo)
		return REASON_DENY_CONTROL;
	if (dir == DIR_INGRESS) {
		if (!set_and_eq(vif->addr4, a + 14, AF_INET) && *(__u32 *)(a + 14) != 0)
			return REASON_DENY_CONTROL;
		if (!set_and_eq(vif->host4, a + 24, AF_INET))
			return REASON_DENY_CONTROL;
	} else {
		if (!set_and_eq(vif->host4, a + 14, AF_INET))
			return REASON_DENY_CONTROL;
		if (!set_and_eq(vif->addr4, a + 24, AF_INET))
			return REASON_DENY_CONTROL;
	}
	return REASON_ALLOW_CONTROL;
}

/* An RS, NS or NA from the guest speaks only for the guest: the fixed
 * length, or one link-layer address option (source for RS/NS, target for
 * NA) carrying the frame's source MAC (or, in an NS from ::, the RFC 7527
 * nonce); an NS's target is the host's or the
 * guest's address, an NA's the guest's. Read here, not in parse(), so that
 * the verifier walks it once (in fp_control), not on every parser path. */
/* IKE: UDP with both ports in {500, 4500}, and the non-ESP marker (four
 * zero bytes) when one is 4500, so that ESP in UDP is not IKE. */
static __always_inline int is_ike(struct __sk_buff *skb, const struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 off = p->l4off;
	__u8 *u;

	if ((p->sport != 500 && p->sport != 4500) || (p->dport != 500 && p->dport != 4500))
		return 0;
	if (p->sport == 500 && p->dport == 500)
		return 1;
	if (off > PARSE_MAX || p->l4len < 12)
		return 0;
	u = data + off;
	return (void *)(u + 12) <= data_end && *(__u32 *)(u + 8) == 0;
}

/* A TCP segment with SYN and without ACK: the opening of a connection. */
static __always_inline int bare_syn(struct __sk_buff *skb, const struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 off = p->l4off;
	__u8 *t;

	if (off > PARSE_MAX)
		return 0;
	t = data + off;
	if ((void *)(t + 14) > data_end)
		return 0;
	return (t[13] & 0x12) == 0x02;
}

static __always_inline int nd_own(struct __sk_buff *skb, const struct pkt *p, const struct vif *vif)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 off = p->l4off, base = p->icmp_type == 133 ? 8 : 24;
	__u8 *c, *o;

	if (off > PARSE_MAX)
		return 0;
	c = data + off;
	o = c + base;
	if ((void *)o > data_end)
		return 0;
	if (p->l4len == base + 8) {
		if ((void *)(o + 8) > data_end || o[1] != 1)
			return 0;
		/* duplicate address detection (from ::) may carry the nonce
		 * option of RFC 7527 instead */
		int nonce = p->icmp_type == 135 && o[0] == 14 && addr_zero(p->saddr, AF_INET6);

		if (!nonce && (o[0] != (p->icmp_type == 136 ? 2 : 1) || *(__u32 *)(o + 2) != p->smac_hi ||
			       *(__u16 *)(o + 6) != p->smac_lo))
			return 0;
	} else if (p->l4len != base) {
		return 0;
	}
	if (p->icmp_type == 135)
		return set_and_eq(vif->host6, c + 8, AF_INET6) || set_and_eq(vif->ll6, c + 8, AF_INET6) ||
		       set_and_eq(vif->addr6, c + 8, AF_INET6);
	if (p->icmp_type == 136)
		return set_and_eq(vif->ll6, c + 8, AF_INET6) || set_and_eq(vif->addr6, c + 8, AF_INET6);
	return 1;
}

/* Link control between the guest and its own host-side address: DHCP,
 * DHCPv6, ND/MLD, IKE and the API port, in untagged frames only (a tag
 * could steer a broadcast onto a VLAN of the host's). own: the packet's guest-side
 * address (source from the guest, destination toward it) is the guest's.
 * Returns REASON_ALLOW_CONTROL, REASON_DENY_CONTROL (an ND/MLD message
 * outside the rules: never data), or 0 (not control: decide as data). */
static __always_inline int control(struct __sk_buff *skb, const struct pkt *p,
				   const struct vif *vif, int dir, int own)
{
	const __u8 *host = p->family == AF_INET ? vif->host4 : vif->host6;

	if (p->proto == IPPROTO_ICMPV6_ && p->family == AF_INET6) {
		__u8 t = p->icmp_type;

		if (!((t >= 130 && t <= 137) || t == 143))
			return 0;
		if (p->l3off != ETH_HLEN)
			return REASON_DENY_CONTROL;
		if (p->hop != (t >= 133 && t <= 137 ? 255 : 1) || p->l4len > CTRL_L4_MAX)
			return REASON_DENY_CONTROL;
		if (dir == DIR_INGRESS) {
			/* A guest is no router (no RA, no redirect); its RS, NS and
			 * NA speak only for itself: the fixed length, or one
			 * link-layer option with its own MAC; an NA only for its
			 * own addresses, an NS only for the host's or its own. */
			if (t == 134 || t == 137)
				return REASON_DENY_CONTROL;
			if ((t == 133 || t == 135 || t == 136) && !nd_own(skb, p, vif))
				return REASON_DENY_CONTROL;
			if (!own && !set_and_eq(vif->ll6, p->saddr, AF_INET6) &&
			    !addr_zero(p->saddr, AF_INET6))
				return REASON_DENY_CONTROL;
			/* to the host, or a group of the link: the host's or,
			 * for duplicate address detection, the guest's own
			 * solicited-node groups */
			if (!set_and_eq(vif->host6, p->daddr, AF_INET6) &&
			    !link_group(p->daddr, vif->host6, vif->ll6) &&
			    !link_group(p->daddr, vif->addr6, vif->addr6))
				return REASON_DENY_CONTROL;
		} else {
			/* only from the host's end of the link */
			if (!set_and_eq(vif->host6, p->saddr, AF_INET6))
				return REASON_DENY_CONTROL;
			if (!own && !set_and_eq(vif->ll6, p->daddr, AF_INET6) &&
			    !link_group(p->daddr, vif->ll6, vif->addr6))
				return REASON_DENY_CONTROL;
		}
		return REASON_ALLOW_CONTROL;
	}
	if (p->l3off != ETH_HLEN)
		return 0;
	if (p->proto == IPPROTO_UDP) {
		if (p->family == AF_INET) {
			if (dir == DIR_INGRESS && p->sport == 68 && p->dport == 67 && p->l4len <= CTRL_L4_MAX) {
				/* DHCPDISCOVER/REQUEST from 0.0.0.0 only to broadcast */
				if (*(__u32 *)p->daddr == 0xffffffff &&
				    (own || *(__u32 *)p->saddr == 0))
					return REASON_ALLOW_CONTROL;
				if (own && set_and_eq(vif->host4, p->daddr, AF_INET))
					return REASON_ALLOW_CONTROL;
			}
			if (dir == DIR_EGRESS && p->sport == 67 && p->dport == 68 && p->l4len <= CTRL_L4_MAX &&
			    set_and_eq(vif->host4, p->saddr, AF_INET) &&
			    (*(__u32 *)p->daddr == 0xffffffff || set_and_eq(vif->addr4, p->daddr, AF_INET)))
				return REASON_ALLOW_CONTROL;
		} else {
			if (dir == DIR_INGRESS && p->sport == 546 && p->dport == 547 && p->l4len <= CTRL_L4_MAX &&
			    (own || set_and_eq(vif->ll6, p->saddr, AF_INET6))) {
				const __u32 *d = (const __u32 *)p->daddr;

				if ((d[0] == bpf_htonl(0xff020000) && d[1] == 0 && d[2] == 0 &&
				     d[3] == bpf_htonl(0x00010002)) ||
				    set_and_eq(vif->host6, p->daddr, AF_INET6))
					return REASON_ALLOW_CONTROL;
			}
			if (dir == DIR_EGRESS && p->sport == 547 && p->dport == 546 && p->l4len <= CTRL_L4_MAX &&
			    set_and_eq(vif->host6, p->saddr, AF_INET6) &&
			    (set_and_eq(vif->ll6, p->daddr, AF_INET6) || set_and_eq(vif->addr6, p->daddr, AF_INET6)))
				return REASON_ALLOW_CONTROL;
		}
		if (!own || !is_ike(skb, p))
			return 0;
		if (dir == DIR_INGRESS)
			return set_and_eq(host, p->daddr, p->family) ? REASON_ALLOW_CONTROL : 0;
		return set_and_eq(host, p->saddr, p->family) && fp_root_socket(skb) ? REASON_ALLOW_CONTROL : 0;
	}
	if (p->proto == IPPROTO_TCP && cfg.api_port && own) {
		if (dir == DIR_INGRESS) {
			/* to the host's API; or the guest's update daemon answering
			 * the loader, which never opens with a bare SYN */
			if (p->dport != cfg.api_port && (p->sport != cfg.api_port || bare_syn(skb, p)))
				return 0;
			return set_and_eq(host, p->daddr, p->family) ? REASON_ALLOW_CONTROL : 0;
		}
		if (p->sport != cfg.api_port && p->dport != cfg.api_port)
			return 0;
		return set_and_eq(host, p->saddr, p->family) && fp_root_socket(skb) ? REASON_ALLOW_CONTROL : 0;
	}
	return 0;
}

static __always_inline int ike_port(__u16 port)
{
	return port == 500 || port == 4500;
}

/* Whether control() could say anything but 0: its protocol and ports,
 * checked inline so that data packets skip the call. */
static __always_inline int maybe_control(const struct pkt *p)
{
	__u16 s = p->sport, d = p->dport;

	if (p->proto == IPPROTO_ICMPV6_)
		return p->family == AF_INET6 &&
		       ((p->icmp_type >= 130 && p->icmp_type <= 137) || p->icmp_type == 143);
	if (p->proto == IPPROTO_UDP)
		return (s == 68 && d == 67) || (s == 67 && d == 68) || (s == 546 && d == 547) ||
		       (s == 547 && d == 546) || (ike_port(s) && ike_port(d));
	if (p->proto == IPPROTO_TCP)
		return cfg.api_port && (s == cfg.api_port || d == cfg.api_port);
	return 0;
}

/* The link-control rules as global functions: the verifier checks each
 * once, instead of once for every way through the rest of the decision.
 * The pointers are never NULL; the checks are for the verifier. */
__attribute__((noinline)) int fp_control(struct __sk_buff *skb, const struct pkt *p,
					 const struct vif *vif, __u32 dir, __u32 own)
{
	if (!p || !vif)
		return 0;
	return control(skb, p, vif, dir, own);
}

__attribute__((noinline)) int fp_arp(struct __sk_buff *skb, const struct pkt *p,
				     const struct vif *vif, __u32 dir)
{
	if (!p || !vif)
		return REASON_DENY_CONTROL;
	return arp_verdict(skb, p, vif, dir);
}

static __always_inline struct sa *sa_by_slot(__u32 spi, int family)
{
	__u32 slot = spi - cfg.spi_base;
	struct sa *sa;

	sa = bpf_map_lookup_elem(&sa_slots, &slot);
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
	return bpf_map_lookup_elem(&sas, &k);
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
	return bpf_map_lookup_elem(&sas, &k);
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
	const struct label_accepts *a = bpf_map_lookup_elem(&accepts, &label_id);
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
		return p->ethertype == bpf_htons(ETH_P_ARP_) ? fp_arp(skb, p, vif, dir)
							       : REASON_DENY_UNLABELED;

	/* The guest's side of the packet: its source from the guest, its
	 * destination toward it. A family without a declared address has no
	 * source the guest may use but the link-control ones (:: and its
	 * link-local address for ND/MLD/DHCPv6, 0.0.0.0 for DHCP). */
	guest = p->family == AF_INET ? vif->addr4 : vif->addr6;
	own = set_and_eq(guest, dir == DIR_INGRESS ? p->saddr : p->daddr, p->family);
	if (p->proto == IPPROTO_ESP_) {
		/* never control: the source (from the guest) or destination
		 * (toward it) is the guest's, then the SA decides */
		if (!own)
			return REASON_DENY_SPOOFED;
		sa = sa_of_esp(p);
		if (sa)
			*label_id = sa->label_id;
		return check_sa(sa, vif);
	}
	r = maybe_control(p) ? fp_control(skb, p, vif, dir, own) : 0;
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

static __always_inline void count(int dir, int reason, __u32 len)
{
	__u32 idx = dir * REASON_MAX + reason;
	struct counter *c = bpf_map_lookup_elem(&verdicts, &idx);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

/* A sampled denial to the events ring. A global function, checked once by
 * the verifier (inlined, it was walked again for every way the parser can
 * end); it runs only on denials. */
__attribute__((noinline)) int fp_report(struct __sk_buff *skb, const struct vif *vif,
					const struct pkt *p, __u32 dir_reason, __u32 label_id)
{
	__u32 dir = dir_reason >> 8, reason = dir_reason & 0xff; /* five arguments at most */
	struct event *e;

	if (!vif || !p)
		return 0;

	if (!cfg.event_sample)
		return 0;
	if (cfg.event_sample > 1 && bpf_get_prandom_u32() % cfg.event_sample)
		return 0;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&events_lost, &zero);

		if (lost)
			(*lost)++;
		return 0;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->ifindex = skb->ifindex;
	e->vm_id = vif->vm_id;
	e->spi = p->spi;
	e->label_id = label_id;
	e->reason = reason;
	e->dir = dir;
	e->family = p->family;
	e->proto = p->proto;
	__builtin_memcpy(e->saddr, p->saddr, 16);
	__builtin_memcpy(e->daddr, p->daddr, 16);
	e->sport = p->proto == IPPROTO_ICMPV6_ ? p->icmp_type : p->sport;
	e->dport = p->proto == IPPROTO_ICMPV6_ ? 0 : p->dport;
	e->ethertype = bpf_ntohs(p->ethertype);
	e->_pad[0] = 0;
	e->_pad[1] = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

static __always_inline int is_allow(enum reason reason)
{
	return reason <= REASON_ALLOW_CONTROL;
}

/* The whole per-packet path: the verdict for the tc hook, and the reason in
 * *why for callers that want it (the test probe). */
static __always_inline int handle(struct __sk_buff *skb, enum direction dir, __u32 *why)
{
	__u32 ifindex = skb->ifindex, label_id = 0;
	struct pkt p = {};
	struct vif *vif;
	int reason;

	/* The array answers NULL past VIFS_MAX; only then look in the hash.
	 * Two call sites, each with one map, so that the verifier inlines the
	 * array lookup (one call site over two maps would not be). */
	vif = bpf_map_lookup_elem(&vifs, &ifindex);
	if (!vif)
		vif = bpf_map_lookup_elem(&vifs_big, &ifindex);
	if (!vif || !(vif->flags & VIF_F_MANAGED)) {
		*why = REASON_PASS_UNMANAGED;
		count(dir, REASON_PASS_UNMANAGED, skb->len);
		return VERDICT_ALLOW;
	}
	if (vif->deny) {
		/* deny-all: an undeclared vif or an unplanned guest; never an
		 * allow, whatever the byte says */
		reason = vif->deny;
		if (reason <= REASON_ALLOW_CONTROL || reason >= REASON_MAX)
			reason = REASON_DENY_UNPLANNED;
	} else {
		reason = parse(skb, &p) ? REASON_DENY_MALFORMED : decide(skb, &p, vif, dir, &label_id);
	}
	*why = reason;
	count(dir, reason, skb->len);
	if (is_allow(reason))
		return VERDICT_ALLOW;
	fp_report(skb, vif, &p, (__u32)dir << 8 | reason, label_id);
	if (!cfg.enforce || (vif->flags & VIF_F_AUDIT))
		return VERDICT_ALLOW;
	return VERDICT_DROP;
}

#endif
