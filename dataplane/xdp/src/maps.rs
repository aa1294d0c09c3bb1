//! `#[repr(C)]` mirrors of the map keys and values in `dataplane/bpf/kubelvs_maps.h`.
//!
//! Padding is explicit (no implicit holes), so a zeroed value is fully defined
//! and equal values compare equal byte for byte. Tests compare every size and
//! field offset with the BTF of the compiled director object.

/// `enum klvs_forwarding`.
pub const FWD_DR: u32 = 1;
pub const FWD_TUN: u32 = 2;
pub const FWD_NAT: u32 = 3;

pub const VIP_F_HASH_SRC_ONLY: u32 = 0x1;
pub const REAL_F_ALIVE: u32 = 0x1;
pub const REAL_F_HAS_MAC: u32 = 0x2;
pub const REAL_F_V6: u32 = 0x4;
pub const CFG_F_NAT: u32 = 0x1;
pub const CFG_F_NAT6: u32 = 0x2;

/// Real server id 0 means "none": a zeroed ring slot forwards nowhere.
pub const REAL_NONE: u32 = 0;

/// `enum klvs_counter`: indexes of the global per-CPU counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Counter {
    Pass = 0,
    Malformed = 1,
    NoReal = 2,
    NoNeigh = 3,
    FibFail = 4,
    NatReply = 5,
    EncapFail = 6,
    Decap = 7,
    IcmpToReal = 8,
}

pub const COUNTER_MAX: u32 = 9;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    /// Network byte order, as `u32::from_ne_bytes(octets)`.
    pub addr: u32,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub pad: u8,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VipMeta {
    pub vip_id: u32,
    pub forwarding: u32,
    pub flags: u32,
    /// Network byte order.
    pub src_mask: u32,
    /// Network byte order, IPv6 VIPs.
    pub src_mask6: [u32; 4],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vip6Key {
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub pad: u8,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Real {
    /// Network byte order.
    pub addr: u32,
    /// Network byte order.
    pub port: u16,
    pub mac: [u8; 6],
    pub flags: u32,
    /// With `REAL_F_V6`.
    pub addr6: [u8; 16],
    /// Bumped each time the id is given to a real server; connections bound to an
    /// older generation are rescheduled.
    pub gen: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flow6Key {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Conn {
    pub real_id: u32,
    pub vip_id: u32,
    /// The real server's generation when the flow was bound.
    pub gen: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatRev {
    pub vip: u32,
    pub vport: u16,
    pub client_mac: [u8; 6],
    pub director_mac: [u8; 6],
    pub pad: u16,
    pub ifindex: u32,
    pub vip_id: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatRev6 {
    pub vip: [u8; 16],
    pub vport: u16,
    pub client_mac: [u8; 6],
    pub director_mac: [u8; 6],
    pub pad: u16,
    pub ifindex: u32,
    pub vip_id: u32,
}

/// Key of the decap program's `decap_vips6`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Decap6Key {
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub packets: u64,
    pub bytes: u64,
    pub new_conns: u64,
    pub drops: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Config {
    /// Network byte order.
    pub director_addr: u32,
    pub ring_size: u32,
    pub flags: u32,
    pub pad: u32,
    pub director_addr6: [u8; 16],
}

// SAFETY: every type is #[repr(C)], built only of integers and byte arrays, with
// padding spelled out as fields: any bit pattern is valid and there are no holes.
#[allow(unsafe_code)]
mod pod {
    use super::*;
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipMeta {}
    unsafe impl aya::Pod for Real {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Conn {}
    unsafe impl aya::Pod for NatRev {}
    unsafe impl aya::Pod for Stats {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Vip6Key {}
    unsafe impl aya::Pod for Flow6Key {}
    unsafe impl aya::Pod for NatRev6 {}
    unsafe impl aya::Pod for Decap6Key {}
}

/// `klvs_flow_hash` from the header, bit for bit: inputs are the raw 32-bit
/// words as the BPF program loads them from the packet (native endian).
pub fn flow_hash(a: u32, b: u32, c: u32) -> u32 {
    let mut h = (u64::from(a) << 32) | u64::from(b);
    h ^= u64::from(c).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h as u32) ^ ((h >> 32) as u32)
}

/// The hash the director computes for a new flow of a VIP without persistence.
/// Addresses are in network order as `u32::from_ne_bytes(octets)`, ports as on the wire.
pub fn director_flow_hash(src: u32, dst: u32, sport_be: u16, dport_be: u16, proto: u8) -> u32 {
    // In C, the u16 port loads are native-endian reads of wire bytes.
    let sport = u32::from(sport_be);
    let dport = u32::from(dport_be);
    flow_hash(src, dst, ((sport << 16) | dport) ^ u32::from(proto))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::mem::{offset_of, size_of};
    use std::process::Command;

    /// (C struct name, size, [(field, offset)]).
    type Layout = (&'static str, usize, Vec<(&'static str, usize)>);

    /// The layout of every Rust mirror.
    fn mirrors() -> Vec<Layout> {
        macro_rules! layout {
            ($c:literal, $t:ty, [$($f:ident),*]) => {
                ($c, size_of::<$t>(), vec![$((stringify!($f), offset_of!($t, $f))),*])
            };
        }
        vec![
            layout!("klvs_vip_key", VipKey, [addr, port, proto, pad]),
            layout!(
                "klvs_vip_meta",
                VipMeta,
                [vip_id, forwarding, flags, src_mask, src_mask6]
            ),
            layout!("klvs_vip6_key", Vip6Key, [addr, port, proto, pad]),
            layout!("klvs_real", Real, [addr, port, mac, flags, addr6, gen]),
            layout!(
                "klvs_flow6_key",
                Flow6Key,
                [src, dst, sport, dport, proto, pad]
            ),
            layout!(
                "klvs_nat_rev6",
                NatRev6,
                [vip, vport, client_mac, director_mac, pad, ifindex, vip_id]
            ),
            layout!(
                "klvs_flow_key",
                FlowKey,
                [src, dst, sport, dport, proto, pad]
            ),
            layout!("klvs_conn", Conn, [real_id, vip_id, gen]),
            layout!(
                "klvs_nat_rev",
                NatRev,
                [vip, vport, client_mac, director_mac, pad, ifindex, vip_id]
            ),
            layout!("klvs_stats", Stats, [packets, bytes, new_conns, drops]),
            layout!(
                "klvs_config",
                Config,
                [director_addr, ring_size, flags, pad, director_addr6]
            ),
        ]
    }

    /// Struct layouts from the BTF of a compiled object, read by bpftool.
    fn btf_structs(obj: &str) -> HashMap<String, (usize, Vec<(String, usize)>)> {
        // /usr/sbin is not on every user's PATH.
        let bpftool = ["bpftool", "/usr/sbin/bpftool"]
            .into_iter()
            .find(|b| Command::new(b).arg("version").output().is_ok())
            .expect("bpftool installed (Debian package bpftool)");
        let out = Command::new(bpftool)
            .args(["-j", "btf", "dump", "file", obj])
            .output()
            .expect("run bpftool");
        assert!(
            out.status.success(),
            "bpftool btf dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
        let mut structs = HashMap::new();
        for t in v["types"].as_array().expect("types array") {
            if t["kind"] != "STRUCT" {
                continue;
            }
            let name = t["name"].as_str().unwrap_or_default().to_owned();
            let size = t["size"].as_u64().expect("struct size") as usize;
            let members = t["members"]
                .as_array()
                .expect("members")
                .iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or_default().to_owned(),
                        (m["bits_offset"].as_u64().expect("bits_offset") / 8) as usize,
                    )
                })
                .collect();
            structs.insert(name, (size, members));
        }
        structs
    }

    fn layout_decap6() -> Layout {
        (
            "klvs_decap6_key",
            size_of::<Decap6Key>(),
            vec![("addr", offset_of!(Decap6Key, addr))],
        )
    }

    #[test]
    fn mirrors_match_btf_of_the_director_object() {
        let btf = btf_structs(concat!(env!("OUT_DIR"), "/director.o"));
        let decap = btf_structs(concat!(env!("OUT_DIR"), "/decap.o"));
        let mut all = mirrors();
        all.push(layout_decap6());
        for (name, size, fields) in all {
            let btf = if name == "klvs_decap6_key" {
                &decap
            } else {
                &btf
            };
            let (bsize, bfields) = btf
                .get(name)
                .unwrap_or_else(|| panic!("struct {name} not in the director object's BTF"));
            assert_eq!(*bsize, size, "size of {name}");
            let bfields: Vec<(&str, usize)> =
                bfields.iter().map(|(n, o)| (n.as_str(), *o)).collect();
            assert_eq!(bfields, fields, "fields and offsets of {name}");
        }
    }

    #[test]
    fn flow_hash_matches_reference_values() {
        // Same mixing as the C inline; a change on either side must change both.
        assert_eq!(flow_hash(0, 0, 0), 0);
        assert_ne!(flow_hash(1, 2, 3), flow_hash(1, 2, 4));
        assert_ne!(flow_hash(1, 2, 3), flow_hash(2, 1, 3));
    }
}
