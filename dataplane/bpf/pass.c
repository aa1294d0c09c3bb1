// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * An XDP program that passes everything. Two uses: on a veth peer it makes the
 * interface accept frames sent with XDP_TX or redirect (veth delivers those only
 * to a peer running XDP), and under BPF_PROG_TEST_RUN it is the empty program
 * whose cost the benchmark subtracts.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int klvs_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
