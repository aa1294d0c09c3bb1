//! The XDP director's decisions without a kernel: `DirectorTable` over `FakeMaps`
//! and `FaultyMaps`, through the `Dataplane` trait and directly. No root needed.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use kubelvs_model::{
    ApplyContext, Dataplane, DataplaneKind, Forwarding, NodePlan, ObjectKind, ObjectRef, Outcome,
    Protocol, RealServer, RealServerState, Scheduler, SchedulerFlags, Service, ServiceKey,
};
use kubelvs_xdp::decide::{decide, MapWrite};
use kubelvs_xdp::maps::{VipKey, VipMeta, REAL_F_ALIVE, REAL_NONE};
use kubelvs_xdp::{
    AnyVipKey, DirectorOptions, DirectorTable, FakeMaps, FaultyMaps, MapFault, StaticNeighbours,
    XdpDataplane,
};
use proptest::prelude::*;

fn opts() -> DirectorOptions {
    let mut o = DirectorOptions::new("192.0.2.1".parse().unwrap());
    o.max_vips = 4;
    o.max_reals = 16;
    o.ring_size = 13;
    o
}

fn svc(vip: &str, fwd: Forwarding, reals: &[(&str, u32)]) -> Service {
    Service {
        key: ServiceKey {
            vip: vip.parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
        },
        scheduler: Scheduler::Maglev,
        scheduler_flags: SchedulerFlags::default(),
        forwarding: fwd,
        persistence: None,
        source_address: None,
        health_check: None,
        dataplane: DataplaneKind::Xdp,
        real_servers: reals
            .iter()
            .map(|(a, w)| RealServer {
                address: a.parse().unwrap(),
                port: 80,
                weight: *w,
                source: ObjectRef::new(ObjectKind::RealServer, "t", a),
            })
            .collect(),
        source: ObjectRef::new(ObjectKind::VirtualService, "t", vip),
    }
}

fn plan(services: Vec<Service>) -> NodePlan {
    NodePlan {
        node: "n".into(),
        services,
        ..NodePlan::default()
    }
}

fn all_known(services: &[Service]) -> StaticNeighbours {
    let mut n = StaticNeighbours::default();
    for s in services {
        for r in &s.real_servers {
            n.known.insert(r.address, [2, 0, 0, 0, 0, 1]);
        }
    }
    n
}

type FakeDataplane = XdpDataplane<StaticNeighbours, DirectorTable<FakeMaps>>;

fn dataplane(services: &[Service]) -> FakeDataplane {
    let o = opts();
    XdpDataplane::new(
        DirectorTable::new(FakeMaps::new(&o), o).unwrap(),
        all_known(services),
    )
}

fn key(vip: &str) -> ServiceKey {
    ServiceKey {
        vip: vip.parse().unwrap(),
        port: 80,
        protocol: Protocol::Tcp,
    }
}

#[test]
fn outcomes_capacity_and_zero_writes_without_a_kernel() {
    let services = vec![
        svc("203.0.113.1", Forwarding::Dr, &[("198.51.100.1", 1)]),
        svc("203.0.113.2", Forwarding::FullNat, &[("198.51.100.2", 1)]),
        svc("203.0.113.3", Forwarding::Nat, &[("198.51.100.3", 1)]),
        svc("203.0.113.4", Forwarding::Nat, &[("198.51.100.4", 1)]),
        svc("203.0.113.5", Forwarding::Nat, &[("198.51.100.5", 1)]),
        svc("203.0.113.6", Forwarding::Nat, &[("198.51.100.6", 1)]),
    ];
    let mut dp = dataplane(&services);
    let ctx = ApplyContext::at(Instant::now());
    let r = dp.apply(&plan(services.clone()), &ctx);
    assert_eq!(r.services.len(), 6);
    match r.service(&key("203.0.113.2")).unwrap() {
        Outcome::Unsupported(reason) => assert_eq!(reason.field, "spec.forwarding"),
        o => panic!("{o:?}"),
    }
    // Four VIP ids: the fifth programmable service finds none.
    let unsupported: Vec<String> = r
        .services
        .iter()
        .filter(|s| s.outcome.name() == "Unsupported")
        .map(|s| s.key.vip.to_string())
        .collect();
    assert_eq!(unsupported, ["203.0.113.2", "203.0.113.6"], "{r:?}");
    assert!(r.services[5]
        .outcome
        .reason()
        .unwrap()
        .message
        .contains("max_vips"));
    assert_eq!(dp.director().maps().vips.len(), 4);
    let again = dp.apply(&plan(services), &ctx);
    assert_eq!(again.writes, 0, "{again:?}");
}

#[test]
fn writes_come_in_the_order_the_program_needs() {
    let o = opts();
    let d = decide(
        &Default::default(),
        &o,
        &[svc("203.0.113.1", Forwarding::Nat, &[("198.51.100.1", 1)])],
        &HashMap::new(),
        Instant::now(),
    );
    let pos = |f: &dyn Fn(&MapWrite) -> bool| d.writes.iter().position(f).unwrap();
    let config = pos(&|w| matches!(w, MapWrite::Config(_)));
    let real = pos(&|w| matches!(w, MapWrite::Real { .. }));
    let ring = pos(&|w| matches!(w, MapWrite::Ring { .. }));
    let vip = pos(&|w| matches!(w, MapWrite::InsertVip(..)));
    assert!(config < real && real < ring && ring < vip, "{:?}", d.writes);
}

#[test]
fn a_failed_write_fails_every_service_and_the_next_apply_recovers() {
    let o = opts();
    let services = vec![
        svc("203.0.113.1", Forwarding::Nat, &[("198.51.100.1", 1)]),
        svc("203.0.113.2", Forwarding::Nat, &[("198.51.100.2", 1)]),
    ];
    let maps = FaultyMaps {
        inner: FakeMaps::new(&o),
        faults: vec![MapFault::InsertVip],
    };
    let mut dp = XdpDataplane::new(DirectorTable::new(maps, o).unwrap(), all_known(&services));
    let ctx = ApplyContext::at(Instant::now());
    let r = dp.apply(&plan(services.clone()), &ctx);
    assert!(
        r.services.iter().all(|s| s.outcome.name() == "Failed"),
        "{r:?}"
    );
    dp.director().maps_mut().faults.clear();
    let r = dp.apply(&plan(services), &ctx);
    assert!(r.problems().next().is_none(), "{r:?}");
    let ids: BTreeSet<u32> = dp
        .director()
        .maps()
        .inner
        .vips
        .values()
        .map(|m| m.vip_id)
        .collect();
    assert_eq!(ids.len(), 2, "each VIP its own id");
}

#[test]
fn a_map_that_cannot_be_read_back_is_an_error_not_a_guess() {
    let o = opts();
    let maps = FaultyMaps {
        inner: FakeMaps::new(&o),
        faults: vec![MapFault::ReadVips],
    };
    let e = DirectorTable::new(maps, o).unwrap_err();
    assert!(e.to_string().contains("vips"), "{e}");
}

#[test]
fn stray_vip_ids_read_back_are_reprogrammed_or_removed() {
    let o = opts();
    let mut maps = FakeMaps::new(&o);
    for (addr, id) in [("203.0.113.1", 1000), ("203.0.113.9", 7)] {
        let k = AnyVipKey::V4(VipKey {
            addr: u32::from_ne_bytes(addr.parse::<std::net::Ipv4Addr>().unwrap().octets()),
            port: 80u16.to_be(),
            proto: 6,
            pad: 0,
        });
        maps.vips.insert(
            k,
            VipMeta {
                vip_id: id,
                ..VipMeta::default()
            },
        );
    }
    let mut t = DirectorTable::new(maps, o).unwrap();
    let s = [svc("203.0.113.1", Forwarding::Nat, &[("198.51.100.1", 1)])];
    t.apply_at(&s, &HashMap::new(), Instant::now()).unwrap();
    assert_eq!(t.maps().vips.len(), 1);
    assert!(t.vip_id(&key("203.0.113.1")).unwrap() < 4);
}

#[test]
fn drains_and_unresolved_neighbours_without_a_kernel() {
    let both = vec![svc(
        "203.0.113.1",
        Forwarding::Dr,
        &[("198.51.100.1", 1), ("198.51.100.2", 1)],
    )];
    let mut dp = dataplane(&both);
    let t0 = Instant::now();
    dp.apply(&plan(both.clone()), &ApplyContext::at(t0));
    let one = vec![svc("203.0.113.1", Forwarding::Dr, &[("198.51.100.1", 1)])];
    let r = dp.apply(&plan(one.clone()), &ApplyContext::at(t0));
    assert_eq!(r.real_servers.len(), 1);
    assert_eq!(r.real_servers[0].state, RealServerState::Draining);
    let id2 = dp
        .director()
        .real_id("198.51.100.2".parse::<IpAddr>().unwrap(), 80)
        .unwrap();
    let vip_id = dp.director().vip_id(&key("203.0.113.1")).unwrap();
    assert!(
        !dp.director().maps().ring(vip_id).contains(&id2),
        "no new flows"
    );
    assert_ne!(
        dp.director().maps().reals[id2 as usize].flags & REAL_F_ALIVE,
        0,
        "open flows"
    );
    let past = t0 + Duration::from_secs(300);
    dp.apply(&plan(one), &ApplyContext::at(past));
    assert_eq!(
        dp.director().maps().reals[id2 as usize].flags & REAL_F_ALIVE,
        0
    );

    // A DR real server without a MAC.
    dp.neighbours().known.clear();
    let r = dp.apply(&plan(both), &ApplyContext::at(past));
    assert_eq!(r.real_servers.len(), 2, "{r:?}");
    assert!(r
        .real_servers
        .iter()
        .all(|n| matches!(n.state, RealServerState::Unresolved(_))));
    assert!(dp
        .director()
        .maps()
        .ring(vip_id)
        .iter()
        .all(|s| *s == REAL_NONE));
    assert_eq!(dp.neighbours().solicited.len(), 2);
}

#[test]
fn a_reused_real_server_id_gets_a_new_generation() {
    let mut o = opts();
    o.max_reals = 3; // ids 1 and 2
    o.drain_timeout = Duration::ZERO;
    let mut t = DirectorTable::new(FakeMaps::new(&o), o).unwrap();
    let now = Instant::now();
    let n = HashMap::new();
    t.apply_at(
        &[svc("203.0.113.1", Forwarding::Nat, &[("198.51.100.1", 1)])],
        &n,
        now,
    )
    .unwrap();
    let a = t
        .real_id("198.51.100.1".parse::<IpAddr>().unwrap(), 80)
        .unwrap();
    let gen_a = t.real_gen(a).unwrap();
    t.apply_at(
        &[svc("203.0.113.1", Forwarding::Nat, &[("198.51.100.2", 1)])],
        &n,
        now,
    )
    .unwrap();
    t.apply_at(
        &[svc("203.0.113.1", Forwarding::Nat, &[("198.51.100.3", 1)])],
        &n,
        now,
    )
    .unwrap();
    let c = t
        .real_id("198.51.100.3".parse::<IpAddr>().unwrap(), 80)
        .unwrap();
    assert_eq!(c, a, "the id came round again");
    assert_eq!(t.real_gen(c).unwrap(), gen_a + 1);
}

proptest! {
    /// Any sequence of plans leaves the maps describing exactly the last plan:
    /// one entry per VIP with a unique id, rings naming only that VIP's live real
    /// servers with weight, real servers alive exactly when some VIP uses them, and
    /// a re-apply writing nothing.
    #[test]
    fn maps_always_describe_the_last_plan(
        plans in prop::collection::vec(
            prop::collection::btree_map(0u8..5, prop::collection::btree_map(0u8..8, 0u32..4, 0..5), 0..5),
            1..6,
        )
    ) {
        let mut o = opts();
        o.max_vips = 8;
        o.drain_timeout = Duration::ZERO;
        let mut t = DirectorTable::new(FakeMaps::new(&o), o).unwrap();
        let now = Instant::now();
        for p in &plans {
            let services = weighted(p);
            let r = t.apply_at(&services, &HashMap::new(), now).unwrap();
            prop_assert!(r.skipped.is_empty(), "{:?}", r);
            let maps = t.maps().clone();
            prop_assert_eq!(maps.vips.len(), services.len());
            let ids: BTreeSet<u32> = maps.vips.values().map(|m| m.vip_id).collect();
            prop_assert_eq!(ids.len(), services.len());
            let mut used = BTreeSet::new();
            for s in &services {
                let vip_id = t.vip_id(&s.key).unwrap();
                let weighted: BTreeSet<u32> = s.real_servers.iter()
                    .filter(|r| r.weight > 0)
                    .map(|r| t.real_id(r.address, 80).unwrap())
                    .collect();
                for slot in maps.ring(vip_id) {
                    prop_assert!(*slot == REAL_NONE || weighted.contains(slot));
                }
                prop_assert_eq!(weighted.is_empty(), maps.ring(vip_id).iter().all(|s| *s == REAL_NONE));
                used.extend(s.real_servers.iter().map(|r| t.real_id(r.address, 80).unwrap()));
            }
            for (id, real) in maps.reals.iter().enumerate().skip(1) {
                prop_assert_eq!(real.flags & REAL_F_ALIVE != 0, used.contains(&(id as u32)));
            }
            let again = t.apply_at(&services, &HashMap::new(), now).unwrap();
            prop_assert!(again.is_noop(), "{:?}", again);
        }
    }
}

#[test]
fn a_connection_counting_scheduler_is_unsupported_on_xdp() {
    let mut s = svc("203.0.113.1", Forwarding::Nat, &[("198.51.100.1", 1)]);
    s.scheduler = Scheduler::Wlc;
    let mut sh = svc("203.0.113.2", Forwarding::Nat, &[("198.51.100.2", 1)]);
    sh.scheduler = Scheduler::Sh;
    let services = vec![s, sh];
    let mut dp = dataplane(&services);
    let r = dp.apply(&plan(services), &ApplyContext::at(Instant::now()));
    match r.service(&key("203.0.113.1")).unwrap() {
        Outcome::Unsupported(reason) => assert_eq!(reason.field, "spec.scheduler"),
        o => panic!("{o:?}"),
    }
    assert!(r.service(&key("203.0.113.2")).unwrap().is_programmed());
}

#[test]
fn a_service_that_outgrows_the_real_server_ids_keeps_what_it_had() {
    let mut o = opts();
    o.max_reals = 4; // id 0 is reserved: 3 real servers fit.
    let mut t = DirectorTable::new(FakeMaps::new(&o), o).unwrap();
    let now = Instant::now();
    let n = HashMap::new();
    let a = svc("203.0.113.1", Forwarding::Nat, &[("198.51.100.1", 1)]);
    let b = svc("203.0.113.2", Forwarding::Nat, &[("198.51.100.2", 1)]);
    t.apply_at(&[a, b.clone()], &n, now).unwrap();
    let before = t.maps().clone();
    let grown = svc(
        "203.0.113.1",
        Forwarding::Nat,
        &[
            ("198.51.100.1", 1),
            ("198.51.100.3", 1),
            ("198.51.100.4", 1),
        ],
    );
    let r = t.apply_at(&[grown, b], &n, now).unwrap();
    assert_eq!(r.skipped.len(), 1, "{r:?}");
    assert!(r.skipped[0].1.reason.contains("max_reals"), "{r:?}");
    let a_id = t.vip_id(&key("203.0.113.1")).unwrap();
    assert_eq!(t.maps().ring(a_id), before.ring(a_id), "a keeps its ring");
    assert!(t
        .real_id("198.51.100.1".parse::<IpAddr>().unwrap(), 80)
        .is_some());
    assert!(t.vip_id(&key("203.0.113.2")).is_some());
}

#[test]
fn a_removed_udp_real_server_is_not_drained() {
    let mut both = svc(
        "203.0.113.1",
        Forwarding::Nat,
        &[("198.51.100.1", 1), ("198.51.100.2", 1)],
    );
    both.key.protocol = Protocol::Udp;
    let mut one = both.clone();
    one.real_servers.pop();
    let o = opts();
    let mut t = DirectorTable::new(FakeMaps::new(&o), o).unwrap();
    let now = Instant::now();
    t.apply_at(&[both], &HashMap::new(), now).unwrap();
    let id2 = t
        .real_id("198.51.100.2".parse::<IpAddr>().unwrap(), 80)
        .unwrap();
    let r = t.apply_at(&[one], &HashMap::new(), now).unwrap();
    assert!(r.draining.is_empty(), "{r:?}");
    assert_eq!(r.real_servers_removed, 1);
    assert_eq!(
        t.maps().reals[id2 as usize].flags & REAL_F_ALIVE,
        0,
        "dead: its flows reschedule"
    );
}

#[test]
fn after_a_restart_a_real_server_the_plan_dropped_is_kept_for_one_drain_timeout() {
    let o = opts();
    let now = Instant::now();
    let n = HashMap::new();
    let both = [svc(
        "203.0.113.1",
        Forwarding::Nat,
        &[("198.51.100.1", 1), ("198.51.100.2", 1)],
    )];
    let one = [svc("203.0.113.1", Forwarding::Nat, &[("198.51.100.1", 1)])];
    let mut before = DirectorTable::new(FakeMaps::new(&o), o.clone()).unwrap();
    before.apply_at(&both, &n, now).unwrap();
    // The agent restarts (its drain deadlines die with it); the new plan drops .2.
    let mut after = DirectorTable::new(before.maps().clone(), o.clone()).unwrap();
    let dropped = "198.51.100.2".parse::<IpAddr>().unwrap();
    let r = after.apply_at(&one, &n, now).unwrap();
    assert_eq!(r.real_servers_removed, 0, "{r:?}");
    assert!(
        after.real_id(dropped, 80).is_some(),
        "its connections continue"
    );
    let r = after.apply_at(&one, &n, now + o.drain_timeout / 2).unwrap();
    assert_eq!(r.real_servers_removed, 0);
    let r = after
        .apply_at(&one, &n, now + o.drain_timeout + Duration::from_secs(1))
        .unwrap();
    assert_eq!(r.real_servers_removed, 1, "then gone");
    assert!(after.real_id(dropped, 80).is_none());
    // Without a restart a dropped real server drains as before: the same deadline.
    let r = before.apply_at(&one, &n, now).unwrap();
    assert_eq!(r.draining.len(), 1);
}

/// The VIP addresses whose unserved ports the program drops follow the VIP entries:
/// one per address whatever its ports, added after its first entry, removed after its
/// last, and read back after a restart.
#[test]
fn vip_addresses_follow_their_entries() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let mut on_443 = svc("203.0.113.1", Forwarding::Dr, &[("198.51.100.1", 1)]);
    on_443.key.port = 443;
    let services = vec![
        svc("203.0.113.1", Forwarding::Dr, &[("198.51.100.1", 1)]),
        on_443.clone(),
        svc("2001:db8::1", Forwarding::Dr, &[("2001:db8:1::1", 1)]),
    ];
    let mut dp = dataplane(&services);
    let ctx = ApplyContext::at(Instant::now());
    dp.apply(&plan(services.clone()), &ctx);
    let addrs = |dp: &mut FakeDataplane| dp.director().maps().vip_addrs.clone();
    assert_eq!(
        addrs(&mut dp),
        BTreeSet::from([ip("203.0.113.1"), ip("2001:db8::1")])
    );
    let o = opts();
    let d = decide(
        &Default::default(),
        &o,
        &services[..1],
        &HashMap::new(),
        Instant::now(),
    );
    let entry = d
        .writes
        .iter()
        .position(|w| matches!(w, MapWrite::InsertVip(..)));
    let addr = d
        .writes
        .iter()
        .position(|w| matches!(w, MapWrite::InsertVipAddr(_)));
    assert!(entry.unwrap() < addr.unwrap(), "{:?}", d.writes);

    // Port 80 goes, 443 stays: the address stays. Then the last port goes.
    dp.apply(&plan(vec![on_443, services[2].clone()]), &ctx);
    assert!(addrs(&mut dp).contains(&ip("203.0.113.1")));
    dp.apply(&plan(vec![services[2].clone()]), &ctx);
    assert_eq!(addrs(&mut dp), BTreeSet::from([ip("2001:db8::1")]));

    // A restarted agent reads them back: nothing to write for the same plan.
    let maps = dp.director().maps().clone();
    let mut again = XdpDataplane::new(
        DirectorTable::new(maps, opts()).unwrap(),
        all_known(&services),
    );
    let r = again.apply(&plan(vec![services[2].clone()]), &ctx);
    assert_eq!(r.writes, 0, "{r:?}");
}

/// Services on VIPs `203.0.113.{v+1}`, real servers `198.51.100.{r+1}` with weights.
fn weighted(
    plan: &std::collections::BTreeMap<u8, std::collections::BTreeMap<u8, u32>>,
) -> Vec<Service> {
    plan.iter()
        .map(|(v, reals)| {
            let reals: Vec<(String, u32)> = reals
                .iter()
                .map(|(r, w)| (format!("198.51.100.{}", r + 1), *w))
                .collect();
            let refs: Vec<(&str, u32)> = reals.iter().map(|(a, w)| (a.as_str(), *w)).collect();
            svc(&format!("203.0.113.{}", v + 1), Forwarding::Nat, &refs)
        })
        .collect()
}

proptest! {
    /// An edit decided for the changed services alone (weights only) writes what the
    /// whole decision writes, in its order, and leaves the same state; an edit that
    /// adds a real server is left to the whole decision.
    #[test]
    fn a_weights_only_decision_is_the_whole_decision(
        base in prop::collection::btree_map(0u8..5, prop::collection::btree_map(0u8..8, 0u32..4, 1..5), 1..5),
        edits in prop::collection::vec((0u8..5, 0u8..8, 0u32..4), 0..6),
        adds in any::<bool>(),
    ) {
        use kubelvs_xdp::decide::{decide_weights, Decided, State};
        let mut o = opts();
        o.max_vips = 8;
        let now = Instant::now();
        let neighbours = HashMap::new();
        let a = weighted(&base);
        let first = decide(&State::default(), &o, &a, &neighbours, now);
        let last = Decided::of(&first.report, &a, &neighbours).expect("a clean decision");
        let mut plan = base.clone();
        let mut added = false;
        for (v, r, w) in edits {
            if let Some(reals) = plan.get_mut(&v) {
                match reals.get_mut(&r) {
                    Some(weight) => *weight = w,
                    None if adds => {
                        reals.insert(r, w);
                        added = true;
                    }
                    None => {}
                }
            }
        }
        let b = weighted(&plan);
        let whole = decide(&first.next, &o, &b, &neighbours, now);
        match decide_weights(&first.next, &o, &b, &neighbours, &last) {
            Some(d) => {
                prop_assert!(!added, "a new real server needs an id: not a weights-only edit");
                prop_assert_eq!(&d.writes, &whole.writes);
                let mut next = first.next.clone();
                next.ring_inputs.extend(d.ring_inputs);
                prop_assert_eq!(next, whole.next);
                prop_assert_eq!(whole.report, kubelvs_xdp::ApplyReport::default());
            }
            None => prop_assert!(added, "a weights-only edit was refused"),
        }
    }
}

#[test]
fn a_weight_edit_through_the_table_rewrites_one_ring_and_a_failed_one_is_repaired() {
    let mut o = opts();
    o.max_vips = 8;
    let now = Instant::now();
    let mut t = DirectorTable::new(FakeMaps::new(&o), o.clone()).unwrap();
    let plan = |w: u32| {
        vec![
            svc(
                "203.0.113.1",
                Forwarding::Nat,
                &[("198.51.100.1", 1), ("198.51.100.2", 1)],
            ),
            svc(
                "203.0.113.2",
                Forwarding::Nat,
                &[("198.51.100.1", 1), ("198.51.100.2", w)],
            ),
        ]
    };
    t.apply_at(&plan(1), &HashMap::new(), now).unwrap();
    let ring1 = t
        .maps()
        .ring(t.vip_id(&key("203.0.113.1")).unwrap())
        .to_vec();
    let r = t.apply_at(&plan(0), &HashMap::new(), now).unwrap();
    assert!(r.ring_slots_written > 0, "{r:?}");
    let vip2 = t.vip_id(&key("203.0.113.2")).unwrap();
    let rs2 = t
        .real_id("198.51.100.2".parse::<IpAddr>().unwrap(), 80)
        .unwrap();
    assert!(
        !t.maps().ring(vip2).contains(&rs2),
        "weight 0: out of the ring"
    );
    assert_eq!(
        t.maps().ring(t.vip_id(&key("203.0.113.1")).unwrap()),
        &ring1[..]
    );
    // The same through a table that fails its next ring write: an error, then the
    // next apply (a whole decision over maps read back) writes it.
    let faulty = FaultyMaps {
        inner: FakeMaps::new(&o),
        faults: Vec::new(),
    };
    let mut f = DirectorTable::new(faulty, o).unwrap();
    f.apply_at(&plan(1), &HashMap::new(), now).unwrap();
    f.maps_mut().faults.push(MapFault::Ring);
    assert!(f.apply_at(&plan(0), &HashMap::new(), now).is_err());
    f.maps_mut().faults.clear();
    f.apply_at(&plan(0), &HashMap::new(), now).unwrap();
    let vip2 = f.vip_id(&key("203.0.113.2")).unwrap();
    let rs2 = f
        .real_id("198.51.100.2".parse::<IpAddr>().unwrap(), 80)
        .unwrap();
    assert!(!f.maps().inner.ring(vip2).contains(&rs2));
}
