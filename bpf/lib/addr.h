/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Addresses as the parser keeps them: network byte order, an IPv4
 * address in the first four bytes. */
#ifndef MLSGATE_ADDR_H
#define MLSGATE_ADDR_H

#include <linux/types.h>

#include "proto.h"

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

/* a is a set (nonzero) address equal to b, of the family. */
static __always_inline int set_and_eq(const __u8 *a, const __u8 *b, int family)
{
	return !addr_zero(a, family) && addr_eq(a, b, family);
}

static __always_inline int mac_zero(const __u8 *m)
{
	return *(const __u32 *)m == 0 && *(const __u16 *)(m + 4) == 0;
}

#endif
