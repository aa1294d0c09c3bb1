//! The planner's share of the trust model: what a tenant writes reaches only what it
//! was granted (docs/architecture.md, "Trust model").

mod common;

use common::*;
use kubelvs_crds::*;
use kubelvs_model::ProblemReason;

#[test]
fn in_a_cluster_only_the_operators_grant_is_programmed() {
    // The victim's VIP, granted. An older VirtualService of another tenant patched its
    // spec.vip to the same address: the operator refused it (no status.vip), so no
    // agent programs it, and the victim keeps its port (no conflict by age).
    let victim = granted(vs("b", "victim", None, 100), Some("203.0.113.10"), 1, 1);
    let thief = granted(vs("a", "thief", Some("203.0.113.10"), 0), None, 2, 2);
    let rss = [
        rs("a", "ra", "thief", "198.51.100.1"),
        rs("b", "rb", "victim", "198.51.100.2"),
    ];
    let p = plan(
        &in_cluster("n1"),
        &[thief.clone(), victim.clone()],
        &rss,
        &[],
    );
    assert_eq!(p.services.len(), 1, "{p:#?}");
    assert_eq!(&*p.services[0].source.name, "victim");
    assert_eq!(p.services[0].real_servers[0].address, ip("198.51.100.2"));
    assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
    assert_eq!(
        (p.problems[0].reason, &*p.problems[0].object.name),
        (ProblemReason::VipPending, "thief")
    );
    assert!(
        p.problems[0].message.contains("granted"),
        "{}",
        p.problems[0].message
    );
    // Standalone, the file's author is the administrator: spec.vip as written, and
    // the older claim wins.
    let p = plan(&node("n1"), &[thief, victim], &rss, &[]);
    assert_eq!(&*p.services[0].source.name, "thief");
}

#[test]
fn a_grant_for_an_older_generation_is_not_programmed() {
    // spec edited (generation 3); the operator has not looked at it yet.
    let stale = granted(vs("a", "web", None, 0), Some("203.0.113.10"), 3, 2);
    let p = plan(&in_cluster("n1"), &[stale], &[], &[]);
    assert!(p.services.is_empty());
    assert_eq!(p.problems[0].reason, ProblemReason::VipPending);
    // Once it has, the grant holds; a grant without a generation never does.
    let fresh = granted(vs("a", "web", None, 0), Some("203.0.113.10"), 3, 3);
    let p = plan(
        &in_cluster("n1"),
        &[fresh],
        &[rs("a", "r", "web", "198.51.100.1")],
        &[],
    );
    assert_eq!(p.services.len(), 1);
    let mut unstamped = vs("a", "web", None, 0);
    unstamped.status = Some(VirtualServiceStatus {
        vip: Some("203.0.113.10".into()),
        ..Default::default()
    });
    assert!(plan(&in_cluster("n1"), &[unstamped], &[], &[])
        .services
        .is_empty());
}

#[test]
fn real_servers_on_special_addresses_are_never_probed_or_forwarded_to() {
    // Stored before the CRD refused them (or written by hand): left out, named.
    let web = vs("shop", "web", Some("203.0.113.10"), 0);
    let p = plan(
        &node("n1"),
        &[web],
        &[
            rs("shop", "ok", "web", "198.51.100.11"),
            rs("shop", "self", "web", "127.0.0.1"),
            rs("shop", "metadata", "web", "169.254.169.254"),
            rs("shop", "v6-link", "web", "fe80::1"),
        ],
        &[],
    );
    let addrs: Vec<_> = p.services[0]
        .real_servers
        .iter()
        .map(|r| r.address)
        .collect();
    assert_eq!(addrs, vec![ip("198.51.100.11")]);
    let named: Vec<(&str, &str)> = p
        .problems
        .iter()
        .map(|p| (&*p.object.name, p.field.as_str()))
        .collect();
    assert_eq!(
        named,
        vec![
            ("metadata", "spec.address"),
            ("self", "spec.address"),
            ("v6-link", "spec.address")
        ]
    );
    assert!(
        p.problems[0].message.contains("link-local"),
        "{:?}",
        p.problems
    );
}

#[test]
fn a_real_server_at_a_nodes_address_needs_an_administrators_namespace_label() {
    // A tenant aims its VIP at node n2's kubelet. Every director would forward to it
    // and probe it.
    let web = vs("shop", "web", Some("203.0.113.10"), 0);
    let rss = [
        rs("shop", "ok", "web", "198.51.100.11"),
        rs("shop", "kubelet", "web", "192.0.2.2"),
    ];
    let mut policy = kubelvs_planner::NodeRealServers::default();
    policy.addresses.insert(ip("192.0.2.2"), "n2".into());
    let planned = |policy: &kubelvs_planner::NodeRealServers| {
        kubelvs_planner::plan_node(
            &in_cluster("n1"),
            kubelvs_planner::Objects::of(
                [&granted(web.clone(), Some("203.0.113.10"), 1, 1)],
                &records(&rss),
                [],
            )
            .with_node_real_servers(policy),
        )
    };
    let p = planned(&policy);
    let addrs: Vec<_> = p.services[0]
        .real_servers
        .iter()
        .map(|r| r.address)
        .collect();
    assert_eq!(addrs, vec![ip("198.51.100.11")]);
    assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
    assert_eq!(
        (&*p.problems[0].object.name, p.problems[0].field.as_str()),
        ("kubelet", "spec.address")
    );
    assert!(
        p.problems[0].message.contains("node n2")
            && p.problems[0]
                .message
                .contains(kubelvs_planner::NODE_REAL_SERVERS_LABEL),
        "{}",
        p.problems[0].message
    );
    // The administrator allows it for this namespace (hostNetwork backends).
    policy.allowed.insert("shop".into());
    let p = planned(&policy);
    assert_eq!(p.services[0].real_servers.len(), 2, "{:?}", p.problems);
    assert!(p.problems.is_empty());
    // Standalone, no policy: the file's author decides.
    let p = plan(&node("n1"), std::slice::from_ref(&web), &rss, &[]);
    assert_eq!(p.services[0].real_servers.len(), 2);
}
