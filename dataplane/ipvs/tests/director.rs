//! IpvsDirector through the `Dataplane` trait, with the fake and faulty kernel and
//! host: every outcome kind, one failing service isolated from the others, zero
//! writes on re-apply, and every error path of apply (refused commands, failed
//! dumps, a dropped socket, sysctl and nft failures, the incremental cache).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kubelvs_ipvs::codec::Netmask;
use kubelvs_ipvs::table::{KernelService, ServiceConfig};
use kubelvs_ipvs::{
    Command, FakeHost, FakeIpvs, Fault, FaultyIpvs, IpvsDataplane, IpvsDirector, ServiceId,
};
use kubelvs_model::{
    ApplyContext, Dataplane, DataplaneKind, Forwarding, NodePlan, ObjectKind, ObjectRef, Outcome,
    Protocol, RealServer, RealServerState, Scheduler, SchedulerFlags, Service, ServiceKey,
};

/// A per-test directory for the ownership state file, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "kubelvs-ipvs-director-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rs(addr: &str, weight: u32) -> RealServer {
    RealServer {
        address: addr.parse().unwrap(),
        port: 8080,
        weight,
        source: ObjectRef::new(ObjectKind::RealServer, "shop", addr),
    }
}

fn service(name: &str, vip: &str, fwd: Forwarding, servers: Vec<RealServer>) -> Service {
    Service {
        key: ServiceKey {
            vip: vip.parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
        },
        scheduler: Scheduler::Wrr,
        scheduler_flags: SchedulerFlags::default(),
        forwarding: fwd,
        persistence: None,
        source_address: None,
        health_check: None,
        dataplane: DataplaneKind::Ipvs,
        real_servers: servers,
        source: ObjectRef::new(ObjectKind::VirtualService, "shop", name),
    }
}

fn plan(services: Vec<Service>) -> NodePlan {
    NodePlan {
        node: "n1".into(),
        services,
        ..NodePlan::default()
    }
}

fn three() -> Vec<Service> {
    vec![
        service(
            "a",
            "203.0.113.1",
            Forwarding::Nat,
            vec![rs("192.0.2.1", 1)],
        ),
        service(
            "b",
            "203.0.113.2",
            Forwarding::Nat,
            vec![rs("192.0.2.2", 1)],
        ),
        service(
            "c",
            "203.0.113.3",
            Forwarding::FullNat,
            vec![rs("192.0.2.3", 1)],
        ),
    ]
}

fn id(vip: &str) -> ServiceId {
    ServiceId::Inet {
        protocol: 6,
        addr: vip.parse().unwrap(),
        port: 80,
    }
}

type Director = IpvsDirector<FaultyIpvs, FakeHost>;

fn director(tag: &str, kernel: FaultyIpvs) -> (Director, TempDir) {
    let dir = TempDir::new(tag);
    let d = IpvsDirector::new(
        IpvsDataplane::with_client(kernel, dir.0.join("owned")).unwrap(),
        FakeHost::default(),
    );
    (d, dir)
}

fn now() -> ApplyContext {
    ApplyContext::at(Instant::now())
}

fn outcome<'a>(r: &'a kubelvs_model::DataplaneReport, vip: &str) -> &'a Outcome {
    let key = ServiceKey {
        vip: vip.parse().unwrap(),
        port: 80,
        protocol: Protocol::Tcp,
    };
    r.service(&key)
        .unwrap_or_else(|| panic!("no outcome for {vip}"))
}

fn weight(d: &mut Director, vip: &str, dest: &str) -> u32 {
    let addr: IpAddr = dest.parse().unwrap();
    d.table().client().inner.services[&id(vip)]
        .dests
        .iter()
        .find(|x| x.id.addr == addr)
        .unwrap()
        .config
        .weight
}

#[test]
fn programs_every_service_and_reapply_writes_nothing() {
    let (mut d, _dir) = director("happy", FaultyIpvs::default());
    let p = plan(three());
    let r = d.apply(&p, &now());
    assert_eq!(r.dataplane, "ipvs");
    assert_eq!(r.services.len(), 3);
    assert!(r.problems().next().is_none(), "{r:?}");
    // 3 services + 3 destinations + 4 sysctls + 2 nft loads (FullNAT, the VIP guard).
    assert_eq!(r.writes, 3 + 3 + 4 + 2);
    assert_eq!(d.host().sysctls["net/ipv4/ip_forward"], "1");
    assert!(d
        .host()
        .nft_script
        .as_ref()
        .unwrap()
        .contains("203.0.113.3"));

    let again = d.apply(&p, &now());
    assert_eq!(again.writes, 0, "{again:?}");
    assert_eq!(d.host().nft_loads, 2);
    assert!(again.problems().next().is_none());
}

#[test]
fn services_for_xdp_are_not_reported_by_ipvs() {
    let (mut d, _dir) = director("xdp", FaultyIpvs::default());
    let mut s = three();
    s[1].dataplane = DataplaneKind::Xdp;
    let r = d.apply(&plan(s), &now());
    assert_eq!(r.services.len(), 2);
    assert!(!d
        .table()
        .client()
        .inner
        .services
        .contains_key(&id("203.0.113.2")));
}

#[test]
fn a_scheduler_the_kernel_lacks_is_unsupported_and_the_rest_programmed() {
    let (mut d, _dir) = director("unsupported", FaultyIpvs::default());
    let mut s = three();
    s[0].scheduler = Scheduler::Maglev;
    let r = d.apply(&plan(s), &now());
    match outcome(&r, "203.0.113.1") {
        Outcome::Unsupported(reason) => {
            assert_eq!(reason.field, "spec.scheduler");
            assert_eq!(&*reason.object.name, "a");
        }
        o => panic!("{o:?}"),
    }
    assert!(outcome(&r, "203.0.113.2").is_programmed());
    assert!(!d
        .table()
        .client()
        .inner
        .services
        .contains_key(&id("203.0.113.1")));
}

#[test]
fn a_service_made_by_another_tool_is_a_conflict_left_alone() {
    let mut fake = FakeIpvs::new();
    fake.insert(foreign_service(id("203.0.113.2")));
    let (mut d, _dir) = director("conflict", FaultyIpvs::new(fake));
    let r = d.apply(&plan(three()), &now());
    match outcome(&r, "203.0.113.2") {
        Outcome::Conflict(reason) => assert_eq!(&*reason.object.name, "b"),
        o => panic!("{o:?}"),
    }
    assert!(outcome(&r, "203.0.113.1").is_programmed());
    let theirs = &d.table().client().inner.services[&id("203.0.113.2")];
    assert_eq!(theirs.config.scheduler, "rr");
    assert!(theirs.dests.is_empty());
}

fn libc_af_inet() -> u16 {
    2
}

/// A service another tool made: round robin, no destinations.
fn foreign_service(id: ServiceId) -> KernelService {
    KernelService {
        id,
        config: ServiceConfig {
            scheduler: "rr".into(),
            flags: 0,
            timeout: 0,
            netmask: Netmask::host(libc_af_inet()),
        },
        dests: Vec::new(),
        stats: Default::default(),
    }
}

#[test]
fn a_service_the_kernel_refuses_fails_alone() {
    let kernel = FaultyIpvs::default().with(Fault::Refuse {
        cmd: Command::NewService,
        service: Some(id("203.0.113.2")),
        errno: 22,
    });
    let (mut d, _dir) = director("refused", kernel);
    let r = d.apply(&plan(three()), &now());
    match outcome(&r, "203.0.113.2") {
        Outcome::Failed(reason) => {
            assert_eq!(&*reason.object.name, "b");
            assert!(reason.message.contains("203.0.113.2"), "{reason}");
        }
        o => panic!("{o:?}"),
    }
    assert!(outcome(&r, "203.0.113.1").is_programmed());
    assert!(outcome(&r, "203.0.113.3").is_programmed());
    let k = &d.table().client().inner.services;
    assert_eq!(k.len(), 2);
    // Not owned: a later apply retries it as new.
    assert!(!d.table().owned().contains(&id("203.0.113.2")));

    d.table().client().faults.clear();
    let r = d.apply(&plan(three()), &now());
    assert!(r.problems().next().is_none(), "{r:?}");
    assert_eq!(d.table().client().inner.services.len(), 3);
}

#[test]
fn a_refused_destination_fails_its_service_only() {
    let kernel = FaultyIpvs::default().with(Fault::Refuse {
        cmd: Command::NewDest,
        service: Some(id("203.0.113.1")),
        errno: 12,
    });
    let (mut d, _dir) = director("dest", kernel);
    let r = d.apply(&plan(three()), &now());
    assert_eq!(outcome(&r, "203.0.113.1").name(), "Failed");
    assert!(outcome(&r, "203.0.113.2").is_programmed());
}

#[test]
fn a_failed_dump_fails_every_service_and_writes_nothing() {
    let (mut d, _dir) = director("dump", FaultyIpvs::default().with(Fault::FailServiceDump));
    let r = d.apply(&plan(three()), &now());
    assert!(
        r.services.iter().all(|s| s.outcome.name() == "Failed"),
        "{r:?}"
    );
    assert!(d.table().client().inner.services.is_empty());

    d.table().client().faults = vec![Fault::FailDestDump(id("203.0.113.1"))];
    // First apply creates them (no destination dump for services we do not own yet).
    let r = d.apply(&plan(three()), &now());
    assert!(r.problems().next().is_none(), "{r:?}");
    // Now owned: the destination dump is needed and fails; nothing is written blind.
    let writes = d.table().client().inner.writes;
    let r = d.apply(&plan(three()), &now());
    assert!(r.services.iter().all(|s| s.outcome.name() == "Failed"));
    assert_eq!(d.table().client().inner.writes, writes);
}

#[test]
fn a_dropped_socket_fails_every_service() {
    let (mut d, _dir) = director("socket", FaultyIpvs::default());
    assert!(d.apply(&plan(three()), &now()).problems().next().is_none());
    d.table().client().faults.push(Fault::DropSocket);
    let r = d.apply(&plan(three()), &now());
    assert_eq!(r.services.len(), 3);
    for s in &r.services {
        match &s.outcome {
            Outcome::Failed(reason) => assert!(reason.message.contains("netlink socket")),
            o => panic!("{o:?}"),
        }
    }
}

/// The review's case: a full apply that half-fails must not leave an older cache
/// behind for apply_incremental, or the kernel stays at the wrong weight.
#[test]
fn a_failed_full_apply_drops_the_incremental_cache() {
    let (mut d, _dir) = director("cache", FaultyIpvs::default());
    let plan_w1 = three();
    let services: Vec<Service> = plan_w1.clone();
    d.table().apply(&services, Instant::now()).unwrap();
    assert_eq!(weight(&mut d, "203.0.113.1", "192.0.2.1"), 1);

    // Weight 5 for a; b's destination change refused: the apply half-fails.
    let mut w5 = plan_w1.clone();
    w5[0].real_servers[0].weight = 5;
    w5[1].real_servers[0].weight = 7;
    d.table().client().faults.push(Fault::Refuse {
        cmd: Command::SetDest,
        service: Some(id("203.0.113.2")),
        errno: 22,
    });
    let r = d.table().apply(&w5, Instant::now()).unwrap();
    assert_eq!(r.errors.len(), 1);
    assert_eq!(weight(&mut d, "203.0.113.1", "192.0.2.1"), 5);
    d.table().client().faults.clear();

    // Back to weight 1 incrementally: must reach the kernel.
    let r = d
        .table()
        .apply_incremental(&plan_w1, Instant::now())
        .unwrap();
    assert!(r.writes > 0, "{r:?}");
    assert_eq!(weight(&mut d, "203.0.113.1", "192.0.2.1"), 1);
}

#[test]
fn a_sysctl_that_cannot_be_set_fails_the_services() {
    let (mut d, _dir) = director("sysctl", FaultyIpvs::default());
    d.host().fail_sysctl = Some("net/ipv4/ip_forward".into());
    let r = d.apply(&plan(three()), &now());
    for s in &r.services {
        match &s.outcome {
            Outcome::Failed(reason) => assert!(reason.message.contains("ip_forward")),
            o => panic!("{o:?}"),
        }
    }
}

#[test]
fn an_nft_failure_fails_only_fullnat_services_and_is_retried() {
    let (mut d, _dir) = director("nft", FaultyIpvs::default());
    d.host().fail_nft = true;
    let r = d.apply(&plan(three()), &now());
    assert_eq!(outcome(&r, "203.0.113.3").name(), "Failed");
    assert!(outcome(&r, "203.0.113.1").is_programmed());
    // A VIP guard that cannot be loaded fails no service: it protects, not forwards.
    assert!(outcome(&r, "203.0.113.2").is_programmed());
    d.host().fail_nft = false;
    let r = d.apply(&plan(three()), &now());
    assert!(outcome(&r, "203.0.113.3").is_programmed());
    assert_eq!(d.host().nft_loads, 2, "FullNAT and the guard, both retried");

    // The last FullNAT service gone: the table is removed once (and the guard loses
    // the VIP), then no more nft runs.
    let two: Vec<Service> = three().into_iter().take(2).collect();
    d.apply(&plan(two.clone()), &now());
    assert_eq!(d.host().nft_loads, 4);
    assert!(!d
        .host()
        .nft_script
        .as_ref()
        .unwrap()
        .contains("203.0.113.3"));
    d.apply(&plan(two), &now());
    assert_eq!(d.host().nft_loads, 4);
}

#[test]
fn a_removed_real_server_is_reported_draining() {
    let (mut d, _dir) = director("drain", FaultyIpvs::default());
    let mut s = three();
    s[0].real_servers.push(rs("192.0.2.9", 1));
    d.apply(&plan(s.clone()), &now());
    d.table().client().inner.set_conns(
        &id("203.0.113.1"),
        &kubelvs_ipvs::table::DestId {
            addr: "192.0.2.9".parse().unwrap(),
            port: 8080,
        },
        1,
        0,
    );
    s[0].real_servers.pop();
    d.table().set_drain_timeout(Duration::from_secs(60));
    let r = d.apply(&plan(s), &now());
    assert_eq!(r.real_servers.len(), 1, "{r:?}");
    assert_eq!(r.real_servers[0].state, RealServerState::Draining);
    assert_eq!(r.real_servers[0].real_server.to_string(), "192.0.2.9:8080");
    assert_eq!(weight(&mut d, "203.0.113.1", "192.0.2.9"), 0);
}

/// `--cleanup`: every owned service goes and so does FullNAT's table, even from a
/// process that never loaded it; a service another tool made stays.
#[test]
fn remove_all_takes_what_is_owned_and_leaves_the_rest() {
    let mut fake = FakeIpvs::new();
    fake.insert(foreign_service(id("198.51.100.9")));
    let dir = TempDir::new("remove-all");
    let owned = dir.0.join("owned");
    let mut d = IpvsDirector::new(
        IpvsDataplane::with_client(FaultyIpvs::new(fake), &owned).unwrap(),
        FakeHost::default(),
    );
    assert!(d.apply(&plan(three()), &now()).problems().next().is_none());
    let kernel = d.table().client().inner.clone();
    // A fresh process (the cleanup run) on the same kernel and state file.
    let mut fresh = IpvsDirector::new(
        IpvsDataplane::with_client(FaultyIpvs::new(kernel), &owned).unwrap(),
        FakeHost::default(),
    );
    let writes = fresh.remove_all(&now()).unwrap();
    assert_eq!(writes, 3 + 1, "three services and the nft table");
    let left: Vec<ServiceId> = fresh
        .table()
        .client()
        .inner
        .services
        .keys()
        .copied()
        .collect();
    assert_eq!(left, vec![id("198.51.100.9")]);
    let script = fresh.host().nft_script.clone().unwrap();
    assert!(
        script.contains("delete table inet kubelvs_fullnat"),
        "{script}"
    );
    assert!(!script.contains("chain"), "{script}");
    assert!(fresh.table().owned().is_empty());
}

#[test]
fn remove_all_names_what_it_could_not_remove() {
    let (mut d, _dir) = director("remove-all-nft", FaultyIpvs::default());
    assert!(d.apply(&plan(three()), &now()).problems().next().is_none());
    d.host().fail_nft = true;
    let e = d.remove_all(&now()).unwrap_err();
    assert!(e.contains("nftables table"), "{e}");
}

/// The VIP guard (unserved ports of our VIPs dropped) is loaded with the services,
/// and keeps open a port another tool's IPVS service serves on one of our VIPs.
#[test]
fn the_vip_guard_keeps_other_tools_ports_on_our_vips_open() {
    let mut fake = FakeIpvs::new();
    fake.insert(foreign_service(ServiceId::Inet {
        protocol: 6,
        addr: "203.0.113.1".parse().unwrap(),
        port: 8080,
    }));
    let (mut d, _dir) = director("guard", FaultyIpvs::new(fake));
    let only_nat = three().into_iter().take(2).collect();
    assert!(d.apply(&plan(only_nat), &now()).problems().next().is_none());
    // Once the kernel's table is known (after the first complete apply).
    d.apply(&plan(three().into_iter().take(2).collect()), &now());
    let script = d.host().nft_script.clone().unwrap();
    assert!(script.contains("table inet kubelvs_vips"), "{script}");
    assert!(script.contains("203.0.113.1 . 6 . 80"), "{script}");
    assert!(script.contains("203.0.113.1 . 6 . 8080"), "{script}");
    assert!(
        script.contains("elements = { 203.0.113.1, 203.0.113.2 }"),
        "{script}"
    );
}
