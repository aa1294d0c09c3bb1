/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * tun forwarding: IPIP and IPv6-in-IPv6 encapsulation to a real server.
 * Included by director.c after its maps and counters: static inline only.
 */
#ifndef KLVS_TUNNEL_H
#define KLVS_TUNNEL_H

/*
 * tun (IPv4): IPIP-encapsulate the IPv4 packet after `eth` to the real server.
 * Next hop from the caller's MAC, else bpf_fib_lookup.
 */
static __always_inline int forward_tun4(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *iph,
					struct klvs_real *real, struct klvs_config *cfg,
					__u32 in_if, __u32 vip_id)
{
	struct bpf_fib_lookup fib = {};
	__u16 inner_len = bpf_ntohs(iph->tot_len);
	__u8 tos = iph->tos;
	__u8 dmac[ETH_ALEN], smac[ETH_ALEN];
	__u32 out_if;
	__be32 daddr = real->addr;
	__be32 saddr = cfg->director_addr;

	/* A next-hop MAC from the agent saves the route lookup (as Katran does). */
	if (real->flags & KLVS_REAL_F_HAS_MAC) {
		__builtin_memcpy(dmac, real->mac, ETH_ALEN);
		__builtin_memcpy(smac, eth->h_dest, ETH_ALEN);
		out_if = in_if;
		goto encap;
	}
	fib.family = AF_INET;
	fib.l4_protocol = IPPROTO_IPIP;
	fib.tot_len = inner_len + sizeof(struct iphdr);
	fib.ifindex = in_if;
	fib.ipv4_src = saddr;
	fib.ipv4_dst = daddr;
	/*
	 * A forwarding lookup from the ingress interface: an output lookup
	 * (BPF_FIB_LOOKUP_OUTPUT) would pin the egress to that interface.
	 */
	int rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);

	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		__builtin_memcpy(dmac, fib.dmac, ETH_ALEN);
		__builtin_memcpy(smac, fib.smac, ETH_ALEN);
		out_if = fib.ifindex;
	} else {
		/*
		 * Passing an IPIP packet with our own source up would be a martian
		 * to the kernel: drop, and count so the operator sees it.
		 */
		count(rc == BPF_FIB_LKUP_RET_NO_NEIGH ? KLVS_CNT_NO_NEIGH : KLVS_CNT_FIB_FAIL);
		account_drop(&vip_stats, vip_id);
		return XDP_DROP;
	}
encap:
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr))) {
		count(KLVS_CNT_ENCAP_FAIL);
		return XDP_DROP;
	}
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *neth = data;
	struct iphdr *outer = data + sizeof(struct ethhdr);

	if ((void *)(outer + 1) > end)
		return XDP_DROP;
	__builtin_memcpy(neth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(neth->h_source, smac, ETH_ALEN);
	neth->h_proto = bpf_htons(ETH_P_IP);

	outer->version = 4;
	outer->ihl = 5;
	outer->tos = tos;
	outer->tot_len = bpf_htons(inner_len + sizeof(struct iphdr));
	outer->id = 0;
	outer->frag_off = 0;
	outer->ttl = 64;
	outer->protocol = IPPROTO_IPIP;
	outer->check = 0;
	outer->saddr = saddr;
	outer->daddr = daddr;
	outer->check = ipv4_csum(outer);
	return send_out(in_if, out_if);
}

/*
 * tun (IPv6): IPv6-in-IPv6 to the real server; `label` seeds the outer flow
 * label so ECMP routers keep a flow on one path.
 */
static __always_inline int forward_tun6(struct xdp_md *ctx, struct ethhdr *eth,
					struct ipv6hdr *ip6, struct klvs_real *real,
					struct klvs_config *cfg, __u32 in_if, __u32 vip_id,
					__u32 label)
{
	struct bpf_fib_lookup fib = {};
	__u16 inner_len = sizeof(struct ipv6hdr) + bpf_ntohs(ip6->payload_len);
	/* version, traffic class from the inner packet; flow label from the flow. */
	__be32 word0 = (*(__be32 *)ip6 & bpf_htonl(0x0ff00000)) | bpf_htonl(0x60000000) |
		       bpf_htonl(label & 0xfffff);
	__u8 dmac[ETH_ALEN], smac[ETH_ALEN];
	__u32 out_if;

	if (real->flags & KLVS_REAL_F_HAS_MAC) {
		__builtin_memcpy(dmac, real->mac, ETH_ALEN);
		__builtin_memcpy(smac, eth->h_dest, ETH_ALEN);
		out_if = in_if;
		goto encap6;
	}
	fib.family = AF_INET6;
	fib.l4_protocol = IPPROTO_IPV6;
	fib.tot_len = inner_len + sizeof(struct ipv6hdr);
	fib.ifindex = in_if;
	__builtin_memcpy(fib.ipv6_src, cfg->director_addr6, 16);
	__builtin_memcpy(fib.ipv6_dst, real->addr6, 16);
	int rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);

	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		__builtin_memcpy(dmac, fib.dmac, ETH_ALEN);
		__builtin_memcpy(smac, fib.smac, ETH_ALEN);
		out_if = fib.ifindex;
	} else {
		count(rc == BPF_FIB_LKUP_RET_NO_NEIGH ? KLVS_CNT_NO_NEIGH : KLVS_CNT_FIB_FAIL);
		account_drop(&vip_stats, vip_id);
		return XDP_DROP;
	}
encap6:;
	__u8 saddr[16], daddr[16];

	__builtin_memcpy(saddr, cfg->director_addr6, 16);
	__builtin_memcpy(daddr, real->addr6, 16);
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct ipv6hdr))) {
		count(KLVS_CNT_ENCAP_FAIL);
		return XDP_DROP;
	}
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *neth = data;
	struct ipv6hdr *outer = data + sizeof(struct ethhdr);

	if ((void *)(outer + 1) > end)
		return XDP_DROP;
	__builtin_memcpy(neth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(neth->h_source, smac, ETH_ALEN);
	neth->h_proto = bpf_htons(ETH_P_IPV6);
	*(__be32 *)outer = word0;
	outer->payload_len = bpf_htons(inner_len);
	outer->nexthdr = IPPROTO_IPV6;
	outer->hop_limit = 64;
	__builtin_memcpy(&outer->saddr, saddr, 16);
	__builtin_memcpy(&outer->daddr, daddr, 16);
	return send_out(in_if, out_if);
}

#endif /* KLVS_TUNNEL_H */
