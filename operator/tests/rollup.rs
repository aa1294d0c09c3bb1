//! Status roll-up: the agents' per-node entries (written by two field managers, one per
//! node) and the allocation become the operator's conditions and counts.

use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kubelvs_crds::*;
use kubelvs_operator::allocate::AllocationError;
use kubelvs_operator::rollup::*;

fn t(s: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + s).unwrap())
}

fn vs(directors: &[(&str, bool, u32)]) -> VirtualService {
    let mut v: VirtualService = serde_yaml::from_str(
        "apiVersion: kubelvs.io/v1alpha1\nkind: VirtualService\nmetadata: {name: web, namespace: s, generation: 3}\nspec: {ports: [{port: 80}], forwarding: nat, realServerSelector: {matchLabels: {app: web}}}\n",
    )
    .unwrap();
    v.status = Some(VirtualServiceStatus {
        directors: directors
            .iter()
            .map(|(node, programmed, healthy)| DirectorStatus {
                node: node.to_string(),
                programmed: *programmed,
                dataplane: Some(Dataplane::Ipvs),
                healthy_real_servers: *healthy,
                announcing: false,
                message: (!programmed).then(|| "203.0.113.1:80/TCP failed: EEXIST".into()),
            })
            .collect(),
        ..Default::default()
    });
    v
}

fn rs(name: &str, drain: bool) -> RealServerRecord {
    let mut r = RealServer::new(
        name,
        RealServerSpec {
            address: "10.0.0.1".into(),
            port: None,
            weight: 1,
            node_name: None,
            drain,
        },
    );
    r.metadata.namespace = Some("s".into());
    r.into()
}

fn cond<'a>(s: &'a OperatorStatus, t: &str) -> (&'a str, &'a str) {
    let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
    (c.status.as_str(), c.reason.as_str())
}

fn status_of(
    vs: &VirtualService,
    allocation: Option<&Result<IpAddr, AllocationError>>,
    selected: &[&RealServerRecord],
    now: &Time,
) -> OperatorStatus {
    virtual_service_status(vs, &validation(vs), allocation, selected, now)
}

fn ok_vip() -> Result<IpAddr, AllocationError> {
    Ok("203.0.113.1".parse().unwrap())
}

#[test]
fn two_directors_all_healthy_is_ready() {
    let (a, b, c) = (rs("a", false), rs("b", false), rs("c", true));
    let s = status_of(
        &vs(&[("n1", true, 2), ("n2", true, 2)]),
        Some(&ok_vip()),
        &[&a, &b, &c],
        &t(0),
    );
    assert_eq!(s.vip.as_deref(), Some("203.0.113.1"));
    assert_eq!(s.real_servers, "2/2", "the draining one is not counted");
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!(cond(&s, ACCEPTED), ("True", "Valid"));
    assert_eq!(cond(&s, VIP_ALLOCATED), ("True", "Allocated"));
    assert_eq!(cond(&s, PROGRAMMED), ("True", "Programmed"));
    assert_eq!(cond(&s, READY), ("True", "Ready"));
    assert_eq!(cond(&s, DEGRADED), ("False", "AsExpected"));
}

#[test]
fn the_director_seeing_fewest_healthy_sets_the_count_and_degrades() {
    let (a, b) = (rs("a", false), rs("b", false));
    let s = status_of(
        &vs(&[("n1", true, 2), ("n2", true, 1)]),
        Some(&ok_vip()),
        &[&a, &b],
        &t(0),
    );
    assert_eq!(s.real_servers, "1/2");
    assert_eq!(cond(&s, READY), ("True", "Ready"));
    assert_eq!(cond(&s, DEGRADED), ("True", "RealServersUnhealthy"));
    assert!(s
        .conditions
        .iter()
        .any(|c| c.message.contains("n2 sees 1/2")));
}

#[test]
fn one_director_failing_is_not_programmed_and_degraded() {
    let a = rs("a", false);
    let s = status_of(
        &vs(&[("n1", true, 1), ("n2", false, 0)]),
        Some(&ok_vip()),
        &[&a],
        &t(0),
    );
    assert_eq!(cond(&s, PROGRAMMED), ("False", "NotProgrammed"));
    assert_eq!(cond(&s, READY), ("False", "NotProgrammed"));
    assert_eq!(cond(&s, DEGRADED), ("True", "DirectorsNotProgrammed"));
    let msg = &s
        .conditions
        .iter()
        .find(|c| c.type_ == PROGRAMMED)
        .unwrap()
        .message;
    assert!(
        msg.contains("n2: 203.0.113.1:80/TCP failed: EEXIST"),
        "{msg}"
    );
}

#[test]
fn no_director_and_no_vip_say_why() {
    let s = status_of(
        &vs(&[]),
        Some(&Err(AllocationError::PoolExhausted {
            pool: "public".into(),
            what: "address".into(),
        })),
        &[],
        &t(0),
    );
    assert_eq!(s.vip, None);
    assert_eq!(cond(&s, VIP_ALLOCATED), ("False", "PoolExhausted"));
    assert_eq!(cond(&s, PROGRAMMED), ("False", "NoDirector"));
    assert_eq!(cond(&s, READY), ("False", "NoVip"));
    let msg = &s
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .unwrap()
        .message;
    assert_eq!(
        msg,
        "spec.addressPool: AddressPool public has no free address"
    );
}

#[test]
fn an_invalid_spec_is_not_accepted_naming_the_field() {
    let mut v = vs(&[]);
    v.spec.scheduler = Scheduler::Maglev;
    let s = status_of(&v, Some(&ok_vip()), &[], &t(0));
    assert_eq!(cond(&s, ACCEPTED), ("False", "Invalid"));
    let msg = &s
        .conditions
        .iter()
        .find(|c| c.type_ == ACCEPTED)
        .unwrap()
        .message;
    assert!(
        msg.contains("spec.scheduler: maglev exists only in the xdp dataplane"),
        "{msg}"
    );
}

#[test]
fn transition_times_move_only_when_a_status_changes() {
    let a = rs("a", false);
    let mut v = vs(&[("n1", true, 1)]);
    let first = status_of(&v, Some(&ok_vip()), &[&a], &t(0));
    v.status.as_mut().unwrap().conditions = first.conditions.clone();
    assert!(first.is_shown_by(&{
        let mut shown = v.clone();
        let st = shown.status.as_mut().unwrap();
        st.vip = first.vip.clone();
        st.observed_generation = first.observed_generation;
        st.real_servers = Some(first.real_servers.clone());
        shown
    }));
    // Later, the real server fails on n1.
    v.status.as_mut().unwrap().directors[0].healthy_real_servers = 0;
    let later = status_of(&v, Some(&ok_vip()), &[&a], &t(100));
    let at = |s: &OperatorStatus, ty: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == ty)
            .unwrap()
            .last_transition_time
            .clone()
    };
    assert_eq!(
        at(&later, ACCEPTED),
        t(0),
        "unchanged condition keeps its time"
    );
    assert_eq!(at(&later, READY), t(100), "Ready went False just now");
    assert!(!later.is_shown_by(&v));
}

#[test]
fn the_apply_body_carries_only_the_operators_fields() {
    let a = rs("a", false);
    let s = status_of(&vs(&[("n1", true, 1)]), Some(&ok_vip()), &[&a], &t(0));
    let body = serde_json::to_value(s.apply_body("s", "web")).unwrap();
    assert_eq!(
        body["metadata"],
        serde_json::json!({"name": "web", "namespace": "s"})
    );
    assert_eq!(body["kind"], "VirtualService");
    let status = body["status"].as_object().unwrap();
    let mut keys: Vec<&str> = status.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["conditions", "observedGeneration", "realServers", "vip"]
    );
}

#[test]
fn pools_report_counts_problems_and_overlaps() {
    let pool = |name: &str, a: &[&str]| {
        AddressPool::new(
            name,
            AddressPoolSpec {
                addresses: a.iter().map(|s| s.to_string()).collect(),
                auto_assign: true,
                namespace_selector: None,
                announcement: None,
            },
        )
    };
    let pools = [
        pool("a", &["203.0.113.0/28"]),
        pool("b", &["203.0.113.10-203.0.113.20"]),
        pool("c", &["198.51.100.0/24"]),
    ];
    let o = overlaps(&pools);
    assert_eq!(o.get("a").unwrap(), &["b".to_string()]);
    assert_eq!(o.get("b").unwrap(), &["a".to_string()]);
    assert!(!o.contains_key("c"));
    let st = address_pool_status(&pools[0], (14, 3), &[], &o["a"], &t(0));
    assert_eq!((st.total, st.allocated, st.available), (14, 3, 11));
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == OVERLAPPING)
        .unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Overlaps"));
    assert!(c.message.contains("AddressPool(s) b"), "{}", c.message);
    let bad = address_pool_status(
        &pools[2],
        (0, 0),
        &["spec.addresses[0]: \"x\" holds no address".into()],
        &[],
        &t(0),
    );
    let c = bad.conditions.iter().find(|c| c.type_ == VALID).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "EmptyRange")
    );
}

#[test]
fn the_announcer_named_is_one_whose_lease_is_live() {
    let mut v = vs(&[("n1", true, 1), ("n2", true, 1), ("n3", true, 1)]);
    // n1 announced and died (its entry stays as it left it); n2 took over.
    for d in &mut v.status.as_mut().unwrap().directors {
        d.announcing = d.node != "n3";
    }
    let expired: std::collections::BTreeSet<String> = ["n1".to_owned()].into();
    assert_eq!(announced_by(&v, &expired).as_deref(), Some("n2"));
    // Without Leases (none expired) every entry that says so is named.
    assert_eq!(
        announced_by(&v, &Default::default()).as_deref(),
        Some("n1,n2")
    );
    // Every announcer's Lease expired: nothing named.
    let both: std::collections::BTreeSet<String> = ["n1", "n2"].map(String::from).into();
    assert_eq!(announced_by(&v, &both), None);

    // In the apply body, and a status that shows another announcer is rewritten.
    let a = rs("a", false);
    let mut s = status_of(&v, Some(&ok_vip()), &[&a], &t(0));
    s.announced_by = announced_by(&v, &expired);
    let body = serde_json::to_value(s.apply_body("s", "web")).unwrap();
    assert_eq!(body["status"]["announcedBy"], "n2");
    v.status.as_mut().unwrap().announced_by = Some("n1".into());
    assert!(!s.is_shown_by(&v));
}
