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

/*
 * lib/, by concern (like Cilium's bpf/lib):
 *   types.h     types shared with Go (bpf2go -type)
 *   proto.h     protocol numbers (kernel headers) and parser limits
 *   maps.h      the load-time config and the maps
 *   addr.h      address helpers
 *   parse.h     the parser
 *   control.h   link control (ARP, ND/MLD, DHCP, IKE, API port)
 *   policy.h    the decision (SA, peer, anti-spoofing)
 *   counters.h  verdict counters
 *   events.h    sampled denials
 *   fastpath.h  the per-packet path that ties them together
 */

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "types.h"
#include "proto.h"
#include "maps.h"
#include "addr.h"
#include "parse.h"
#include "control.h"
#include "policy.h"
#include "counters.h"
#include "events.h"

#define VERDICT_ALLOW TC_ACT_UNSPEC /* tcx: next program, then pass */
#define VERDICT_DROP TC_ACT_SHOT

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
	vif = bpf_map_lookup_elem(&mlsg_vifs, &ifindex);
	if (!vif)
		vif = bpf_map_lookup_elem(&mlsg_vifs_big, &ifindex);
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
	count_guest(vif, dir, reason, skb->len);
	if (is_allow(reason))
		return VERDICT_ALLOW;
	mlsg_report(skb, vif, &p, (__u32)dir << 8 | reason, label_id);
	if (!cfg.enforce || (vif->flags & VIF_F_AUDIT))
		return VERDICT_ALLOW;
	return VERDICT_DROP;
}

#endif
