/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Link control between a guest and its host-side address: ARP, ND/MLD,
 * DHCP, DHCPv6, IKE and the agent's API port. The includer defines
 * fp_root_socket() (fastpath.h).
 */
#ifndef MLSGATE_CONTROL_H
#define MLSGATE_CONTROL_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>

#include "addr.h"
#include "maps.h"
#include "parse.h"

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

/* An RS, NS or NA from the guest speaks only for the guest: the fixed
 * length, or one link-layer address option (source for RS/NS, target for
 * NA) carrying the frame's source MAC (or, in an NS from ::, the RFC 7527
 * nonce); an NS's target is the host's or the
 * guest's address, an NA's the guest's. Read here, not in parse(), so that
 * the verifier walks it once (in mlsg_control), not on every parser path. */
static __always_inline int nd_own(struct __sk_buff *skb, const struct pkt *p, const struct vif *vif)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 off = p->l4off, base = p->icmp_type == NDISC_ROUTER_SOLICITATION ? 8 : 24;
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
		int nonce = p->icmp_type == NDISC_NEIGHBOUR_SOLICITATION && o[0] == 14 && addr_zero(p->saddr, AF_INET6);

		if (!nonce && (o[0] != (p->icmp_type == NDISC_NEIGHBOUR_ADVERTISEMENT ? 2 : 1) || *(__u32 *)(o + 2) != p->smac_hi ||
			       *(__u16 *)(o + 6) != p->smac_lo))
			return 0;
	} else if (p->l4len != base) {
		return 0;
	}
	if (p->icmp_type == NDISC_NEIGHBOUR_SOLICITATION)
		return set_and_eq(vif->host6, c + 8, AF_INET6) || set_and_eq(vif->ll6, c + 8, AF_INET6) ||
		       set_and_eq(vif->addr6, c + 8, AF_INET6);
	if (p->icmp_type == NDISC_NEIGHBOUR_ADVERTISEMENT)
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

	if (p->proto == IPPROTO_ICMPV6 && p->family == AF_INET6) {
		__u8 t = p->icmp_type;

		if (!((t >= ICMPV6_MGM_QUERY && t <= NDISC_REDIRECT) || t == ICMPV6_MLD2_REPORT))
			return 0;
		if (p->l3off != ETH_HLEN)
			return REASON_DENY_CONTROL;
		if (p->hop != (t >= NDISC_ROUTER_SOLICITATION && t <= NDISC_REDIRECT ? 255 : 1) || p->l4len > CTRL_L4_MAX)
			return REASON_DENY_CONTROL;
		if (dir == DIR_INGRESS) {
			/* A guest is no router (no RA, no redirect); its RS, NS and
			 * NA speak only for itself: the fixed length, or one
			 * link-layer option with its own MAC; an NA only for its
			 * own addresses, an NS only for the host's or its own. */
			if (t == NDISC_ROUTER_ADVERTISEMENT || t == NDISC_REDIRECT)
				return REASON_DENY_CONTROL;
			if ((t == NDISC_ROUTER_SOLICITATION || t == NDISC_NEIGHBOUR_SOLICITATION ||
			     t == NDISC_NEIGHBOUR_ADVERTISEMENT) &&
			    !nd_own(skb, p, vif))
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

	if (p->proto == IPPROTO_ICMPV6)
		return p->family == AF_INET6 &&
		       ((p->icmp_type >= ICMPV6_MGM_QUERY && p->icmp_type <= NDISC_REDIRECT) ||
			p->icmp_type == ICMPV6_MLD2_REPORT);
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
__attribute__((noinline)) int mlsg_control(struct __sk_buff *skb, const struct pkt *p,
					 const struct vif *vif, __u32 dir, __u32 own)
{
	if (!p || !vif)
		return 0;
	return control(skb, p, vif, dir, own);
}

__attribute__((noinline)) int mlsg_arp(struct __sk_buff *skb, const struct pkt *p,
				     const struct vif *vif, __u32 dir)
{
	if (!p || !vif)
		return REASON_DENY_CONTROL;
	return arp_verdict(skb, p, vif, dir);
}

#endif
