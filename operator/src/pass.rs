//! Pure: one pass of the VirtualService and AddressPool controller over everything
//! the watches hold. Allocation is a decision over all VirtualServices at once
//! (oldest first, lowest free address, sharing groups), so the controller is level
//! triggered over the whole set rather than one object at a time: each pass
//! computes every status, and only what differs from what the API server shows is
//! written.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use kubelvs_crds::selector::RealServerIndex;
use kubelvs_crds::{RealServerRecord, VirtualService};

use crate::allocate::{allocate_with, status_vip, AddressSpace, VsKey};
use crate::rollup::{
    address_pool_apply_body, address_pool_status, announced_by, overlaps, validation,
    virtual_service_status, OperatorStatus, ACCEPTED, VIP_ALLOCATED,
};

/// The finalizer that holds a deleted VirtualService until its VIP is released.
pub const FINALIZER: &str = "kubelvs.io/vip-release";

/// VIPs this operator decided and wrote, by VirtualService (with its uid): a watch
/// may not show a write yet, and the next pass must not hand the address out again.
pub type Ledger = BTreeMap<VsKey, (String, IpAddr)>;

/// Validation results by (uid, generation): a spec is validated once, not every pass.
pub type Validations = std::collections::HashMap<(String, i64), Result<(), String>>;

/// An Event to publish on an object.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// The object the Event is about (apiVersion, kind, namespace, name, uid).
    pub object: ObjectReference,
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

impl Notice {
    /// An Event on `object`.
    pub fn on<K: Resource<DynamicType = ()>>(
        object: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) -> Self {
        Self {
            object: object.object_ref(&()),
            warning,
            reason: reason.into(),
            note,
        }
    }
}

/// What one pass writes.
#[derive(Debug, Clone, Default)]
pub struct Writes {
    /// VirtualService status to write (as [`OperatorStatus::apply_body`]).
    pub statuses: Vec<(VsKey, OperatorStatus)>,
    /// Server-side apply bodies of AddressPool status.
    pub pool_statuses: Vec<(String, serde_json::Value)>,
    pub add_finalizer: Vec<VsKey>,
    pub remove_finalizer: Vec<VsKey>,
    pub notices: Vec<Notice>,
    /// Per pool: (total, allocated).
    pub pool_usage: BTreeMap<String, (u64, u64)>,
    /// The VIP of every VirtualService that has one, for the ledger.
    pub vips: Ledger,
}

fn key(vs: &VirtualService) -> VsKey {
    (
        vs.metadata.namespace.clone().unwrap_or_default(),
        vs.metadata.name.clone().unwrap_or_default(),
    )
}

/// Whether a Service owns `vs`: then the garbage collector deletes it with the
/// Service, and a finalizer would hold it while the operator is down.
fn owned_by_service(vs: &VirtualService) -> bool {
    vs.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "Service" && o.controller == Some(true))
}

fn has_finalizer(vs: &VirtualService) -> bool {
    vs.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == FINALIZER)
}

/// One pass. `now` stamps changed conditions; it must be whole seconds, as the API
/// server stores it, or every pass would see a difference. `expired`: the directors
/// whose Lease expired.
pub fn plan(
    virtual_services: &[&VirtualService],
    real_servers: &[&RealServerRecord],
    space: AddressSpace<'_>,
    ledger: &Ledger,
    validations: &mut Validations,
    now: &Time,
    expired: &std::collections::BTreeSet<String>,
) -> Writes {
    let mut out = Writes::default();
    let (deleting, live): (Vec<&VirtualService>, Vec<&VirtualService>) = virtual_services
        .iter()
        .copied()
        .partition(|v| v.metadata.deletion_timestamp.is_some());
    // What the allocator sees: the store, with the VIPs it may not show yet.
    let allocated = |v: &VirtualService| match ledger.get(&key(v)) {
        Some((uid, ip)) if v.metadata.uid.as_ref() == Some(uid) => Some(*ip),
        _ => status_vip(v),
    };
    let allocation = allocate_with(&live, allocated, space);
    let pools = space.pools;
    let index = RealServerIndex::new(real_servers.iter().copied());

    for vs in &live {
        let k = key(vs);
        let result = allocation.vips.get(&k);
        let selected = index
            .select(&k.0, &vs.spec.real_server_selector)
            .unwrap_or_default();
        let valid = match (&vs.metadata.uid, vs.metadata.generation) {
            (Some(uid), Some(generation)) => validations
                .entry((uid.clone(), generation))
                .or_insert_with(|| validation(vs))
                .clone(),
            _ => validation(vs),
        };
        let mut status = virtual_service_status(vs, &valid, result, &selected, now);
        status.announced_by = announced_by(vs, expired);
        let before = |t: &str| {
            vs.status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == t))
                .map(|c| (c.status.clone(), c.message.clone()))
        };
        for c in &status.conditions {
            let announce = match c.type_.as_str() {
                VIP_ALLOCATED => true,
                ACCEPTED => c.status == "False",
                _ => false,
            };
            if announce && before(&c.type_) != Some((c.status.clone(), c.message.clone())) {
                let reason = if c.type_ == VIP_ALLOCATED && c.status == "True" {
                    "VipAllocated".to_owned()
                } else {
                    c.reason.clone()
                };
                out.notices.push(Notice::on(
                    *vs,
                    c.status == "False",
                    &reason,
                    c.message.clone(),
                ));
            }
        }
        if !status.is_shown_by(vs) {
            out.statuses.push((k.clone(), status));
        }
        if let (Some(Ok(ip)), Some(uid)) = (result, vs.metadata.uid.as_ref()) {
            out.vips.insert(k.clone(), (uid.clone(), *ip));
        }
        if !owned_by_service(vs) && !has_finalizer(vs) {
            out.add_finalizer.push(k);
        }
    }
    for vs in deleting.into_iter().filter(|v| has_finalizer(v)) {
        let vip = vs.status.as_ref().and_then(|s| s.vip.clone());
        out.notices.push(Notice::on(
            vs,
            false,
            "VipReleased",
            match vip {
                Some(v) => format!("{v} released"),
                None => "no VIP held".into(),
            },
        ));
        out.remove_finalizer.push(key(vs));
    }

    let live_uids: std::collections::HashSet<&str> = live
        .iter()
        .filter_map(|v| v.metadata.uid.as_deref())
        .collect();
    validations.retain(|(uid, _), _| live_uids.contains(uid.as_str()));

    let overlapping = overlaps(pools);
    for pool in pools {
        let name = pool.metadata.name.clone().unwrap_or_default();
        let usage = allocation.pool_usage.get(&name).copied().unwrap_or((0, 0));
        let status = address_pool_status(
            pool,
            usage,
            allocation
                .pool_problems
                .get(&name)
                .map_or(&[][..], Vec::as_slice),
            overlapping.get(&name).map_or(&[][..], Vec::as_slice),
            now,
        );
        if pool.status.as_ref() != Some(&status) {
            out.pool_statuses
                .push((name.clone(), address_pool_apply_body(&name, &status)));
        }
        out.pool_usage.insert(name, usage);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubelvs_crds::AddressPool;

    /// One pass over `objects` and `pools`, no RealServers, fresh validations.
    fn pass(
        objects: &[VirtualService],
        pools: &[AddressPool],
        ledger: &Ledger,
        now: &Time,
    ) -> Writes {
        let refs: Vec<&VirtualService> = objects.iter().collect();
        plan(
            &refs,
            &[],
            AddressSpace {
                pools,
                namespaces: &BTreeMap::new(),
                reserved: &Default::default(),
            },
            ledger,
            &mut Validations::new(),
            now,
            &Default::default(),
        )
    }

    fn t(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + s).unwrap())
    }

    fn vs(name: &str, uid: &str, created: i64) -> VirtualService {
        let mut v: VirtualService = serde_yaml::from_str(&format!(
            "apiVersion: kubelvs.io/v1alpha1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: s, uid: {uid}, generation: 1}}\nspec: {{ports: [{{port: 80}}], forwarding: nat, realServerSelector: {{}}}}\n"
        ))
        .unwrap();
        v.metadata.creation_timestamp = Some(t(created));
        v
    }

    fn pool() -> AddressPool {
        AddressPool::new(
            "p",
            kubelvs_crds::AddressPoolSpec {
                addresses: vec!["203.0.113.10-203.0.113.20".into()],
                auto_assign: true,
                namespace_selector: None,
                announcement: None,
            },
        )
    }

    /// Applies a pass's status bodies to the objects, as the API server would.
    fn apply(objects: &mut [VirtualService], w: &Writes) {
        for (k, written) in &w.statuses {
            let body = serde_json::to_value(written.apply_body(&k.0, &k.1)).unwrap();
            let v = objects.iter_mut().find(|v| key(v) == *k).unwrap();
            let mut status = v.status.clone().unwrap_or_default();
            let ours: kubelvs_crds::VirtualServiceStatus =
                serde_json::from_value(body["status"].clone()).unwrap();
            status.vip = ours.vip;
            status.observed_generation = ours.observed_generation;
            status.real_servers = ours.real_servers;
            status.conditions = ours.conditions;
            v.status = Some(status);
        }
    }

    #[test]
    fn a_pass_over_its_own_writes_writes_nothing() {
        let mut objects = vec![vs("a", "u1", 0), vs("b", "u2", 1)];
        let pools = [pool()];
        let first = pass(&objects, &pools, &Ledger::new(), &t(5));
        assert_eq!(first.statuses.len(), 2);
        assert_eq!(first.add_finalizer.len(), 2);
        assert_eq!(first.pool_statuses.len(), 1);
        let reasons: Vec<&str> = first.notices.iter().map(|n| n.reason.as_str()).collect();
        assert_eq!(reasons, ["VipAllocated", "VipAllocated"]);
        apply(&mut objects, &first);
        let second = pass(&objects, &pools, &first.vips, &t(9));
        assert!(second.statuses.is_empty(), "{:?}", second.statuses);
        assert!(second.notices.is_empty());
    }

    #[test]
    fn the_ledger_keeps_a_vip_the_watch_does_not_show_yet() {
        let pools = [pool()];
        let objects = [vs("a", "u1", 5)];
        let first = pass(&objects, &pools, &Ledger::new(), &t(5));
        assert_eq!(
            first.vips[&("s".into(), "a".into())].1.to_string(),
            "203.0.113.10"
        );
        // An older service appears before the watch shows a's VIP: a keeps its address.
        let objects = [vs("a", "u1", 5), vs("older", "u0", 0)];
        let second = pass(&objects, &pools, &first.vips, &t(6));
        assert_eq!(
            second.vips[&("s".into(), "a".into())].1.to_string(),
            "203.0.113.10"
        );
        assert_eq!(
            second.vips[&("s".into(), "older".into())].1.to_string(),
            "203.0.113.11"
        );
        // A new object of the same name (another uid) does not inherit it.
        let objects = [vs("a", "u9", 7), vs("older", "u0", 0), vs("b", "u3", 6)];
        let third = pass(&objects, &pools, &second.vips, &t(8));
        let vip = |n: &str| third.vips[&("s".to_string(), n.to_string())].1.to_string();
        assert_eq!(vip("older"), "203.0.113.11");
        assert_eq!(vip("b"), "203.0.113.10", "older than the new a: first pick");
        assert_eq!(vip("a"), "203.0.113.12");
    }

    #[test]
    fn deletion_releases_and_service_owned_objects_carry_no_finalizer() {
        let pools = [pool()];
        let mut gone = vs("gone", "u1", 0);
        gone.metadata.deletion_timestamp = Some(t(3));
        gone.metadata.finalizers = Some(vec![FINALIZER.into()]);
        gone.status = Some(kubelvs_crds::VirtualServiceStatus {
            vip: Some("203.0.113.10".into()),
            ..Default::default()
        });
        let mut owned = vs("owned", "u2", 1);
        owned.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: "web".into(),
                uid: "s1".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        ]);
        let w = pass(&[gone, owned], &pools, &Ledger::new(), &t(5));
        assert_eq!(w.remove_finalizer, [("s".to_string(), "gone".to_string())]);
        assert!(w.add_finalizer.is_empty());
        assert_eq!(
            w.vips[&("s".into(), "owned".into())].1.to_string(),
            "203.0.113.10",
            "the deleted service's VIP is free again"
        );
        assert!(w
            .notices
            .iter()
            .any(|n| n.reason == "VipReleased" && n.note == "203.0.113.10 released"));
    }
}
