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

/* XDP_TX back out of the ingress interface, else redirect to the egress one. */
static __always_inline int send_out(__u32 in_if, __u32 ifindex)
{
	if (ifindex == 0 || ifindex == in_if)
		return XDP_TX;
	return bpf_redirect(ifindex, 0);
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
		goto pass;
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
	struct klvs_conn *conn = bpf_map_lookup_elem(&conns6, &fk);

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
	if (iph->frag_off & bpf_htons(0x3fff))
		goto pass;
	if (proto == IPPROTO_ICMP)
		return icmp_to_real(ctx, eth, iph, end, in_if);
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		goto pass;

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
	struct klvs_conn *conn = bpf_map_lookup_elem(&conns, &fk);

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
