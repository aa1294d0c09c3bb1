// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * kube-lvs XDP director: an L4 load balancer in the LVS model.
 *
 * For a packet to a VIP:port/protocol in `vips`, an established flow keeps its
 * real server from `conns`; a new flow takes the owner of its hash's slot in the
 * VIP's maglev ring (built in userspace). The packet then leaves by the VIP's
 * forwarding method: dr (MAC rewrite, XDP_TX), tun (IPIP encapsulation, next
 * hop from bpf_fib_lookup) or nat (destination rewrite, reversed on replies).
 * Anything that is not for a VIP (and not a NAT reply) is XDP_PASS, untouched.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "kubelvs_maps.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* The ICMP header as far as used here (linux/icmp.h drags in libc headers). */
struct klvs_icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 rest;
};
#define ICMP_DEST_UNREACH 3
#define ICMP_FRAG_NEEDED 4
#define ICMPV6_PKT_TOOBIG 2

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KLVS_MAX_VIPS);
	__type(key, struct klvs_vip_key);
	__type(value, struct klvs_vip_meta);
} vips SEC(".maps");

/*
 * Every VIP address, whatever its ports (value unused). A packet to one of them on a
 * port and protocol no `vips` entry has is dropped: the VIP is a local address of the
 * director, and its own listeners (sshd, the kubelet, the agent's metrics) must not be
 * reachable on it. ICMP (ping, path MTU) still reaches the host.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KLVS_MAX_VIPS);
	__type(key, __be32);
	__type(value, __u32);
} vip_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KLVS_MAX_VIPS);
	__type(key, struct klvs_addr6);
	__type(value, __u32);
} vip_addrs6 SEC(".maps");

/*
 * Ring of VIP v is rings[v * ring_size .. (v + 1) * ring_size]: real ids.
 * Mmapable so the loader diffs and writes slots in memory, not one syscall each.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, KLVS_MAX_VIPS * KLVS_RING_SIZE);
	__type(key, __u32);
	__type(value, __u32);
} rings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, KLVS_MAX_REALS);
	__type(key, __u32);
	__type(value, struct klvs_real);
} reals SEC(".maps");

/*
 * Per-CPU LRU lists (one shared table): inserting a new flow takes a free node
 * from this CPU's list instead of contending on one global list.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__uint(max_entries, KLVS_MAX_CONNS);
	__type(key, struct klvs_flow_key);
	__type(value, struct klvs_conn);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__uint(max_entries, KLVS_MAX_CONNS);
	__type(key, struct klvs_flow_key);
	__type(value, struct klvs_nat_rev);
} nat_rev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KLVS_MAX_VIPS);
	__type(key, struct klvs_vip6_key);
	__type(value, struct klvs_vip_meta);
} vips6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__uint(max_entries, KLVS_MAX_CONNS);
	__type(key, struct klvs_flow6_key);
	__type(value, struct klvs_conn);
} conns6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__uint(max_entries, KLVS_MAX_CONNS);
	__type(key, struct klvs_flow6_key);
	__type(value, struct klvs_nat_rev6);
} nat_rev6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KLVS_MAX_VIPS);
	__type(key, __u32);
	__type(value, struct klvs_stats);
} vip_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KLVS_MAX_REALS);
	__type(key, __u32);
	__type(value, struct klvs_stats);
} real_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KLVS_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct klvs_config);
} config SEC(".maps");

/*
 * The real server an established flow is bound to, if the binding still holds:
 * the same VIP id, the real server alive, and the same generation of its id (ids
 * are reused, so an old binding may name someone else's real server now).
 */
static __always_inline struct klvs_real *bound_real(struct klvs_conn *conn, __u32 vip_id,
						    __u32 *real_id)
{
	if (!conn || conn->vip_id != vip_id)
		return NULL;
	__u32 id = conn->real_id;
	struct klvs_real *real = bpf_map_lookup_elem(&reals, &id);

	if (!real || !(real->flags & KLVS_REAL_F_ALIVE) || real->gen != conn->gen)
		return NULL;
	*real_id = id;
	return real;
}

/*
 * A TCP SYN without ACK opens a new connection. A binding left by an earlier one on
 * the same ports must not carry it: clients reuse ports at once when the real server
 * closed first (the TIME_WAIT is on its side), and the old binding may name a real
 * server quiesced since. So a SYN is always scheduled from the ring, as Katran does
 * (IPVS reschedules the same case with conn_reuse_mode). A retransmitted SYN gets the
 * same real server while the ring is unchanged: the hash covers the 5-tuple.
 * The caller has checked that the whole TCP header is in the packet.
 */
static __always_inline int opens_connection(void *l4, __u8 proto)
{
	struct tcphdr *th = l4;

	return proto == IPPROTO_TCP && th->syn && !th->ack;
}

/*
 * A packet to a VIP on a port no virtual service has: dropped, so the host's own
 * listeners never answer on a VIP, unless it is TCP that opens nothing (no SYN without
 * ACK). That much the host may take: it resets what is not one of its connections, and
 * it may be a reply to a connection the node opened from the VIP as its source address
 * (IPv6 source selection can pick a VIP).
 */
static __always_inline int unserved_verdict(void *l4, void *end, __u8 proto)
{
	struct tcphdr *th = l4;

	if (proto == IPPROTO_TCP && (void *)(th + 1) <= end && !opens_connection(l4, proto))
		return XDP_PASS;
	return XDP_DROP;
}

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &idx);

	if (c)
		*c += 1;
}

static __always_inline void account(void *map, __u32 idx, __u64 bytes, int new_conn)
{
	struct klvs_stats *s = bpf_map_lookup_elem(map, &idx);

	if (s) {
		s->packets += 1;
		s->bytes += bytes;
		s->new_conns += new_conn;
	}
}

static __always_inline void account_drop(void *map, __u32 idx)
{
	struct klvs_stats *s = bpf_map_lookup_elem(map, &idx);

	if (s)
		s->drops += 1;
}

/* XDP_TX back out of the ingress interface, else redirect to the egress one. */
static __always_inline int send_out(__u32 in_if, __u32 ifindex)
{
	if (ifindex == 0 || ifindex == in_if)
		return XDP_TX;
	return bpf_redirect(ifindex, 0);
}

#include "klvs_csum.h"
#include "klvs_nat.h"
#include "klvs_tunnel.h"

/* The ring slot hash of an IPv4 flow (client address, VIP, ports, protocol). */
static __always_inline __u32 hash4(struct klvs_vip_meta *vip, __be32 saddr, __be32 daddr,
				   __be16 sport, __be16 dport, __u8 proto)
{
	if (vip->flags & KLVS_VIP_F_HASH_SRC_ONLY)
		return klvs_flow_hash(saddr & vip->src_mask, 0, proto);
	return klvs_flow_hash(saddr, daddr, ((__u32)sport << 16 | dport) ^ proto);
}

/* dr: the frame was addressed to us, so its destination MAC is ours. */
static __always_inline int forward_dr(struct ethhdr *eth, struct klvs_real *real)
{
	if (!(real->flags & KLVS_REAL_F_HAS_MAC)) {
		count(KLVS_CNT_NO_NEIGH);
		return XDP_DROP;
	}
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, real->mac, ETH_ALEN);
	return XDP_TX;
}

/* The ring slot hash of an IPv6 flow: addresses folded to 32 bits each. */
static __always_inline __u32 hash6(struct klvs_vip_meta *vip, struct klvs_flow6_key *fk)
{
	__u32 s[4], d[4];

	__builtin_memcpy(s, fk->src, 16);
	__builtin_memcpy(d, fk->dst, 16);
	if (vip->flags & KLVS_VIP_F_HASH_SRC_ONLY)
		return klvs_flow_hash((s[0] & vip->src_mask6[0]) ^ (s[1] & vip->src_mask6[1]),
				      (s[2] & vip->src_mask6[2]) ^ (s[3] & vip->src_mask6[3]),
				      fk->proto);
	return klvs_flow_hash(s[0] ^ s[1] ^ s[2] ^ s[3], d[0] ^ d[1] ^ d[2] ^ d[3],
			      ((__u32)fk->sport << 16 | fk->dport) ^ fk->proto);
}

/* The outer flow label seed of an IPv6 flow (the same for its ICMP errors). */
static __always_inline __u32 label6(struct klvs_flow6_key *fk)
{
	return klvs_flow_hash(fk->src[15], fk->dst[15], ((__u32)fk->sport << 16 | fk->dport));
}

#include "klvs_icmp.h"

/*
 * The IPv6 director: the same steps as IPv4. Only TCP or UDP directly after
 * the fixed header is handled; extension headers (and fragments) pass to the
 * kernel. tun forwarding is IPv6-in-IPv6 (next header 41).
 */
static __always_inline int director6(struct xdp_md *ctx, struct ethhdr *eth, void *end,
				     __u64 bytes, __u32 in_if)
{
	struct ipv6hdr *ip6 = (void *)(eth + 1);

	if ((void *)(ip6 + 1) > end || ip6->version != 6)
		goto pass;
	__u8 proto = ip6->nexthdr;

	if (proto == IPPROTO_ICMPV6)
		return icmp6_to_real(ctx, eth, ip6, end, in_if);
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		goto unserved6;
	void *l4 = ip6 + 1;
	__be16 *ports = l4;

	if ((void *)(ports + 2) > end)
		goto pass;

	__u32 zero = 0;
	struct klvs_config *cfg = bpf_map_lookup_elem(&config, &zero);

	if (!cfg)
		goto pass;

	struct klvs_vip6_key vk = {
		.port = ports[1],
		.proto = proto,
	};

	__builtin_memcpy(vk.addr, &ip6->daddr, 16);
	struct klvs_vip_meta *vip = bpf_map_lookup_elem(&vips6, &vk);

	if (!vip) {
		if (bpf_map_lookup_elem(&vip_addrs6, &ip6->daddr))
			return unserved_verdict(l4, end, proto);
		if (cfg->flags & KLVS_CFG_F_NAT6)
			return nat_reply6(in_if, eth, ip6, l4, end, proto, &ports[0], &ports[1]);
		goto pass;
	}
	__u32 vip_id = vip->vip_id;

	if (l4 + (proto == IPPROTO_TCP ? sizeof(struct tcphdr) : sizeof(struct udphdr)) > end) {
		count(KLVS_CNT_MALFORMED);
		account_drop(&vip_stats, vip_id);
		return XDP_DROP;
	}

	struct klvs_flow6_key fk = {
		.sport = ports[0],
		.dport = ports[1],
		.proto = proto,
	};

	__builtin_memcpy(fk.src, &ip6->saddr, 16);
	__builtin_memcpy(fk.dst, &ip6->daddr, 16);
	struct klvs_real *real = NULL;
	__u32 real_id = 0;
	int new_conn = 0;
	struct klvs_conn *conn =
		opens_connection(l4, proto) ? NULL : bpf_map_lookup_elem(&conns6, &fk);

	real = bound_real(conn, vip_id, &real_id);
	if (!real) {
		__u32 ring_size = cfg->ring_size;
		__u32 h;

		if (ring_size == 0)
			goto no_real;
		h = hash6(vip, &fk);
		__u32 slot = vip_id * ring_size + h % ring_size;
		__u32 *rid = bpf_map_lookup_elem(&rings, &slot);

		if (!rid || *rid == KLVS_REAL_NONE)
			goto no_real;
		real_id = *rid;
		real = bpf_map_lookup_elem(&reals, &real_id);
		if (!real || !(real->flags & KLVS_REAL_F_ALIVE))
			goto no_real;
		struct klvs_conn nc = { .real_id = real_id, .vip_id = vip_id, .gen = real->gen };

		bpf_map_update_elem(&conns6, &fk, &nc, BPF_ANY);
		new_conn = 1;
	}

	account(&vip_stats, vip_id, bytes, new_conn);
	account(&real_stats, real_id, bytes, new_conn);

	switch (vip->forwarding) {
	case KLVS_FWD_DR:
		return forward_dr(eth, real);

	case KLVS_FWD_NAT: {
		struct bpf_fib_lookup fib = {};
		struct klvs_flow6_key rk = {
			.sport = real->port,
			.dport = ports[0],
			.proto = proto,
		};

		__builtin_memcpy(rk.src, real->addr6, 16);
		__builtin_memcpy(rk.dst, &ip6->saddr, 16);
		struct klvs_nat_rev6 *have = bpf_map_lookup_elem(&nat_rev6, &rk);

		if (!have || !same16(have->vip, (__u8 *)&ip6->daddr) ||
		    have->vport != ports[1] || have->vip_id != vip_id) {
			struct klvs_nat_rev6 rev = {
				.vport = ports[1],
				.ifindex = in_if,
				.vip_id = vip_id,
			};
			__builtin_memcpy(rev.vip, &ip6->daddr, 16);
			__builtin_memcpy(rev.client_mac, eth->h_source, ETH_ALEN);
			__builtin_memcpy(rev.director_mac, eth->h_dest, ETH_ALEN);
			bpf_map_update_elem(&nat_rev6, &rk, &rev, BPF_ANY);
		}
		nat_rewrite6(l4, proto, (__u8 *)&ip6->daddr, real->addr6, &ports[1], real->port);

		if (real->flags & KLVS_REAL_F_HAS_MAC) {
			__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
			__builtin_memcpy(eth->h_dest, real->mac, ETH_ALEN);
			return XDP_TX;
		}
		fib.family = AF_INET6;
		fib.l4_protocol = proto;
		fib.tot_len = sizeof(struct ipv6hdr) + bpf_ntohs(ip6->payload_len);
		fib.ifindex = in_if;
		__builtin_memcpy(fib.ipv6_src, &ip6->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, real->addr6, 16);
		int rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);

		if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
			__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
			__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
			return send_out(in_if, fib.ifindex);
		}
		count(KLVS_CNT_NO_NEIGH);
		return XDP_PASS;
	}

	case KLVS_FWD_TUN:
		return forward_tun6(ctx, eth, ip6, real, cfg, in_if, vip_id, label6(&fk));
	}
	account_drop(&vip_stats, vip_id);
	return XDP_DROP;

no_real:
	count(KLVS_CNT_NO_REAL);
	account_drop(&vip_stats, vip_id);
	return XDP_DROP;
unserved6:
	if (bpf_map_lookup_elem(&vip_addrs6, &ip6->daddr))
		return XDP_DROP;
pass:
	count(KLVS_CNT_PASS);
	return XDP_PASS;
}


/* The whole director; bench.c wraps it to restore the packet between runs. */
static __always_inline int director(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u64 bytes = end - data;
	/* Read once: clang otherwise keeps ctx+off in a register, which the verifier refuses. */
	__u32 in_if = ctx->ingress_ifindex;

	if ((void *)(eth + 1) > end)
		goto pass;
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return director6(ctx, eth, end, bytes, in_if);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		goto pass;

	struct iphdr *iph = (void *)(eth + 1);

	if ((void *)(iph + 1) > end || iph->version != 4 || iph->ihl < 5)
		goto pass;
	__u8 proto = iph->protocol;

	/* Fragments carry no ports (or not all of them): the kernel reassembles. */
	/* Not reassembled here: for a VIP, the host would reassemble and deliver it to
	 * its own listeners. */
	if (iph->frag_off & bpf_htons(0x3fff))
		goto unserved4;
	if (proto == IPPROTO_ICMP)
		return icmp_to_real(ctx, eth, iph, end, in_if);
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		goto unserved4;

	void *l4 = (void *)iph + (iph->ihl & 0xf) * 4;
	__be16 *ports = l4;

	if ((void *)(ports + 2) > end)
		goto pass;

	__u32 zero = 0;
	struct klvs_config *cfg = bpf_map_lookup_elem(&config, &zero);

	if (!cfg)
		goto pass;

	struct klvs_vip_key vk = {
		.addr = iph->daddr,
		.port = ports[1],
		.proto = proto,
	};
	struct klvs_vip_meta *vip = bpf_map_lookup_elem(&vips, &vk);

	if (!vip) {
		if (bpf_map_lookup_elem(&vip_addrs, &iph->daddr))
			return unserved_verdict(l4, end, proto);
		if (cfg->flags & KLVS_CFG_F_NAT)
			return nat_reply(in_if, eth, iph, l4, end, proto, &ports[0], &ports[1]);
		goto pass;
	}
	__u32 vip_id = vip->vip_id;

	/* For a VIP we need the whole L4 header: a truncated one is dropped, not forwarded. */
	if (l4 + (proto == IPPROTO_TCP ? sizeof(struct tcphdr) : sizeof(struct udphdr)) > end) {
		count(KLVS_CNT_MALFORMED);
		account_drop(&vip_stats, vip_id);
		return XDP_DROP;
	}

	struct klvs_flow_key fk = {
		.src = iph->saddr,
		.dst = iph->daddr,
		.sport = ports[0],
		.dport = ports[1],
		.proto = proto,
	};
	struct klvs_real *real = NULL;
	__u32 real_id = 0;
	int new_conn = 0;
	struct klvs_conn *conn =
		opens_connection(l4, proto) ? NULL : bpf_map_lookup_elem(&conns, &fk);

	real = bound_real(conn, vip_id, &real_id);
	if (!real) {
		__u32 ring_size = cfg->ring_size;
		__u32 h;

		if (ring_size == 0)
			goto no_real;
		h = hash4(vip, iph->saddr, iph->daddr, ports[0], ports[1], proto);
		__u32 slot = vip_id * ring_size + h % ring_size;
		__u32 *rid = bpf_map_lookup_elem(&rings, &slot);

		if (!rid || *rid == KLVS_REAL_NONE)
			goto no_real;
		real_id = *rid;
		real = bpf_map_lookup_elem(&reals, &real_id);
		if (!real || !(real->flags & KLVS_REAL_F_ALIVE))
			goto no_real;
		struct klvs_conn nc = { .real_id = real_id, .vip_id = vip_id, .gen = real->gen };

		bpf_map_update_elem(&conns, &fk, &nc, BPF_ANY);
		new_conn = 1;
	}

	account(&vip_stats, vip_id, bytes, new_conn);
	account(&real_stats, real_id, bytes, new_conn);

	switch (vip->forwarding) {
	case KLVS_FWD_DR:
		return forward_dr(eth, real);

	case KLVS_FWD_NAT: {
		struct bpf_fib_lookup fib = {};

		/* Remember how to reach the client before rewriting anything. */
		struct klvs_flow_key rk = {
			.src = real->addr,
			.dst = iph->saddr,
			.sport = real->port,
			.dport = ports[0],
			.proto = proto,
		};
		struct klvs_nat_rev *have = bpf_map_lookup_elem(&nat_rev, &rk);

		/* Keyed by the reply's 5-tuple, which is also what the real server's own
		 * stack keys the connection by: two live flows with one key would be one
		 * connection to the real server too. The newest flow's VIP:port wins. */
		if (!have || have->vip != iph->daddr || have->vport != ports[1] ||
		    have->vip_id != vip_id) {
			struct klvs_nat_rev rev = {
				.vip = iph->daddr,
				.vport = ports[1],
				.ifindex = in_if,
				.vip_id = vip_id,
			};
			__builtin_memcpy(rev.client_mac, eth->h_source, ETH_ALEN);
			__builtin_memcpy(rev.director_mac, eth->h_dest, ETH_ALEN);
			bpf_map_update_elem(&nat_rev, &rk, &rev, BPF_ANY);
		}
		nat_rewrite(iph, l4, proto, &iph->daddr, real->addr, &ports[1], real->port);

		/* A next-hop MAC from the agent saves the route lookup (as Katran does). */
		if (real->flags & KLVS_REAL_F_HAS_MAC) {
			__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
			__builtin_memcpy(eth->h_dest, real->mac, ETH_ALEN);
			return XDP_TX;
		}
		fib.family = AF_INET;
		fib.l4_protocol = proto;
		fib.tot_len = bpf_ntohs(iph->tot_len);
		fib.ifindex = in_if;
		fib.ipv4_src = iph->saddr;
		fib.ipv4_dst = real->addr;
		int rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);

		if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
			__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
			__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
			return send_out(in_if, fib.ifindex);
		}
		/* The rewritten packet is an ordinary forwarded one: let the kernel resolve. */
		count(KLVS_CNT_NO_NEIGH);
		return XDP_PASS;
	}

	case KLVS_FWD_TUN:
		return forward_tun4(ctx, eth, iph, real, cfg, in_if, vip_id);
	}
	/* Unknown forwarding value: the map is corrupt, do not guess. */
	account_drop(&vip_stats, vip_id);
	return XDP_DROP;

no_real:
	count(KLVS_CNT_NO_REAL);
	account_drop(&vip_stats, vip_id);
	return XDP_DROP;
unserved4:
	/* Another protocol to a VIP address: nothing of ours, and not the host's either. */
	if (bpf_map_lookup_elem(&vip_addrs, &iph->daddr))
		return XDP_DROP;
pass:
	count(KLVS_CNT_PASS);
	return XDP_PASS;
}

SEC("xdp")
int klvs_director(struct xdp_md *ctx)
{
	return director(ctx);
}

char _license[] SEC("license") = "Dual BSD/GPL";
