//! Objects built in code for the planner's tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kubelvs_crds::*;
use kubelvs_model::NodePlan;
use kubelvs_planner::{plan_node, NodeIdentity, Objects, VipSource};

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(pairs)),
        match_expressions: None,
    }
}

/// A VirtualService `ns/name` on `vip` (None: pending) port 80/TCP, nat, selecting app=`name`,
/// created at `created` seconds.
pub fn vs(ns: &str, name: &str, vip: Option<&str>, created: i64) -> VirtualService {
    let mut v = VirtualService::new(
        name,
        VirtualServiceSpec {
            vip: vip.map(String::from),
            address_pool: None,
            ports: vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Protocol::Tcp,
                target_port: None,
            }],
            scheduler: Scheduler::Wrr,
            scheduler_flags: vec![],
            forwarding: ForwardingMethod::Nat,
            tunnel: None,
            source_address_pool: None,
            persistence: None,
            real_server_selector: selector(&[("app", name)]),
            health_check: None,
            directors: None,
            dataplane: Dataplane::Ipvs,
        },
    );
    v.metadata.namespace = Some(ns.into());
    v.metadata.creation_timestamp = Some(Time(
        k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + created).unwrap(),
    ));
    v
}

pub fn rs(ns: &str, name: &str, app: &str, address: &str) -> RealServer {
    let mut r = RealServer::new(
        name,
        RealServerSpec {
            address: address.into(),
            port: None,
            weight: 1,
            node_name: None,
            drain: false,
        },
    );
    r.metadata.namespace = Some(ns.into());
    r.metadata.labels = Some(labels(&[("app", app)]));
    r
}

pub fn node(name: &str) -> NodeIdentity {
    NodeIdentity {
        name: name.into(),
        labels: labels(&[("kubernetes.io/hostname", name)]),
        addresses: vec!["192.0.2.1".parse().unwrap()],
        ..Default::default()
    }
}

pub fn plan(
    n: &NodeIdentity,
    vss: &[VirtualService],
    rss: &[RealServer],
    pools: &[AddressPool],
) -> NodePlan {
    plan_node(n, Objects::of(vss, &records(rss), pools))
}

/// RealServers as the planner takes them.
pub fn records(rss: &[RealServer]) -> Vec<kubelvs_crds::RealServerRecord> {
    rss.iter().cloned().map(Into::into).collect()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `v` as the operator left it: `status.vip` (its grant) for generation `seen` of a
/// spec now at generation `generation`.
pub fn granted(
    mut v: VirtualService,
    vip: Option<&str>,
    generation: i64,
    seen: i64,
) -> VirtualService {
    v.metadata.generation = Some(generation);
    v.status = Some(VirtualServiceStatus {
        vip: vip.map(String::from),
        observed_generation: Some(seen),
        ..Default::default()
    });
    v
}

pub fn in_cluster(name: &str) -> NodeIdentity {
    NodeIdentity {
        vip_source: VipSource::Granted,
        ..node(name)
    }
}

/// An AddressPool of `addresses`, not auto-assigned, announced in the default mode.
pub fn pool(name: &str, addresses: &[&str]) -> AddressPool {
    AddressPool::new(
        name,
        AddressPoolSpec {
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            auto_assign: false,
            namespace_selector: None,
            announcement: None,
        },
    )
}
