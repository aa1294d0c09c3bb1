// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * BPF programs of the namespace lab (not of the product):
 *   xdp_pass     - attached to veth peers so they accept XDP_TX/redirected frames;
 *   xdp_count    - on real servers: counts and drops the benchmark's UDP packets
 *                  (also IPIP-encapsulated ones);
 *   xdp_switch   - on bridge ports: forwards frames for known MACs straight to
 *                  their port (XDP redirect), everything else to the bridge;
 *   xdp_mac_forward - the benchmark's floor: the least a DR director does (parse,
 *                  pick a real server by source port, rewrite the MACs, XDP_TX);
 *   xdp_generate - the traffic generator, run with BPF_PROG_RUN in live-frames mode:
 *                  writes a whole UDP frame from a template and transmits it (XDP_TX).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "lab.h"

/* The frame the generator sends; userspace fills it (checksums included). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lab_gen_config);
} lab_gen_config SEC(".maps");

/* Frames generated so far, per CPU; also picks the flow of the next frame. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lab_gen_sent SEC(".maps");

/* Benchmark packets received, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lab_rx_count SEC(".maps");

/* Whether the IPv4 packet at ip (with its UDP header) is benchmark traffic. */
static __always_inline int is_bench_udp(struct iphdr *ip, void *data_end)
{
	struct udphdr *udp = (void *)ip + sizeof(*ip);

	if ((void *)(udp + 1) > data_end)
		return 0;
	return ip->ihl == 5 && ip->protocol == IPPROTO_UDP &&
	       udp->dest == bpf_htons(LAB_BENCH_PORT);
}

/* Bridge-port ifindex by destination MAC, for xdp_switch. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct lab_mac);
	__type(value, __u32);
} lab_fdb SEC(".maps");

SEC("xdp")
int xdp_switch(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct lab_mac key = {};
	__u32 *port;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	__builtin_memcpy(key.addr, eth->h_dest, ETH_ALEN);
	port = bpf_map_lookup_elem(&lab_fdb, &key);
	if (!port)
		return XDP_PASS;
	return bpf_redirect(*port, 0);
}

/* Destination MACs for xdp_mac_forward: flow i goes to entry i % LAB_FWD_MACS. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LAB_FWD_MACS);
	__type(key, __u32);
	__type(value, struct lab_mac);
} lab_fwd_mac SEC(".maps");

SEC("xdp")
int xdp_mac_forward(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp = (void *)ip + sizeof(*ip);
	struct lab_mac *mac;
	__u32 key;

	if ((void *)(udp + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    !is_bench_udp(ip, data_end))
		return XDP_PASS;
	key = bpf_ntohs(udp->source) % LAB_FWD_MACS;
	mac = bpf_map_lookup_elem(&lab_fwd_mac, &key);
	if (!mac)
		return XDP_PASS;
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac->addr, ETH_ALEN);
	return XDP_TX;
}

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("xdp")
int xdp_count(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	__u32 key = 0;
	__u64 *count;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	/* Benchmark traffic, plain or IPIP-encapsulated (tun forwarding). */
	if (!is_bench_udp(ip, data_end)) {
		struct iphdr *inner = ip + 1;

		if (ip->ihl != 5 || ip->protocol != IPPROTO_IPIP ||
		    (void *)(inner + 1) > data_end || !is_bench_udp(inner, data_end))
			return XDP_PASS;
	}
	count = bpf_map_lookup_elem(&lab_rx_count, &key);
	if (count)
		*count += 1;
	return XDP_DROP;
}

SEC("xdp")
int xdp_generate(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct lab_gen_config *cfg;
	struct udphdr *udp;
	__u32 key = 0;
	__u64 *sent;
	__u16 flow;

	cfg = bpf_map_lookup_elem(&lab_gen_config, &key);
	sent = bpf_map_lookup_elem(&lab_gen_sent, &key);
	if (!cfg || !sent || cfg->flows == 0)
		return XDP_ABORTED;
	if (data + LAB_GEN_HEADERS > data_end)
		return XDP_ABORTED;
	/* Live-frames pages are recycled without their contents: write every header. */
	__builtin_memcpy(data, cfg->headers, LAB_GEN_HEADERS);
	flow = *sent % cfg->flows;
	udp = data + sizeof(struct ethhdr) + sizeof(struct iphdr);
	udp->source = bpf_htons(cfg->first_source_port + flow);
	*sent += 1;
	return XDP_TX;
}

char _license[] SEC("license") = "Dual BSD/GPL";
