/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * NAT: rewriting a destination to a real server, and restoring the VIP on
 * replies (IPv4 and IPv6).
 * Included by director.c after its maps and counters: static inline only.
 */
#ifndef KLVS_NAT_H
#define KLVS_NAT_H

/* Rewrite one 32-bit address and one port, fixing the IPv4 and L4 checksums. */
static __always_inline void nat_rewrite(struct iphdr *iph, void *l4, __u8 proto, __be32 *addr,
					__be32 new_addr, __be16 *port, __be16 new_port)
{
	__be32 old_addr = *addr;
	__be16 old_port = *port;

	iph->check = csum_replace4(iph->check, old_addr, new_addr);
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		th->check = csum_replace4(th->check, old_addr, new_addr);
		th->check = csum_replace2(th->check, old_port, new_port);
	} else {
		struct udphdr *uh = l4;

		/* Zero means "no checksum" for UDP over IPv4: leave it so. */
		if (uh->check) {
			__u16 c = csum_replace4(uh->check, old_addr, new_addr);

			c = csum_replace2(c, old_port, new_port);
			uh->check = c ? c : 0xffff;
		}
	}
	*addr = new_addr;
	*port = new_port;
}

/* Replies from a NAT real server: restore the VIP as source and send to the client. */
static __always_inline int nat_reply(__u32 in_if, struct ethhdr *eth, struct iphdr *iph,
				     void *l4, void *end, __u8 proto, __be16 *sport, __be16 *dport)
{
	struct klvs_flow_key key = {
		.src = iph->saddr,
		.dst = iph->daddr,
		.sport = *sport,
		.dport = *dport,
		.proto = proto,
	};
	struct klvs_nat_rev *rev = bpf_map_lookup_elem(&nat_rev, &key);

	if (!rev) {
		count(KLVS_CNT_PASS);
		return XDP_PASS;
	}
	if (l4 + (proto == IPPROTO_TCP ? sizeof(struct tcphdr) : sizeof(struct udphdr)) > end) {
		count(KLVS_CNT_MALFORMED);
		return XDP_DROP;
	}
	nat_rewrite(iph, l4, proto, &iph->saddr, rev->vip, sport, rev->vport);
	__builtin_memcpy(eth->h_dest, rev->client_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, rev->director_mac, ETH_ALEN);
	count(KLVS_CNT_NAT_REPLY);
	return send_out(in_if, rev->ifindex);
}

static __always_inline int same16(const __u8 *a, const __u8 *b)
{
	__u64 x[2], y[2];

	__builtin_memcpy(x, a, 16);
	__builtin_memcpy(y, b, 16);
	return x[0] == y[0] && x[1] == y[1];
}

/* Rewrite a 16-byte address and a port: IPv6 has no header checksum, L4 does. */
static __always_inline void nat_rewrite6(void *l4, __u8 proto, __u8 *addr, const __u8 *new_addr,
					 __be16 *port, __be16 new_port)
{
	__u32 old[4], nw[4];
	__u16 *check = proto == IPPROTO_TCP ? &((struct tcphdr *)l4)->check
					    : &((struct udphdr *)l4)->check;
	__u16 c = *check;

	__builtin_memcpy(old, addr, 16);
	__builtin_memcpy(nw, new_addr, 16);
#pragma unroll
	for (int i = 0; i < 4; i++)
		c = csum_replace4(c, old[i], nw[i]);
	c = csum_replace2(c, *port, new_port);
	/* The UDP checksum is mandatory over IPv6; zero is sent as all ones. */
	if (proto == IPPROTO_UDP && c == 0)
		c = 0xffff;
	*check = c;
	__builtin_memcpy(addr, new_addr, 16);
	*port = new_port;
}

static __always_inline int nat_reply6(__u32 in_if, struct ethhdr *eth, struct ipv6hdr *ip6,
				      void *l4, void *end, __u8 proto, __be16 *sport,
				      __be16 *dport)
{
	struct klvs_flow6_key key = {
		.sport = *sport,
		.dport = *dport,
		.proto = proto,
	};

	__builtin_memcpy(key.src, &ip6->saddr, 16);
	__builtin_memcpy(key.dst, &ip6->daddr, 16);
	struct klvs_nat_rev6 *rev = bpf_map_lookup_elem(&nat_rev6, &key);

	if (!rev) {
		count(KLVS_CNT_PASS);
		return XDP_PASS;
	}
	if (l4 + (proto == IPPROTO_TCP ? sizeof(struct tcphdr) : sizeof(struct udphdr)) > end) {
		count(KLVS_CNT_MALFORMED);
		return XDP_DROP;
	}
	nat_rewrite6(l4, proto, (__u8 *)&ip6->saddr, rev->vip, sport, rev->vport);
	__builtin_memcpy(eth->h_dest, rev->client_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, rev->director_mac, ETH_ALEN);
	count(KLVS_CNT_NAT_REPLY);
	return send_out(in_if, rev->ifindex);
}

#endif /* KLVS_NAT_H */
