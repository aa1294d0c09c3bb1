//! Pure decisions of the XDP director: a planned service in map terms (keys,
//! flags, masks, real servers), or why this dataplane cannot program it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use kubelvs_model::{Forwarding, ObjectRef, Protocol, Scheduler, Service, ServiceKey, Tunnel};

use crate::maps::*;
use crate::MacAddr;

/// A real server as the `reals` map keys it: address and the port it receives on.
pub(crate) type RealKey = (IpAddr, u16);

/// Why the XDP dataplane does not program a service: the object and field to look
/// at (`object` `None`: the VirtualService itself) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub object: Option<ObjectRef>,
    /// JSON path, e.g. `spec.forwarding`; empty for a capacity of the director.
    pub field: &'static str,
    pub reason: String,
}

impl Skipped {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            object: None,
            field,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

/// A VIP of either family, as the `vips` / `vips6` maps key it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnyVipKey {
    V4(VipKey),
    V6(Vip6Key),
}

impl AnyVipKey {
    pub fn service_key(&self) -> Option<ServiceKey> {
        let (vip, port, proto) = match self {
            Self::V4(k) => (
                IpAddr::V4(Ipv4Addr::from(k.addr.to_ne_bytes())),
                k.port,
                k.proto,
            ),
            Self::V6(k) => (IpAddr::V6(Ipv6Addr::from(k.addr)), k.port, k.proto),
        };
        Some(ServiceKey {
            vip,
            port: u16::from_be(port),
            protocol: Protocol::from_number(proto)?,
        })
    }
}

/// One VIP as apply wants it (its id aside).
#[derive(Debug)]
pub(crate) struct Want {
    pub service: ServiceKey,
    pub forwarding: u32,
    pub flags: u32,
    pub src_mask: u32,
    pub src_mask6: [u32; 4],
    /// Sorted by (address, port), deduplicated.
    pub reals: Vec<(RealKey, u32)>,
}

impl Want {
    /// The `vips` map entry for this VIP under id `vip_id`.
    pub fn meta(&self, vip_id: u32) -> crate::maps::VipMeta {
        crate::maps::VipMeta {
            vip_id,
            forwarding: self.forwarding,
            flags: self.flags,
            src_mask: self.src_mask,
            src_mask6: self.src_mask6,
        }
    }
}

/// `bits` leading ones of a 128-bit mask, as four network-order words.
fn mask6(bits: u8) -> [u32; 4] {
    let mut m = [0u32; 4];
    for (i, w) in m.iter_mut().enumerate() {
        let b = u32::from(bits.min(128))
            .saturating_sub(32 * i as u32)
            .min(32);
        *w = if b == 0 {
            0
        } else {
            (u32::MAX << (32 - b)).to_be()
        };
    }
    m
}

/// The `reals` map entry of a real server (alive; with its MAC when known).
pub(crate) fn real_entry((addr, port): RealKey, mac: Option<MacAddr>, gen: u32) -> Real {
    let mut r = Real {
        gen,
        port: port.to_be(),
        mac: mac.unwrap_or_default(),
        flags: REAL_F_ALIVE | if mac.is_some() { REAL_F_HAS_MAC } else { 0 },
        ..Real::default()
    };
    match addr {
        IpAddr::V4(a) => r.addr = u32::from_ne_bytes(a.octets()),
        IpAddr::V6(a) => {
            r.addr6 = a.octets();
            r.flags |= REAL_F_V6;
        }
    }
    r
}

/// A service in map terms, or why the XDP dataplane cannot program it.
pub(crate) fn desired(
    s: &Service,
    have_addr6: bool,
    ring_size: u32,
) -> Result<(AnyVipKey, Want), Skipped> {
    let vk = vip_key(&s.key)?;
    let v6 = matches!(vk, AnyVipKey::V6(_));
    let forwarding = match s.forwarding {
        Forwarding::Dr => FWD_DR,
        Forwarding::Tun(Tunnel::Ipip) if v6 && !have_addr6 => {
            return Err(Skipped::new(
                "spec.forwarding",
                "tun for an IPv6 VIP needs the director's IPv6 address (DirectorOptions::director_addr6)",
            ))
        }
        Forwarding::Tun(Tunnel::Ipip) => FWD_TUN,
        Forwarding::Nat => FWD_NAT,
        Forwarding::Tun(other) => {
            return Err(Skipped::new(
                "spec.tunnel.type",
                format!("tunnel {other:?} is not supported by the XDP dataplane (IPIP only)"),
            ))
        }
        Forwarding::FullNat => {
            return Err(Skipped::new(
                "spec.forwarding",
                "fullnat is not supported by the XDP dataplane",
            ))
        }
    };
    // Maglev for every service; sh is maglev over the whole client address. The
    // other schedulers count connections, which a per-packet program cannot share.
    if !matches!(s.scheduler, Scheduler::Maglev | Scheduler::Sh) {
        return Err(Skipped::new(
            "spec.scheduler",
            format!(
                "the xdp dataplane schedules with maglev or sh, not {}",
                s.scheduler
            ),
        ));
    }
    // Source hashing (sh) is persistence by the whole client address.
    let prefix = match (s.persistence, s.scheduler) {
        (Some(p), _) => Some(p.prefix_length),
        (None, Scheduler::Sh) => Some(if v6 { 128 } else { 32 }),
        (None, _) => None,
    };
    let (flags, src_mask, src_mask6) = match prefix {
        Some(prefix_length) => {
            let bits = u32::from(prefix_length.min(32));
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            (VIP_F_HASH_SRC_ONLY, mask.to_be(), mask6(prefix_length))
        }
        None => (0, 0, [0; 4]),
    };
    let mut reals = Vec::with_capacity(s.real_servers.len());
    for r in &s.real_servers {
        if r.address.is_ipv6() != v6 {
            return Err(Skipped {
                object: Some(r.source.clone()),
                field: "spec.address",
                reason: format!(
                    "real server {} is not in the VIP's address family",
                    r.address
                ),
            });
        }
        // DR and TUN cannot map ports: the real server sees the VIP's port.
        let port = if forwarding == FWD_NAT {
            r.port
        } else {
            s.key.port
        };
        reals.push(((r.address, port), r.weight));
    }
    reals.sort();
    reals.dedup_by(|a, b| a.0 == b.0);
    if reals.len() > ring_size as usize {
        return Err(Skipped::new(
            "spec.realServerSelector",
            format!(
                "{} real servers do not fit a maglev ring of {ring_size}",
                reals.len()
            ),
        ));
    }
    Ok((
        vk,
        Want {
            service: s.key,
            forwarding,
            flags,
            src_mask,
            src_mask6,
            reals,
        },
    ))
}

pub(crate) fn vip_key(key: &ServiceKey) -> Result<AnyVipKey, Skipped> {
    let proto = match key.protocol {
        Protocol::Tcp | Protocol::Udp => key.protocol.number(),
        Protocol::Sctp => {
            return Err(Skipped::new(
                "spec.ports",
                "SCTP is not supported by the XDP dataplane",
            ))
        }
    };
    Ok(match key.vip {
        IpAddr::V4(vip) => AnyVipKey::V4(VipKey {
            addr: u32::from_ne_bytes(vip.octets()),
            port: key.port.to_be(),
            proto,
            pad: 0,
        }),
        IpAddr::V6(vip) => AnyVipKey::V6(Vip6Key {
            addr: vip.octets(),
            port: key.port.to_be(),
            proto,
            pad: 0,
        }),
    })
}
