/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Types shared between the fast path and the Go agent. Go sees them only
 * through bpf2go -type (bpf/gen.go); never copy one of these by hand.
 */
#ifndef MLSGATE_TYPES_H
#define MLSGATE_TYPES_H

#include <linux/types.h>

#define CATEGORY_WORDS 16 /* 1024 categories, c0..c1023 */

/* Map sizes. Those marked "set by the loader" are overridden from Go before
 * load; the numbers here are the defaults. */
#define VIFS_MAX 65536     /* vifs: dense array indexed by ifindex */
#define VIFS_BIG_MAX 4096  /* vifs_big: guests on ifindexes >= VIFS_MAX */
#define LABELS_MAX 65536   /* labels, accepts: interned labels; id 0 is the default label */
#define SA_SLOTS_MAX 65536 /* sa_slots: SPIs the host allocated (set by the loader) */
#define SAS_MAX 65536      /* sas: SPIs chosen by foreign peers */
#define PEERS_MAX 131072   /* peers: LPM trie (not preallocated) */
#define RANGES_MAX 1024    /* distinct peer ranges: bits of an accepts bitmap */
#define RANGE_WORDS (RANGES_MAX / 64)
#define EVENTS_BYTES (256 * 1024)
#define GUESTS_MAX 1024    /* guest counter slots; slot 0 counts guests without one */

/* The kernel encoding of a label: secrecy (sensitivity and category set) and
 * the integrity level that the policy store assigns to the label's type.
 * cats: bit c is bit c%64 of word c/64, as label.CategorySet. The type itself
 * is not here: the fast path decides by application id, and the agent maps
 * a label id back to its full context for events. */
struct mls_label {
	__u8 sens;
	__u8 integ;
	__u8 _pad[6];
	__u64 cats[CATEGORY_WORDS];
};

enum vif_flag {
	VIF_F_MANAGED = 1 << 0,         /* the agent owns this interface */
	VIF_F_AUDIT = 1 << 1,           /* count and report denials, drop nothing */
	VIF_F_ALLOW_UNLABELED = 1 << 2, /* plain traffic travels at the default label */
	/* The default label lies within the guest's range: decided by the
	 * planner, so that no packet compares labels. */
	VIF_F_DEFAULT_IN_RANGE = 1 << 3,
};

/* vifs[ifindex] (vifs_big for ifindex >= VIFS_MAX): the guest behind a
 * host-side interface. The ranges are label ids (labels map), kept for
 * the agent (restart, dump): the programs read the flags the planner
 * derived from them. A family
 * with a zero guest address has no source the guest may use (but the
 * link-control ones: ::, its link-local address, 0.0.0.0 for DHCP); a zero
 * MAC turns the frame source check off; a zero host address matches
 * nothing, so no control traffic of that family reaches the host. deny: a reason (REASON_DENY_UNDECLARED,
 * REASON_DENY_UNPLANNED) every packet gets, 0 for a planned guest. */
struct vif {
	__u32 vm_id;
	__u32 app_id;
	__u32 flags;
	__u32 range_lo;
	__u32 range_hi;
	__u8 addr4[4];
	__u8 addr6[16];
	__u8 ll6[16];   /* the guest's link-local address (EUI-64 of mac) */
	__u8 host4[4];  /* the host's end of the link */
	__u8 host6[16]; /* the host-side interface's link-local address */
	__u8 mac[6];    /* the guest's Ethernet address */
	__u8 deny;
	__u8 _pad;
	__u16 slot; /* the guest's counters: mlsg_guest_ctr[slot][dir][reason] */
	__u8 _pad2[2];
};

enum sa_flag {
	SA_F_VALID = 1 << 0,
	/* The SA's label lies within its owner's range. Fixed when the SA is
	 * installed (owner and label never change for an SPI), so the agent
	 * decides it once instead of every packet comparing 1024-bit sets. */
	SA_F_IN_OWNER_RANGE = 1 << 1,
};

/* An IPsec SA as the fast path needs it: who may use it and its label. */
struct sa {
	__u8 daddr[16];
	__u32 owner_vm;
	__u32 app_id;
	__u32 label_id;
	__u16 family; /* AF_INET or AF_INET6 */
	__u8 flags;
	__u8 _pad;
};

/* sas key: an SPI is unique only per destination. For an SA that the host
 * terminates and whose SPI lies outside the host's range, daddr is all
 * zero: that entry is found from the packet's secpath, which does not
 * carry the SA's destination. */
struct sa_key {
	__u32 spi; /* host byte order */
	__u16 family;
	__u16 _pad;
	__u8 daddr[16];
};

/* LPM trie key: family byte, then the address. prefixlen counts the family
 * byte (8 bits) plus the address prefix. */
struct peer_key {
	__u32 prefixlen;
	__u8 family;
	__u8 addr[16];
	__u8 _pad[3];
};

enum peer_kind {
	PEER_WEB = 1,   /* a web server of an application */
	PEER_GUEST = 2, /* another guest */
	PEER_HOST = 3,  /* the host itself: control traffic may reach it */
};

enum peer_flag {
	/* The default label lies within the peer's range. */
	PEER_F_ACCEPTS_DEFAULT = 1 << 0,
};

/* A destination (or, toward the guest, a source) the guest talks to. An
 * app_id of 0 serves every application. range_lo and range_hi (label ids)
 * are for the agent; the programs decide from range_id, the peer's range
 * interned by the planner (< RANGES_MAX), and flags. */
struct peer {
	__u32 app_id;
	__u32 range_lo;
	__u32 range_hi;
	__u16 range_id;
	__u8 kind;
	__u8 flags;
};

/* accepts[label id]: bit r (word r / 64, bit r % 64) is set when the peer
 * range with id r contains the label. The planner decides the lattice
 * ahead of time; a packet tests one bit instead of two dominance checks
 * over 1024 categories. */
struct label_accepts {
	__u64 ranges[RANGE_WORDS];
};

enum direction {
	DIR_INGRESS = 0, /* from the guest: tc ingress on its vif */
	DIR_EGRESS = 1,  /* toward the guest: tc egress on its vif */
	DIR_MAX = 2,
};

/* Every verdict has exactly one reason. Keep verdict/ in step. */
enum reason {
	REASON_PASS_UNMANAGED = 0,
	REASON_ALLOW_LABELED = 1,
	REASON_ALLOW_DEFAULT = 2,
	REASON_ALLOW_CONTROL = 3,
	REASON_DENY_UNKNOWN_SA = 4,
	REASON_DENY_FOREIGN_SA = 5,
	REASON_DENY_LABEL_RANGE = 6,
	REASON_DENY_APP_MISMATCH = 7,
	REASON_DENY_PEER_RANGE = 8,
	REASON_DENY_UNLABELED = 9,
	REASON_DENY_MALFORMED = 10,
	REASON_DENY_SPOOFED = 11,
	REASON_DENY_UNDECLARED = 12, /* a vif of the agent's patterns with no guest */
	REASON_DENY_UNPLANNED = 13,  /* a guest the planner refused */
	REASON_DENY_CONTROL = 14,    /* ARP or ND/MLD outside the link-control rules */
	REASON_MAX = 15,
};

/* verdicts[dir * REASON_MAX + reason], and per guest
 * guest_ctr[(slot * DIR_MAX + dir) * REASON_MAX + reason], per CPU. */
struct counter {
	__u64 packets;
	__u64 bytes;
};

/* A sampled denial, sent through the events ring buffer. */
struct event {
	__u64 ts_ns;
	__u32 ifindex;
	__u32 vm_id;
	__u32 spi;
	__u32 label_id;
	__u8 reason;
	__u8 dir;
	__u8 family;
	__u8 proto;
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport; /* UDP/TCP ports, host byte order; ICMPv6: type, 0 */
	__u16 dport;
	__u16 ethertype; /* innermost, host byte order */
	__u8 _pad[2];
};

/* Load-time settings (volatile const: the verifier prunes on them). */
struct config {
	__u32 spi_base;     /* first SPI of the host's range: sa_slots[spi - spi_base] */
	__u32 spi_slots;    /* entries in sa_slots; 0 disables the array */
	__u32 event_sample; /* send 1 in N denials to events; 0 sends none */
	__u16 api_port;     /* the agent's TCP port on the host; 0 = none */
	__u8 enforce;       /* 0: audit mode, nothing is dropped */
	__u8 _pad;
};

#endif
