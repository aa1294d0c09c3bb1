/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Shared by lab.bpf.c and its Rust mirror in src/bpf.rs (checked by a size test). */
#ifndef KUBELVS_LAB_H
#define KUBELVS_LAB_H

#include <linux/types.h>

/* UDP destination port of benchmark traffic (discard). */
#define LAB_BENCH_PORT 9
/* Real servers the floor program spreads flows over. */
#define LAB_FWD_MACS 3
/* Ethernet + IPv4 (no options) + UDP. */
#define LAB_GEN_HEADERS 42

struct lab_gen_config {
	/* The frame's headers, network order, IP checksum filled in, UDP checksum 0. */
	__u8 headers[LAB_GEN_HEADERS];
	/* Frame i uses source port first_source_port + i % flows. */
	__u16 first_source_port;
	__u16 flows;
	__u16 _pad;
};

/* lab_fdb key: a MAC address, padded to 8 bytes. */
struct lab_mac {
	__u8 addr[6];
	__u16 _pad;
};

#endif
