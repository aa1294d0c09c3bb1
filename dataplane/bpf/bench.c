// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * Benchmark wrappers, never attached: BPF_PROG_TEST_RUN with repeat > 1 runs a
 * program again and again on one buffer, so a program that rewrites or
 * encapsulates would see its own output. klvs_bench_director saves the
 * headers, sets the flow for this iteration, runs the director, then undoes
 * any encapsulation and restores the headers. klvs_bench_empty does the same
 * work around no director at all: the difference is the director's cost.
 *
 * Flows follow the userspace benchmark's scheme: flow i is client address
 * 198.18.0.0 | (i >> 14), port 1024 + (i & 0x3fff) (198.18.0.0/15, RFC 2544);
 * for IPv6 frames the last 32 bits of the client address are i >> 14.
 */
#include "director.c"

#define BENCH_SAVE 64

/* bench_cfg[0]: iteration n uses flow i = base + (n % count) * stride. */
struct klvs_bench_cfg {
	__u32 base;
	__u32 count;
	__u32 stride;
	__u32 ipv6; /* the frame is IPv6 */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct klvs_bench_cfg);
} bench_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} bench_seq SEC(".maps");

/* The saved headers: a per-CPU map, the director leaves little stack to spare. */
struct klvs_bench_save {
	__u8 bytes[BENCH_SAVE];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct klvs_bench_save);
} bench_saved SEC(".maps");

/* Saves the first bytes and points the packet at this iteration's flow. */
static __always_inline int bench_prepare(struct xdp_md *ctx, __u8 *saved, __u32 *len)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;

	if (data + BENCH_SAVE > end)
		return -1;
	*len = end - data;
	__builtin_memcpy(saved, data, BENCH_SAVE);

	struct klvs_bench_cfg *cfg = bpf_map_lookup_elem(&bench_cfg, &zero);
	__u64 *seq = bpf_map_lookup_elem(&bench_seq, &zero);

	if (!cfg || !seq || cfg->count == 0)
		return -1;
	__u32 n = (*seq)++;
	__u32 i = cfg->base + (n % cfg->count) * cfg->stride;

	if (cfg->ipv6) {
		struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
		__be16 *sport = (void *)(ip6 + 1);

		ip6->saddr.in6_u.u6_addr32[3] = bpf_htonl(i >> 14);
		*sport = bpf_htons(1024 + (i & 0x3fff));
		return 0;
	}
	struct iphdr *iph = data + sizeof(struct ethhdr);
	__be16 *sport = data + sizeof(struct ethhdr) + sizeof(struct iphdr);

	iph->saddr = bpf_htonl(0xc6120000 | ((i >> 14) & 0x1ffff));
	*sport = bpf_htons(1024 + (i & 0x3fff));
	return 0;
}

static __always_inline void bench_restore(struct xdp_md *ctx, __u8 *saved, __u32 len)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;

	if ((__u32)(end - data) > len)
		bpf_xdp_adjust_head(ctx, (int)((__u32)(end - data) - len));
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (data + BENCH_SAVE > end)
		return;
	__builtin_memcpy(data, saved, BENCH_SAVE);
}

SEC("xdp")
int klvs_bench_director(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct klvs_bench_save *sv = bpf_map_lookup_elem(&bench_saved, &zero);
	__u8 *saved;
	__u32 len;

	if (!sv)
		return XDP_ABORTED;
	saved = sv->bytes;
	if (bench_prepare(ctx, saved, &len))
		return XDP_ABORTED;
	int verdict = director(ctx);

	bench_restore(ctx, saved, len);
	return verdict;
}

SEC("xdp")
int klvs_bench_empty(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct klvs_bench_save *sv = bpf_map_lookup_elem(&bench_saved, &zero);
	__u8 *saved;
	__u32 len;

	if (!sv)
		return XDP_ABORTED;
	saved = sv->bytes;
	if (bench_prepare(ctx, saved, &len))
		return XDP_ABORTED;
	bench_restore(ctx, saved, len);
	return XDP_TX;
}
