//! The node planner: this node's identity plus the kubelvs.io objects -> its [`NodePlan`].
//!
//! A pure function over plain data: no I/O, no clock, no randomness. The same inputs in
//! any order give the same plan, so every agent in the cluster reaches the same verdict on
//! conflicts without talking to the others.
//!
//! Rules:
//! - A VirtualService's VIP: standalone ([`VipSource::Spec`]), `spec.vip`, else
//!   `status.vip`. In a cluster ([`VipSource::Granted`]) only what the operator granted:
//!   `status.vip` of a status that has seen the current generation (the operator writes
//!   `status.vip` only when it allocated or admitted the address for that spec, and
//!   removes it when it refuses), so a tenant's `spec.vip` is never programmed as
//!   written. Without one it is pending and not programmed.
//! - This node directs a VirtualService when `spec.directors.nodeSelector` matches its labels
//!   (no `directors`: every node directs).
//! - Each port is one LVS service VIP:port/protocol. When two VirtualServices claim the same
//!   one, the older (creationTimestamp, then namespace/name) wins; the other's port is
//!   reported as a conflict and left out.
//! - Real servers are the RealServers in the VirtualService's namespace matching
//!   `spec.realServerSelector`; `drain: true` takes one out of the directors' services (the
//!   dataplane drains it like any removed real server) while its node keeps the VIP. Their port is the
//!   port's `targetPort`, else the RealServer's `port`, else the virtual port; dr and tun
//!   cannot map ports, so a RealServer port different from the virtual port is a problem there.
//! - For dr and tun, a node running one of the real servers (`spec.nodeName`, or the address
//!   is one of the node's) must carry the VIP, with the tunnel for tun.
//! - fullnat rewrites clients to this director's address from `spec.sourceAddressPool`.

#![forbid(unsafe_code)]

pub mod announce;
mod incremental;

pub use incremental::{Planner, Versions};

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use kube::ResourceExt;
use kubelvs_crds::{
    AddressPool, ForwardingMethod, HealthCheckType, RealServerRecord, Scheduler as CrdScheduler,
    SchedulerFlag, TunnelType, VirtualService,
};
use kubelvs_model::{
    DataplaneKind, Forwarding, HealthCheck, NodePlan, ObjectKind, ObjectRef, Persistence, Probe,
    Problem, ProblemReason, Protocol, RealServer, RealServerVip, Scheduler, SchedulerFlags,
    Service, ServiceKey, Tunnel, TunnelKind,
};

/// What the planner knows about the node it plans for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeIdentity {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The node's own addresses (InternalIP, ExternalIP, or the host's interfaces).
    pub addresses: Vec<IpAddr>,
    /// Whose word a VIP is.
    pub vip_source: VipSource,
}

/// Where a VirtualService's VIP comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VipSource {
    /// Standalone: the file's author is the administrator; `spec.vip` as written.
    #[default]
    Spec,
    /// In a cluster: only the operator's grant (`status.vip` for the current
    /// generation). Tenants write `spec.vip`; the operator checks it against the pools.
    Granted,
}

/// Every object the plan depends on, borrowed from wherever the caller keeps them
/// (shared with a watch cache or a file's parse cache: at 100,000 objects a copy
/// for planning is hundreds of megabytes).
#[derive(Debug, Clone, Default)]
pub struct Objects<'a> {
    pub virtual_services: Vec<&'a VirtualService>,
    pub real_servers: Vec<&'a RealServerRecord>,
    pub address_pools: Vec<&'a AddressPool>,
    /// In a cluster: the nodes' addresses, and where a RealServer may name one.
    pub node_real_servers: Option<&'a NodeRealServers>,
    /// In a cluster: the live directors, among which each VIP's announcer is chosen
    /// (see [`announce`]). `None` (standalone): this node announces what it directs.
    pub announcers: Option<&'a announce::Announcers>,
    /// Each object's version, for [`Planner`] to re-plan only what changed.
    pub versions: Option<&'a Versions>,
}

/// The label an administrator puts on a Namespace whose RealServers may name a node's
/// address (hostNetwork backends, a node that is a real server).
pub const NODE_REAL_SERVERS_LABEL: &str = "kubelvs.io/node-real-servers";

/// A RealServer at a node's address sends a VIP's traffic, and every director's
/// health checks, to that node's own services (the kubelet, the API server). Only
/// an administrator can allow it, per namespace (standalone: no restriction, the
/// file's author is the administrator).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRealServers {
    /// Every Node's InternalIP and ExternalIP addresses, with the node's name.
    pub addresses: std::collections::HashMap<IpAddr, String>,
    /// Namespaces labelled [`NODE_REAL_SERVERS_LABEL`]`=allowed`.
    pub allowed: std::collections::HashSet<String>,
}

impl NodeRealServers {
    /// Why `address` may not be a real server of `namespace`, if it may not.
    fn refusal(&self, namespace: &str, address: IpAddr) -> Option<String> {
        let node = self.addresses.get(&address)?;
        (!self.allowed.contains(namespace)).then(|| {
            format!(
                "{address} is node {node}'s address: a RealServer may name a node only in a \
                 namespace labelled {NODE_REAL_SERVERS_LABEL}=allowed by an administrator"
            )
        })
    }
}

impl<'a> Objects<'a> {
    /// Borrows every object of the three lists.
    pub fn of(
        virtual_services: impl IntoIterator<Item = &'a VirtualService>,
        real_servers: impl IntoIterator<Item = &'a RealServerRecord>,
        address_pools: impl IntoIterator<Item = &'a AddressPool>,
    ) -> Self {
        Self {
            virtual_services: virtual_services.into_iter().collect(),
            real_servers: real_servers.into_iter().collect(),
            address_pools: address_pools.into_iter().collect(),
            node_real_servers: None,
            announcers: None,
            versions: None,
        }
    }

    /// With each object's version (lists parallel to the objects').
    pub fn with_versions(mut self, versions: &'a Versions) -> Self {
        self.versions = Some(versions);
        self
    }

    /// With a cluster's node addresses and the namespaces allowed to name them.
    pub fn with_node_real_servers(mut self, policy: &'a NodeRealServers) -> Self {
        self.node_real_servers = Some(policy);
        self
    }

    /// With the live directors, for choosing each VIP's announcer.
    pub fn with_announcers(mut self, announcers: &'a announce::Announcers) -> Self {
        self.announcers = Some(announcers);
        self
    }
}

/// Computes what `node` must program.
pub fn plan_node(node: &NodeIdentity, objects: Objects<'_>) -> NodePlan {
    let mut planner = Planner::default();
    planner.plan(node, objects);
    planner.into_plan()
}

/// Every VirtualService resolved and its ports' conflicts decided: what does not
/// depend on RealServers or on whether this node directs.
#[derive(Debug, Clone, Default)]
struct Claims {
    /// Older first.
    resolved: Vec<Claim>,
    /// Of resolving and of conflicts.
    problems: Vec<Problem>,
}

/// A VirtualService whose VIP and ports are usable, and the ports it won. By place
/// rather than by reference: claims depend on the VirtualServices alone, and are kept
/// between plans while none changed.
#[derive(Debug, Clone)]
struct Claim {
    /// Its position in [`Objects::virtual_services`].
    at: usize,
    vip: IpAddr,
    /// (index into spec.ports, key) of the ports it won.
    won: Vec<(usize, ServiceKey)>,
}

fn claims(node: &NodeIdentity, objects: &Objects<'_>) -> Claims {
    let mut problems = Vec::new();
    // Resolve every VirtualService first: conflicts are decided over all of them, not only
    // the ones this node directs, so every node agrees on the winner.
    let mut resolved: Vec<Resolved<'_>> = objects
        .virtual_services
        .iter()
        .enumerate()
        .filter_map(|(at, vs)| resolve(at, vs, node.vip_source, &mut problems))
        .collect();
    // Borrowed keys: a sort calls the key function n log n times.
    resolved.sort_by(|a, b| a.age_key().cmp(&b.age_key()));
    let mut claimed: std::collections::HashMap<ServiceKey, &VirtualService> =
        std::collections::HashMap::with_capacity(resolved.len());
    let resolved = resolved
        .into_iter()
        .map(|r| {
            let won: Vec<(usize, ServiceKey)> = r
                .ports
                .iter()
                .filter_map(|&(i, key)| match claimed.get(&key) {
                    Some(owner) => {
                        problems.push(Problem {
                            object: object_ref_vs(r.vs),
                            field: format!("spec.ports[{i}]"),
                            reason: ProblemReason::Conflict,
                            message: format!(
                                "{key} is already claimed by the older {}",
                                object_ref_vs(owner)
                            ),
                        });
                        None
                    }
                    None => {
                        claimed.insert(key, r.vs);
                        Some((i, key))
                    }
                })
                .collect();
            Claim {
                at: r.at,
                vip: r.vip,
                won,
            }
        })
        .collect();
    Claims { resolved, problems }
}

/// What one VirtualService with ports of its own gives the node's plan.
#[derive(Debug, Clone, Default)]
struct VirtualServicePlan {
    services: Vec<Service>,
    /// (VIP, tunnel) a real server on this node carries, and for which RealServer.
    real_server_vips: Vec<((IpAddr, Option<TunnelKind>), ObjectRef)>,
    problems: Vec<Problem>,
    /// The RealServers it selected, as positions in [`Objects::real_servers`].
    selected: Vec<u32>,
}

/// Plans one VirtualService that won ports (`claim.won`, not empty), from the
/// RealServers its selector picked (`selected`: positions in `objects.real_servers`).
fn plan_virtual_service(
    node: &NodeIdentity,
    objects: &Objects<'_>,
    claim: &Claim,
    selected: Result<Vec<u32>, kubelvs_crds::selector::SelectorError>,
) -> VirtualServicePlan {
    let vs = objects.virtual_services[claim.at];
    let vip = claim.vip;
    let mut out = VirtualServicePlan::default();
    let problems = &mut out.problems;
    let vs_ref = object_ref_vs(vs);
    out.selected = selected.as_ref().map_or_else(|_| Vec::new(), Vec::clone);
    let backends = select_real_servers(vs, objects, selected, problems);
    let forwarding = forwarding(vs);
    let dataplane = match vs.spec.dataplane {
        kubelvs_crds::Dataplane::Ipvs => DataplaneKind::Ipvs,
        kubelvs_crds::Dataplane::Xdp => DataplaneKind::Xdp,
    };
    let persistence = match persistence(vs, vip) {
        Ok(p) => p,
        Err((field, message)) => {
            problems.push(Problem {
                object: vs_ref.clone(),
                field: field.into(),
                reason: ProblemReason::Invalid,
                message,
            });
            return out;
        }
    };

    // Real servers per port, checked on every node (not only directors), so that every
    // agent reports the same problems and only usable real servers get the VIP.
    let per_port: Vec<(ServiceKey, Vec<RealServer>)> = claim
        .won
        .iter()
        .map(|&(i, key)| {
            let target_port = vs.spec.ports[i].target_port;
            let found = backends
                .iter()
                .filter_map(|rs| {
                    let port = BackendPort {
                        index: i,
                        target_port,
                        key,
                    };
                    backend_for_port(vs, port, forwarding, dataplane, rs, problems)
                })
                .collect();
            (key, dedup_real_servers(key, found, problems))
        })
        .collect();
    let directs_here = directs(node, vs, problems);

    if forwarding.real_server_carries_vip() {
        let tunnel = match forwarding {
            Forwarding::Tun(t) => Some(TunnelKind::from(t)),
            _ => None,
        };
        let usable: BTreeSet<&ObjectRef> = per_port
            .iter()
            .flat_map(|(_, rss)| rss.iter().map(|rs| &rs.source))
            .collect();
        for rs in backends
            .iter()
            .filter(|rs| runs_here(node, rs.object, rs.address))
        {
            let rs_ref = object_ref_rs(rs.object);
            if !usable.contains(&rs_ref) {
                continue;
            }
            if directs_here {
                // A director that is also a dr/tun real server of the same VIP re-schedules
                // packets another director already forwarded to it. It holds the VIP as a
                // director anyway; say so instead of suppressing its ARP for the VIP.
                problems.push(Problem {
                    object: rs_ref,
                    field: "spec.nodeName".into(),
                    reason: ProblemReason::Conflict,
                    message: format!(
                        "node {} directs {} ({} forwarding) and also runs this real server; run real servers on nodes outside spec.directors",
                        node.name,
                        vs_ref,
                        forwarding.name()
                    ),
                });
                continue;
            }
            out.real_server_vips.push(((vip, tunnel), rs_ref));
        }
    }

    if !directs_here {
        return out;
    }
    let source_address = match forwarding {
        Forwarding::FullNat => match fullnat_source(node, vs, vip, &objects.address_pools) {
            Ok(a) => Some(a),
            Err(message) => {
                problems.push(Problem {
                    object: vs_ref.clone(),
                    field: "spec.sourceAddressPool".into(),
                    reason: ProblemReason::Unresolved,
                    message,
                });
                return out;
            }
        },
        _ => None,
    };
    // `drain: true`: out of the director's plan, so the dataplane drains it (weight
    // 0, deleted when its connections end or at the drain deadline) as it does any
    // removed real server; its node keeps the VIP (above) for those connections.
    let drained: BTreeSet<ObjectRef> = backends
        .iter()
        .filter(|rs| rs.object.spec.drain)
        .map(|rs| object_ref_rs(rs.object))
        .collect();
    for (key, mut real_servers) in per_port {
        real_servers.retain(|r| !drained.contains(&r.source));
        out.services.push(Service {
            key,
            scheduler: scheduler(vs.spec.scheduler),
            scheduler_flags: scheduler_flags(&vs.spec.scheduler_flags),
            forwarding,
            persistence,
            source_address,
            health_check: health_check(vs),
            dataplane,
            real_servers,
            source: vs_ref.clone(),
        });
    }
    out
}

/// The parts of the plan made from every VirtualService's at once: real-server VIPs,
/// which VIPs this node announces, BGP sessions, and the sorted problems.
fn finish(
    node: &NodeIdentity,
    objects: &Objects<'_>,
    claims: &Claims,
    services: Vec<Service>,
    parts: &[&VirtualServicePlan],
) -> NodePlan {
    let mut problems = claims.problems.clone();
    let mut vips: BTreeMap<(IpAddr, Option<TunnelKind>), BTreeSet<ObjectRef>> = BTreeMap::new();
    for part in parts {
        problems.extend(part.problems.iter().cloned());
        for (vip, rs) in &part.real_server_vips {
            vips.entry(*vip).or_default().insert(rs.clone());
        }
    }
    // Every VirtualService with a planned port on each VIP, for its announcer.
    let directed: BTreeSet<IpAddr> = services.iter().map(|s| s.key.vip).collect();
    let mut on_vip: BTreeMap<IpAddr, Vec<&VirtualService>> = BTreeMap::new();
    for c in &claims.resolved {
        if !c.won.is_empty() && directed.contains(&c.vip) {
            on_vip
                .entry(c.vip)
                .or_default()
                .push(objects.virtual_services[c.at]);
        }
    }
    let unannounced_vips = announce::unannounced(
        node,
        &on_vip,
        &objects.address_pools,
        objects.announcers,
        &mut problems,
    );
    let bgp_sessions = announce::bgp_sessions(node, &on_vip, &objects.address_pools, &mut problems);
    problems.sort();
    problems.dedup();
    NodePlan {
        node: node.name.clone(),
        services,
        real_server_vips: vips
            .into_iter()
            .map(|((vip, tunnel), sources)| RealServerVip {
                vip,
                tunnel,
                sources: sources.into_iter().collect(),
            })
            .collect(),
        unannounced_vips,
        bgp_sessions,
        problems,
    }
}

/// Sorts real servers and keeps one per address:port, reporting the others.
fn dedup_real_servers(
    key: ServiceKey,
    mut real_servers: Vec<RealServer>,
    problems: &mut Vec<Problem>,
) -> Vec<RealServer> {
    // The source breaks ties, so which duplicate is kept does not depend on input order.
    real_servers
        .sort_by(|a, b| (a.address, a.port, &a.source).cmp(&(b.address, b.port, &b.source)));
    real_servers.dedup_by(|dup, kept| {
        let same = (dup.address, dup.port) == (kept.address, kept.port);
        if same {
            problems.push(Problem {
                object: dup.source.clone(),
                field: "spec.address".into(),
                reason: ProblemReason::Conflict,
                message: format!(
                    "{}:{} is already a real server of {key} through {}",
                    dup.address, dup.port, kept.source
                ),
            });
        }
        same
    });
    // Kept for the life of the plan: at 100,000 real servers a vector's spare
    // capacity (16 slots for 10) is megabytes.
    real_servers.shrink_to_fit();
    real_servers
}

/// A VirtualService whose VIP and ports are usable.
struct Resolved<'a> {
    /// Its position in [`Objects::virtual_services`].
    at: usize,
    vs: &'a VirtualService,
    vip: IpAddr,
    /// (index into spec.ports, key)
    ports: Vec<(usize, ServiceKey)>,
}

impl Resolved<'_> {
    /// Older first; ties (same second) by namespace/name, so every node orders alike.
    fn age_key(&self) -> (Option<k8s_openapi::jiff::Timestamp>, &str, &str) {
        let m = &self.vs.metadata;
        (
            m.creation_timestamp.as_ref().map(|t| t.0),
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default(),
        )
    }
}

/// The operator's grant: `status.vip` of a status written for the current generation.
fn granted(vs: &VirtualService) -> Option<&String> {
    let status = vs.status.as_ref()?;
    let current = status.observed_generation.is_some()
        && status.observed_generation == vs.metadata.generation;
    status.vip.as_ref().filter(|_| current)
}

fn resolve<'a>(
    at: usize,
    vs: &'a VirtualService,
    source: VipSource,
    problems: &mut Vec<Problem>,
) -> Option<Resolved<'a>> {
    // Made only for a problem: resolving runs for every VirtualService at every plan.
    let obj = || object_ref_vs(vs);
    let found = match source {
        VipSource::Spec => match (
            &vs.spec.vip,
            vs.status.as_ref().and_then(|s| s.vip.as_ref()),
        ) {
            (Some(v), _) => Some(("spec.vip", v)),
            (None, Some(v)) => Some(("status.vip", v)),
            (None, None) => None,
        },
        VipSource::Granted => match granted(vs) {
            Some(v) => Some(("status.vip", v)),
            None => {
                problems.push(Problem {
                    object: obj(),
                    field: "spec.vip".into(),
                    reason: ProblemReason::VipPending,
                    message: "no VIP granted: the operator has not allocated or admitted one \
                              for this generation (see the VipAllocated condition)"
                        .into(),
                });
                return None;
            }
        },
    };
    let (field, text) = match found {
        Some(found) => found,
        None => {
            problems.push(Problem {
                object: obj(),
                field: "spec.vip".into(),
                reason: ProblemReason::VipPending,
                message: "no VIP yet: spec.vip is empty and the operator has not allocated one"
                    .into(),
            });
            return None;
        }
    };
    let vip: IpAddr = match text.parse() {
        Ok(v) => v,
        Err(_) => {
            problems.push(Problem {
                object: obj(),
                field: field.into(),
                reason: ProblemReason::Invalid,
                message: format!("{text:?} is not an IP address"),
            });
            return None;
        }
    };
    let ports = vs
        .spec
        .ports
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            if p.port == 0 {
                problems.push(Problem {
                    object: obj(),
                    field: format!("spec.ports[{i}].port"),
                    reason: ProblemReason::Invalid,
                    message: "port 0 is not a port".into(),
                });
                return None;
            }
            Some((
                i,
                ServiceKey {
                    vip,
                    port: p.port,
                    protocol: match p.protocol {
                        kubelvs_crds::Protocol::Tcp => Protocol::Tcp,
                        kubelvs_crds::Protocol::Udp => Protocol::Udp,
                        kubelvs_crds::Protocol::Sctp => Protocol::Sctp,
                    },
                },
            ))
        })
        .collect();
    Some(Resolved { at, vs, vip, ports })
}

fn directs(node: &NodeIdentity, vs: &VirtualService, problems: &mut Vec<Problem>) -> bool {
    let Some(directors) = &vs.spec.directors else {
        return true;
    };
    match kubelvs_crds::selector::matches(&directors.node_selector, &node.labels) {
        Ok(m) => m,
        Err(e) => {
            problems.push(Problem {
                object: object_ref_vs(vs),
                field: format!(
                    "spec.directors.nodeSelector.matchExpressions[{}]",
                    e.expression
                ),
                reason: ProblemReason::Invalid,
                message: e.message,
            });
            false
        }
    }
}

/// A RealServer selected by a VirtualService, with its parsed address.
struct Selected<'a> {
    object: &'a RealServerRecord,
    address: IpAddr,
}

/// The usable RealServers of those `vs`'s selector picked (`selected`, positions).
fn select_real_servers<'a>(
    vs: &VirtualService,
    objects: &Objects<'a>,
    selected: Result<Vec<u32>, kubelvs_crds::selector::SelectorError>,
    problems: &mut Vec<Problem>,
) -> Vec<Selected<'a>> {
    let namespace = vs.metadata.namespace.as_deref().unwrap_or_default();
    let selected = match selected {
        Ok(s) => s,
        Err(e) => {
            problems.push(Problem {
                object: object_ref_vs(vs),
                field: format!("spec.realServerSelector.matchExpressions[{}]", e.expression),
                reason: ProblemReason::Invalid,
                message: e.message,
            });
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for at in selected {
        let rs = objects.real_servers[at as usize];
        match rs.spec.address.parse::<IpAddr>() {
            // Stored before the CRD said so, or standalone: directors would probe (and
            // forward to) their own host or a metadata service.
            Ok(address) if kubelvs_crds::address::not_unicast(address).is_some() => {
                problems.push(Problem {
                    object: object_ref_rs(rs),
                    field: "spec.address".into(),
                    reason: ProblemReason::Invalid,
                    message: format!(
                        "{address} is {}: no director probes or forwards to it",
                        kubelvs_crds::address::not_unicast(address).unwrap_or_default()
                    ),
                });
            }
            Ok(address) => match objects
                .node_real_servers
                .and_then(|p| p.refusal(namespace, address))
            {
                Some(message) => problems.push(Problem {
                    object: object_ref_rs(rs),
                    field: "spec.address".into(),
                    reason: ProblemReason::Invalid,
                    message,
                }),
                None => out.push(Selected {
                    object: rs,
                    address,
                }),
            },
            Err(_) => problems.push(Problem {
                object: object_ref_rs(rs),
                field: "spec.address".into(),
                reason: ProblemReason::Invalid,
                message: format!("{:?} is not an IP address", rs.spec.address),
            }),
        }
    }
    out
}

/// One virtual port of a VirtualService, as a real server sees it.
#[derive(Clone, Copy)]
struct BackendPort {
    /// Index into spec.ports.
    index: usize,
    target_port: Option<u16>,
    key: ServiceKey,
}

fn backend_for_port(
    vs: &VirtualService,
    BackendPort {
        index: port_index,
        target_port,
        key,
    }: BackendPort,
    forwarding: Forwarding,
    dataplane: DataplaneKind,
    rs: &Selected<'_>,
    problems: &mut Vec<Problem>,
) -> Option<RealServer> {
    let rs_ref = object_ref_rs(rs.object);
    // IPVS forwards across address families only by tunnelling (an IPv6 real server
    // behind an IPv4 VIP is encapsulated); every other method rewrites in place, and the
    // XDP dataplane encapsulates within one family.
    let crosses_families =
        matches!(forwarding, Forwarding::Tun(_)) && dataplane == DataplaneKind::Ipvs;
    if rs.address.is_ipv4() != key.vip.is_ipv4() && !crosses_families {
        problems.push(Problem {
            object: rs_ref,
            field: "spec.address".into(),
            reason: ProblemReason::Invalid,
            message: format!(
                "{} is not in the address family of {key} ({}); only tun forwarding on the ipvs dataplane crosses families",
                rs.address,
                object_ref_vs(vs)
            ),
        });
        return None;
    }
    let port = if forwarding.allows_port_mapping() {
        target_port.or(rs.object.spec.port).unwrap_or(key.port)
    } else {
        match rs.object.spec.port {
            Some(p) if p != key.port => {
                problems.push(Problem {
                    object: rs_ref,
                    field: "spec.port".into(),
                    reason: ProblemReason::Invalid,
                    message: format!(
                        "port {p} differs from {key} of {}, and {} forwarding cannot map ports (spec.ports[{port_index}])",
                        object_ref_vs(vs),
                        forwarding.name()
                    ),
                });
                return None;
            }
            _ => key.port,
        }
    };
    let weight = if rs.object.spec.drain {
        0
    } else {
        rs.object.spec.weight.min(65535)
    };
    // (A drained real server is dropped from the director's services by the caller;
    // the weight matters for the VIP its node keeps meanwhile.)
    Some(RealServer {
        address: rs.address,
        port,
        weight,
        source: rs_ref,
    })
}

fn runs_here(node: &NodeIdentity, rs: &RealServerRecord, address: IpAddr) -> bool {
    match &rs.spec.node_name {
        Some(n) => **n == *node.name,
        None => node.addresses.contains(&address),
    }
}

fn fullnat_source(
    node: &NodeIdentity,
    vs: &VirtualService,
    vip: IpAddr,
    pools: &[&AddressPool],
) -> Result<IpAddr, String> {
    let pool_name = vs.spec.source_address_pool.as_deref().unwrap_or_default();
    let pool = pools
        .iter()
        .find(|p| p.name_any() == pool_name)
        .ok_or_else(|| format!("AddressPool {pool_name} does not exist"))?;
    let ranges = pool.ranges();
    let mut mine: Vec<IpAddr> = node
        .addresses
        .iter()
        .copied()
        .filter(|a| a.is_ipv4() == vip.is_ipv4())
        .filter(|a| ranges.iter().any(|r| r.contains(*a)))
        .collect();
    mine.sort();
    mine.first().copied().ok_or_else(|| {
        format!(
            "node {} carries no address of AddressPool {pool_name} in the VIP's family",
            node.name
        )
    })
}

fn forwarding(vs: &VirtualService) -> Forwarding {
    match vs.spec.forwarding {
        ForwardingMethod::Nat => Forwarding::Nat,
        ForwardingMethod::Dr => Forwarding::Dr,
        ForwardingMethod::Fullnat => Forwarding::FullNat,
        ForwardingMethod::Tun => {
            let t = vs.spec.tunnel.as_ref();
            Forwarding::Tun(match t.map(|t| t.tunnel_type).unwrap_or_default() {
                TunnelType::Ipip => Tunnel::Ipip,
                TunnelType::Gre => Tunnel::Gre,
                TunnelType::Gue => Tunnel::Gue {
                    port: t.and_then(|t| t.port).unwrap_or_default(),
                },
            })
        }
    }
}

fn scheduler(s: CrdScheduler) -> Scheduler {
    match s {
        CrdScheduler::Rr => Scheduler::Rr,
        CrdScheduler::Wrr => Scheduler::Wrr,
        CrdScheduler::Lc => Scheduler::Lc,
        CrdScheduler::Wlc => Scheduler::Wlc,
        CrdScheduler::Lblc => Scheduler::Lblc,
        CrdScheduler::Lblcr => Scheduler::Lblcr,
        CrdScheduler::Dh => Scheduler::Dh,
        CrdScheduler::Sh => Scheduler::Sh,
        CrdScheduler::Sed => Scheduler::Sed,
        CrdScheduler::Nq => Scheduler::Nq,
        CrdScheduler::Fo => Scheduler::Fo,
        CrdScheduler::Ovf => Scheduler::Ovf,
        CrdScheduler::Mh => Scheduler::Mh,
        CrdScheduler::Twos => Scheduler::Twos,
        CrdScheduler::Maglev => Scheduler::Maglev,
    }
}

fn scheduler_flags(flags: &[SchedulerFlag]) -> SchedulerFlags {
    let mut out = SchedulerFlags::default();
    for f in flags {
        match f {
            SchedulerFlag::Flag1 | SchedulerFlag::ShFallback | SchedulerFlag::MhFallback => {
                out.flag1 = true
            }
            SchedulerFlag::Flag2 | SchedulerFlag::ShPort | SchedulerFlag::MhPort => {
                out.flag2 = true
            }
            SchedulerFlag::Flag3 => out.flag3 = true,
        }
    }
    out
}

/// Persistence in model terms. The family checks repeat CEL rules for VIPs the operator
/// allocated (CEL only sees spec.vip): `Err((field, message))`.
fn persistence(
    vs: &VirtualService,
    vip: IpAddr,
) -> Result<Option<Persistence>, (&'static str, String)> {
    let Some(p) = vs.spec.persistence.as_ref() else {
        return Ok(None);
    };
    let full: u8 = if vip.is_ipv4() { 32 } else { 128 };
    let prefix_length = match (&p.netmask, p.prefix_length) {
        (Some(mask), _) => {
            let mask: std::net::Ipv4Addr = mask.parse().map_err(|_| {
                (
                    "spec.persistence.netmask",
                    format!("{mask:?} is not a netmask"),
                )
            })?;
            if !vip.is_ipv4() {
                return Err((
                    "spec.persistence.netmask",
                    format!(
                        "a dotted netmask needs an IPv4 VIP, and {vip} is IPv6; use prefixLength"
                    ),
                ));
            }
            u32::from(mask).leading_ones() as u8
        }
        (None, Some(len)) if len > full || len == 0 => {
            return Err((
                "spec.persistence.prefixLength",
                format!("{len} is not a prefix length for {vip} (1-{full})"),
            ))
        }
        (None, Some(len)) => len,
        (None, None) => full,
    };
    Ok(Some(Persistence {
        timeout_seconds: p.timeout_seconds,
        prefix_length,
    }))
}

fn health_check(vs: &VirtualService) -> Option<HealthCheck> {
    let h = vs.spec.health_check.as_ref()?;
    let probe = match h.check_type {
        HealthCheckType::Tcp => Probe::Tcp { port: h.port },
        HealthCheckType::Http | HealthCheckType::Https => Probe::Http {
            tls: h.check_type == HealthCheckType::Https,
            path: h.path.clone().unwrap_or_else(|| "/".into()),
            expected_status: h.expected_status.unwrap_or(200),
            port: h.port,
            host: h.host.clone(),
        },
        HealthCheckType::Udp => Probe::Udp {
            port: h.port,
            payload: h.payload.as_deref().map(hex_bytes).unwrap_or_default(),
            require_reply: h.require_reply.unwrap_or(false),
        },
    };
    Some(HealthCheck {
        probe,
        interval_ms: h.interval_seconds.saturating_mul(1000),
        timeout_ms: h.timeout_seconds.saturating_mul(1000),
        rise: h.rise,
        fall: h.fall,
    })
}

/// `payload`'s bytes; the schema admits only pairs of hex digits (a stray character
/// from an unvalidated source is skipped with its pair).
fn hex_bytes(hex: &str) -> Vec<u8> {
    hex.as_bytes()
        .chunks(2)
        .filter_map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

fn object_ref_vs(vs: &VirtualService) -> ObjectRef {
    ObjectRef::new(
        ObjectKind::VirtualService,
        &vs.namespace().unwrap_or_default(),
        &vs.name_any(),
    )
}

fn object_ref_rs(rs: &RealServerRecord) -> ObjectRef {
    ObjectRef {
        kind: ObjectKind::RealServer,
        namespace: rs.namespace.clone(),
        name: rs.name.clone(),
    }
}
