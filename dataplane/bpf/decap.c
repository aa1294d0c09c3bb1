// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * kube-lvs real-server decapsulation, for hosts whose kernel has no ipip module.
 *
 * An IPIP packet whose inner destination is a VIP bound on this host (listed in
 * `decap_vips` by the agent; IPv6-in-IPv6 and `decap_vips6` likewise) loses
 * its outer header here and goes up the
 * stack as the client's original packet, exactly as tunl0 would deliver it.
 * Everything else passes untouched. Attached to a veth, this program also
 * makes the interface accept frames the director sends with XDP_TX.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "kubelvs_maps.h"

/* VIP (network byte order) -> unused flags: VIPs this real server carries. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KLVS_MAX_DECAP_VIPS);
	__type(key, __be32);
	__type(value, __u32);
} decap_vips SEC(".maps");

/* IPv6 VIP -> unused flags. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KLVS_MAX_DECAP_VIPS);
	__type(key, struct klvs_decap6_key);
	__type(value, __u32);
} decap_vips6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KLVS_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} decap_counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&decap_counters, &idx);

	if (c)
		*c += 1;
}

/* Strips `outer_len` bytes after the Ethernet header, which moves forward. */
static __always_inline int strip(struct xdp_md *ctx, struct ethhdr *eth, int outer_len)
{
	struct ethhdr copy;

	__builtin_memcpy(&copy, eth, sizeof(copy));
	if (bpf_xdp_adjust_head(ctx, outer_len)) {
		count(KLVS_CNT_PASS);
		return XDP_PASS;
	}
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;

	eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_DROP;
	__builtin_memcpy(eth, &copy, sizeof(copy));
	count(KLVS_CNT_DECAP);
	return XDP_PASS;
}

static __always_inline int decap6(struct xdp_md *ctx, struct ethhdr *eth, void *end)
{
	struct ipv6hdr *outer = (void *)(eth + 1);
	struct ipv6hdr *inner = outer + 1;

	/* Only the plain 40-byte outer header (no extension headers) is stripped. */
	if ((void *)(inner + 1) > end || outer->version != 6 || outer->nexthdr != IPPROTO_IPV6 ||
	    inner->version != 6)
		goto pass;
	struct klvs_decap6_key k;

	__builtin_memcpy(k.addr, &inner->daddr, 16);
	if (!bpf_map_lookup_elem(&decap_vips6, &k))
		goto pass;
	return strip(ctx, eth, (int)sizeof(struct ipv6hdr));
pass:
	count(KLVS_CNT_PASS);
	return XDP_PASS;
}

SEC("xdp")
int klvs_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		goto pass;
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return decap6(ctx, eth, end);
	struct iphdr *outer = (void *)(eth + 1);
	struct iphdr *inner = outer + 1;

	/* Only the plain 20-byte outer header we (and ipvs) produce is stripped. */
	if ((void *)(inner + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    outer->version != 4 || outer->ihl != 5 || outer->protocol != IPPROTO_IPIP ||
	    (outer->frag_off & bpf_htons(0x3fff)) || inner->version != 4)
		goto pass;
	if (!bpf_map_lookup_elem(&decap_vips, &inner->daddr))
		goto pass;
	return strip(ctx, eth, (int)sizeof(struct iphdr));
pass:
	count(KLVS_CNT_PASS);
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
