//! Invariants of the planner that hold for any objects.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kubelvs_crds::*;
use kubelvs_model::{Forwarding, ProblemReason};
use kubelvs_planner::{plan_node, NodeIdentity, Objects};
use proptest::prelude::*;

const VIPS: [&str; 3] = ["203.0.113.1", "203.0.113.2", "2001:db8::1"];
const ADDRS: [&str; 4] = ["198.51.100.1", "198.51.100.2", "2001:db8:1::1", "192.0.2.1"];

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

prop_compose! {
    fn arb_vs()(
        ns in 0..2usize, id in 0..1000u32, vip in 0..VIPS.len(),
        ports in prop::collection::vec((prop::sample::select(vec![80u16, 443, 53]), any::<bool>(), prop::option::of(8000u16..8002)), 1..3),
        method in 0..3usize, app in 0..2usize, created in 0..4i64, director_only in any::<bool>(),
    ) -> VirtualService {
        let forwarding = [ForwardingMethod::Nat, ForwardingMethod::Dr, ForwardingMethod::Tun][method];
        let mut seen = HashSet::new();
        let ports = ports.into_iter().filter(|(p, udp, _)| seen.insert((*p, *udp))).map(|(port, udp, tp)| ServicePort {
            name: None,
            port,
            protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
            target_port: if forwarding == ForwardingMethod::Nat { tp } else { None },
        }).collect();
        let mut v = VirtualService::new(&format!("vs-{id}"), VirtualServiceSpec {
            vip: Some(VIPS[vip].into()),
            address_pool: None,
            ports,
            scheduler: Scheduler::Wrr,
            scheduler_flags: vec![],
            forwarding,
            tunnel: (forwarding == ForwardingMethod::Tun).then_some(TunnelSpec { tunnel_type: TunnelType::Ipip, port: None }),
            source_address_pool: None,
            persistence: None,
            real_server_selector: LabelSelector { match_labels: Some(labels(&[("app", ["x", "y"][app])])), match_expressions: None },
            health_check: None,
            directors: director_only.then(|| DirectorsSpec { node_selector: LabelSelector { match_labels: Some(labels(&[("director", "")])), match_expressions: None } }),
            dataplane: Dataplane::Ipvs,
        });
        v.metadata.namespace = Some(["a", "b"][ns].into());
        v.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + created).unwrap()));
        v
    }
}

prop_compose! {
    fn arb_rs()(
        ns in 0..2usize, id in 0..1000u32, addr in 0..ADDRS.len(), port in prop::option::of(prop::sample::select(vec![80u16, 8080])),
        weight in 0..70000u32, drain in any::<bool>(), app in 0..2usize, node in prop::option::of(0..2usize),
    ) -> RealServer {
        let mut r = RealServer::new(&format!("rs-{id}"), RealServerSpec {
            address: ADDRS[addr].into(), port, weight, node_name: node.map(|n| ["n1", "n2"][n].to_string()), drain,
        });
        r.metadata.namespace = Some(["a", "b"][ns].into());
        r.metadata.labels = Some(labels(&[("app", ["x", "y"][app])]));
        r
    }
}

fn arb_node() -> impl Strategy<Value = NodeIdentity> {
    (any::<bool>(), 0..2usize).prop_map(|(director, n)| NodeIdentity {
        name: ["n1", "n2"][n].into(),
        labels: if director {
            labels(&[("director", "")])
        } else {
            BTreeMap::new()
        },
        addresses: vec!["192.0.2.1".parse().unwrap()],
        ..Default::default()
    })
}

fn unique_names<T: kube::ResourceExt>(items: Vec<T>) -> Vec<T> {
    let mut seen = HashSet::new();
    items
        .into_iter()
        .filter(|o| seen.insert((o.namespace(), o.name_any())))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn plan_is_independent_of_input_order(
        node in arb_node(),
        vss in prop::collection::vec(arb_vs(), 0..6),
        rss in prop::collection::vec(arb_rs(), 0..8),
        rot in 0..8usize,
    ) {
        let (vss, rss) = (unique_names(vss), unique_names(rss));
        let forward = plan_node(&node, Objects::of(&vss, &records(&rss), []));
        let (mut rv, mut rr) = (vss.clone(), rss.clone());
        // Rotations and reversal: cheap permutations that move every element.
        let (nv, nr) = (rv.len().max(1), rr.len().max(1));
        rv.rotate_left(rot % nv);
        rr.reverse();
        rr.rotate_left(rot % nr);
        let backward = plan_node(&node, Objects::of(&rv, &records(&rr), []));
        prop_assert_eq!(forward, backward);
    }

    #[test]
    fn plan_invariants(
        node in arb_node(),
        vss in prop::collection::vec(arb_vs(), 0..6),
        rss in prop::collection::vec(arb_rs(), 0..8),
    ) {
        let (vss, rss) = (unique_names(vss), unique_names(rss));
        let plan = plan_node(&node, Objects::of(&vss, &records(&rss), []));

        // One service per VIP:port/protocol.
        let keys: HashSet<_> = plan.services.iter().map(|s| s.key).collect();
        prop_assert_eq!(keys.len(), plan.services.len());

        for s in &plan.services {
            // Its owner is the oldest claimant.
            let owner = vss.iter().find(|v| v.metadata.name.as_deref() == Some(&*s.source.name) && v.metadata.namespace.as_deref() == Some(&*s.source.namespace)).unwrap();
            for other in &vss {
                let claims = other.spec.vip.as_deref().and_then(|v| v.parse::<IpAddr>().ok()) == Some(s.key.vip)
                    && other.spec.ports.iter().any(|p| p.port == s.key.port && (p.protocol == Protocol::Udp) == (s.key.protocol == kubelvs_model::Protocol::Udp));
                if claims {
                    let key = |v: &VirtualService| (v.metadata.creation_timestamp.clone().map(|t| t.0), v.metadata.namespace.clone(), v.metadata.name.clone());
                    prop_assert!(key(owner) <= key(other), "{} owns {} but {:?} is older", s.source, s.key, other.metadata.name);
                }
            }
            let mut addrs = HashSet::new();
            for r in &s.real_servers {
                prop_assert!(addrs.insert((r.address, r.port)), "duplicate real server");
                let obj = rss.iter().find(|o| o.metadata.name.as_deref() == Some(&*r.source.name) && o.metadata.namespace.as_deref() == Some(&*r.source.namespace)).unwrap();
                prop_assert!(r.weight <= 65535);
                prop_assert!(!obj.spec.drain, "a drained real server is in the directors' plan");
                prop_assert_eq!(r.weight, obj.spec.weight.min(65535));
                if s.forwarding.real_server_carries_vip() { prop_assert_eq!(r.port, s.key.port); }
                if !matches!(s.forwarding, Forwarding::Tun(_)) { prop_assert_eq!(r.address.is_ipv4(), s.key.vip.is_ipv4()); }
                prop_assert_eq!(&r.source.namespace, &s.source.namespace);
            }
        }

        // Every port of every VirtualService this node directs is planned, or a conflict says why not.
        for v in &vss {
            let directs = v.spec.directors.is_none() || node.labels.contains_key("director");
            if !directs { continue; }
            let name = v.metadata.name.clone().unwrap();
            for (i, p) in v.spec.ports.iter().enumerate() {
                let planned = plan.services.iter().any(|s| *s.source.name == *name && *s.source.namespace == *v.metadata.namespace.clone().unwrap() && s.key.port == p.port && (s.key.protocol == kubelvs_model::Protocol::Udp) == (p.protocol == Protocol::Udp));
                let conflict = plan.problems.iter().any(|pr| pr.reason == ProblemReason::Conflict && *pr.object.name == *name && Some(&*pr.object.namespace) == v.metadata.namespace.as_deref() && pr.field == format!("spec.ports[{i}]"));
                prop_assert!(planned != conflict, "{name} port {i}: planned={planned} conflict={conflict}");
            }
        }
    }
}

/// A version for each object: a hash of all it holds.
/// RealServers as the planner takes them.
fn records(rss: &[RealServer]) -> Vec<kubelvs_crds::RealServerRecord> {
    rss.iter().cloned().map(Into::into).collect()
}

fn versions_of<T: k8s_openapi::serde::Serialize>(objects: &[T]) -> Vec<u64> {
    use std::hash::{Hash, Hasher};
    objects
        .iter()
        .map(|o| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            serde_json::to_string(o).unwrap().hash(&mut h);
            h.finish()
        })
        .collect()
}

/// One edit of the objects in place: which list, which position, its replacement.
#[derive(Debug, Clone)]
enum Edit {
    VirtualService(usize, Box<VirtualService>),
    RealServer(usize, Box<RealServer>),
    /// Another node identity (labels), as when the node is relabelled.
    Node(NodeIdentity),
}

fn arb_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0..8usize, arb_vs()).prop_map(|(at, vs)| Edit::VirtualService(at, Box::new(vs))),
        (0..10usize, arb_rs()).prop_map(|(at, rs)| Edit::RealServer(at, Box::new(rs))),
        (0..10usize, arb_rs()).prop_map(|(at, rs)| Edit::RealServer(at, Box::new(rs))),
        arb_node().prop_map(Edit::Node),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// The planner that re-plans only what changed gives, after every edit, the plan
    /// made from scratch.
    #[test]
    fn an_incremental_plan_is_the_full_plan(
        node in arb_node(),
        vss in prop::collection::vec(arb_vs(), 0..8),
        rss in prop::collection::vec(arb_rs(), 0..10),
        edits in prop::collection::vec(arb_edit(), 1..12),
    ) {
        let (mut vss, mut rss, mut node) = (unique_names(vss), unique_names(rss), node);
        let mut planner = kubelvs_planner::Planner::default();
        for (step, edit) in std::iter::once(None).chain(edits.into_iter().map(Some)).enumerate() {
            match edit {
                Some(Edit::VirtualService(at, vs)) if !vss.is_empty() => {
                    let at = at % vss.len();
                    vss[at] = *vs;
                }
                Some(Edit::RealServer(at, rs)) if !rss.is_empty() => {
                    let at = at % rss.len();
                    rss[at] = *rs;
                }
                Some(Edit::Node(n)) => node = n,
                _ => {}
            }
            let versions = kubelvs_planner::Versions {
                virtual_services: versions_of(&vss),
                real_servers: versions_of(&rss),
                address_pools: vec![],
            };
            let full = plan_node(&node, Objects::of(&vss, &records(&rss), []));
            let incremental =
                planner.plan(&node, Objects::of(&vss, &records(&rss), []).with_versions(&versions));
            prop_assert_eq!(incremental, &full, "step {}", step);
        }
    }
}
