//! VIP allocation rules, one scenario each.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kubelvs_crds::*;
use kubelvs_operator::allocate::{allocate, AllocationError, NamespaceLabels};

fn vs(ns: &str, name: &str, vip: Option<&str>, pool: Option<&str>, created: i64) -> VirtualService {
    let yaml = format!(
        "apiVersion: kubelvs.io/v1alpha1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{ports: [{{port: 80}}], forwarding: nat, realServerSelector: {{}}}}\n"
    );
    let mut v: VirtualService = serde_yaml::from_str(&yaml).unwrap();
    v.spec.vip = vip.map(String::from);
    v.spec.address_pool = pool.map(String::from);
    v.metadata.creation_timestamp = Some(Time(
        k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + created).unwrap(),
    ));
    v
}

fn port(mut v: VirtualService, port: u16) -> VirtualService {
    v.spec.ports[0].port = port;
    v
}

fn annotate(mut v: VirtualService, key: &str, value: &str) -> VirtualService {
    v.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(key.into(), value.into());
    v
}

fn pool(name: &str, addresses: &[&str], auto: bool) -> AddressPool {
    AddressPool::new(
        name,
        AddressPoolSpec {
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            auto_assign: auto,
            namespace_selector: None,
            announcement: None,
        },
    )
}

/// A pool admitting only namespaces labelled `team=web`.
fn team_web_pool(name: &str, addresses: &[&str], auto: bool) -> AddressPool {
    let mut p = pool(name, addresses, auto);
    p.spec.namespace_selector = Some(LabelSelector {
        match_labels: Some([("team".to_string(), "web".to_string())].into()),
        match_expressions: None,
    });
    p
}

/// Namespace `web` labelled `team=web`, namespace `db` unlabelled.
fn web_and_db() -> NamespaceLabels {
    [
        (
            "web".to_string(),
            [("team".to_string(), "web".to_string())].into(),
        ),
        ("db".to_string(), BTreeMap::new()),
    ]
    .into()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn get(
    a: &kubelvs_operator::allocate::Allocation,
    ns: &str,
    name: &str,
) -> Result<IpAddr, AllocationError> {
    a.vips[&(ns.to_string(), name.to_string())].clone()
}

#[test]
fn oldest_first_lowest_free_skipping_network_address() {
    let pools = [pool("public", &["203.0.113.0/30"], true)];
    let a = allocate(
        &[
            vs("s", "young", None, None, 10),
            vs("s", "old", None, None, 0),
        ],
        &pools,
        &BTreeMap::new(),
    );
    assert_eq!(get(&a, "s", "old"), Ok(ip("203.0.113.1")));
    assert_eq!(get(&a, "s", "young"), Ok(ip("203.0.113.2")));
    assert_eq!(
        a.pool_usage["public"],
        (2, 2),
        "/30 has two usable addresses, both taken"
    );
}

#[test]
fn exhausted_pool_is_an_error_naming_the_field() {
    let pools = [pool("tiny", &["203.0.113.5-203.0.113.5"], true)];
    let a = allocate(
        &[vs("s", "a", None, None, 0), vs("s", "b", None, None, 1)],
        &pools,
        &BTreeMap::new(),
    );
    assert_eq!(get(&a, "s", "a"), Ok(ip("203.0.113.5")));
    let err = get(&a, "s", "b").unwrap_err();
    assert!(err.to_string().starts_with("spec.addressPool:"), "{err}");
}

#[test]
fn existing_allocation_is_kept_even_if_an_older_service_appears() {
    let pools = [pool("public", &["203.0.113.10-203.0.113.20"], true)];
    let mut young = vs("s", "young", None, None, 10);
    young.status = Some(VirtualServiceStatus {
        vip: Some("203.0.113.10".into()),
        ..Default::default()
    });
    let old = vs("s", "old", None, None, 0);
    let a = allocate(&[old, young], &pools, &BTreeMap::new());
    assert_eq!(
        get(&a, "s", "young"),
        Ok(ip("203.0.113.10")),
        "a VIP never moves under traffic"
    );
    assert_eq!(get(&a, "s", "old"), Ok(ip("203.0.113.11")));
}

#[test]
fn fixed_vips_are_claimed_first_and_may_be_shared() {
    let pools = [pool("public", &["203.0.113.10-203.0.113.12"], true)];
    let a = allocate(
        &[
            vs("s", "auto", None, None, 0),
            vs("s", "fixed-a", Some("203.0.113.10"), None, 5),
            port(vs("s", "fixed-b", Some("203.0.113.10"), None, 6), 443),
        ],
        &pools,
        &BTreeMap::new(),
    );
    assert_eq!(get(&a, "s", "fixed-a"), Ok(ip("203.0.113.10")));
    assert_eq!(
        get(&a, "s", "fixed-b"),
        Ok(ip("203.0.113.10")),
        "two services, one VIP, different ports"
    );
    assert_eq!(
        get(&a, "s", "auto"),
        Ok(ip("203.0.113.11")),
        "allocation skips fixed VIPs even of younger services"
    );
}

#[test]
fn named_pool_rules() {
    let pools = [
        pool("public", &["203.0.113.0/28"], false),
        pool("v6", &["2001:db8::/120"], false),
    ];
    let a = allocate(
        &[
            vs("s", "named", None, Some("v6"), 0),
            vs("s", "outside", Some("198.51.100.1"), Some("public"), 0),
            vs("s", "missing", None, Some("nope"), 0),
            vs("s", "unpooled", None, None, 0),
            vs("s", "garbage", Some("300.1.1.1"), None, 0),
        ],
        &pools,
        &BTreeMap::new(),
    );
    assert_eq!(
        get(&a, "s", "named"),
        Ok(ip("2001:db8::1")),
        "the subnet-router anycast address is skipped"
    );
    assert!(matches!(
        get(&a, "s", "outside"),
        Err(AllocationError::VipOutsidePool { .. })
    ));
    assert!(matches!(
        get(&a, "s", "missing"),
        Err(AllocationError::UnknownPool { .. })
    ));
    assert!(
        matches!(
            get(&a, "s", "unpooled"),
            Err(AllocationError::NoPool { .. })
        ),
        "no auto-assign pool"
    );
    assert!(matches!(
        get(&a, "s", "garbage"),
        Err(AllocationError::InvalidVip { .. })
    ));
}

#[test]
fn namespace_selector_admits_only_matching_namespaces() {
    let p = team_web_pool("team", &["203.0.113.0/29"], true);
    let namespaces = web_and_db();
    let a = allocate(
        &[
            vs("web", "a", None, None, 0),
            vs("db", "b", None, None, 0),
            vs("db", "c", None, Some("team"), 0),
        ],
        &[p],
        &namespaces,
    );
    assert!(get(&a, "web", "a").is_ok());
    assert!(matches!(
        get(&a, "db", "b"),
        Err(AllocationError::NoPool { .. })
    ));
    assert!(matches!(
        get(&a, "db", "c"),
        Err(AllocationError::NamespaceNotAdmitted { .. })
    ));
}

#[test]
fn huge_ipv6_pool_allocates_without_walking_it() {
    let pools = [pool("v6", &["2001:db8::/64"], true)];
    let a = allocate(&[vs("s", "a", None, None, 0)], &pools, &BTreeMap::new());
    assert_eq!(get(&a, "s", "a"), Ok(ip("2001:db8::1")));
    assert_eq!(
        a.pool_usage["v6"],
        (u64::MAX, 1),
        "2^64 - 1 usable addresses"
    );
}

#[test]
fn a_fixed_vip_cannot_take_an_address_allocated_to_another_service() {
    let pools = [pool("public", &["203.0.113.10-203.0.113.20"], true)];
    let mut young = vs("s", "young", None, None, 10);
    young.status = Some(VirtualServiceStatus {
        vip: Some("203.0.113.10".into()),
        ..Default::default()
    });
    let old = vs("s", "old", Some("203.0.113.10"), None, 0);
    let a = allocate(&[old, young], &pools, &BTreeMap::new());
    assert_eq!(get(&a, "s", "young"), Ok(ip("203.0.113.10")));
    let err = get(&a, "s", "old").unwrap_err();
    assert_eq!(
        err.to_string(),
        "spec.vip: 203.0.113.10 is already allocated to VirtualService s/young"
    );
}

#[test]
fn a_fixed_vip_in_a_named_pool_respects_its_namespace_selector() {
    let p = team_web_pool("team", &["203.0.113.0/29"], false);
    let a = allocate(
        &[vs("db", "x", Some("203.0.113.2"), Some("team"), 0)],
        &[p],
        &BTreeMap::new(),
    );
    assert!(matches!(
        get(&a, "db", "x"),
        Err(AllocationError::NamespaceNotAdmitted { .. })
    ));
}

#[test]
fn reversed_ranges_are_reported_on_the_pool() {
    let pools = [pool(
        "bad",
        &["203.0.113.0/30", "203.0.113.20-203.0.113.10"],
        true,
    )];
    let a = allocate(&[], &pools, &BTreeMap::new());
    assert_eq!(a.pool_problems["bad"].len(), 1);
    assert!(
        a.pool_problems["bad"][0].starts_with("spec.addresses[1]:"),
        "{:?}",
        a.pool_problems
    );
}

#[test]
fn the_top_of_the_address_space_is_reserved_and_skipping_it_does_not_overflow() {
    // IPv4: the broadcast address is the last one; skipping it must not wrap to 0.0.0.0.
    let v4 = [pool("top4", &["255.255.255.253-255.255.255.255"], true)];
    let a = allocate(
        &[
            vs("s", "fixed", Some("255.255.255.255"), None, 0),
            vs("s", "a", None, None, 1),
            vs("s", "b", None, None, 2),
            vs("s", "c", None, None, 3),
        ],
        &v4,
        &BTreeMap::new(),
    );
    assert_eq!(get(&a, "s", "fixed").unwrap_err().reason(), "VipReserved");
    assert_eq!(get(&a, "s", "a"), Ok(ip("255.255.255.253")));
    assert_eq!(get(&a, "s", "b"), Ok(ip("255.255.255.254")));
    assert!(matches!(
        get(&a, "s", "c"),
        Err(AllocationError::PoolExhausted { .. })
    ));
    // IPv6: the top of the space is multicast (ff00::/8), all of it skipped.
    let v6 = [pool(
        "top6",
        &["ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
        true,
    )];
    let a = allocate(&[vs("s", "a", None, None, 1)], &v6, &BTreeMap::new());
    assert!(matches!(
        get(&a, "s", "a"),
        Err(AllocationError::PoolExhausted { .. })
    ));
}

/// A tenant asks for an address: it must be in a pool that admits its namespace, never a
/// node's, never in the cluster's ranges or a special one, and never another
/// namespace's fixed VIP.
#[test]
fn a_requested_vip_is_granted_only_from_an_admitting_pool() {
    let team = team_web_pool("team", &["203.0.113.0/28"], false);
    let pools = [team, pool("shared", &["198.51.100.0/28"], false)];
    let namespaces = web_and_db();
    let a = allocate(
        &[
            vs("web", "in-pool", Some("203.0.113.5"), None, 0),
            vs("db", "not-admitted", Some("203.0.113.6"), None, 1),
            vs("db", "no-pool", Some("192.0.2.77"), None, 2),
            vs("db", "shared", Some("198.51.100.5"), None, 3),
            port(
                vs("web", "other-tenant", Some("198.51.100.5"), None, 4),
                443,
            ),
            port(vs("db", "same-tenant", Some("198.51.100.5"), None, 5), 443),
        ],
        &pools,
        &namespaces,
    );
    assert_eq!(get(&a, "web", "in-pool"), Ok(ip("203.0.113.5")));
    for name in ["not-admitted", "no-pool"] {
        let e = get(&a, "db", name).unwrap_err();
        assert_eq!(e.reason(), "VipOutsidePool", "{name}");
        assert!(e.to_string().contains("namespace db"), "{e}");
    }
    assert_eq!(get(&a, "db", "shared"), Ok(ip("198.51.100.5")));
    let e = get(&a, "web", "other-tenant").unwrap_err();
    assert_eq!(e.reason(), "VipTaken", "{e}");
    assert_eq!(get(&a, "db", "same-tenant"), Ok(ip("198.51.100.5")));
}

#[test]
fn node_addresses_and_the_clusters_ranges_are_never_vips() {
    use kubelvs_operator::allocate::{allocate_with, status_vip, AddressSpace, Reserved};
    let pools = [pool("wide", &["10.0.0.0/24", "203.0.113.0/29"], true)];
    let reserved = Reserved {
        node_addresses: [ip("203.0.113.1"), ip("203.0.113.3")].into(),
        cluster_ranges: vec!["10.0.0.0/16".parse().unwrap()],
    };
    let mut held = vs("s", "held", None, None, 0);
    // Allocated before the node took the address: given up, another one allocated.
    held.status = Some(VirtualServiceStatus {
        vip: Some("203.0.113.3".into()),
        ..Default::default()
    });
    let services = [
        held,
        vs("s", "node", Some("203.0.113.1"), None, 1),
        vs("s", "service-range", Some("10.0.0.10"), None, 2),
        vs("s", "metadata", Some("169.254.169.254"), None, 3),
        vs("s", "loopback", Some("127.0.0.1"), None, 4),
        vs("s", "auto", None, None, 5),
    ];
    let refs: Vec<&VirtualService> = services.iter().collect();
    let space = AddressSpace {
        pools: &pools,
        namespaces: &BTreeMap::new(),
        reserved: &reserved,
    };
    let a = allocate_with(&refs, status_vip, space);
    for (name, why) in [
        ("node", "a node's own address"),
        ("service-range", "10.0.0.0/16"),
        ("metadata", "link-local"),
        ("loopback", "loopback"),
    ] {
        let e = get(&a, "s", name).unwrap_err();
        assert_eq!(e.reason(), "VipReserved", "{name}: {e}");
        assert!(e.to_string().contains(why), "{name}: {e}");
    }
    // Allocation skips the cluster range and the node addresses of the pool.
    assert_eq!(get(&a, "s", "held"), Ok(ip("203.0.113.2")));
    assert_eq!(get(&a, "s", "auto"), Ok(ip("203.0.113.4")));
}

#[test]
fn two_services_on_one_vip_may_not_serve_the_same_port() {
    let pools = [pool("public", &["203.0.113.10-203.0.113.12"], true)];
    let a = allocate(
        &[
            vs("s", "first", Some("203.0.113.10"), None, 0),
            vs("s", "second", Some("203.0.113.10"), None, 1),
        ],
        &pools,
        &BTreeMap::new(),
    );
    assert_eq!(get(&a, "s", "first"), Ok(ip("203.0.113.10")));
    let err = get(&a, "s", "second").unwrap_err();
    assert_eq!(err.reason(), "PortCollides");
    assert_eq!(
        err.to_string(),
        "spec.ports: 80/TCP on 203.0.113.10 is already served by VirtualService s/first"
    );
}

#[test]
fn a_sharing_key_joins_services_of_one_namespace_on_one_address() {
    let pools = [pool("public", &["203.0.113.10-203.0.113.20"], true)];
    let shared = |ns: &str, name: &str, p: u16, created: i64| {
        annotate(
            port(vs(ns, name, None, None, created), p),
            kubelvs_operator::allocate::SHARING_KEY,
            "web",
        )
    };
    let a = allocate(
        &[
            shared("s", "http", 80, 0),
            shared("s", "https", 443, 1),
            shared("s", "clash", 443, 2),
            // Same key, other namespace: a different group.
            shared("other", "http", 80, 3),
            vs("s", "plain", None, None, 4),
        ],
        &pools,
        &BTreeMap::new(),
    );
    assert_eq!(get(&a, "s", "http"), Ok(ip("203.0.113.10")));
    assert_eq!(get(&a, "s", "https"), Ok(ip("203.0.113.10")));
    let clash = get(&a, "s", "clash").unwrap_err();
    assert_eq!(
        clash.to_string(),
        "spec.ports: 443/TCP on 203.0.113.10 is already served by VirtualService s/https"
    );
    assert_eq!(get(&a, "other", "http"), Ok(ip("203.0.113.11")));
    assert_eq!(get(&a, "s", "plain"), Ok(ip("203.0.113.12")));
    assert_eq!(
        a.pool_usage["public"],
        (11, 3),
        "shared addresses count once"
    );
}

#[test]
fn a_kept_shared_address_admits_a_fixed_vip_of_the_group_only() {
    let pools = [pool("public", &["203.0.113.10-203.0.113.20"], true)];
    let mut first = annotate(
        vs("s", "first", None, None, 0),
        kubelvs_operator::allocate::SHARING_KEY,
        "k",
    );
    first.status = Some(VirtualServiceStatus {
        vip: Some("203.0.113.15".into()),
        ..Default::default()
    });
    let member = annotate(
        port(vs("s", "member", Some("203.0.113.15"), None, 1), 81),
        kubelvs_operator::allocate::SHARING_KEY,
        "k",
    );
    let stranger = port(vs("s", "stranger", Some("203.0.113.15"), None, 2), 82);
    let a = allocate(&[first, member, stranger], &pools, &BTreeMap::new());
    assert_eq!(get(&a, "s", "member"), Ok(ip("203.0.113.15")));
    assert_eq!(
        get(&a, "s", "stranger").unwrap_err().to_string(),
        "spec.vip: 203.0.113.15 is already allocated to VirtualService s/first"
    );
}

#[test]
fn the_family_annotation_picks_the_range_of_that_family() {
    let pools = [pool(
        "dual",
        &["203.0.113.10-203.0.113.11", "2001:db8::/64"],
        true,
    )];
    let fam = |name: &str, f: &str, created: i64| {
        annotate(
            vs("s", name, None, None, created),
            kubelvs_operator::allocate::IP_FAMILY,
            f,
        )
    };
    let a = allocate(
        &[
            fam("v6", "IPv6", 0),
            fam("v4", "IPv4", 1),
            fam("bad", "IPv5", 2),
            annotate(
                vs("s", "fixed", Some("203.0.113.11"), None, 3),
                kubelvs_operator::allocate::IP_FAMILY,
                "IPv6",
            ),
        ],
        &pools,
        &BTreeMap::new(),
    );
    assert_eq!(get(&a, "s", "v6"), Ok(ip("2001:db8::1")));
    assert_eq!(get(&a, "s", "v4"), Ok(ip("203.0.113.10")));
    assert_eq!(
        get(&a, "s", "bad").unwrap_err().to_string(),
        "metadata.annotations[kubelvs.io/ip-family]: \"IPv5\" is not IPv4 or IPv6"
    );
    assert_eq!(get(&a, "s", "fixed").unwrap_err().reason(), "WrongFamily");

    let only_v4 = [pool("v4", &["203.0.113.10/32"], true)];
    let a = allocate(&[fam("v6", "IPv6", 0)], &only_v4, &BTreeMap::new());
    assert_eq!(
        get(&a, "s", "v6").unwrap_err().to_string(),
        "spec.addressPool: AddressPool v4 has no free IPv6 address"
    );
}
