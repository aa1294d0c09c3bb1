//! The IPVS table as plain data: what the kernel has ([`KernelService`]) and what we
//! want ([`DesiredService`]), with conversions from wire attributes and from the plan.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use kubelvs_model as model;

use crate::codec::{
    DestAttrs, Flags, Netmask, ServiceAttrs, Stats, AF_INET, AF_INET6, FWD_DROUTE, FWD_MASK,
    FWD_MASQ, FWD_TUNNEL, SVC_F_HASHED, SVC_F_PERSISTENT, TUN_TYPE_GRE, TUN_TYPE_GUE,
    TUN_TYPE_IPIP,
};

/// Identity of an IPVS virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceId {
    /// VIP:port/protocol (protocol is the IP protocol number).
    Inet {
        protocol: u16,
        addr: IpAddr,
        port: u16,
    },
    /// Firewall-mark service, separate per address family.
    Fwmark { af: u16, mark: u32 },
}

impl ServiceId {
    pub fn af(&self) -> u16 {
        match self {
            Self::Inet { addr, .. } => af_of(*addr),
            Self::Fwmark { af, .. } => *af,
        }
    }

    /// The identity-only SERVICE nest (DEL_SERVICE, *_DEST, ZERO).
    pub fn to_attrs(&self) -> ServiceAttrs {
        match *self {
            Self::Inet {
                protocol,
                addr,
                port,
            } => ServiceAttrs {
                af: Some(af_of(addr)),
                protocol: Some(protocol),
                addr: Some(addr),
                port: Some(port),
                ..ServiceAttrs::default()
            },
            Self::Fwmark { af, mark } => ServiceAttrs {
                af: Some(af),
                fwmark: Some(mark),
                ..ServiceAttrs::default()
            },
        }
    }

    /// Identity of a service as the kernel reports it; `None` if attributes are missing.
    pub fn from_attrs(s: &ServiceAttrs) -> Option<Self> {
        match s.fwmark {
            Some(mark) if mark != 0 => Some(Self::Fwmark { af: s.af?, mark }),
            _ => Some(Self::Inet {
                protocol: s.protocol?,
                addr: s.addr?,
                port: s.port?,
            }),
        }
    }

    pub fn from_key(key: &model::ServiceKey) -> Self {
        Self::Inet {
            protocol: u16::from(key.protocol.number()),
            addr: key.vip,
            port: key.port,
        }
    }
}

/// `tcp 192.0.2.1 80`, `udp 2001:db8::1 53`, `fwmark inet 7`: the ownership state file format.
impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inet {
                protocol,
                addr,
                port,
            } => {
                let p = match *protocol {
                    6 => "tcp".to_owned(),
                    17 => "udp".to_owned(),
                    132 => "sctp".to_owned(),
                    n => format!("proto{n}"),
                };
                write!(f, "{p} {addr} {port}")
            }
            Self::Fwmark { af, mark } => {
                let a = match *af {
                    AF_INET => "inet".to_owned(),
                    AF_INET6 => "inet6".to_owned(),
                    n => format!("af{n}"),
                };
                write!(f, "fwmark {a} {mark}")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid service id {0:?}")]
pub struct ParseServiceIdError(pub String);

impl FromStr for ServiceId {
    type Err = ParseServiceIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseServiceIdError(s.to_owned());
        let parts: Vec<&str> = s.split_whitespace().collect();
        let [kind, a, b] = parts[..] else {
            return Err(bad());
        };
        if kind == "fwmark" {
            let af = match a {
                "inet" => AF_INET,
                "inet6" => AF_INET6,
                other => other
                    .strip_prefix("af")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(bad)?,
            };
            return Ok(Self::Fwmark {
                af,
                mark: b.parse().map_err(|_| bad())?,
            });
        }
        let protocol = match kind {
            "tcp" => 6,
            "udp" => 17,
            "sctp" => 132,
            other => other
                .strip_prefix("proto")
                .and_then(|n| n.parse().ok())
                .ok_or_else(bad)?,
        };
        Ok(Self::Inet {
            protocol,
            addr: a.parse().map_err(|_| bad())?,
            port: b.parse().map_err(|_| bad())?,
        })
    }
}

pub fn af_of(a: IpAddr) -> u16 {
    match a {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// The settable part of a service (a "full entry" minus identity).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceConfig {
    /// Open string: whatever the kernel reports ("none", "twos", ...) is kept.
    pub scheduler: String,
    /// IP_VS_SVC_F_* without HASHED (kernel-owned).
    pub flags: u32,
    /// Persistence timeout, seconds.
    pub timeout: u32,
    pub netmask: Netmask,
}

impl ServiceConfig {
    /// The full SERVICE nest for NEW_SERVICE / SET_SERVICE: identity plus all four
    /// attributes the kernel requires, with the flags mask all ones.
    pub fn to_attrs(&self, id: &ServiceId) -> ServiceAttrs {
        ServiceAttrs {
            sched_name: Some(self.scheduler.clone()),
            flags: Some(Flags::exactly(self.flags & !SVC_F_HASHED)),
            timeout: Some(self.timeout),
            netmask: Some(self.netmask),
            ..id.to_attrs()
        }
    }
}

/// Identity of a destination (real server) within a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestId {
    pub addr: IpAddr,
    pub port: u16,
}

impl fmt::Display for DestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// The settable part of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DestConfig {
    /// FWD_MASQ, FWD_TUNNEL, FWD_DROUTE (or FWD_LOCALNODE).
    pub fwd_method: u32,
    pub weight: u32,
    pub u_thresh: u32,
    pub l_thresh: u32,
    pub tun_type: u8,
    pub tun_port: u16,
    pub tun_flags: u16,
}

impl DestConfig {
    pub fn masq(weight: u32) -> Self {
        Self {
            fwd_method: FWD_MASQ,
            weight,
            u_thresh: 0,
            l_thresh: 0,
            tun_type: 0,
            tun_port: 0,
            tun_flags: 0,
        }
    }

    /// Equal as far as the kernel is concerned: tunnel parameters only matter for TUNNEL.
    pub fn same_as(&self, other: &Self) -> bool {
        let base = |c: &Self| (c.fwd_method & FWD_MASK, c.weight, c.u_thresh, c.l_thresh);
        base(self) == base(other)
            && (self.fwd_method & FWD_MASK != FWD_TUNNEL
                || (self.tun_type, self.tun_port, self.tun_flags)
                    == (other.tun_type, other.tun_port, other.tun_flags))
    }

    /// The full DEST nest for NEW_DEST / SET_DEST.
    pub fn to_attrs(&self, id: &DestId) -> DestAttrs {
        let tunnel = self.fwd_method & FWD_MASK == FWD_TUNNEL;
        DestAttrs {
            addr_family: Some(af_of(id.addr)),
            addr: Some(id.addr),
            port: Some(id.port),
            fwd_method: Some(self.fwd_method),
            weight: Some(self.weight),
            u_thresh: Some(self.u_thresh),
            l_thresh: Some(self.l_thresh),
            tun_type: tunnel.then_some(self.tun_type),
            tun_port: (tunnel && self.tun_type == TUN_TYPE_GUE).then_some(self.tun_port),
            tun_flags: tunnel.then_some(self.tun_flags),
            ..DestAttrs::default()
        }
    }
}

/// A destination as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelDest {
    pub id: DestId,
    pub config: DestConfig,
    pub active_conns: u32,
    pub inact_conns: u32,
    pub persist_conns: u32,
    pub stats: Stats,
}

impl KernelDest {
    pub fn from_attrs(d: &DestAttrs) -> Option<Self> {
        Some(Self {
            id: DestId {
                addr: d.addr?,
                port: d.port?,
            },
            config: DestConfig {
                fwd_method: d.fwd_method.unwrap_or(FWD_MASQ) & FWD_MASK,
                weight: d.weight.unwrap_or(0),
                u_thresh: d.u_thresh.unwrap_or(0),
                l_thresh: d.l_thresh.unwrap_or(0),
                tun_type: d.tun_type.unwrap_or(0),
                tun_port: d.tun_port.unwrap_or(0),
                tun_flags: d.tun_flags.unwrap_or(0),
            },
            active_conns: d.active_conns.unwrap_or(0),
            inact_conns: d.inact_conns.unwrap_or(0),
            persist_conns: d.persist_conns.unwrap_or(0),
            stats: d.stats64.or(d.stats).unwrap_or_default(),
        })
    }

    /// Connections that still use this destination (what a drain waits for).
    pub fn connections(&self) -> u64 {
        u64::from(self.active_conns) + u64::from(self.inact_conns)
    }
}

/// A service as the kernel reports it, with its destinations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelService {
    pub id: ServiceId,
    pub config: ServiceConfig,
    pub dests: Vec<KernelDest>,
    pub stats: Stats,
}

impl KernelService {
    /// From a GET_SERVICE reply (without destinations). `None` if identity is missing.
    pub fn from_attrs(s: &ServiceAttrs) -> Option<Self> {
        let id = ServiceId::from_attrs(s)?;
        Some(Self {
            config: ServiceConfig {
                scheduler: s.sched_name.clone().unwrap_or_default(),
                flags: s.flags.map(|f| f.flags).unwrap_or(0) & !SVC_F_HASHED,
                timeout: s.timeout.unwrap_or(0),
                netmask: s.netmask.unwrap_or(Netmask::host(id.af())),
            },
            id,
            dests: Vec::new(),
            stats: s.stats64.or(s.stats).unwrap_or_default(),
        })
    }
}

/// A destination we want.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredDest {
    pub id: DestId,
    pub config: DestConfig,
}

/// A service we want, with its destinations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredService {
    pub id: ServiceId,
    pub config: ServiceConfig,
    pub dests: Vec<DesiredDest>,
}

/// Why a planned service cannot be programmed into kernel IPVS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("service {service}: scheduler {scheduler} is not a kernel IPVS scheduler")]
    UnsupportedScheduler {
        service: model::ServiceKey,
        scheduler: model::Scheduler,
    },
    #[error("service {service}: real server {real_server} weight {weight} is above the kernel's maximum (2^31 - 1)")]
    BadWeight {
        service: model::ServiceKey,
        real_server: std::net::IpAddr,
        weight: u32,
    },
    #[error(
        "service {service}: persistence prefix length {prefix} is out of range for the VIP family"
    )]
    BadPersistencePrefix {
        service: model::ServiceKey,
        prefix: u8,
    },
}

impl DesiredService {
    /// Converts one planned service. DR and TUN destinations use the service port
    /// (the kernel ignores the port for them and ipvsadm forces it the same way).
    pub fn from_model(s: &model::Service) -> Result<Self, PlanError> {
        let id = ServiceId::from_key(&s.key);
        let af = id.af();
        let scheduler = s
            .scheduler
            .kernel_name()
            .ok_or(PlanError::UnsupportedScheduler {
                service: s.key,
                scheduler: s.scheduler,
            })?
            .to_owned();
        let mut flags = s.scheduler_flags.bits();
        let (timeout, netmask) = match s.persistence {
            Some(p) => {
                flags |= SVC_F_PERSISTENT;
                let max = if af == AF_INET6 { 128 } else { 32 };
                // The kernel rejects an IPv6 prefix of 0 (EINVAL).
                let min = if af == AF_INET6 { 1 } else { 0 };
                if p.prefix_length > max || p.prefix_length < min {
                    return Err(PlanError::BadPersistencePrefix {
                        service: s.key,
                        prefix: p.prefix_length,
                    });
                }
                (p.timeout_seconds, Netmask::from_prefix(af, p.prefix_length))
            }
            None => (0, Netmask::host(af)),
        };
        let (fwd_method, tun_type, tun_port) = match s.forwarding {
            model::Forwarding::Nat | model::Forwarding::FullNat => (FWD_MASQ, 0, 0),
            model::Forwarding::Dr => (FWD_DROUTE, 0, 0),
            model::Forwarding::Tun(model::Tunnel::Ipip) => (FWD_TUNNEL, TUN_TYPE_IPIP, 0),
            model::Forwarding::Tun(model::Tunnel::Gue { port }) => (FWD_TUNNEL, TUN_TYPE_GUE, port),
            model::Forwarding::Tun(model::Tunnel::Gre) => (FWD_TUNNEL, TUN_TYPE_GRE, 0),
        };
        let mut dests: Vec<DesiredDest> = Vec::with_capacity(s.real_servers.len());
        for rs in &s.real_servers {
            // The kernel keeps weights as int: above i32::MAX would read as negative (ERANGE).
            if i32::try_from(rs.weight).is_err() {
                return Err(PlanError::BadWeight {
                    service: s.key,
                    real_server: rs.address,
                    weight: rs.weight,
                });
            }
            let port = if s.forwarding.allows_port_mapping() {
                rs.port
            } else {
                s.key.port
            };
            let did = DestId {
                addr: rs.address,
                port,
            };
            // Two real servers that collapse to one destination (DR on the same
            // address): the first one wins, deterministically.
            if dests.iter().any(|d| d.id == did) {
                continue;
            }
            dests.push(DesiredDest {
                id: did,
                config: DestConfig {
                    fwd_method,
                    weight: rs.weight,
                    u_thresh: 0,
                    l_thresh: 0,
                    tun_type,
                    tun_port,
                    tun_flags: 0,
                },
            });
        }
        Ok(Self {
            id,
            config: ServiceConfig {
                scheduler,
                flags,
                timeout,
                netmask,
            },
            dests,
        })
    }
}
