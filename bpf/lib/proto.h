/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Protocol numbers and parser limits. */
#ifndef MLSGATE_PROTO_H
#define MLSGATE_PROTO_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/icmpv6.h>

/* Protocol numbers come from the kernel's UAPI headers (if_ether.h, in.h,
 * in6.h, icmpv6.h). The address families live in the C library's
 * <sys/socket.h>, which a BPF object does not include. */
#define AF_INET 2
#define AF_INET6 10

/* Neighbour discovery (RFC 4861): the kernel numbers them in
 * include/net/ndisc.h, which is not UAPI. */
#define NDISC_ROUTER_SOLICITATION 133
#define NDISC_ROUTER_ADVERTISEMENT 134
#define NDISC_NEIGHBOUR_SOLICITATION 135
#define NDISC_NEIGHBOUR_ADVERTISEMENT 136
#define NDISC_REDIRECT 137

/* What the parser looks through, and the link-control size limits. */
#define VLAN_MAX 2       /* stacked VLAN tags we look through */
#define IPV6_EXT_MAX 8   /* IPv6 extension headers we walk before giving up */
#define PARSE_MAX 512    /* headers must lie in the first PARSE_MAX bytes */
#define ARP_FRAME_MAX 60 /* a 28-byte ARP body padded to the minimum frame */
#define CTRL_L4_MAX 576  /* DHCP, DHCPv6, ND and MLD: UDP or ICMPv6 bytes */

#endif
