//! IpvsDataplane::apply against FakeIpvs (kernel answers, real codec, real state file).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kubelvs_ipvs::codec::Netmask;
use kubelvs_ipvs::table::{DestConfig, DestId, KernelDest, KernelService, ServiceConfig};
use kubelvs_ipvs::{Command, FakeIpvs, IpvsDataplane, ServiceId};
use kubelvs_model::{
    DataplaneKind, Forwarding, ObjectKind, ObjectRef, Persistence, Protocol, RealServer, Scheduler,
    SchedulerFlags, Service, ServiceKey, Tunnel,
};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "kubelvs-ipvs-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    fn state(&self) -> PathBuf {
        self.0.join("run/kube-lvs/owned")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rs(addr: &str, port: u16, weight: u32) -> RealServer {
    RealServer {
        address: addr.parse().unwrap(),
        port,
        weight,
        source: ObjectRef::new(ObjectKind::RealServer, "default", addr),
    }
}

fn service(vip: &str, port: u16, fwd: Forwarding, servers: Vec<RealServer>) -> Service {
    Service {
        key: ServiceKey {
            vip: vip.parse().unwrap(),
            port,
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
        source: ObjectRef::new(ObjectKind::VirtualService, "default", "web"),
    }
}

fn web() -> Service {
    service(
        "203.0.113.10",
        80,
        Forwarding::Nat,
        vec![
            rs("192.0.2.1", 8080, 1),
            rs("192.0.2.2", 8080, 2),
            rs("192.0.2.3", 8080, 3),
        ],
    )
}

fn foreign() -> KernelService {
    // What `ipvsadm -A -t 198.51.100.7:443 -s rr; ipvsadm -a ... -r 192.0.2.9:443 -m` leaves.
    KernelService {
        id: ServiceId::Inet {
            protocol: 6,
            addr: "198.51.100.7".parse().unwrap(),
            port: 443,
        },
        config: ServiceConfig {
            scheduler: "rr".into(),
            flags: 0,
            timeout: 0,
            netmask: Netmask::V4([255; 4].into()),
        },
        dests: vec![KernelDest {
            id: DestId {
                addr: "192.0.2.9".parse().unwrap(),
                port: 443,
            },
            config: DestConfig::masq(1),
            active_conns: 0,
            inact_conns: 0,
            persist_conns: 0,
            stats: Default::default(),
        }],
        stats: Default::default(),
    }
}

#[test]
fn program_reapply_change_one_weight() {
    let dir = TempDir::new("weights");
    let mut fake = FakeIpvs::new();
    fake.insert(foreign());
    let mut dp = IpvsDataplane::with_client(fake, dir.state()).unwrap();
    let now = Instant::now();

    let r = dp.apply(&[web()], now).unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!((r.added_services, r.added_dests, r.writes), (1, 3, 4));

    let r = dp.apply(&[web()], now).unwrap();
    assert_eq!(r.writes, 0, "same plan twice sends nothing");
    assert_eq!(r.ops(), 0);

    let mut changed = web();
    changed.real_servers[1].weight = 5;
    let before = dp.client().log.len();
    let r = dp.apply(&[changed], now).unwrap();
    assert_eq!(r.writes, 1);
    assert_eq!(r.updated_dests, 1);
    let sent = &dp.client().log[before..];
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].cmd, Command::SetDest);
    assert_eq!(sent[0].dest.as_ref().unwrap().weight, Some(5));

    // The ipvsadm service is exactly as it was.
    assert_eq!(dp.client().services.get(&foreign().id), Some(&foreign()));
    // Nothing was ever flushed or deleted.
    assert!(dp.client().log.iter().all(|m| !matches!(
        m.cmd,
        Command::Flush | Command::DelService | Command::DelDest
    )));
}

#[test]
fn scheduler_and_persistence_changes_are_set_service() {
    let dir = TempDir::new("sched");
    let mut dp = IpvsDataplane::with_client(FakeIpvs::new(), dir.state()).unwrap();
    let now = Instant::now();
    dp.apply(&[web()], now).unwrap();
    let mut s = web();
    s.scheduler = Scheduler::Sh;
    s.scheduler_flags.flag1 = true;
    s.persistence = Some(Persistence {
        timeout_seconds: 360,
        prefix_length: 24,
    });
    let before = dp.client().log.len();
    let r = dp.apply(&[s], now).unwrap();
    assert_eq!((r.writes, r.updated_services), (1, 1));
    let m = &dp.client().log[before];
    assert_eq!(m.cmd, Command::SetService);
    let a = m.service.as_ref().unwrap();
    assert_eq!(a.sched_name.as_deref(), Some("sh"));
    assert_eq!(a.flags.unwrap().flags, 0x1 | 0x8);
    assert_eq!(a.flags.unwrap().mask, u32::MAX);
    assert_eq!(a.timeout, Some(360));
    assert_eq!(a.netmask, Some(Netmask::V4([255, 255, 255, 0].into())));
}

#[test]
fn ownership_survives_a_restart_and_foreign_services_survive_everything() {
    let dir = TempDir::new("restart");
    let mut fake = FakeIpvs::new();
    fake.insert(foreign());
    let mut dp = IpvsDataplane::with_client(fake, dir.state()).unwrap();
    let now = Instant::now();
    dp.apply(&[web()], now).unwrap();
    let text = std::fs::read_to_string(dir.state()).unwrap();
    assert!(text.contains("tcp 203.0.113.10 80"), "{text}");
    assert!(!text.contains("198.51.100.7"), "{text}");

    // "Restart": a new dataplane over the same kernel and state file, with an empty plan.
    let fake = std::mem::take(dp.client());
    drop(dp);
    let mut dp = IpvsDataplane::with_client(fake, dir.state()).unwrap();
    assert_eq!(dp.owned().len(), 1);
    let r = dp.apply(&[], now).unwrap();
    assert_eq!((r.deleted_services, r.writes), (1, 1));
    assert_eq!(
        dp.client().services.len(),
        1,
        "only the ipvsadm service is left"
    );
    assert!(dp.client().services.contains_key(&foreign().id));
    assert!(dp.owned().is_empty());
    assert!(!std::fs::read_to_string(dir.state())
        .unwrap()
        .contains("203.0.113.10"));
}

#[test]
fn desired_service_taken_by_another_tool_is_a_conflict() {
    let dir = TempDir::new("conflict");
    let mut fake = FakeIpvs::new();
    fake.insert(foreign());
    let mut dp = IpvsDataplane::with_client(fake, dir.state()).unwrap();
    let clash = service(
        "198.51.100.7",
        443,
        Forwarding::Nat,
        vec![rs("192.0.2.1", 443, 9)],
    );
    let r = dp.apply(&[clash], Instant::now()).unwrap();
    assert_eq!(r.writes, 0);
    assert_eq!(r.conflicts, vec![foreign().id]);
    assert_eq!(dp.client().services.get(&foreign().id), Some(&foreign()));
}

#[test]
fn drain_weight_zero_then_delete_when_idle() {
    let dir = TempDir::new("drain");
    let mut dp = IpvsDataplane::with_client(FakeIpvs::new(), dir.state()).unwrap();
    dp.set_drain_timeout(Duration::from_secs(30));
    let t0 = Instant::now();
    dp.apply(&[web()], t0).unwrap();
    let id = ServiceId::from_key(&web().key);
    let gone = DestId {
        addr: "192.0.2.3".parse().unwrap(),
        port: 8080,
    };
    dp.client().set_conns(&id, &gone, 2, 1);

    let mut less = web();
    less.real_servers.pop();
    let r = dp.apply(&[less.clone()], t0).unwrap();
    assert_eq!((r.updated_dests, r.deleted_dests, r.draining), (1, 0, 1));
    let d = dp.client().services[&id]
        .dests
        .iter()
        .find(|d| d.id == gone)
        .cloned()
        .unwrap();
    assert_eq!(d.config.weight, 0);

    // Still busy: nothing.
    let r = dp
        .apply(&[less.clone()], t0 + Duration::from_secs(10))
        .unwrap();
    assert_eq!((r.writes, r.draining), (0, 1));

    // Idle: deleted.
    dp.client().set_conns(&id, &gone, 0, 0);
    let r = dp
        .apply(&[less.clone()], t0 + Duration::from_secs(11))
        .unwrap();
    assert_eq!((r.deleted_dests, r.writes, r.draining), (1, 1, 0));
    assert_eq!(dp.client().services[&id].dests.len(), 2);
}

#[test]
fn drain_deadline_deletes_a_busy_real_server() {
    let dir = TempDir::new("deadline");
    let mut dp = IpvsDataplane::with_client(FakeIpvs::new(), dir.state()).unwrap();
    dp.set_drain_timeout(Duration::from_secs(30));
    let t0 = Instant::now();
    dp.apply(&[web()], t0).unwrap();
    let id = ServiceId::from_key(&web().key);
    let gone = DestId {
        addr: "192.0.2.1".parse().unwrap(),
        port: 8080,
    };
    dp.client().set_conns(&id, &gone, 7, 0);
    let mut less = web();
    less.real_servers.remove(0);
    dp.apply(&[less.clone()], t0).unwrap();
    let r = dp.apply(&[less], t0 + Duration::from_secs(30)).unwrap();
    assert_eq!(r.deleted_dests, 1);
    assert!(dp.client().services[&id].dests.iter().all(|d| d.id != gone));
}

#[test]
fn dr_and_tun_destinations_use_the_service_port() {
    let dir = TempDir::new("dr");
    let mut dp = IpvsDataplane::with_client(FakeIpvs::new(), dir.state()).unwrap();
    let dr = service(
        "203.0.113.20",
        80,
        Forwarding::Dr,
        vec![rs("192.0.2.1", 8080, 1)],
    );
    let tun = service(
        "203.0.113.21",
        443,
        Forwarding::Tun(Tunnel::Gue { port: 6080 }),
        vec![rs("192.0.2.1", 8443, 1)],
    );
    let r = dp.apply(&[dr, tun], Instant::now()).unwrap();
    assert!(r.errors.is_empty());
    let services = &dp.client().services;
    let d = &services[&ServiceId::Inet {
        protocol: 6,
        addr: IpAddr::from([203, 0, 113, 20]),
        port: 80,
    }]
        .dests[0];
    assert_eq!((d.id.port, d.config.fwd_method), (80, 3));
    let t = &services[&ServiceId::Inet {
        protocol: 6,
        addr: IpAddr::from([203, 0, 113, 21]),
        port: 443,
    }]
        .dests[0];
    assert_eq!(
        (
            t.id.port,
            t.config.fwd_method,
            t.config.tun_type,
            t.config.tun_port
        ),
        (443, 2, 1, 6080)
    );
    // And re-applying is still zero writes (tunnel fields compare equal).
    let dr = service(
        "203.0.113.20",
        80,
        Forwarding::Dr,
        vec![rs("192.0.2.1", 8080, 1)],
    );
    let tun = service(
        "203.0.113.21",
        443,
        Forwarding::Tun(Tunnel::Gue { port: 6080 }),
        vec![rs("192.0.2.1", 8443, 1)],
    );
    assert_eq!(dp.apply(&[dr, tun], Instant::now()).unwrap().writes, 0);
}

#[test]
fn xdp_services_are_not_programmed_and_maglev_is_rejected() {
    let dir = TempDir::new("xdp");
    let mut dp = IpvsDataplane::with_client(FakeIpvs::new(), dir.state()).unwrap();
    let mut x = web();
    x.dataplane = DataplaneKind::Xdp;
    x.scheduler = Scheduler::Maglev;
    assert_eq!(dp.apply(&[x], Instant::now()).unwrap().writes, 0);
    let mut m = web();
    m.scheduler = Scheduler::Maglev;
    let e = dp.apply(&[m], Instant::now()).unwrap_err();
    assert!(e.to_string().contains("203.0.113.10:80/TCP"), "{e}");
    assert_eq!(dp.client().writes, 0);
}

#[test]
fn dump_that_missed_a_destination_converges_with_set_dest() {
    let dir = TempDir::new("race");
    let mut dp = IpvsDataplane::with_client(FakeIpvs::new(), dir.state()).unwrap();
    let now = Instant::now();
    dp.apply(&[web()], now).unwrap();
    let id = ServiceId::from_key(&web().key);
    let missed = DestId {
        addr: "192.0.2.2".parse().unwrap(),
        port: 8080,
    };
    dp.client().hidden.insert((id, missed));
    let mut changed = web();
    changed.real_servers[1].weight = 9;
    let before = dp.client().log.len();
    let r = dp.apply(&[changed], now).unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    // NEW_DEST answered EEXIST, then one SET_DEST.
    let cmds: Vec<Command> = dp.client().log[before..].iter().map(|m| m.cmd).collect();
    assert_eq!(cmds, vec![Command::NewDest, Command::SetDest]);
    assert_eq!(r.updated_dests, 1);
    let d = dp.client().services[&id]
        .dests
        .iter()
        .find(|d| d.id == missed)
        .unwrap()
        .clone();
    assert_eq!(d.config.weight, 9);
}

#[test]
fn owned_service_deleted_behind_our_back_is_recreated() {
    let dir = TempDir::new("recreate");
    let mut dp = IpvsDataplane::with_client(FakeIpvs::new(), dir.state()).unwrap();
    let now = Instant::now();
    let other = service(
        "203.0.113.11",
        80,
        Forwarding::Nat,
        vec![rs("192.0.2.5", 80, 1)],
    );
    dp.apply(&[web(), other.clone()], now).unwrap();
    let id = ServiceId::from_key(&web().key);
    // `ipvsadm -D` of our service: owned but missing means add it again.
    dp.client().services.remove(&id);
    let mut o2 = other.clone();
    o2.real_servers[0].weight = 4;
    let r = dp.apply(&[web(), o2], now).unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(
        (r.added_services, r.added_dests, r.updated_dests),
        (1, 3, 1)
    );
    assert_eq!(r.writes, 5);
}

#[test]
fn kernel_refusal_is_reported_and_the_rest_applies() {
    let dir = TempDir::new("refuse");
    let mut dp = IpvsDataplane::with_client(FakeIpvs::new(), dir.state()).unwrap();
    let now = Instant::now();
    // NEW_DEST without a DEST nest: EINVAL, like the kernel. A plan cannot produce
    // it, so send it raw; the error must name the command and the service.
    let bad = kubelvs_ipvs::IpvsMessage::new(Command::NewDest)
        .with_service(ServiceId::from_key(&web().key).to_attrs());
    let r = kubelvs_ipvs::IpvsKernel::execute_batch(dp.client(), &[bad]);
    let e = r.into_iter().next().unwrap().unwrap_err();
    assert_eq!(e.errno(), Some(22));
    assert!(
        e.to_string()
            .contains("NEW_DEST service tcp 203.0.113.10 80"),
        "{e}"
    );
    // And the plan still applies.
    let r = dp.apply(&[web()], now).unwrap();
    assert_eq!(r.added_dests, 3);
}

#[test]
fn incremental_apply_skips_the_dump_and_sends_one_set_dest() {
    let dir = TempDir::new("incr");
    let mut dp = IpvsDataplane::with_client(FakeIpvs::new(), dir.state()).unwrap();
    let now = Instant::now();
    // Without a cache, incremental is a full apply (it dumps).
    let r = dp.apply_incremental(&[web()], now).unwrap();
    assert_eq!(r.writes, 4);
    let dumps = dp.client().dumps;
    assert!(dumps >= 1);

    let mut changed = web();
    changed.real_servers[2].weight = 30;
    let r = dp.apply_incremental(&[changed.clone()], now).unwrap();
    assert_eq!((r.writes, r.updated_dests), (1, 1));
    assert_eq!(dp.client().dumps, dumps, "no dump");
    let r = dp.apply_incremental(&[changed.clone()], now).unwrap();
    assert_eq!(r.writes, 0);

    // A full apply still sees what others did; incremental does not (by design).
    let id = ServiceId::from_key(&web().key);
    dp.client().services.get_mut(&id).unwrap().dests[0]
        .config
        .weight = 99;
    assert_eq!(
        dp.apply_incremental(&[changed.clone()], now)
            .unwrap()
            .writes,
        0
    );
    let r = dp.apply(&[changed], now).unwrap();
    assert_eq!((r.writes, r.updated_dests), (1, 1));
    assert_eq!(dp.client().services[&id].dests[0].config.weight, 1);
}

#[test]
fn ten_thousand_services_then_one_weight_is_one_write() {
    let dir = TempDir::new("10k");
    let mut dp = IpvsDataplane::with_client(FakeIpvs::new(), dir.state()).unwrap();
    let plan: Vec<Service> = (0..10_000u32)
        .map(|i| {
            let vip = format!("203.0.{}.{}", 113 + i / 250 / 256, 1 + i / 100 % 250);
            let mut s = service(
                &vip,
                10_000 + (i % 100) as u16,
                Forwarding::Nat,
                (0..5)
                    .map(|d| rs(&format!("198.51.100.{}", 21 + d), 8080, 1 + d))
                    .collect(),
            );
            s.source = ObjectRef::new(ObjectKind::VirtualService, "bench", &i.to_string());
            s
        })
        .collect();
    let r = dp.apply(&plan, Instant::now()).unwrap();
    assert_eq!(
        (r.added_services, r.added_dests, r.writes),
        (10_000, 50_000, 60_000)
    );
    let mut changed = plan.clone();
    changed[4_321].real_servers[3].weight = 77;
    let r = dp.apply(&changed, Instant::now()).unwrap();
    assert_eq!((r.writes, r.updated_dests, r.ops()), (1, 1, 1));
}

#[test]
fn a_full_apply_reads_a_slice_of_the_destinations_and_still_repairs_what_others_changed() {
    let dir = TempDir::new("verify");
    let mut dp = IpvsDataplane::with_client(FakeIpvs::new(), dir.state()).unwrap();
    let plan: Vec<Service> = (0..1_000u32)
        .map(|i| {
            service(
                &format!("203.0.113.{}", 1 + i / 100),
                10_000 + (i % 100) as u16,
                Forwarding::Nat,
                vec![rs("198.51.100.21", 8080, 1), rs("198.51.100.22", 8080, 2)],
            )
        })
        .collect();
    let now = Instant::now();
    let first = dp.apply(&plan, now).unwrap();
    assert_eq!(first.dest_dumps, 0, "nothing there yet: nothing to read");
    let budget = kubelvs_ipvs::VERIFY_MIN.max(1_000usize.div_ceil(kubelvs_ipvs::VERIFY_ROUNDS));
    // Nothing to change: one services dump and a slice of destination dumps.
    let dumps = dp.client().dumps;
    let r = dp.apply(&plan, now).unwrap();
    assert_eq!(r.writes, 0);
    assert_eq!(r.dest_dumps, budget);
    assert_eq!(dp.client().dumps - dumps, 1 + budget as u64);

    // `ipvsadm -e` of one of our destinations, and `ipvsadm -E` of another service.
    let (a, b) = (
        ServiceId::from_key(&plan[500].key),
        ServiceId::from_key(&plan[900].key),
    );
    dp.client().services.get_mut(&a).unwrap().dests[0]
        .config
        .weight = 99;
    dp.client().services.get_mut(&b).unwrap().config.scheduler = "rr".into();
    let mut repaired_after = None;
    for round in 1..=kubelvs_ipvs::VERIFY_ROUNDS {
        let r = dp.apply(&plan, now).unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        if round == 1 {
            // A changed service configuration shows in the services dump: at once.
            assert_eq!(dp.client().services[&b].config.scheduler, "wrr");
        }
        if dp.client().services[&a].dests[0].config.weight == 1 {
            repaired_after = Some(round);
            break;
        }
    }
    assert!(
        repaired_after.is_some(),
        "a destination changed behind our back was not repaired within {} applies",
        kubelvs_ipvs::VERIFY_ROUNDS
    );
}

mod sequences {
    //! Random sequences of plans through the whole apply (conversion, diff, batches,
    //! state file) against FakeIpvs with a foreign service present.

    use super::*;
    use proptest::prelude::*;

    fn arb_service() -> impl Strategy<Value = Service> {
        (
            1u8..6,
            prop_oneof![Just(80u16), Just(443)],
            prop_oneof![
                Just(Forwarding::Nat),
                Just(Forwarding::Dr),
                Just(Forwarding::Tun(Tunnel::Ipip)),
                Just(Forwarding::Tun(Tunnel::Gue { port: 6080 })),
                Just(Forwarding::FullNat),
            ],
            prop_oneof![
                Just(Scheduler::Rr),
                Just(Scheduler::Wrr),
                Just(Scheduler::Sh)
            ],
            proptest::option::of((1u32..600, 8u8..33)),
            proptest::collection::btree_map(
                (1u8..6, prop_oneof![Just(8080u16), Just(8081)]),
                0u32..5,
                0..5,
            ),
        )
            .prop_map(|(v, port, fwd, sched, pers, servers)| {
                let mut s = service(
                    &format!("203.0.113.{v}"),
                    port,
                    fwd,
                    servers
                        .into_iter()
                        .map(|((a, p), w)| rs(&format!("192.0.2.{a}"), p, w))
                        .collect(),
                );
                s.scheduler = sched;
                s.persistence = pers.map(|(timeout_seconds, prefix_length)| Persistence {
                    timeout_seconds,
                    prefix_length,
                });
                s
            })
    }

    fn arb_plan() -> impl Strategy<Value = Vec<Service>> {
        proptest::collection::vec(arb_service(), 0..5).prop_map(|mut v| {
            v.sort_by_key(|s| s.key);
            v.dedup_by_key(|s| s.key);
            v
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn every_plan_converges_and_reapplies_with_zero_writes(plans in proptest::collection::vec(arb_plan(), 1..5)) {
            let dir = TempDir::new("seq");
            let mut fake = FakeIpvs::new();
            fake.insert(foreign());
            let mut dp = IpvsDataplane::with_client(fake, dir.state()).unwrap();
            // Deadline 0: removed real servers go at once, so the table is exactly the plan.
            dp.set_drain_timeout(Duration::ZERO);
            let now = Instant::now();
            for plan in &plans {
                let r = dp.apply(plan, now).unwrap();
                prop_assert!(r.errors.is_empty(), "{:?}", r.errors);
                let again = dp.apply(plan, now).unwrap();
                prop_assert_eq!(again.writes, 0);
                let want: Vec<kubelvs_ipvs::DesiredService> = plan
                    .iter()
                    .map(|s| kubelvs_ipvs::DesiredService::from_model(s).unwrap())
                    .collect();
                let table = &dp.client().services;
                prop_assert_eq!(table.len(), want.len() + 1);
                prop_assert_eq!(table.get(&foreign().id), Some(&foreign()));
                for w in &want {
                    let k = &table[&w.id];
                    prop_assert_eq!(&k.config, &w.config);
                    let got: Vec<_> = k.dests.iter().map(|d| (d.id, d.config)).collect();
                    let mut got = got;
                    got.sort_by_key(|(id, _)| *id);
                    let mut exp: Vec<_> = w.dests.iter().map(|d| (d.id, d.config)).collect();
                    exp.sort_by_key(|(id, _)| *id);
                    prop_assert_eq!(got.len(), exp.len());
                    for ((gi, gc), (ei, ec)) in got.iter().zip(&exp) {
                        prop_assert_eq!(gi, ei);
                        prop_assert!(gc.same_as(ec));
                    }
                }
                // Ownership is exactly the plan's services.
                let owned: std::collections::BTreeSet<ServiceId> = want.iter().map(|w| w.id).collect();
                prop_assert_eq!(dp.owned(), &owned);
            }
            // Never a flush, never a delete of the foreign service.
            prop_assert!(dp.client().log.iter().all(|m| m.cmd != Command::Flush));
        }
    }
}
