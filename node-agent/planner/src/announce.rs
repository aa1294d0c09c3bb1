//! Which director announces each VIP (answers ARP for IPv4, NDP for IPv6).
//!
//! With two directors on one L2 segment answering for the same VIP, a router's or
//! client's neighbour entry flips whenever it is refreshed, and an IPv6 VIP fails
//! duplicate address detection on the second. So, for a pool in mode `l2` (the
//! default), exactly one director announces each VIP: the one with the highest
//! rendezvous score over the VIP's eligible, live directors. Every agent computes the
//! same owner from the same objects and the same view of the Leases, without talking;
//! when a director dies only its own VIPs move. In mode `bgp` no director answers
//! ARP/NDP: every director that may announce keeps a session with each of the pool's
//! peers and announces the VIP there ([`bgp_sessions`]; the agent withdraws what it
//! cannot serve). In mode `none` no director announces (the network routes the
//! addresses). Standalone (no [`Announcers`]), a director announces (l2) every VIP it
//! directs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use kube::ResourceExt;
use kubelvs_crds::{AddressPool, AnnouncementMode, VirtualService};
use kubelvs_model::{BgpSession, ObjectKind, ObjectRef, Problem, ProblemReason};

use crate::NodeIdentity;

/// In a cluster: the nodes whose agents are alive (their Lease renewed within its
/// duration, as this agent saw it), with their labels. The node being planned is
/// taken as alive (its own agent is the one asking) unless it lost its announce
/// interface's carrier: then it announces nothing, and stops renewing its Lease.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announcers {
    pub live: BTreeMap<String, BTreeMap<String, String>>,
    /// This node's announce interface has no carrier.
    pub ineligible_self: bool,
}

/// The rendezvous (highest random weight) score of `node` for `vip`: FNV-1a over the
/// VIP's bytes and the node's name, then a 64-bit finalizer to spread FNV's weak low
/// bits. Fixed here rather than `std`'s hasher, whose output may change between Rust
/// releases: agents of different builds must agree.
pub fn score(vip: IpAddr, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let octets: Vec<u8> = match vip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    for b in octets.iter().chain([0xff].iter()).chain(node.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finalizer.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The owner of `vip` among `candidates`: highest score, ties by name.
pub fn owner<'a>(vip: IpAddr, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates.into_iter().max_by_key(|n| (score(vip, n), *n))
}

/// The pool whose addresses contain `vip` (the first by name when pools overlap).
fn pool_of<'a>(vip: IpAddr, pools: &[&'a AddressPool]) -> Option<&'a AddressPool> {
    pools
        .iter()
        .filter(|p| p.ranges().iter().any(|r| r.contains(vip)))
        .min_by_key(|p| p.name_any())
        .copied()
}

/// Whether a node with `labels` may announce `pool`'s addresses (its
/// `spec.announcement.nodeSelector`; a malformed one lets nobody, and says so).
fn may_announce(
    pool: Option<&AddressPool>,
    labels: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> bool {
    let Some(selector) = pool
        .and_then(|p| p.spec.announcement.as_ref())
        .and_then(|a| a.node_selector.as_ref())
    else {
        return true;
    };
    kubelvs_crds::selector::matches(selector, labels).unwrap_or_else(|e| {
        problems.push(Problem {
            object: ObjectRef::new(
                ObjectKind::AddressPool,
                "",
                &pool.map(|p| p.name_any()).unwrap_or_default(),
            ),
            field: format!(
                "spec.announcement.nodeSelector.matchExpressions[{}]",
                e.expression
            ),
            reason: ProblemReason::Invalid,
            message: e.message,
        });
        false
    })
}

/// The BGP sessions this node keeps for the VIPs of `directed` in `bgp` pools it may
/// announce: one per (local ASN, peer), with every such VIP, sorted by peer.
pub fn bgp_sessions(
    node: &NodeIdentity,
    directed: &BTreeMap<IpAddr, Vec<&VirtualService>>,
    pools: &[&AddressPool],
    problems: &mut Vec<Problem>,
) -> Vec<BgpSession> {
    let mut sessions: BTreeMap<(IpAddr, u32, u32), BgpSession> = BTreeMap::new();
    for &vip in directed.keys() {
        let Some(pool) = pool_of(vip, pools) else {
            continue;
        };
        let Some(bgp) = pool
            .spec
            .announcement
            .as_ref()
            .filter(|a| a.mode == AnnouncementMode::Bgp)
            .and_then(|a| a.bgp.as_ref())
        else {
            continue;
        };
        if !may_announce(Some(pool), &node.labels, problems) {
            continue;
        }
        for (i, peer) in bgp.peers.iter().enumerate() {
            let Ok(address) = peer.address.parse::<IpAddr>() else {
                problems.push(Problem {
                    object: ObjectRef::new(ObjectKind::AddressPool, "", &pool.name_any()),
                    field: format!("spec.announcement.bgp.peers[{i}].address"),
                    reason: ProblemReason::Invalid,
                    message: format!("{:?} is not an IP address", peer.address),
                });
                continue;
            };
            if address.is_ipv4() != vip.is_ipv4() {
                continue;
            }
            sessions
                .entry((address, bgp.local_asn, peer.asn))
                .or_insert_with(|| BgpSession {
                    local_asn: bgp.local_asn,
                    peer: address,
                    peer_asn: peer.asn,
                    port: peer.port.unwrap_or(179),
                    hold_time_seconds: peer.hold_time_seconds.unwrap_or(9),
                    bfd: peer.bfd.unwrap_or(true),
                    password_secret: peer
                        .password_secret_ref
                        .as_ref()
                        .map(|r| (r.name.clone(), r.key.clone())),
                    vips: BTreeSet::new(),
                })
                .vips
                .insert(vip);
        }
    }
    sessions.into_values().collect()
}

/// The VIPs of `directed` this node must not announce. `directed`: each VIP this node
/// directs, with every VirtualService whose ports on it were planned (on any node:
/// another director may direct the VIP through a VirtualService this node does not).
pub fn unannounced(
    node: &NodeIdentity,
    directed: &BTreeMap<IpAddr, Vec<&VirtualService>>,
    pools: &[&AddressPool],
    announcers: Option<&Announcers>,
    problems: &mut Vec<Problem>,
) -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    for (&vip, services) in directed {
        let pool = pool_of(vip, pools);
        if pool.is_some_and(|p| p.announcement_mode() != AnnouncementMode::L2) {
            out.insert(vip);
            continue;
        }
        let Some(announcers) = announcers else {
            continue;
        };
        let directs = |labels: &BTreeMap<String, String>| {
            services.iter().any(|vs| match &vs.spec.directors {
                None => true,
                Some(d) => kubelvs_crds::selector::matches(&d.node_selector, labels) == Ok(true),
            })
        };
        let others = announcers
            .live
            .iter()
            .filter(|(name, _)| **name != node.name)
            .map(|(name, labels)| (name.as_str(), labels));
        let mut candidates = Vec::new();
        let me = (!announcers.ineligible_self).then_some((node.name.as_str(), &node.labels));
        for (name, labels) in me.into_iter().chain(others) {
            if directs(labels) && may_announce(pool, labels, problems) {
                candidates.push(name);
            }
        }
        if owner(vip, candidates) != Some(node.name.as_str()) {
            out.insert(vip);
        }
    }
    out
}
