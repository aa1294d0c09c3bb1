// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * kube-lvs real-server decapsulation, for hosts whose kernel has no ipip module.
 *
 * An IPIP packet whose inner destination is a VIP bound on this host (listed in
 * `decap_vips` by the agent) loses its outer IPv4 header here and goes up the
 * stack as the client's original packet, exactly as tunl0 would deliver it.
 * Everything else passes untouched. Attached to a veth, this program also
 * makes the interface accept frames the director sends with XDP_TX.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
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

SEC("xdp")
int klvs_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *outer = (void *)(eth + 1);
	struct iphdr *inner = outer + 1;

	/* Only the plain 20-byte outer header we (and ipvs) produce is stripped. */
	if ((void *)(inner + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    outer->version != 4 || outer->ihl != 5 || outer->protocol != IPPROTO_IPIP ||
	    (outer->frag_off & bpf_htons(0x3fff)) || inner->version != 4)
		goto pass;
	if (!bpf_map_lookup_elem(&decap_vips, &inner->daddr))
		goto pass;

	struct ethhdr copy;

	__builtin_memcpy(&copy, eth, sizeof(copy));
	if (bpf_xdp_adjust_head(ctx, (int)sizeof(struct iphdr)))
		goto pass;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_DROP;
	__builtin_memcpy(eth, &copy, sizeof(copy));
	count(KLVS_CNT_DECAP);
	return XDP_PASS;
pass:
	count(KLVS_CNT_PASS);
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
