/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * Internet checksums: folding, incremental updates (RFC 1624), IPv4 headers.
 * Included by director.c after its maps and counters: static inline only.
 */
#ifndef KLVS_CSUM_H
#define KLVS_CSUM_H

static __always_inline __u16 csum_fold32(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/*
 * RFC 1624 incremental update, HC' = ~(~HC + ~m + m'), on raw 16-bit words as
 * they sit in memory (one's complement sums do not care about byte order).
 */
static __always_inline __u16 csum_replace4(__u16 check, __u32 from, __u32 to)
{
	__u32 s = (__u16)~check;

	s += (__u16)~(from & 0xffff);
	s += (__u16)~(from >> 16);
	s += to & 0xffff;
	s += to >> 16;
	return csum_fold32(s);
}

static __always_inline __u16 csum_replace2(__u16 check, __u16 from, __u16 to)
{
	__u32 s = (__u16)~check;

	s += (__u16)~from;
	s += to;
	return csum_fold32(s);
}

/* Checksum of a fresh 20-byte IPv4 header (check field zero). */
static __always_inline __u16 ipv4_csum(struct iphdr *iph)
{
	__u16 *w = (__u16 *)iph;
	__u32 s = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		s += w[i];
	return csum_fold32(s);
}

#endif /* KLVS_CSUM_H */
