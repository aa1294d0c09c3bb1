//! VIP allocation: which address each VirtualService gets, decided over all of them at once.
//!
//! Rules, in the order a user would expect them:
//! - An address already allocated (`status.vip`) is kept while it is still valid, so VIPs
//!   never move under running traffic when pools or other services change; a `spec.vip`
//!   naming it is refused.
//! - `spec.vip` must lie in an AddressPool that admits the namespace (`spec.addressPool`,
//!   or any pool): a tenant gets only addresses an administrator put in a pool for it.
//! - No VIP is ever a [`Reserved`] address (a node's own, the cluster's Service or Pod
//!   ranges, loopback, link-local, multicast, unspecified), requested or allocated, even
//!   inside a pool; an allocation that becomes reserved is given up.
//! - Others, oldest first, get the lowest free address of `spec.addressPool`, else of the
//!   first auto-assign pool (by name) that admits their namespace.
//! - In IPv4 CIDRs shorter than /31 the network and broadcast addresses are skipped.
//! - Several VirtualServices of one namespace may share a VIP when they set it in
//!   `spec.vip` (different ports on one VIP is normal LVS), or when they carry the same
//!   sharing key ([`SHARING_KEY`]): the first of them takes an address, the others join
//!   it. Another namespace's `spec.vip` naming it is refused. Otherwise allocation never
//!   hands out a used address.
//! - VirtualServices on one VIP may not serve the same port and protocol: the younger
//!   one is refused.
//! - [`IP_FAMILY`] (`IPv4` or `IPv6`) restricts allocation to that family (a dual-stack
//!   Service has one VirtualService per family).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use kubelvs_crds::{AddressPool, AddressRange, Protocol, VirtualService};

pub use crate::reserved::Reserved;

/// Annotation: VirtualServices of one namespace with the same value may share a VIP
/// (MetalLB's `allow-shared-ip`). Their ports must not collide.
pub const SHARING_KEY: &str = "kubelvs.io/allow-shared-ip";

/// Annotation: the address family to allocate from, `IPv4` or `IPv6`.
pub const IP_FAMILY: &str = "kubelvs.io/ip-family";

/// Labels of each namespace, for pools' `namespaceSelector`.
pub type NamespaceLabels = BTreeMap<String, BTreeMap<String, String>>;

/// Why a VirtualService has no VIP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    #[error("spec.vip: {vip:?} is not an IP address")]
    InvalidVip { vip: String },
    #[error("spec.addressPool: AddressPool {pool} does not exist")]
    UnknownPool { pool: String },
    #[error("spec.vip: {vip} is not in AddressPool {pool}")]
    VipOutsidePool { vip: IpAddr, pool: String },
    #[error("spec.vip: {vip} is in no AddressPool that admits namespace {namespace}")]
    VipOutsidePools { vip: IpAddr, namespace: String },
    #[error("spec.vip: {vip} may not be a VIP: {why}")]
    VipReserved { vip: IpAddr, why: String },
    #[error("spec.addressPool: AddressPool {pool} does not admit namespace {namespace}")]
    NamespaceNotAdmitted { pool: String, namespace: String },
    #[error("spec.vip: {vip} is already allocated to VirtualService {owner}")]
    VipAllocatedElsewhere { vip: IpAddr, owner: String },
    #[error("spec.addressPool: AddressPool {pool} has no free {what}")]
    PoolExhausted { pool: String, what: String },
    #[error("spec.addressPool: no auto-assign AddressPool admits namespace {namespace}; set spec.vip or spec.addressPool")]
    NoPool { namespace: String },
    #[error("metadata.annotations[{IP_FAMILY}]: {value:?} is not IPv4 or IPv6")]
    InvalidFamily { value: String },
    #[error("spec.vip: {vip} is {family}, but metadata.annotations[{IP_FAMILY}] asks for the other family")]
    WrongFamily { vip: IpAddr, family: &'static str },
    #[error("spec.ports: {port}/{protocol} on {vip} is already served by VirtualService {owner}")]
    PortCollides {
        vip: IpAddr,
        port: u16,
        protocol: &'static str,
        owner: String,
    },
}

impl AllocationError {
    /// The condition reason for this error (CamelCase, as Kubernetes conditions use).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidVip { .. } => "InvalidVip",
            Self::UnknownPool { .. } => "UnknownPool",
            Self::VipOutsidePool { .. } | Self::VipOutsidePools { .. } => "VipOutsidePool",
            Self::VipReserved { .. } => "VipReserved",
            Self::NamespaceNotAdmitted { .. } => "NamespaceNotAdmitted",
            Self::VipAllocatedElsewhere { .. } => "VipTaken",
            Self::PoolExhausted { .. } => "PoolExhausted",
            Self::NoPool { .. } => "NoPool",
            Self::InvalidFamily { .. } => "InvalidFamily",
            Self::WrongFamily { .. } => "WrongFamily",
            Self::PortCollides { .. } => "PortCollides",
        }
    }
}

/// What an annotation asks of a VirtualService's allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Any,
    V4,
    V6,
}

impl Family {
    fn of(vs: &VirtualService) -> Result<Self, AllocationError> {
        match annotation(vs, IP_FAMILY) {
            None => Ok(Self::Any),
            Some("IPv4") => Ok(Self::V4),
            Some("IPv6") => Ok(Self::V6),
            Some(v) => Err(AllocationError::InvalidFamily { value: v.into() }),
        }
    }

    fn admits(self, a: IpAddr) -> bool {
        match self {
            Self::Any => true,
            Self::V4 => a.is_ipv4(),
            Self::V6 => a.is_ipv6(),
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::Any => "address",
            Self::V4 => "IPv4 address",
            Self::V6 => "IPv6 address",
        }
    }
}

fn annotation<'a>(vs: &'a VirtualService, key: &str) -> Option<&'a str> {
    vs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The sharing group of a VirtualService: its namespace and key.
fn sharing(vs: &VirtualService) -> Option<(String, String)> {
    annotation(vs, SHARING_KEY)
        .filter(|k| !k.is_empty())
        .map(|k| {
            (
                vs.metadata.namespace.clone().unwrap_or_default(),
                k.to_owned(),
            )
        })
}

/// `namespace/name` of a VirtualService.
pub type VsKey = (String, String);

/// Who holds each address, and the sharing group (namespace, key) it was taken for.
type Holders = BTreeMap<IpAddr, (VsKey, Option<(String, String)>)>;

/// The allocation for every VirtualService, and each pool's use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    pub vips: BTreeMap<VsKey, Result<IpAddr, AllocationError>>,
    /// Per pool: (total addresses, allocated).
    pub pool_usage: BTreeMap<String, (u64, u64)>,
    /// Per pool: entries of `spec.addresses` that hold no address, as `spec.addresses[i]: why`.
    pub pool_problems: BTreeMap<String, Vec<String>>,
}

/// What addresses there are to give and to whom: the pools, the labels of the
/// namespaces their selectors match, and what is never given.
#[derive(Debug, Clone, Copy)]
pub struct AddressSpace<'a> {
    pub pools: &'a [AddressPool],
    pub namespaces: &'a NamespaceLabels,
    pub reserved: &'a Reserved,
}

/// Allocates VIPs for all `services` from `pools`.
pub fn allocate(
    services: &[VirtualService],
    pools: &[AddressPool],
    namespaces: &NamespaceLabels,
) -> Allocation {
    let all: Vec<&VirtualService> = services.iter().collect();
    let space = AddressSpace {
        pools,
        namespaces,
        reserved: &Reserved::default(),
    };
    allocate_with(&all, status_vip, space)
}

/// The address `status.vip` records.
pub fn status_vip(vs: &VirtualService) -> Option<IpAddr> {
    vs.status
        .as_ref()
        .and_then(|s| s.vip.as_deref())
        .and_then(|v| v.parse().ok())
}

/// [`allocate`], with `allocated` saying what each VirtualService holds (its
/// `status.vip`, or a VIP written but not yet seen by a watch).
pub fn allocate_with(
    services: &[&VirtualService],
    allocated: impl Fn(&VirtualService) -> Option<IpAddr>,
    space: AddressSpace<'_>,
) -> Allocation {
    let AddressSpace {
        pools,
        namespaces,
        reserved,
    } = space;
    let mut pools: Vec<&AddressPool> = pools.iter().collect();
    pools.sort_by_key(|p| p.metadata.name.clone());
    let mut out = Allocation::default();
    let mut ranges: BTreeMap<String, Vec<AddressRange>> = BTreeMap::new();
    for p in &pools {
        let mut rs = Vec::new();
        for (i, entry) in p.spec.addresses.iter().enumerate() {
            match parse(entry) {
                Some(r) => rs.push(r),
                // CEL checks the syntax but cannot compare addresses: a reversed range
                // (or a /32 CIDR trimmed to nothing) ends up here.
                None => out.pool_problems.entry(name(p)).or_default().push(format!(
                    "spec.addresses[{i}]: {entry:?} holds no address (a range must go from low to high)"
                )),
            }
        }
        ranges.insert(name(p), rs);
    }

    let mut order: Vec<&VirtualService> = services.to_vec();
    order.sort_by(|a, b| {
        fn k(
            v: &VirtualService,
        ) -> (
            Option<k8s_openapi::jiff::Timestamp>,
            Option<&str>,
            Option<&str>,
        ) {
            (
                v.metadata.creation_timestamp.as_ref().map(|t| t.0),
                v.metadata.namespace.as_deref(),
                v.metadata.name.as_deref(),
            )
        }
        k(a).cmp(&k(b))
    });

    let mut used: BTreeSet<IpAddr> = BTreeSet::new();
    let mut pending = Vec::new();
    // Who holds each address, and with which sharing group.
    let mut holders: Holders = BTreeMap::new();
    let may_join = |holders: &Holders, vs: &VirtualService, vip: IpAddr| match holders.get(&vip) {
        None => Ok(()),
        Some((_, Some(group))) if sharing(vs).as_ref() == Some(group) => Ok(()),
        Some(((ns, name), _)) => Err(AllocationError::VipAllocatedElsewhere {
            vip,
            owner: format!("{ns}/{name}"),
        }),
    };
    // Any pool that admits the namespace of `vs` and holds `vip`.
    let in_admitting_pool = |vs: &VirtualService, vip: IpAddr| {
        let namespace = vs.metadata.namespace.clone().unwrap_or_default();
        pools.iter().any(|p| {
            admits(p, &namespace, namespaces) && ranges[&name(p)].iter().any(|r| r.contains(vip))
        })
    };

    // Pass 1: allocations still valid (status.vip inside a pool the service may use) are
    // kept, so a VIP never moves under traffic, whatever appears later.
    for vs in order.iter().filter(|v| v.spec.vip.is_none()) {
        let family = Family::of(vs).unwrap_or(Family::Any);
        let still_valid = allocated(vs)
            .filter(|v| family.admits(*v) && may_join(&holders, vs, *v).is_ok())
            .filter(|v| reserved.why(*v).is_none())
            .filter(|v| {
                candidate_pools(vs, &pools, namespaces)
                    .is_ok_and(|ps| ps.iter().any(|p| ranges[*p].iter().any(|r| r.contains(*v))))
            });
        match still_valid {
            Some(v) => {
                holders.entry(v).or_insert((vs_key(vs), sharing(vs)));
                out.vips.insert(vs_key(vs), Ok(v));
            }
            None => pending.push(*vs),
        }
    }
    used.extend(holders.keys());

    // Pass 2: fixed VIPs (spec.vip). Those of one namespace may share an address (several
    // ports on one VIP), but not take one allocated to another service.
    let mut fixed: BTreeMap<IpAddr, VsKey> = BTreeMap::new();
    for vs in order.iter().filter(|v| v.spec.vip.is_some()) {
        let text = vs.spec.vip.as_deref().unwrap_or_default();
        let result = match (text.parse::<IpAddr>(), Family::of(vs)) {
            (Err(_), _) => Err(AllocationError::InvalidVip { vip: text.into() }),
            (_, Err(e)) => Err(e),
            (Ok(vip), Ok(family)) if !family.admits(vip) => Err(AllocationError::WrongFamily {
                vip,
                family: if vip.is_ipv4() { "IPv4" } else { "IPv6" },
            }),
            (Ok(vip), Ok(_)) => match reserved.why(vip) {
                Some(why) => Err(AllocationError::VipReserved { vip, why }),
                None => may_join(&holders, vs, vip)
                    .and_then(|()| fixed_holder(&fixed, vs, vip))
                    .and_then(|()| match vs.spec.address_pool.as_deref() {
                        Some(p) => candidate_pools(vs, &pools, namespaces).and_then(|_| {
                            if ranges[p].iter().any(|r| r.contains(vip)) {
                                Ok(vip)
                            } else {
                                Err(AllocationError::VipOutsidePool {
                                    vip,
                                    pool: p.into(),
                                })
                            }
                        }),
                        None if in_admitting_pool(vs, vip) => Ok(vip),
                        None => Err(AllocationError::VipOutsidePools {
                            vip,
                            namespace: vs.metadata.namespace.clone().unwrap_or_default(),
                        }),
                    }),
            },
        };
        if let Ok(v) = result {
            fixed.entry(v).or_insert_with(|| vs_key(vs));
            used.insert(v);
        }
        out.vips.insert(vs_key(vs), result);
    }
    // A fixed VIP is every service's to share: record it only where nobody holds it yet.
    for vs in order.iter().filter(|v| v.spec.vip.is_some()) {
        if let Some(Ok(v)) = out.vips.get(&vs_key(vs)) {
            holders.entry(*v).or_insert((vs_key(vs), None));
        }
    }

    // Pass 3: the rest, oldest first, join their sharing group's address or get the
    // lowest free one.
    for vs in pending {
        let result = Family::of(vs).and_then(|family| {
            candidate_pools(vs, &pools, namespaces).and_then(|ps| {
                let in_pools =
                    |v: IpAddr| ps.iter().any(|p| ranges[*p].iter().any(|r| r.contains(v)));
                let joined = sharing(vs).and_then(|group| {
                    holders
                        .iter()
                        .find(|(v, (_, g))| {
                            g.as_ref() == Some(&group) && family.admits(**v) && in_pools(**v)
                        })
                        .map(|(v, _)| *v)
                });
                joined
                    .or_else(|| {
                        ps.iter().find_map(|p| {
                            ranges[*p]
                                .iter()
                                .filter(|r| family.admits(r.first))
                                .find_map(|r| first_free_outside(r, &used, reserved))
                        })
                    })
                    .ok_or_else(|| AllocationError::PoolExhausted {
                        pool: ps.join(","),
                        what: family.what().into(),
                    })
            })
        });
        if let Ok(v) = result {
            used.insert(v);
            holders.entry(v).or_insert((vs_key(vs), sharing(vs)));
        }
        out.vips.insert(vs_key(vs), result);
    }

    // Services on one VIP must not serve the same port: the older one keeps it.
    let mut served: BTreeMap<(IpAddr, u16, &'static str), VsKey> = BTreeMap::new();
    for vs in &order {
        let key = vs_key(vs);
        let Some(Ok(vip)) = out.vips.get(&key).cloned() else {
            continue;
        };
        let collision = vs.spec.ports.iter().find_map(|p| {
            served
                .get(&(vip, p.port, protocol_name(p.protocol)))
                .filter(|owner| **owner != key)
                .map(|owner| (p, owner.clone()))
        });
        match collision {
            Some((p, (ns, name))) => {
                out.vips.insert(
                    key,
                    Err(AllocationError::PortCollides {
                        vip,
                        port: p.port,
                        protocol: protocol_name(p.protocol),
                        owner: format!("{ns}/{name}"),
                    }),
                );
            }
            None => {
                for p in &vs.spec.ports {
                    served.insert((vip, p.port, protocol_name(p.protocol)), key.clone());
                }
            }
        }
    }
    for p in &pools {
        let rs = &ranges[&name(p)];
        let total = rs.iter().map(size).fold(0u64, u64::saturating_add);
        let allocated = used
            .iter()
            .filter(|v| rs.iter().any(|r| r.contains(**v)))
            .count() as u64;
        out.pool_usage.insert(name(p), (total, allocated));
    }
    out
}

/// The pools a VirtualService without `spec.vip` may take an address from, in order.
fn candidate_pools<'a>(
    vs: &VirtualService,
    pools: &[&'a AddressPool],
    namespaces: &NamespaceLabels,
) -> Result<Vec<&'a str>, AllocationError> {
    let namespace = vs.metadata.namespace.clone().unwrap_or_default();
    let admits = |p: &AddressPool| admits(p, &namespace, namespaces);
    match vs.spec.address_pool.as_deref() {
        Some(wanted) => {
            let p = pools.iter().find(|p| name(p) == wanted).ok_or_else(|| {
                AllocationError::UnknownPool {
                    pool: wanted.into(),
                }
            })?;
            if !admits(p) {
                return Err(AllocationError::NamespaceNotAdmitted {
                    pool: wanted.into(),
                    namespace,
                });
            }
            Ok(vec![p.metadata.name.as_deref().unwrap_or_default()])
        }
        None => {
            let auto: Vec<&str> = pools
                .iter()
                .filter(|p| p.spec.auto_assign && admits(p))
                .map(|p| p.metadata.name.as_deref().unwrap_or_default())
                .collect();
            if auto.is_empty() {
                Err(AllocationError::NoPool { namespace })
            } else {
                Ok(auto)
            }
        }
    }
}

/// Whether pool `p` admits VirtualServices of `namespace`.
fn admits(p: &AddressPool, namespace: &str, namespaces: &NamespaceLabels) -> bool {
    match &p.spec.namespace_selector {
        None => true,
        Some(sel) => namespaces
            .get(namespace)
            .is_some_and(|labels| kubelvs_crds::selector::matches(sel, labels).unwrap_or(false)),
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

fn name(p: &AddressPool) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

fn vs_key(vs: &VirtualService) -> VsKey {
    (
        vs.metadata.namespace.clone().unwrap_or_default(),
        vs.metadata.name.clone().unwrap_or_default(),
    )
}

/// The addresses of a pool entry the allocator hands out: a v4 CIDR shorter than /31 loses
/// its network and broadcast addresses, which many clients and routers mishandle, and a v6
/// CIDR its subnet-router anycast address.
fn parse(entry: &str) -> Option<AddressRange> {
    let mut r = kubelvs_crds::parse_range(entry)?;
    match entry.parse::<IpNet>() {
        Ok(IpNet::V4(v4)) if v4.prefix_len() < 31 => {
            r.first = from_u128(to_u128(r.first) + 1, true);
            r.last = from_u128(to_u128(r.last) - 1, true);
        }
        // The first address of an IPv6 subnet is the subnet-router anycast address.
        Ok(IpNet::V6(v6)) if v6.prefix_len() < 127 => {
            r.first = from_u128(to_u128(r.first) + 1, false);
        }
        _ => {}
    }
    Some(r)
}

fn size(r: &AddressRange) -> u64 {
    u64::try_from(to_u128(r.last) - to_u128(r.first) + 1).unwrap_or(u64::MAX)
}

/// [`first_free`], skipping what is reserved.
fn first_free_outside(
    r: &AddressRange,
    used: &BTreeSet<IpAddr>,
    reserved: &Reserved,
) -> Option<IpAddr> {
    let mut from = *r;
    loop {
        let candidate = first_free(&from, used)?;
        let Some(end) = reserved.end_of(candidate) else {
            return Some(candidate);
        };
        let next = to_u128(end).checked_add(1)?;
        if next > to_u128(r.last) {
            return None;
        }
        from.first = from_u128(next, r.first.is_ipv4());
    }
}

/// A `spec.vip` held by another namespace's `spec.vip` is not shared across tenants.
fn fixed_holder(
    fixed: &BTreeMap<IpAddr, VsKey>,
    vs: &VirtualService,
    vip: IpAddr,
) -> Result<(), AllocationError> {
    match fixed.get(&vip) {
        Some((ns, name)) if Some(ns) != vs.metadata.namespace.as_ref() => {
            Err(AllocationError::VipAllocatedElsewhere {
                vip,
                owner: format!("{ns}/{name}"),
            })
        }
        _ => Ok(()),
    }
}

fn first_free(r: &AddressRange, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    // Walk the used addresses inside the range, not every address: pools may be /64s.
    let mut candidate = to_u128(r.first);
    for u in used.range(r.first..=r.last).map(|u| to_u128(*u)) {
        if u > candidate {
            break;
        }
        // The last address of the space is in use: nothing above it.
        candidate = u.checked_add(1)?;
    }
    (candidate <= to_u128(r.last)).then(|| from_u128(candidate, r.first.is_ipv4()))
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u32::from(v).into(),
        IpAddr::V6(v) => v.into(),
    }
}

fn from_u128(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4((n as u32).into())
    } else {
        IpAddr::V6(n.into())
    }
}
