//! Pure: the status the operator owns on each VirtualService and AddressPool.
//!
//! On a VirtualService the operator owns `vip`, `observedGeneration`, `realServers`
//! and the conditions below; every agent owns its own `directors[node]` entry, and
//! the roll-up reads those entries without ever writing them.
//!
//! | Condition | True when |
//! |---|---|
//! | `Accepted` | the spec passes the API's rules |
//! | `VipAllocated` | the VIP is decided (requested or allocated) |
//! | `Programmed` | every director that reported has programmed every port |
//! | `Ready` | all three above, and at least one real server is healthy |
//! | `Degraded` | a director failed to program it, or some real server fails its check |

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kubelvs_crds::{AddressPool, AddressPoolStatus, RealServerRecord, VirtualService};

use crate::allocate::AllocationError;

/// Condition types on a VirtualService.
pub const ACCEPTED: &str = "Accepted";
pub const VIP_ALLOCATED: &str = "VipAllocated";
pub const PROGRAMMED: &str = "Programmed";
pub const READY: &str = "Ready";
pub const DEGRADED: &str = "Degraded";

/// Condition types on an AddressPool.
pub const VALID: &str = "Valid";
pub const OVERLAPPING: &str = "Overlapping";

/// The part of a VirtualService's status the operator writes.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorStatus {
    pub vip: Option<String>,
    pub observed_generation: Option<i64>,
    pub real_servers: String,
    pub conditions: Vec<Condition>,
    /// See [`announced_by`].
    pub announced_by: Option<String>,
}

/// See [`OperatorStatus::apply_body`].
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusApply<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: ApplyMetadata<'a>,
    status: StatusFields<'a>,
}

#[derive(Debug, serde::Serialize)]
struct ApplyMetadata<'a> {
    name: &'a str,
    namespace: &'a str,
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusFields<'a> {
    observed_generation: Option<i64>,
    real_servers: &'a str,
    conditions: &'a [Condition],
    #[serde(skip_serializing_if = "Option::is_none")]
    vip: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    announced_by: Option<&'a str>,
}

impl OperatorStatus {
    /// The server-side apply body under the operator's field manager: only its fields,
    /// so the agents' `directors` entries stay theirs. Typed and borrowed rather than a
    /// JSON tree: a first pass at 10,000 VirtualServices writes every status, and as
    /// trees the bodies were about 60 MB.
    pub fn apply_body<'a>(&'a self, namespace: &'a str, name: &'a str) -> StatusApply<'a> {
        StatusApply {
            api_version: "kubelvs.io/v1alpha1",
            kind: "VirtualService",
            metadata: ApplyMetadata { name, namespace },
            status: StatusFields {
                observed_generation: self.observed_generation,
                real_servers: &self.real_servers,
                conditions: &self.conditions,
                vip: self.vip.as_deref(),
                announced_by: self.announced_by.as_deref(),
            },
        }
    }

    /// Whether `vs` already shows this status (ignoring the agents' entries).
    pub fn is_shown_by(&self, vs: &VirtualService) -> bool {
        let Some(s) = &vs.status else {
            return false;
        };
        s.vip == self.vip
            && s.observed_generation == self.observed_generation
            && s.real_servers.as_deref() == Some(self.real_servers.as_str())
            && s.conditions == self.conditions
            && s.announced_by == self.announced_by
    }
}

/// A condition, keeping `lastTransitionTime` from `existing` when its status is unchanged.
fn condition(
    existing: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = existing
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// Whether `vs` passes the API's rules, or every field that does not.
pub fn validation(vs: &VirtualService) -> Result<(), String> {
    kubelvs_crds::validate(vs).map_err(|e| e.to_string())
}

/// The operator's status for `vs`, given its [`validation`], its allocation, the
/// RealServers it selects and the time a changed condition is stamped with.
pub fn virtual_service_status(
    vs: &VirtualService,
    validation: &Result<(), String>,
    allocation: Option<&Result<IpAddr, AllocationError>>,
    selected: &[&RealServerRecord],
    now: &Time,
) -> OperatorStatus {
    let existing: &[Condition] = vs.status.as_ref().map_or(&[], |s| &s.conditions);
    let generation = vs.metadata.generation;
    let cond = |t: &str, ok: bool, reason: &str, message: String| {
        condition(existing, t, ok, reason, message, generation, now)
    };
    let directors = vs.status.as_ref().map_or(&[][..], |s| &s.directors[..]);

    let accepted = match validation {
        Ok(()) => cond(ACCEPTED, true, "Valid", "the spec passes validation".into()),
        Err(e) => cond(ACCEPTED, false, "Invalid", e.clone()),
    };
    let vip = match allocation {
        Some(Ok(ip)) if vs.spec.vip.is_some() => cond(
            VIP_ALLOCATED,
            true,
            "Requested",
            format!("{ip} as spec.vip asks"),
        ),
        Some(Ok(ip)) => cond(
            VIP_ALLOCATED,
            true,
            "Allocated",
            format!("{ip} allocated from an AddressPool"),
        ),
        Some(Err(e)) => cond(VIP_ALLOCATED, false, e.reason(), e.to_string()),
        None => cond(
            VIP_ALLOCATED,
            false,
            "Pending",
            "not yet considered by the allocator".into(),
        ),
    };

    let total = selected.iter().filter(|r| !r.spec.drain).count() as u32;
    let not_programmed: Vec<String> = directors
        .iter()
        .filter(|d| !d.programmed)
        .map(|d| {
            format!(
                "{}: {}",
                d.node,
                d.message.as_deref().unwrap_or("not programmed")
            )
        })
        .collect();
    let programmed = if directors.is_empty() {
        cond(
            PROGRAMMED,
            false,
            "NoDirector",
            "no director has reported this virtual service yet".into(),
        )
    } else if not_programmed.is_empty() {
        cond(
            PROGRAMMED,
            true,
            "Programmed",
            format!("programmed on {} director(s)", directors.len()),
        )
    } else {
        cond(
            PROGRAMMED,
            false,
            "NotProgrammed",
            format!(
                "{} of {} director(s) failed: {}",
                not_programmed.len(),
                directors.len(),
                not_programmed.join("; ")
            ),
        )
    };
    // The worst view wins: a real server one director cannot reach is a problem there.
    let healthy = directors
        .iter()
        .map(|d| d.healthy_real_servers.min(total))
        .min()
        .unwrap_or(0);

    let ready = if accepted.status != "True" {
        cond(READY, false, "NotAccepted", accepted.message.clone())
    } else if vip.status != "True" {
        cond(READY, false, "NoVip", vip.message.clone())
    } else if programmed.status != "True" {
        cond(READY, false, "NotProgrammed", programmed.message.clone())
    } else if healthy == 0 {
        cond(
            READY,
            false,
            "NoHealthyRealServer",
            format!("none of {total} real server(s) passes its health check"),
        )
    } else {
        cond(
            READY,
            true,
            "Ready",
            format!("{healthy}/{total} real servers healthy"),
        )
    };
    let weak: Vec<String> = directors
        .iter()
        .filter(|d| d.programmed && d.healthy_real_servers < total)
        .map(|d| format!("{} sees {}/{total}", d.node, d.healthy_real_servers))
        .collect();
    let degraded = if !not_programmed.is_empty() && not_programmed.len() < directors.len() {
        cond(
            DEGRADED,
            true,
            "DirectorsNotProgrammed",
            not_programmed.join("; "),
        )
    } else if !weak.is_empty() {
        cond(
            DEGRADED,
            true,
            "RealServersUnhealthy",
            format!("real servers fail their health check: {}", weak.join("; ")),
        )
    } else {
        cond(DEGRADED, false, "AsExpected", "nothing is degraded".into())
    };

    OperatorStatus {
        vip: allocation
            .and_then(|a| a.as_ref().ok())
            .map(|ip| ip.to_string()),
        observed_generation: generation,
        real_servers: format!("{healthy}/{total}"),
        conditions: vec![accepted, vip, programmed, ready, degraded],
        announced_by: None,
    }
}

/// Who announces `vs`'s VIP: the nodes whose entry says they announce it, less those
/// whose Lease expired (a dead director's entry stays as it left it; a node without
/// a Lease keeps none and is taken at its word).
pub fn announced_by(
    vs: &VirtualService,
    expired: &std::collections::BTreeSet<String>,
) -> Option<String> {
    let nodes: Vec<&str> = vs
        .status
        .iter()
        .flat_map(|s| &s.directors)
        .filter(|d| d.announcing && !expired.contains(&d.node))
        .map(|d| d.node.as_str())
        .collect();
    (!nodes.is_empty()).then(|| nodes.join(","))
}

/// Entries of `status.directors` whose node is not in `nodes` (deleted, or never
/// registered), as (index, node), highest index first: the order a JSON patch removes
/// them in. An agent that no longer exists cannot remove its own entry, and the
/// roll-up must not count it.
pub fn stale_directors(
    vs: &VirtualService,
    nodes: &std::collections::BTreeSet<String>,
) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = vs
        .status
        .iter()
        .flat_map(|s| s.directors.iter().enumerate())
        .filter(|(_, d)| !nodes.contains(&d.node))
        .map(|(i, d)| (i, d.node.clone()))
        .collect();
    out.reverse();
    out
}

/// The JSON patch of the status subresource removing `stale` entries of `list`, each
/// removal guarded by a test of its node: if the list changed since it was read, the
/// patch fails whole rather than remove another node's entry.
pub fn remove_entries_patch(list: &str, stale: &[(usize, String)]) -> serde_json::Value {
    serde_json::Value::Array(
        stale
            .iter()
            .flat_map(|(i, node)| {
                let path = format!("/status/{list}/{i}");
                [
                    serde_json::json!({"op": "test", "path": format!("{path}/node"), "value": node}),
                    serde_json::json!({"op": "remove", "path": path}),
                ]
            })
            .collect(),
    )
}

/// For each pool, the other pools whose addresses overlap its own.
pub fn overlaps(pools: &[AddressPool]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, a) in pools.iter().enumerate() {
        for b in &pools[i + 1..] {
            let hit = a.ranges().iter().any(|x| {
                b.ranges().iter().any(|y| {
                    x.first.is_ipv4() == y.first.is_ipv4() && x.first <= y.last && y.first <= x.last
                })
            });
            if hit {
                let (na, nb) = (name(a), name(b));
                out.entry(na.clone()).or_default().push(nb.clone());
                out.entry(nb).or_default().push(na);
            }
        }
    }
    out
}

fn name(p: &AddressPool) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

/// The status of `pool`: its counts, whether every entry holds addresses, and
/// which pools it overlaps.
pub fn address_pool_status(
    pool: &AddressPool,
    usage: (u64, u64),
    problems: &[String],
    overlapping: &[String],
    now: &Time,
) -> AddressPoolStatus {
    let existing: &[Condition] = pool.status.as_ref().map_or(&[], |s| &s.conditions);
    let generation = pool.metadata.generation;
    let valid = if problems.is_empty() {
        condition(
            existing,
            VALID,
            true,
            "Valid",
            "every entry of spec.addresses holds addresses".into(),
            generation,
            now,
        )
    } else {
        condition(
            existing,
            VALID,
            false,
            "EmptyRange",
            problems.join("; "),
            generation,
            now,
        )
    };
    let overlap = if overlapping.is_empty() {
        condition(
            existing,
            OVERLAPPING,
            false,
            "NoOverlap",
            "no other AddressPool holds these addresses".into(),
            generation,
            now,
        )
    } else {
        condition(
            existing,
            OVERLAPPING,
            true,
            "Overlaps",
            format!(
                "spec.addresses overlap AddressPool(s) {}: an address there is counted in each",
                overlapping.join(", ")
            ),
            generation,
            now,
        )
    };
    let (total, allocated) = usage;
    AddressPoolStatus {
        total,
        allocated,
        available: total.saturating_sub(allocated),
        conditions: vec![valid, overlap],
    }
}

/// The server-side apply body of a pool's status.
pub fn address_pool_apply_body(name: &str, status: &AddressPoolStatus) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kubelvs.io/v1alpha1",
        "kind": "AddressPool",
        "metadata": {"name": name},
        "status": status,
    })
}

#[cfg(test)]
mod stale_tests {
    use super::*;

    #[test]
    fn entries_of_nodes_that_are_gone_are_found_and_removed_last_first() {
        let vs: VirtualService = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubelvs.io/v1alpha1",
            "kind": "VirtualService",
            "metadata": {"name": "web", "namespace": "lab"},
            "spec": {"ports": [{"port": 80}], "forwarding": "nat", "realServerSelector": {}},
            "status": {"directors": [
                {"node": "gone-a", "programmed": true},
                {"node": "here", "programmed": true},
                {"node": "gone-b", "programmed": false},
            ]},
        }))
        .unwrap();
        let nodes = std::collections::BTreeSet::from(["here".to_string()]);
        let stale = stale_directors(&vs, &nodes);
        assert_eq!(
            stale,
            vec![(2, "gone-b".to_string()), (0, "gone-a".to_string())]
        );
        let patch = remove_entries_patch("directors", &stale);
        assert_eq!(
            patch,
            serde_json::json!([
                {"op": "test", "path": "/status/directors/2/node", "value": "gone-b"},
                {"op": "remove", "path": "/status/directors/2"},
                {"op": "test", "path": "/status/directors/0/node", "value": "gone-a"},
                {"op": "remove", "path": "/status/directors/0"},
            ])
        );
        let all = ["gone-a", "here", "gone-b"].map(String::from).into();
        assert!(stale_directors(&vs, &all).is_empty());
    }
}
