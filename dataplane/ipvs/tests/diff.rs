//! The pure reconciliation decision: table-driven cases and properties.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use kubelvs_ipvs::codec::{Netmask, FWD_DROUTE, FWD_MASQ, SVC_F_PERSISTENT};
use kubelvs_ipvs::diff::owned_after;
use kubelvs_ipvs::table::{
    DesiredDest, DesiredService, DestConfig, DestId, KernelDest, KernelService, ServiceConfig,
    ServiceId,
};
use kubelvs_ipvs::{diff, Draining, Op};
use proptest::prelude::*;

const DRAIN: Duration = Duration::from_secs(60);

fn sid(n: u8) -> ServiceId {
    ServiceId::Inet {
        protocol: 6,
        addr: IpAddr::from([203, 0, 113, n]),
        port: 80,
    }
}

fn did(n: u8, port: u16) -> DestId {
    DestId {
        addr: IpAddr::from([192, 0, 2, n]),
        port,
    }
}

fn cfg(s: &str) -> ServiceConfig {
    ServiceConfig {
        scheduler: s.into(),
        flags: 0,
        timeout: 0,
        netmask: Netmask::V4([255; 4].into()),
    }
}

fn want(id: ServiceId, sched: &str, dests: &[(DestId, u32)]) -> DesiredService {
    DesiredService {
        id,
        config: cfg(sched),
        dests: dests
            .iter()
            .map(|(d, w)| DesiredDest {
                id: *d,
                config: DestConfig::masq(*w),
            })
            .collect(),
    }
}

fn have(id: ServiceId, sched: &str, dests: &[(DestId, u32, u32)]) -> KernelService {
    KernelService {
        id,
        config: cfg(sched),
        dests: dests
            .iter()
            .map(|(d, w, conns)| KernelDest {
                id: *d,
                config: DestConfig::masq(*w),
                active_conns: *conns,
                inact_conns: 0,
                persist_conns: 0,
                stats: Default::default(),
            })
            .collect(),
        stats: Default::default(),
    }
}

fn owned(ids: &[ServiceId]) -> BTreeSet<ServiceId> {
    ids.iter().copied().collect()
}

#[test]
fn empty_kernel_creates_services_then_destinations() {
    let now = Instant::now();
    let d = diff(
        &[],
        &[want(sid(1), "wrr", &[(did(1, 8080), 1), (did(2, 8080), 2)])],
        &owned(&[]),
        &Draining::new(),
        now,
        DRAIN,
    );
    assert_eq!(d.ops.len(), 3);
    assert!(matches!(d.ops[0], Op::AddService { .. }));
    assert!(d.ops[1..].iter().all(|o| matches!(o, Op::AddDest { .. })));
}

#[test]
fn same_plan_twice_is_no_op() {
    let k = [have(sid(1), "wrr", &[(did(1, 8080), 1, 5)])];
    let w = [want(sid(1), "wrr", &[(did(1, 8080), 1)])];
    let d = diff(
        &k,
        &w,
        &owned(&[sid(1)]),
        &Draining::new(),
        Instant::now(),
        DRAIN,
    );
    assert_eq!(d, Default::default());
}

#[test]
fn weight_change_is_one_set_dest() {
    let k = [have(
        sid(1),
        "wrr",
        &[(did(1, 8080), 1, 5), (did(2, 8080), 1, 0)],
    )];
    let w = [want(sid(1), "wrr", &[(did(1, 8080), 1), (did(2, 8080), 7)])];
    let d = diff(
        &k,
        &w,
        &owned(&[sid(1)]),
        &Draining::new(),
        Instant::now(),
        DRAIN,
    );
    assert_eq!(
        d.ops,
        vec![Op::UpdateDest {
            service: sid(1),
            dest: did(2, 8080),
            config: DestConfig::masq(7)
        }]
    );
    let msg = d.ops[0].to_message();
    assert_eq!(msg.cmd, kubelvs_ipvs::Command::SetDest);
}

#[test]
fn scheduler_or_persistence_change_is_one_set_service() {
    let k = [have(sid(1), "wrr", &[(did(1, 8080), 1, 0)])];
    let mut w = want(sid(1), "sh", &[(did(1, 8080), 1)]);
    w.config.flags = SVC_F_PERSISTENT;
    w.config.timeout = 360;
    let d = diff(
        &k,
        &[w.clone()],
        &owned(&[sid(1)]),
        &Draining::new(),
        Instant::now(),
        DRAIN,
    );
    assert_eq!(
        d.ops,
        vec![Op::UpdateService {
            id: sid(1),
            config: w.config
        }]
    );
}

#[test]
fn services_we_do_not_own_are_never_touched() {
    // ipvsadm created sid(9) (not desired) and sid(2) (same identity as a desired one).
    let k = [
        have(sid(9), "rr", &[(did(9, 80), 1, 0)]),
        have(sid(2), "rr", &[(did(3, 80), 1, 0)]),
    ];
    let w = [want(sid(2), "wrr", &[(did(4, 80), 3)])];
    let d = diff(&k, &w, &owned(&[]), &Draining::new(), Instant::now(), DRAIN);
    assert!(d.ops.is_empty(), "{:?}", d.ops);
    assert_eq!(d.conflicts, vec![sid(2)]);
}

#[test]
fn owned_service_no_longer_wanted_is_deleted() {
    let k = [have(sid(1), "rr", &[]), have(sid(9), "rr", &[])];
    let d = diff(
        &k,
        &[],
        &owned(&[sid(1)]),
        &Draining::new(),
        Instant::now(),
        DRAIN,
    );
    assert_eq!(d.ops, vec![Op::DeleteService { id: sid(1) }]);
}

#[test]
fn removed_real_server_drains_then_is_deleted() {
    let t0 = Instant::now();
    let w = [want(sid(1), "rr", &[(did(1, 80), 1)])];
    let own = owned(&[sid(1)]);
    // Removed while it has 3 connections: weight 0 first.
    let k = [have(
        sid(1),
        "rr",
        &[(did(1, 80), 1, 0), (did(2, 80), 5, 3)],
    )];
    let d1 = diff(&k, &w, &own, &Draining::new(), t0, DRAIN);
    assert_eq!(
        d1.ops,
        vec![Op::UpdateDest {
            service: sid(1),
            dest: did(2, 80),
            config: DestConfig::masq(0)
        }]
    );
    assert_eq!(d1.draining.get(&(sid(1), did(2, 80))), Some(&(t0 + DRAIN)));

    // Still connections, before the deadline: nothing to do.
    let k = [have(
        sid(1),
        "rr",
        &[(did(1, 80), 1, 0), (did(2, 80), 0, 3)],
    )];
    let d2 = diff(&k, &w, &own, &d1.draining, t0 + DRAIN / 2, DRAIN);
    assert!(d2.ops.is_empty());
    assert_eq!(d2.draining, d1.draining);

    // Deadline passed: deleted although connections remain.
    let d3 = diff(&k, &w, &own, &d2.draining, t0 + DRAIN, DRAIN);
    assert_eq!(
        d3.ops,
        vec![Op::DeleteDest {
            service: sid(1),
            dest: did(2, 80)
        }]
    );
    assert!(d3.draining.is_empty());

    // Connections reached 0 before the deadline: deleted.
    let k = [have(
        sid(1),
        "rr",
        &[(did(1, 80), 1, 0), (did(2, 80), 0, 0)],
    )];
    let d4 = diff(
        &k,
        &w,
        &own,
        &d1.draining,
        t0 + Duration::from_secs(1),
        DRAIN,
    );
    assert_eq!(
        d4.ops,
        vec![Op::DeleteDest {
            service: sid(1),
            dest: did(2, 80)
        }]
    );
}

#[test]
fn removed_idle_real_server_is_deleted_at_once() {
    let k = [have(
        sid(1),
        "rr",
        &[(did(1, 80), 1, 0), (did(2, 80), 5, 0)],
    )];
    let w = [want(sid(1), "rr", &[(did(1, 80), 1)])];
    let d = diff(
        &k,
        &w,
        &owned(&[sid(1)]),
        &Draining::new(),
        Instant::now(),
        DRAIN,
    );
    assert_eq!(
        d.ops,
        vec![Op::DeleteDest {
            service: sid(1),
            dest: did(2, 80)
        }]
    );
}

#[test]
fn weight_zero_after_restart_gets_a_fresh_deadline() {
    let t0 = Instant::now();
    let k = [have(sid(1), "rr", &[(did(2, 80), 0, 4)])];
    let w = [want(sid(1), "rr", &[])];
    let d = diff(&k, &w, &owned(&[sid(1)]), &Draining::new(), t0, DRAIN);
    assert!(d.ops.is_empty());
    assert_eq!(d.draining.get(&(sid(1), did(2, 80))), Some(&(t0 + DRAIN)));
}

#[test]
fn real_server_that_comes_back_stops_draining() {
    let t0 = Instant::now();
    let mut book = Draining::new();
    book.insert((sid(1), did(2, 80)), t0 + DRAIN);
    let k = [have(sid(1), "rr", &[(did(2, 80), 0, 4)])];
    let w = [want(sid(1), "rr", &[(did(2, 80), 5)])];
    let d = diff(&k, &w, &owned(&[sid(1)]), &book, t0, DRAIN);
    assert_eq!(
        d.ops,
        vec![Op::UpdateDest {
            service: sid(1),
            dest: did(2, 80),
            config: DestConfig::masq(5)
        }]
    );
    assert!(d.draining.is_empty());
}

#[test]
fn forwarding_change_is_set_dest_when_identity_stays() {
    let k = [have(sid(1), "rr", &[(did(1, 80), 1, 0)])];
    let mut w = want(sid(1), "rr", &[(did(1, 80), 1)]);
    w.dests[0].config.fwd_method = FWD_DROUTE;
    let d = diff(
        &k,
        &[w],
        &owned(&[sid(1)]),
        &Draining::new(),
        Instant::now(),
        DRAIN,
    );
    assert_eq!(d.ops.len(), 1);
    assert!(matches!(d.ops[0], Op::UpdateDest { config, .. } if config.fwd_method == FWD_DROUTE));
}

#[test]
fn tunnel_parameters_are_ignored_unless_tunnel() {
    let a = DestConfig::masq(1);
    let b = DestConfig {
        tun_type: 1,
        tun_port: 6081,
        ..a
    };
    assert!(a.same_as(&b));
    let ta = DestConfig {
        fwd_method: kubelvs_ipvs::codec::FWD_TUNNEL,
        ..a
    };
    let tb = DestConfig {
        fwd_method: kubelvs_ipvs::codec::FWD_TUNNEL,
        ..b
    };
    assert!(!ta.same_as(&tb));
    assert_eq!(FWD_MASQ, a.fwd_method);
}

#[test]
fn ownership_after_prunes_services_gone_from_kernel_and_plan() {
    let k = [have(sid(1), "rr", &[])];
    let w = [want(sid(2), "rr", &[])];
    let own = owned(&[sid(1), sid(3)]);
    let d = diff(&k, &w, &own, &Draining::new(), Instant::now(), DRAIN);
    let after = owned_after(&k, &w, &own, &d.ops);
    assert_eq!(after, owned(&[sid(2)]));
}

// ---- properties ----

fn arb_dests() -> impl Strategy<Value = BTreeMap<DestId, (u32, u32)>> {
    proptest::collection::btree_map(
        (1u8..6, prop_oneof![Just(80u16), Just(8080u16)]).prop_map(|(n, p)| did(n, p)),
        (0u32..4, prop_oneof![Just(0u32), 1u32..5]),
        0..5,
    )
}

fn arb_config() -> impl Strategy<Value = ServiceConfig> {
    (
        prop_oneof![Just("rr"), Just("wrr"), Just("sh"), Just("twos")],
        0u32..2,
    )
        .prop_map(|(s, p)| ServiceConfig {
            scheduler: s.into(),
            flags: p * SVC_F_PERSISTENT,
            timeout: p * 360,
            netmask: Netmask::V4([255; 4].into()),
        })
}

#[derive(Debug, Clone)]
struct World {
    kernel: Vec<KernelService>,
    desired: Vec<DesiredService>,
    owned: BTreeSet<ServiceId>,
}

fn arb_world() -> impl Strategy<Value = World> {
    (
        proptest::collection::btree_map(1u8..8, (arb_config(), arb_dests()), 0..6),
        proptest::collection::btree_map(1u8..8, (arb_config(), arb_dests()), 0..6),
        proptest::collection::btree_set(1u8..8, 0..8),
    )
        .prop_map(|(k, w, o)| World {
            kernel: k
                .into_iter()
                .map(|(n, (config, dests))| KernelService {
                    id: sid(n),
                    config,
                    dests: dests
                        .into_iter()
                        .map(|(id, (w, c))| KernelDest {
                            id,
                            config: DestConfig::masq(w),
                            active_conns: c,
                            inact_conns: 0,
                            persist_conns: 0,
                            stats: Default::default(),
                        })
                        .collect(),
                    stats: Default::default(),
                })
                .collect(),
            desired: w
                .into_iter()
                .map(|(n, (config, dests))| DesiredService {
                    id: sid(n),
                    config,
                    dests: dests
                        .into_iter()
                        .map(|(id, (w, _))| DesiredDest {
                            id,
                            config: DestConfig::masq(w),
                        })
                        .collect(),
                })
                .collect(),
            owned: o.into_iter().map(sid).collect(),
        })
}

fn run(world: &World, now: Instant) -> (BTreeMap<ServiceId, KernelService>, diff::Diff) {
    let d = diff(
        &world.kernel,
        &world.desired,
        &world.owned,
        &Draining::new(),
        now,
        DRAIN,
    );
    let mut table: BTreeMap<ServiceId, KernelService> =
        world.kernel.iter().map(|s| (s.id, s.clone())).collect();
    for op in &d.ops {
        op.apply_to(&mut table);
    }
    (table, d)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Applying the ops yields the desired table for every service we own or create;
    /// removed real servers with connections remain only as weight-0 draining entries.
    #[test]
    fn ops_converge(world in arb_world()) {
        let now = Instant::now();
        let (table, d) = run(&world, now);
        let foreign: BTreeSet<ServiceId> = world.kernel.iter().map(|s| s.id)
            .filter(|id| !world.owned.contains(id)).collect();
        for w in &world.desired {
            if foreign.contains(&w.id) {
                prop_assert!(d.conflicts.contains(&w.id));
                continue;
            }
            let k = table.get(&w.id).expect("desired service exists");
            prop_assert_eq!(&k.config, &w.config);
            for dd in &w.dests {
                let kd = k.dests.iter().find(|kd| kd.id == dd.id).expect("desired dest exists");
                prop_assert!(kd.config.same_as(&dd.config));
            }
            for kd in &k.dests {
                if !w.dests.iter().any(|dd| dd.id == kd.id) {
                    prop_assert_eq!(kd.config.weight, 0);
                    prop_assert!(kd.connections() > 0);
                    prop_assert!(d.draining.contains_key(&(w.id, kd.id)));
                }
            }
        }
        // Owned services not desired are gone.
        for id in &world.owned {
            if !world.desired.iter().any(|w| w.id == *id) {
                prop_assert!(!table.contains_key(id));
            }
        }
    }

    /// Foreign services are byte-for-byte untouched and no op names them.
    #[test]
    fn foreign_services_untouched(world in arb_world()) {
        let (table, d) = run(&world, Instant::now());
        for k in &world.kernel {
            if world.owned.contains(&k.id) { continue; }
            prop_assert_eq!(table.get(&k.id), Some(k));
            prop_assert!(d.ops.iter().all(|o| o.service() != &k.id));
        }
    }

    /// A second diff against the result is empty (same `now`, drain book carried).
    #[test]
    fn second_diff_is_empty(world in arb_world()) {
        let now = Instant::now();
        let (table, d) = run(&world, now);
        let kernel: Vec<KernelService> = table.into_values().collect();
        let owned2 = owned_after(&world.kernel, &world.desired, &world.owned, &d.ops);
        let d2 = diff(&kernel, &world.desired, &owned2, &d.draining, now, DRAIN);
        prop_assert!(d2.ops.is_empty(), "{:?}", d2.ops);
        prop_assert_eq!(d2.draining, d.draining);
    }

    /// Past every deadline, the table converges to exactly the desired one.
    #[test]
    fn after_deadline_exactly_desired(world in arb_world()) {
        let now = Instant::now();
        let (table, d) = run(&world, now);
        let kernel: Vec<KernelService> = table.into_values().collect();
        let owned2 = owned_after(&world.kernel, &world.desired, &world.owned, &d.ops);
        let later = now + DRAIN;
        let d2 = diff(&kernel, &world.desired, &owned2, &d.draining, later, DRAIN);
        let mut t: BTreeMap<ServiceId, KernelService> = kernel.iter().map(|s| (s.id, s.clone())).collect();
        for op in &d2.ops { op.apply_to(&mut t); }
        prop_assert!(d2.draining.is_empty());
        for w in &world.desired {
            if !owned2.contains(&w.id) { continue; }
            let got: BTreeSet<DestId> = t[&w.id].dests.iter().map(|d| d.id).collect();
            let want: BTreeSet<DestId> = w.dests.iter().map(|d| d.id).collect();
            prop_assert_eq!(got, want);
        }
    }

    /// Never delete + add of the same destination or service in one diff.
    #[test]
    fn no_delete_then_add(world in arb_world()) {
        let (_, d) = run(&world, Instant::now());
        for op in &d.ops {
            if let Op::DeleteDest { service, dest } = op {
                let readded = d.ops.iter().any(|o| matches!(o, Op::AddDest { service: s, dest: x, .. } if s == service && x == dest));
                prop_assert!(!readded, "delete + add of {}", dest);
            }
            if let Op::DeleteService { id } = op {
                let readded = d.ops.iter().any(|o| matches!(o, Op::AddService { id: x, .. } if x == id));
                prop_assert!(!readded, "delete + add of {}", id);
            }
        }
    }
}

#[test]
fn a_removed_udp_real_server_is_deleted_at_once_not_drained() {
    let udp = ServiceId::Inet {
        protocol: 17,
        addr: IpAddr::from([203, 0, 113, 1]),
        port: 53,
    };
    let w = [want(udp, "rr", &[(did(1, 53), 1)])];
    // Its clients' entries count as connections: a TCP real server would drain.
    let k = [have(udp, "rr", &[(did(1, 53), 1, 0), (did(2, 53), 0, 7)])];
    let d = diff(
        &k,
        &w,
        &owned(&[udp]),
        &Draining::new(),
        Instant::now(),
        DRAIN,
    );
    assert_eq!(
        d.ops,
        vec![Op::DeleteDest {
            service: udp,
            dest: did(2, 53)
        }]
    );
    assert!(d.draining.is_empty());
}
