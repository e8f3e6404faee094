/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The load-time configuration and every map of the fast path. The Go side
 * names them in bpf/load.go (Maps) and pins them by name (bpf/pin.go).
 */
#ifndef MLSGATE_MAPS_H
#define MLSGATE_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "types.h"

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
} mlsg_vifs SEC(".maps");

/* ifindex -> guest, for ifindex >= VIFS_MAX */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VIFS_BIG_MAX);
	__type(key, __u32);
	__type(value, struct vif);
} mlsg_vifs_big SEC(".maps");

/* label id -> label; id 0 is the default label (s0, i0) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LABELS_MAX);
	__type(key, __u32);
	__type(value, struct mls_label);
} mlsg_labels SEC(".maps");

/* spi - cfg.spi_base -> SA, for SPIs the host allocated */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SA_SLOTS_MAX);
	__type(key, __u32);
	__type(value, struct sa);
} mlsg_sa_slots SEC(".maps");

/* {spi, family, daddr} -> SA, for SPIs outside the host's range */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SAS_MAX);
	__type(key, struct sa_key);
	__type(value, struct sa);
} mlsg_sas SEC(".maps");

/* label id -> the peer ranges that contain the label */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LABELS_MAX);
	__type(key, __u32);
	__type(value, struct label_accepts);
} mlsg_accepts SEC(".maps");

/* {family, address prefix} -> peer */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, PEERS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct peer_key);
	__type(value, struct peer);
} mlsg_peers SEC(".maps");

/* dir * REASON_MAX + reason -> packets and bytes */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DIR_MAX * REASON_MAX);
	__type(key, __u32);
	__type(value, struct counter);
} mlsg_verdicts SEC(".maps");

/* (vif slot * DIR_MAX + dir) * REASON_MAX + reason -> packets and bytes:
 * the verdicts of each guest, found from its vif entry (no hash lookup) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GUESTS_MAX * DIR_MAX * REASON_MAX);
	__type(key, __u32);
	__type(value, struct counter);
} mlsg_guest_ctr SEC(".maps");

/* [0]: denials that did not fit in the events ring buffer */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} mlsg_ev_lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_BYTES);
} mlsg_events SEC(".maps");

#endif
