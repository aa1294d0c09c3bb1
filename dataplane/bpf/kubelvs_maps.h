/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * kube-lvs XDP dataplane: the single source of truth for map keys and values.
 *
 * The Rust loader (dataplane/xdp/src/maps.rs) mirrors every struct here with
 * #[repr(C)] and explicit padding; its tests compare sizes and field offsets
 * with the BTF of the compiled objects, so a change here that is not mirrored
 * fails the build's tests rather than corrupting maps at run time.
 *
 * Byte order: fields named addr/port/mask hold network byte order (__be*), the
 * rest host order. Every struct is padded by hand: no implicit holes.
 *
 * IPv4 and IPv6 VIPs share vip ids (rings, vip_stats) and real ids (reals,
 * real_stats); each family has its own vips, conns and nat_rev maps because
 * the keys differ in size.
 */
#ifndef KUBELVS_MAPS_H
#define KUBELVS_MAPS_H

#include <linux/types.h>

/* Default capacities; the loader overrides max_entries at load time. */
#define KLVS_MAX_VIPS 64
#define KLVS_RING_SIZE 65537
#define KLVS_MAX_REALS 4096
#define KLVS_MAX_CONNS 262144
#define KLVS_MAX_DECAP_VIPS 1024

/* Real server id 0 means "no real server": a zeroed ring slot forwards nowhere. */
#define KLVS_REAL_NONE 0

/* klvs_vip_meta.forwarding */
enum klvs_forwarding {
	KLVS_FWD_DR = 1,
	KLVS_FWD_TUN = 2,
	KLVS_FWD_NAT = 3,
};

/* klvs_vip_meta.flags */
#define KLVS_VIP_F_HASH_SRC_ONLY 0x1 /* persistence: hash the masked client address only */

/* klvs_real.flags */
#define KLVS_REAL_F_ALIVE 0x1   /* slot in use; established flows to a dead id reschedule */
#define KLVS_REAL_F_HAS_MAC 0x2 /* mac holds the neighbour's MAC (from the caller) */
#define KLVS_REAL_F_V6 0x4      /* an IPv6 real server: addr6 holds its address */

/* klvs_config.flags */
#define KLVS_CFG_F_NAT 0x1  /* some IPv4 VIP uses NAT: look for replies to reverse */
#define KLVS_CFG_F_NAT6 0x2 /* some IPv6 VIP uses NAT */

/* vips: VIP:port/protocol -> meta (BPF_MAP_TYPE_HASH). */
struct klvs_vip_key {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct klvs_vip_meta {
	__u32 vip_id; /* index into vip_stats and into rings (vip_id * ring_size) */
	__u32 forwarding;
	__u32 flags;
	__be32 src_mask; /* KLVS_VIP_F_HASH_SRC_ONLY: client address mask (IPv4) */
	__be32 src_mask6[4]; /* the same for an IPv6 VIP */
};

/* vip_addrs6: an IPv6 VIP address (BPF_MAP_TYPE_HASH; vip_addrs keys a __be32). */
struct klvs_addr6 {
	__u8 addr[16];
};

/* vips6: IPv6 VIP:port/protocol -> meta (BPF_MAP_TYPE_HASH). */
struct klvs_vip6_key {
	__u8 addr[16];
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/* reals: real id -> real server (BPF_MAP_TYPE_ARRAY). */
struct klvs_real {
	__be32 addr;
	__be16 port; /* NAT only: the destination port after rewrite */
	__u8 mac[6]; /* next-hop MAC from the caller: DR needs it, TUN/NAT skip the route lookup */
	__u32 flags;
	__u8 addr6[16]; /* KLVS_REAL_F_V6 */
	/* Bumped each time the id is given to a real server (ids are reused): a
	 * connection bound to an older generation is stale and is rescheduled. */
	__u32 gen;
};

/* conns and nat_rev keys: one direction of a flow as it appears on the wire. */
struct klvs_flow_key {
	__be32 src;
	__be32 dst;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* conns6 and nat_rev6 keys. */
struct klvs_flow6_key {
	__u8 src[16];
	__u8 dst[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* conns (and conns6): client flow -> chosen real server (BPF_MAP_TYPE_LRU_HASH). */
struct klvs_conn {
	__u32 real_id;
	__u32 vip_id;
	__u32 gen; /* the real server's generation when the flow was bound */
};

/* nat_rev: reply flow (real -> client) -> how to restore the VIP (LRU_HASH). */
struct klvs_nat_rev {
	__be32 vip;
	__be16 vport;
	__u8 client_mac[6]; /* the frame's source MAC on the way in: where replies go */
	__u8 director_mac[6]; /* the frame's destination MAC on the way in: our MAC */
	__u16 pad;
	__u32 ifindex; /* interface the client's packets came in on */
	__u32 vip_id;
};

/* nat_rev6: the IPv6 counterpart of klvs_nat_rev. */
struct klvs_nat_rev6 {
	__u8 vip[16];
	__be16 vport;
	__u8 client_mac[6];
	__u8 director_mac[6];
	__u16 pad;
	__u32 ifindex;
	__u32 vip_id;
};

/* decap_vips6 key (decap.c): an IPv6 VIP carried by this real server. */
struct klvs_decap6_key {
	__u8 addr[16];
};

/* vip_stats (by vip_id) and real_stats (by real id): BPF_MAP_TYPE_PERCPU_ARRAY. */
struct klvs_stats {
	__u64 packets;
	__u64 bytes;
	__u64 new_conns;
	__u64 drops;
};

/* config[0] (BPF_MAP_TYPE_ARRAY). */
struct klvs_config {
	__be32 director_addr; /* outer source address of IPIP packets */
	__u32 ring_size;      /* slots per VIP ring, a prime */
	__u32 flags;
	__u32 pad;
	__u8 director_addr6[16]; /* outer source address of IPv6-in-IPv6 packets */
};

/* counters: BPF_MAP_TYPE_PERCPU_ARRAY of __u64, indexed by this enum. */
enum klvs_counter {
	KLVS_CNT_PASS = 0,        /* not for a VIP, passed up untouched */
	KLVS_CNT_MALFORMED = 1,   /* for a VIP but truncated: dropped */
	KLVS_CNT_NO_REAL = 2,     /* VIP without a usable real server: dropped */
	KLVS_CNT_NO_NEIGH = 3,    /* no MAC for the next hop: dropped or passed to the kernel */
	KLVS_CNT_FIB_FAIL = 4,    /* no route to the real server: dropped */
	KLVS_CNT_NAT_REPLY = 5,   /* replies reverse-NATed */
	KLVS_CNT_ENCAP_FAIL = 6,  /* bpf_xdp_adjust_head refused: dropped */
	KLVS_CNT_DECAP = 7,       /* decap program: IPIP stripped */
	KLVS_CNT_ICMP_TO_REAL = 8, /* ICMP frag-needed about a VIP flow, sent to its real server */
	KLVS_CNT_MAX = 9,
};

/*
 * The flow hash that picks a ring slot. Mirrored in Rust (flow_hash) so tests
 * can predict which real server a flow goes to. Inputs are the raw 32-bit
 * words as they sit in the packet.
 */
static inline __u32 klvs_flow_hash(__u32 a, __u32 b, __u32 c)
{
	__u64 h = ((__u64)a << 32) | b;

	h ^= (__u64)c * 0x9e3779b97f4a7c15ULL;
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return (__u32)h ^ (__u32)(h >> 32);
}

#endif /* KUBELVS_MAPS_H */
