/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Sampled denials to the events ring buffer. */
#ifndef MLSGATE_EVENTS_H
#define MLSGATE_EVENTS_H

#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"
#include "parse.h"

/* A sampled denial to the events ring. A global function, checked once by
 * the verifier (inlined, it was walked again for every way the parser can
 * end); it runs only on denials. */
__attribute__((noinline)) int mlsg_report(struct __sk_buff *skb, const struct vif *vif,
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
	e = bpf_ringbuf_reserve(&mlsg_events, sizeof(*e), 0);
	if (!e) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&mlsg_ev_lost, &zero);

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
	e->sport = p->proto == IPPROTO_ICMPV6 ? p->icmp_type : p->sport;
	e->dport = p->proto == IPPROTO_ICMPV6 ? 0 : p->dport;
	e->ethertype = bpf_ntohs(p->ethertype);
	e->_pad[0] = 0;
	e->_pad[1] = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

#endif
