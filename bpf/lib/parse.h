/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The parser: Ethernet, up to VLAN_MAX tags, IPv4 or IPv6 with its
 * extension headers, and the L4 fields the decision reads. verdict/packet.go
 * is the same parser in Go.
 */
#ifndef MLSGATE_PARSE_H
#define MLSGATE_PARSE_H

#include <linux/bpf.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>

#include "addr.h"
#include "proto.h"

/* What the parser found. Addresses are kept in network byte order; an IPv4
 * address sits in the first four bytes. */
struct pkt {
	__u16 ethertype; /* innermost, network byte order */
	__u8 family;     /* AF_INET, AF_INET6, 0 for ARP and other non-IP */
	__u8 proto;  /* L4 protocol, IPPROTO_NONE when not reachable */
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
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		__u16 *tag = data + off;
		if ((void *)(tag + 2) > data_end)
			return -1;
		proto = tag[1];
		off += 4;
	}
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD))
		return -1; /* more tags than we look through */
	p->ethertype = proto;
	p->l3off = off;

	p->proto = IPPROTO_NONE;
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

			if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING &&
			    next != IPPROTO_DSTOPTS && next != IPPROTO_FRAGMENT && next != IPPROTO_AH)
				break;
			if ((void *)(ext + 8) > data_end)
				return -1;
			if (next == IPPROTO_FRAGMENT) {
				/* offset bits nonzero: a later fragment */
				if ((ext[2] << 8 | ext[3]) & 0xfff8)
					return 0;
				next = ext[0];
				off += 8;
			} else if (next == IPPROTO_AH) {
				next = ext[0];
				off += ((__u32)ext[1] + 2) * 4;
			} else {
				next = ext[0];
				off += ((__u32)ext[1] + 1) * 8;
			}
			if (off > PARSE_MAX)
				return -1;
		}
		if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS ||
		    next == IPPROTO_FRAGMENT || next == IPPROTO_AH)
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
	case IPPROTO_ICMPV6: {
		__u8 *c = data + off;

		if (p->family != AF_INET6)
			break;
		if (l4len < 4 || (void *)(c + 4) > data_end)
			return -1;
		p->icmp_type = c[0];
		break;
	}
	case IPPROTO_ESP: {
		__u8 *e = data + off;

		if (l4len < 8 || (void *)(e + 8) > data_end)
			return -1;
		p->spi = bpf_ntohl(*(__u32 *)e);
		break;
	}
	}
	return 0;
}

#endif
