/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * ICMP errors about VIP flows (fragmentation needed, packet too big), sent to
 * the real server that owns the flow.
 * Included by director.c after its maps and counters: static inline only.
 */
#ifndef KLVS_ICMP_H
#define KLVS_ICMP_H

/*
 * ICMPv6 "packet too big" about a packet a real server sent from an IPv6 VIP:
 * the IPv6 counterpart of icmp_to_real.
 */
static __always_inline int icmp6_to_real(struct xdp_md *ctx, struct ethhdr *eth,
					 struct ipv6hdr *ip6, void *end, __u32 in_if)
{
	struct klvs_icmphdr *ic = (void *)(ip6 + 1);

	if ((void *)(ic + 1) > end || ic->type != ICMPV6_PKT_TOOBIG || ic->code != 0)
		goto pass;
	struct ipv6hdr *in = (void *)(ic + 1);

	if ((void *)(in + 1) > end || (in->nexthdr != IPPROTO_TCP && in->nexthdr != IPPROTO_UDP))
		goto pass;
	__be16 *ports = (void *)(in + 1);

	if ((void *)(ports + 2) > end)
		goto pass;
	__u32 zero = 0;
	struct klvs_config *cfg = bpf_map_lookup_elem(&config, &zero);

	if (!cfg || cfg->ring_size == 0)
		goto pass;
	/* The quoted packet went VIP:port -> client. */
	struct klvs_vip6_key vk = {
		.port = ports[0],
		.proto = in->nexthdr,
	};

	__builtin_memcpy(vk.addr, &in->saddr, 16);
	struct klvs_vip_meta *vip = bpf_map_lookup_elem(&vips6, &vk);

	if (!vip || (vip->forwarding != KLVS_FWD_DR && vip->forwarding != KLVS_FWD_TUN))
		goto pass;
	__u32 vip_id = vip->vip_id;
	struct klvs_flow6_key fk = {
		.sport = ports[1],
		.dport = ports[0],
		.proto = in->nexthdr,
	};

	__builtin_memcpy(fk.src, &in->daddr, 16);
	__builtin_memcpy(fk.dst, &in->saddr, 16);
	struct klvs_conn *conn = bpf_map_lookup_elem(&conns6, &fk);
	__u32 real_id = KLVS_REAL_NONE;
	struct klvs_real *real = bound_real(conn, vip_id, &real_id);

	if (!real) {
		__u32 slot = vip_id * cfg->ring_size + hash6(vip, &fk) % cfg->ring_size;
		__u32 *rid = bpf_map_lookup_elem(&rings, &slot);

		if (!rid)
			goto pass;
		real_id = *rid;
		real = bpf_map_lookup_elem(&reals, &real_id);
	}
	if (real_id == KLVS_REAL_NONE || !real || !(real->flags & KLVS_REAL_F_ALIVE))
		goto pass;
	count(KLVS_CNT_ICMP_TO_REAL);
	if (vip->forwarding == KLVS_FWD_DR)
		return forward_dr(eth, real);
	return forward_tun6(ctx, eth, ip6, real, cfg, in_if, vip_id, label6(&fk));
pass:
	count(KLVS_CNT_PASS);
	return XDP_PASS;
}

/*
 * ICMP "fragmentation needed" about a packet a real server sent from the VIP.
 * DR and TUN replies go straight to the client with the VIP as source, so a
 * router on that path reports a too-small MTU to the VIP: to us. Forward it to
 * the real server that owns the flow (connection table, else the same ring
 * slot a new packet of the flow would take), as Katran does; otherwise
 * path-MTU discovery cannot work through a director. Anything else passes.
 */
static __always_inline int icmp_to_real(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *iph,
					void *end, __u32 in_if)
{
	struct klvs_icmphdr *ic = (void *)iph + (iph->ihl & 0xf) * 4;

	if ((void *)(ic + 1) > end || ic->type != ICMP_DEST_UNREACH ||
	    ic->code != ICMP_FRAG_NEEDED)
		goto pass;
	struct iphdr *in = (void *)(ic + 1);

	if ((void *)(in + 1) > end || in->ihl != 5 ||
	    (in->protocol != IPPROTO_TCP && in->protocol != IPPROTO_UDP))
		goto pass;
	__be16 *ports = (void *)(in + 1);

	if ((void *)(ports + 2) > end)
		goto pass;
	__u32 zero = 0;
	struct klvs_config *cfg = bpf_map_lookup_elem(&config, &zero);

	if (!cfg || cfg->ring_size == 0)
		goto pass;
	/* The quoted packet went VIP:port -> client. */
	struct klvs_vip_key vk = {
		.addr = in->saddr,
		.port = ports[0],
		.proto = in->protocol,
	};
	struct klvs_vip_meta *vip = bpf_map_lookup_elem(&vips, &vk);

	if (!vip || (vip->forwarding != KLVS_FWD_DR && vip->forwarding != KLVS_FWD_TUN))
		goto pass;
	__u32 vip_id = vip->vip_id;
	struct klvs_flow_key fk = {
		.src = in->daddr,
		.dst = in->saddr,
		.sport = ports[1],
		.dport = ports[0],
		.proto = in->protocol,
	};
	struct klvs_conn *conn = bpf_map_lookup_elem(&conns, &fk);
	__u32 real_id = KLVS_REAL_NONE;
	struct klvs_real *real = bound_real(conn, vip_id, &real_id);

	if (!real) {
		__u32 slot = vip_id * cfg->ring_size +
			     hash4(vip, fk.src, fk.dst, fk.sport, fk.dport, fk.proto) % cfg->ring_size;
		__u32 *rid = bpf_map_lookup_elem(&rings, &slot);

		if (!rid)
			goto pass;
		real_id = *rid;
		real = bpf_map_lookup_elem(&reals, &real_id);
	}
	if (real_id == KLVS_REAL_NONE || !real || !(real->flags & KLVS_REAL_F_ALIVE))
		goto pass;
	count(KLVS_CNT_ICMP_TO_REAL);
	if (vip->forwarding == KLVS_FWD_DR)
		return forward_dr(eth, real);
	return forward_tun4(ctx, eth, iph, real, cfg, in_if, vip_id);
pass:
	count(KLVS_CNT_PASS);
	return XDP_PASS;
}

#endif /* KLVS_ICMP_H */
