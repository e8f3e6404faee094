/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The verdict counters: per CPU, by direction and reason, overall and per guest. */
#ifndef MLSGATE_COUNTERS_H
#define MLSGATE_COUNTERS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"

static __always_inline void count(int dir, int reason, __u32 len)
{
	__u32 idx = dir * REASON_MAX + reason;
	struct counter *c = bpf_map_lookup_elem(&mlsg_verdicts, &idx);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

/* The guest's own counter: its slot comes with the vif entry. */
static __always_inline void count_guest(const struct vif *vif, int dir, int reason, __u32 len)
{
	__u32 idx = ((vif->slot & (GUESTS_MAX - 1)) * DIR_MAX + dir) * REASON_MAX + reason;
	struct counter *c = bpf_map_lookup_elem(&mlsg_guest_ctr, &idx);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

#endif
