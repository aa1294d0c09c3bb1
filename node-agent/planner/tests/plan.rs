//! The planner's rules, one scenario each, over plain objects built in code.

mod common;

use std::collections::BTreeMap;

use common::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kubelvs_crds::*;
use kubelvs_model::{Forwarding, ProblemReason, Tunnel, TunnelKind};
use kubelvs_planner::NodeIdentity;

#[test]
fn nat_service_gets_its_selected_real_servers_sorted() {
    let web = vs("shop", "web", Some("203.0.113.10"), 0);
    let p = plan(
        &node("n1"),
        &[web],
        &[
            rs("shop", "b", "web", "198.51.100.12"),
            rs("shop", "a", "web", "198.51.100.11"),
            rs("shop", "other-app", "db", "198.51.100.13"),
            rs("other-ns", "c", "web", "198.51.100.14"),
        ],
        &[],
    );
    assert_eq!(p.problems, vec![]);
    assert_eq!(p.services.len(), 1);
    let s = &p.services[0];
    assert_eq!(s.key.to_string(), "203.0.113.10:80/TCP");
    assert_eq!(s.forwarding, Forwarding::Nat);
    let addrs: Vec<_> = s
        .real_servers
        .iter()
        .map(|r| (r.address, r.port, r.weight))
        .collect();
    assert_eq!(
        addrs,
        vec![(ip("198.51.100.11"), 80, 1), (ip("198.51.100.12"), 80, 1)]
    );
    assert!(
        p.real_server_vips.is_empty(),
        "nat needs no VIP on real servers"
    );
}

#[test]
fn drain_leaves_the_plan_weight_zero_is_quiescent_and_weights_carry_over() {
    let web = vs("shop", "web", Some("203.0.113.10"), 0);
    let mut drained = rs("shop", "a", "web", "198.51.100.11");
    drained.spec.weight = 50;
    drained.spec.drain = true;
    let mut zero = rs("shop", "b", "web", "198.51.100.12");
    zero.spec.weight = 0;
    let mut heavy = rs("shop", "c", "web", "198.51.100.13");
    heavy.spec.weight = 300;
    let p = plan(&node("n1"), &[web], &[drained, zero, heavy], &[]);
    let weights: Vec<_> = p.services[0]
        .real_servers
        .iter()
        .map(|r| (&*r.source.name, r.weight))
        .collect();
    // The drained one is out (the dataplanes drain it); weight 0 stays, quiescent.
    assert_eq!(weights, vec![("b", 0), ("c", 300)]);
}

#[test]
fn port_mapping_target_port_then_real_server_port_then_virtual_port() {
    let mut web = vs("shop", "web", Some("203.0.113.10"), 0);
    web.spec.ports.push(ServicePort {
        name: Some("https".into()),
        port: 443,
        protocol: Protocol::Tcp,
        target_port: Some(8443),
    });
    let mut with_port = rs("shop", "a", "web", "198.51.100.11");
    with_port.spec.port = Some(8080);
    let plain = rs("shop", "b", "web", "198.51.100.12");
    let p = plan(&node("n1"), &[web], &[with_port, plain], &[]);
    let ports =
        |i: usize| -> Vec<u16> { p.services[i].real_servers.iter().map(|r| r.port).collect() };
    assert_eq!(p.services[0].key.port, 80);
    assert_eq!(
        ports(0),
        vec![8080, 80],
        "RealServer port, else the virtual port"
    );
    assert_eq!(p.services[1].key.port, 443);
    assert_eq!(ports(1), vec![8443, 8443], "targetPort wins");
}

#[test]
fn pending_vip_is_reported_and_status_vip_is_used() {
    let pending = vs("shop", "pending", None, 0);
    let mut allocated = vs("shop", "allocated", None, 1);
    allocated.status = Some(VirtualServiceStatus {
        vip: Some("203.0.113.99".into()),
        ..Default::default()
    });
    let p = plan(&node("n1"), &[pending, allocated], &[], &[]);
    assert_eq!(p.services.len(), 1);
    assert_eq!(p.services[0].key.vip, ip("203.0.113.99"));
    assert_eq!(p.problems.len(), 1);
    assert_eq!(p.problems[0].reason, ProblemReason::VipPending);
    assert_eq!(&*p.problems[0].object.name, "pending");
    assert_eq!(p.problems[0].field, "spec.vip");
}

#[test]
fn older_virtual_service_wins_a_conflict_whatever_the_input_order() {
    let old = vs("a", "old", Some("203.0.113.10"), 0);
    let young = vs("b", "young", Some("203.0.113.10"), 100);
    for order in [[old.clone(), young.clone()], [young.clone(), old.clone()]] {
        let p = plan(
            &node("n1"),
            &order,
            &[rs("a", "r", "old", "198.51.100.1")],
            &[],
        );
        assert_eq!(p.services.len(), 1);
        assert_eq!(&*p.services[0].source.name, "old");
        assert_eq!(p.problems.len(), 1);
        let c = &p.problems[0];
        assert_eq!(
            (c.reason, &*c.object.name, c.field.as_str()),
            (ProblemReason::Conflict, "young", "spec.ports[0]")
        );
        assert!(c.message.contains("VirtualService a/old"), "{}", c.message);
    }
}

#[test]
fn conflict_is_per_port_and_protocol() {
    let old = vs("a", "old", Some("203.0.113.10"), 0);
    let mut other_proto = vs("b", "udp", Some("203.0.113.10"), 5);
    other_proto.spec.ports[0].protocol = Protocol::Udp;
    let mut two_ports = vs("c", "two", Some("203.0.113.10"), 10);
    two_ports.spec.ports.push(ServicePort {
        name: Some("https".into()),
        port: 443,
        protocol: Protocol::Tcp,
        target_port: None,
    });
    let p = plan(&node("n1"), &[two_ports, other_proto, old], &[], &[]);
    let keys: Vec<_> = p
        .services
        .iter()
        .map(|s| (s.key.to_string(), s.source.name.to_string()))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("203.0.113.10:80/TCP".to_string(), "old".to_string()),
            ("203.0.113.10:80/UDP".to_string(), "udp".to_string()),
            ("203.0.113.10:443/TCP".to_string(), "two".to_string()),
        ]
    );
    assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
    assert_eq!(&*p.problems[0].object.name, "two");
}

#[test]
fn equal_age_conflict_is_decided_by_namespace_and_name() {
    let a = vs("ns", "alpha", Some("203.0.113.10"), 0);
    let b = vs("ns", "beta", Some("203.0.113.10"), 0);
    let p = plan(&node("n1"), &[b, a], &[], &[]);
    assert_eq!(&*p.services[0].source.name, "alpha");
    assert_eq!(&*p.problems[0].object.name, "beta");
}

#[test]
fn director_selection_follows_the_node_selector() {
    let mut web = vs("shop", "web", Some("203.0.113.10"), 0);
    web.spec.directors = Some(DirectorsSpec {
        node_selector: selector(&[("node-role.kubelvs.io/director", "")]),
    });
    let mut director = node("d1");
    director
        .labels
        .insert("node-role.kubelvs.io/director".into(), String::new());
    assert_eq!(
        plan(&director, std::slice::from_ref(&web), &[], &[])
            .services
            .len(),
        1
    );
    let p = plan(&node("worker"), &[web], &[], &[]);
    assert!(p.services.is_empty());
    assert!(p.problems.is_empty(), "not directing is not a problem");
}

#[test]
fn malformed_director_selector_is_reported_not_fatal() {
    let mut web = vs("shop", "web", Some("203.0.113.10"), 0);
    web.spec.directors = Some(DirectorsSpec {
        node_selector: LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                    key: "x".into(),
                    operator: "Equals".into(),
                    values: None,
                },
            ]),
        },
    });
    let ok = vs("shop", "ok", Some("203.0.113.11"), 0);
    let p = plan(&node("n1"), &[web, ok], &[], &[]);
    assert_eq!(p.services.len(), 1, "the good service is still planned");
    assert_eq!(
        p.problems[0].field,
        "spec.directors.nodeSelector.matchExpressions[0]"
    );
    assert_eq!(p.problems[0].reason, ProblemReason::Invalid);
}

fn directed_by(v: &mut VirtualService, label: &str) {
    v.spec.directors = Some(DirectorsSpec {
        node_selector: selector(&[(label, "")]),
    });
}

#[test]
fn dr_real_server_on_this_node_carries_the_vip() {
    let mut web = vs("shop", "web", Some("203.0.113.10"), 0);
    web.spec.forwarding = ForwardingMethod::Dr;
    directed_by(&mut web, "director");
    let mut here = rs("shop", "here", "web", "198.51.100.11");
    here.spec.node_name = Some("worker-1".into());
    let mut there = rs("shop", "there", "web", "198.51.100.12");
    there.spec.node_name = Some("worker-2".into());
    // No nodeName: on this node when its address is one of the node's.
    let host = rs("shop", "host", "web", "192.0.2.1");
    let p = plan(&node("worker-1"), &[web.clone()], &[here, there, host], &[]);
    assert_eq!(p.problems, vec![]);
    assert!(p.services.is_empty(), "worker-1 does not direct");
    assert_eq!(p.real_server_vips.len(), 1);
    let v = &p.real_server_vips[0];
    assert_eq!((v.vip, v.tunnel), (ip("203.0.113.10"), None));
    let names: Vec<_> = v.sources.iter().map(|s| &*s.name).collect();
    assert_eq!(names, vec!["here", "host"]);

    let p2 = plan(
        &node("worker-3"),
        &[web],
        &[rs("shop", "x", "web", "198.51.100.9")],
        &[],
    );
    assert!(p2.real_server_vips.is_empty());
}

#[test]
fn a_draining_dr_real_server_keeps_the_vip_while_directors_drain_it() {
    let mut web = vs("shop", "web", Some("203.0.113.10"), 0);
    web.spec.forwarding = ForwardingMethod::Dr;
    directed_by(&mut web, "director");
    let mut draining = rs("shop", "draining", "web", "198.51.100.11");
    draining.spec.node_name = Some("worker-1".into());
    draining.spec.drain = true;
    let mut other = rs("shop", "other", "web", "198.51.100.12");
    other.spec.node_name = Some("worker-2".into());
    let objects = [draining, other];
    // Its node still answers for the VIP: open connections finish there.
    let p = plan(&node("worker-1"), &[web.clone()], &objects, &[]);
    assert_eq!(p.real_server_vips.len(), 1);
    // Directors no longer plan it: their dataplane drains it.
    let mut director = node("n1");
    director.labels.insert("director".into(), String::new());
    let d = plan(&director, &[web], &objects, &[]);
    let names: Vec<_> = d.services[0]
        .real_servers
        .iter()
        .map(|r| &*r.source.name)
        .collect();
    assert_eq!(names, vec!["other"]);
}

#[test]
fn a_director_running_a_dr_real_server_of_the_same_vip_is_reported_not_arp_suppressed() {
    let mut web = vs("shop", "web", Some("203.0.113.10"), 0);
    web.spec.forwarding = ForwardingMethod::Dr;
    directed_by(&mut web, "director");
    let mut here = rs("shop", "here", "web", "198.51.100.11");
    here.spec.node_name = Some("d1".into());
    let mut d1 = node("d1");
    d1.labels.insert("director".into(), String::new());
    let p = plan(&d1, &[web], &[here], &[]);
    assert_eq!(p.services.len(), 1, "it still directs");
    assert!(
        p.real_server_vips.is_empty(),
        "no ARP suppression of a VIP it directs"
    );
    assert_eq!(p.problems.len(), 1);
    let c = &p.problems[0];
    assert_eq!(
        (c.reason, &*c.object.name, c.field.as_str()),
        (ProblemReason::Conflict, "here", "spec.nodeName")
    );
}

#[test]
fn a_real_server_rejected_for_every_port_does_not_get_the_vip() {
    let mut web = vs("shop", "web", Some("203.0.113.10"), 0);
    web.spec.forwarding = ForwardingMethod::Dr;
    directed_by(&mut web, "director");
    let mut mapped = rs("shop", "mapped", "web", "198.51.100.11");
    mapped.spec.port = Some(8080);
    mapped.spec.node_name = Some("worker-1".into());
    let p = plan(&node("worker-1"), &[web], &[mapped], &[]);
    assert!(p.real_server_vips.is_empty());
    assert_eq!(
        p.problems[0].field, "spec.port",
        "reported on non-directors too"
    );
}

#[test]
fn persistence_that_does_not_fit_an_allocated_vip_is_reported() {
    for (netmask, prefix, field) in [
        (Some("255.255.255.0"), None, "spec.persistence.netmask"),
        (None, Some(129u8), "spec.persistence.prefixLength"),
    ] {
        let mut web = vs("shop", "web", None, 0);
        web.status = Some(VirtualServiceStatus {
            vip: Some("2001:db8::10".into()),
            ..Default::default()
        });
        web.spec.persistence = Some(PersistenceSpec {
            timeout_seconds: 60,
            netmask: netmask.map(String::from),
            prefix_length: prefix,
        });
        let p = plan(&node("n1"), &[web], &[], &[]);
        assert!(p.services.is_empty());
        assert_eq!(
            (p.problems[0].field.as_str(), p.problems[0].reason),
            (field, ProblemReason::Invalid)
        );
    }
    let mut v4 = vs("shop", "v4", None, 0);
    v4.status = Some(VirtualServiceStatus {
        vip: Some("203.0.113.7".into()),
        ..Default::default()
    });
    v4.spec.persistence = Some(PersistenceSpec {
        timeout_seconds: 60,
        netmask: None,
        prefix_length: Some(64),
    });
    let p = plan(&node("n1"), &[v4], &[], &[]);
    assert_eq!(
        p.problems[0].field, "spec.persistence.prefixLength",
        "64 bits cannot apply to IPv4"
    );
}

#[test]
fn malformed_real_server_selector_is_reported_even_without_real_servers() {
    let mut web = vs("shop", "web", Some("203.0.113.10"), 0);
    web.spec.real_server_selector = LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                key: "app".into(),
                operator: "in".into(),
                values: Some(vec!["web".into()]),
            },
        ]),
    };
    let p = plan(&node("n1"), &[web], &[], &[]);
    assert_eq!(
        p.problems[0].field,
        "spec.realServerSelector.matchExpressions[0]"
    );
}

#[test]
fn xdp_tunnels_do_not_cross_address_families() {
    let mut web = vs("shop", "web", Some("203.0.113.10"), 0);
    web.spec.forwarding = ForwardingMethod::Tun;
    web.spec.tunnel = Some(TunnelSpec {
        tunnel_type: TunnelType::Ipip,
        port: None,
    });
    web.spec.dataplane = Dataplane::Xdp;
    web.spec.scheduler = Scheduler::Maglev;
    let p = plan(
        &node("n1"),
        &[web],
        &[rs("shop", "v6", "web", "2001:db8:1::1")],
        &[],
    );
    assert!(p.services[0].real_servers.is_empty());
    assert!(
        p.problems[0].message.contains("ipvs dataplane"),
        "{}",
        p.problems[0].message
    );
}

#[test]
fn tun_real_server_gets_vip_and_tunnel_even_when_not_a_director() {
    let mut web = vs("shop", "web", Some("2001:db8::10"), 0);
    web.spec.forwarding = ForwardingMethod::Tun;
    web.spec.tunnel = Some(TunnelSpec {
        tunnel_type: TunnelType::Gue,
        port: Some(6080),
    });
    web.spec.directors = Some(DirectorsSpec {
        node_selector: selector(&[("director", "yes")]),
    });
    let mut r = rs("shop", "r", "web", "2001:db8:1::1");
    r.spec.node_name = Some("worker-1".into());
    let p = plan(&node("worker-1"), &[web], &[r], &[]);
    assert!(p.services.is_empty(), "worker-1 does not direct");
    assert_eq!(p.real_server_vips.len(), 1);
    assert_eq!(
        p.real_server_vips[0].tunnel,
        Some(TunnelKind::Gue { port: 6080 })
    );
}

#[test]
fn dr_and_tun_reject_a_real_server_port_that_maps() {
    for (method, tunnel) in [
        (ForwardingMethod::Dr, None),
        (
            ForwardingMethod::Tun,
            Some(TunnelSpec {
                tunnel_type: TunnelType::Ipip,
                port: None,
            }),
        ),
    ] {
        let mut web = vs("shop", "web", Some("203.0.113.10"), 0);
        web.spec.forwarding = method;
        web.spec.tunnel = tunnel;
        let mut mapped = rs("shop", "mapped", "web", "198.51.100.11");
        mapped.spec.port = Some(8080);
        let mut same = rs("shop", "same", "web", "198.51.100.12");
        same.spec.port = Some(80);
        let p = plan(&node("n1"), &[web], &[mapped, same], &[]);
        let rss: Vec<_> = p.services[0]
            .real_servers
            .iter()
            .map(|r| (r.address, r.port))
            .collect();
        assert_eq!(rss, vec![(ip("198.51.100.12"), 80)], "{method:?}");
        assert_eq!(p.problems.len(), 1);
        assert_eq!(
            (&*p.problems[0].object.name, p.problems[0].field.as_str()),
            ("mapped", "spec.port")
        );
    }
}

#[test]
fn address_families_mix_only_through_tunnels() {
    let mut nat = vs("shop", "nat", Some("203.0.113.10"), 0);
    nat.spec.real_server_selector = selector(&[("app", "mixed")]);
    let mut tun = vs("shop", "tun", Some("203.0.113.11"), 0);
    tun.spec.forwarding = ForwardingMethod::Tun;
    tun.spec.tunnel = Some(TunnelSpec {
        tunnel_type: TunnelType::Ipip,
        port: None,
    });
    tun.spec.real_server_selector = selector(&[("app", "mixed")]);
    let v6 = rs("shop", "v6", "mixed", "2001:db8:1::1");
    let p = plan(&node("n1"), &[nat, tun], &[v6], &[]);
    let nat_s = p
        .services
        .iter()
        .find(|s| &*s.source.name == "nat")
        .unwrap();
    let tun_s = p
        .services
        .iter()
        .find(|s| &*s.source.name == "tun")
        .unwrap();
    assert!(nat_s.real_servers.is_empty());
    assert_eq!(tun_s.real_servers.len(), 1);
    assert_eq!(tun_s.forwarding, Forwarding::Tun(Tunnel::Ipip));
    assert_eq!(p.problems.len(), 1);
    assert_eq!(p.problems[0].field, "spec.address");
}

#[test]
fn duplicate_real_server_address_is_reported_once_kept_once() {
    let web = vs("shop", "web", Some("203.0.113.10"), 0);
    let p = plan(
        &node("n1"),
        &[web],
        &[
            rs("shop", "first", "web", "198.51.100.11"),
            rs("shop", "second", "web", "198.51.100.11"),
        ],
        &[],
    );
    assert_eq!(p.services[0].real_servers.len(), 1);
    assert_eq!(p.problems.len(), 1);
    assert_eq!(p.problems[0].reason, ProblemReason::Conflict);
}

#[test]
fn unparsable_addresses_are_problems_not_panics() {
    let bad_vip = vs("shop", "bad", Some("not-an-ip"), 0);
    let web = vs("shop", "web", Some("203.0.113.10"), 0);
    let p = plan(
        &node("n1"),
        &[bad_vip, web],
        &[rs("shop", "r", "web", "nope")],
        &[],
    );
    assert_eq!(p.services.len(), 1);
    assert!(p.services[0].real_servers.is_empty());
    let fields: Vec<_> = p
        .problems
        .iter()
        .map(|p| (&*p.object.name, p.field.as_str()))
        .collect();
    assert_eq!(fields, vec![("r", "spec.address"), ("bad", "spec.vip")]);
}

#[test]
fn fullnat_uses_this_directors_address_from_the_source_pool() {
    let mut api = vs("shop", "api", Some("203.0.113.10"), 0);
    api.spec.forwarding = ForwardingMethod::Fullnat;
    api.spec.source_address_pool = Some("snat".into());
    let mut n = node("d1");
    n.addresses = vec![ip("10.9.9.9"), ip("192.0.2.242"), ip("192.0.2.241")];
    let pools = [pool("snat", &["192.0.2.240/28"])];
    let p = plan(&n, std::slice::from_ref(&api), &[], &pools);
    assert_eq!(
        p.services[0].source_address,
        Some(ip("192.0.2.241")),
        "lowest pool address the node has"
    );

    let p = plan(&node("elsewhere"), std::slice::from_ref(&api), &[], &pools);
    assert!(p.services.is_empty());
    assert_eq!(p.problems[0].reason, ProblemReason::Unresolved);
    assert_eq!(p.problems[0].field, "spec.sourceAddressPool");

    let p = plan(&n, &[api], &[], &[]);
    assert!(p.problems[0].message.contains("does not exist"));
}

#[test]
fn persistence_netmask_becomes_a_prefix_and_defaults_to_one_client() {
    let mut web = vs("shop", "web", Some("203.0.113.10"), 0);
    let cases = [
        (Some("255.255.255.0"), None, 24),
        (None, Some(16u8), 16),
        (None, None, 32),
    ];
    for (netmask, prefix, want) in cases {
        web.spec.persistence = Some(PersistenceSpec {
            timeout_seconds: 300,
            netmask: netmask.map(String::from),
            prefix_length: prefix,
        });
        let p = plan(&node("n1"), std::slice::from_ref(&web), &[], &[]);
        let got = p.services[0].persistence.unwrap();
        assert_eq!((got.timeout_seconds, got.prefix_length), (300, want));
    }
}

#[test]
fn scheduler_flags_map_to_ipvs_bits() {
    let mut web = vs("shop", "web", Some("203.0.113.10"), 0);
    web.spec.scheduler = Scheduler::Sh;
    web.spec.scheduler_flags = vec![SchedulerFlag::ShFallback, SchedulerFlag::ShPort];
    let p = plan(&node("n1"), &[web], &[], &[]);
    assert_eq!(p.services[0].scheduler, kubelvs_model::Scheduler::Sh);
    assert_eq!(p.services[0].scheduler_flags.bits(), 0x08 | 0x10);
}

#[test]
fn pool_ranges_parse_cidrs_and_ranges() {
    let r = parse_range("203.0.113.0/30").unwrap();
    assert_eq!((r.first, r.last), (ip("203.0.113.0"), ip("203.0.113.3")));
    let r = parse_range("203.0.113.10-203.0.113.20").unwrap();
    assert!(r.contains(ip("203.0.113.15")) && !r.contains(ip("203.0.113.21")));
    assert!(
        parse_range("203.0.113.20-203.0.113.10").is_none(),
        "reversed"
    );
    assert!(
        parse_range("203.0.113.1-2001:db8::1").is_none(),
        "mixed families"
    );
    assert!(parse_range("garbage").is_none());
}

#[test]
fn examples_plan_without_problems() {
    // The shipped examples, planned for a director that matches every selector.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let (mut vss, mut rss, mut pools) = (vec![], vec![], vec![]);
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        for obj in Object::from_yaml_documents(&std::fs::read_to_string(&path).unwrap()) {
            match obj.unwrap() {
                Object::VirtualService(v) => vss.push(v),
                Object::RealServer(r) => rss.push(r),
                Object::AddressPool(p) => pools.push(p),
            }
        }
    }
    // api-fullnat allocates from a pool: pretend the operator did.
    for v in vss.iter_mut().filter(|v| v.spec.vip.is_none()) {
        v.status = Some(VirtualServiceStatus {
            vip: Some("203.0.113.100".into()),
            ..Default::default()
        });
    }
    // A director (matches every directors selector, runs no real server) plans cleanly...
    let director = NodeIdentity {
        name: "director-1".into(),
        labels: labels(&[
            ("node-role.kubelvs.io/director", ""),
            ("kubelvs.io/xdp", "true"),
        ]),
        addresses: vec![ip("192.0.2.241")],
        ..Default::default()
    };
    let p = plan(&director, &vss, &rss, &pools);
    assert_eq!(p.problems, vec![]);
    let methods: std::collections::BTreeSet<_> =
        p.services.iter().map(|s| s.forwarding.name()).collect();
    assert_eq!(
        methods.into_iter().collect::<Vec<_>>(),
        vec!["dr", "fullnat", "nat", "tun"]
    );
    assert!(
        p.services.iter().all(|s| !s.real_servers.is_empty()),
        "{p:#?}"
    );
    assert!(p.real_server_vips.is_empty());
    // ...and worker-1, which runs a real server of each dr/tun example, carries their VIPs.
    let worker = NodeIdentity {
        name: "worker-1".into(),
        labels: BTreeMap::new(),
        addresses: vec![ip("192.0.2.11")],
        ..Default::default()
    };
    let p = plan(&worker, &vss, &rss, &pools);
    assert_eq!(p.problems, vec![]);
    let vips: Vec<_> = p.real_server_vips.iter().map(|v| v.vip).collect();
    assert_eq!(
        vips,
        vec![ip("203.0.113.20"), ip("203.0.113.30"), ip("2001:db8::53")]
    );
    assert!(p.services.is_empty(), "every example names its directors");
}

#[test]
fn health_checks_become_probes_udp_payload_decoded_from_hex() {
    let check = |spec: serde_json::Value| {
        let mut web = vs("shop", "web", Some("203.0.113.10"), 0);
        web.spec.health_check = Some(serde_json::from_value(spec).unwrap());
        let p = plan(
            &node("n1"),
            &[web],
            &[rs("shop", "a", "web", "198.51.100.11")],
            &[],
        );
        p.services[0].health_check.clone().unwrap()
    };
    let udp = check(
        serde_json::json!({"type": "udp", "payload": "DEad01", "requireReply": true, "port": 5353}),
    );
    assert_eq!(
        udp.probe,
        kubelvs_model::Probe::Udp {
            port: Some(5353),
            payload: vec![0xde, 0xad, 0x01],
            require_reply: true
        }
    );
    let bare = check(serde_json::json!({"type": "udp"}));
    assert_eq!(
        bare.probe,
        kubelvs_model::Probe::Udp {
            port: None,
            payload: vec![],
            require_reply: false
        }
    );
    let https = check(serde_json::json!({"type": "https", "path": "/ready", "intervalSeconds": 5}));
    assert_eq!(https.interval_ms, 5000);
    assert!(matches!(
        https.probe,
        kubelvs_model::Probe::Http {
            tls: true,
            expected_status: 200,
            ..
        }
    ));
}
