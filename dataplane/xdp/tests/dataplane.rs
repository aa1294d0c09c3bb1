//! The XDP director through the `Dataplane` trait, on real BPF maps (loaded, not
//! attached; packets through BPF_PROG_TEST_RUN): an outcome per service, zero
//! writes on re-apply, drain of a removed real
//! server, unresolved DR neighbours, a corrupt pinned VIP entry, and the per-CPU
//! capacity of the connection table.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use kubelvs_model::{
    ApplyContext, Dataplane, Forwarding, NodePlan, Outcome, RealServerState, Service, ServiceKey,
};
use kubelvs_xdp::maps::{VipKey, VipMeta};
use kubelvs_xdp::{DirectorOptions, StaticNeighbours, XdpDataplane, XdpDirector};

fn opts() -> DirectorOptions {
    let mut o = DirectorOptions::new(ip("192.0.2.1"));
    o.max_vips = 4;
    o.max_reals = 16;
    o.conns_per_cpu = 1024;
    o.ring_size = 251;
    o
}

fn neighbours(addrs: &[&str]) -> StaticNeighbours {
    StaticNeighbours {
        known: addrs.iter().map(|a| mac_of(a)).collect(),
        ..StaticNeighbours::default()
    }
}

fn plan(services: Vec<Service>) -> NodePlan {
    NodePlan {
        node: "n1".into(),
        services,
        ..NodePlan::default()
    }
}

fn named(mut s: Service, name: &str) -> Service {
    s.source.name = name.into();
    s
}

fn key(vip: &str, port: u16) -> ServiceKey {
    ServiceKey {
        vip: vip.parse().unwrap(),
        port,
        protocol: kubelvs_model::Protocol::Tcp,
    }
}

#[test]
#[ignore = "privileged: loads BPF"]
fn outcome_per_service_and_zero_writes_on_reapply() {
    let mut dp = XdpDataplane::new(
        XdpDirector::load(opts()).unwrap(),
        neighbours(&["198.51.100.11", "198.51.100.12"]),
    );
    let p = plan(vec![
        named(
            service(
                "203.0.113.1",
                80,
                Forwarding::Dr,
                &[("198.51.100.11", 80, 1)],
            ),
            "dr",
        ),
        named(
            service(
                "203.0.113.2",
                80,
                Forwarding::FullNat,
                &[("198.51.100.12", 80, 1)],
            ),
            "fullnat",
        ),
        named(
            service(
                "203.0.113.3",
                80,
                Forwarding::Nat,
                &[("198.51.100.12", 8080, 1)],
            ),
            "nat",
        ),
    ]);
    let ctx = ApplyContext::at(Instant::now());
    let r = dp.apply(&p, &ctx);
    assert_eq!(r.dataplane, "xdp");
    assert!(r.service(&key("203.0.113.1", 80)).unwrap().is_programmed());
    assert!(r.service(&key("203.0.113.3", 80)).unwrap().is_programmed());
    match r.service(&key("203.0.113.2", 80)).unwrap() {
        Outcome::Unsupported(reason) => {
            assert_eq!(&*reason.object.name, "fullnat");
            assert_eq!(reason.field, "spec.forwarding");
        }
        o => panic!("{o:?}"),
    }
    assert!(r.writes > 251, "{r:?}");
    let again = dp.apply(&p, &ctx);
    assert_eq!(again.writes, 0, "{again:?}");
    assert_eq!(again.services, r.services);
}

#[test]
#[ignore = "privileged: loads BPF"]
fn a_removed_real_server_drains_like_ipvs() {
    let (r1, r2) = ("198.51.100.11", "198.51.100.12");
    let (m1, m2) = (mac_of(r1).1, mac_of(r2).1);
    let mut o = opts();
    o.drain_timeout = Duration::from_secs(60);
    let mut dp = XdpDataplane::new(XdpDirector::load(o).unwrap(), neighbours(&[r1, r2]));
    let both = service(
        "203.0.113.1",
        80,
        Forwarding::Dr,
        &[(r1, 80, 1), (r2, 80, 1)],
    );
    let t0 = Instant::now();
    dp.apply(&plan(vec![both.clone()]), &ApplyContext::at(t0));

    // An established flow on r2.
    let sport = (40000..41000)
        .find(|p| dr_target(dp.director(), "203.0.113.1", *p, TCP_SYN) == Some(m2))
        .expect("some flow hashes to r2");

    let only_r1 = service("203.0.113.1", 80, Forwarding::Dr, &[(r1, 80, 1)]);
    let r = dp.apply(&plan(vec![only_r1.clone()]), &ApplyContext::at(t0));
    assert_eq!(r.real_servers.len(), 1, "{r:?}");
    assert_eq!(r.real_servers[0].state, RealServerState::Draining);
    assert_eq!(r.real_servers[0].real_server.ip(), ip(r2));
    // The open flow keeps its real server; new flows never get it.
    assert_eq!(
        dr_target(dp.director(), "203.0.113.1", sport, TCP_ACK),
        Some(m2)
    );
    for p in 50000..50200 {
        assert_eq!(
            dr_target(dp.director(), "203.0.113.1", p, TCP_SYN),
            Some(m1)
        );
    }
    // Still draining on the next apply; deleted after the deadline.
    let r = dp.apply(
        &plan(vec![only_r1.clone()]),
        &ApplyContext::at(t0 + Duration::from_secs(30)),
    );
    assert_eq!(r.real_servers.len(), 1);
    assert!(dp.director().real_id(ip(r2), 80).is_some());
    let r = dp.apply(
        &plan(vec![only_r1]),
        &ApplyContext::at(t0 + Duration::from_secs(61)),
    );
    assert!(r.real_servers.is_empty(), "{r:?}");
    assert!(dp.director().real_id(ip(r2), 80).is_none());
    // The flow is rescheduled onto a live real server.
    assert_eq!(
        dr_target(dp.director(), "203.0.113.1", sport, TCP_ACK),
        Some(m1)
    );

    // Back in the plan while draining: no longer draining.
    dp.apply(&plan(vec![both.clone()]), &ApplyContext::at(t0));
    let r = dp.apply(
        &plan(vec![service(
            "203.0.113.1",
            80,
            Forwarding::Dr,
            &[(r1, 80, 1)],
        )]),
        &ApplyContext::at(t0),
    );
    assert_eq!(r.real_servers.len(), 1);
    let r = dp.apply(&plan(vec![both]), &ApplyContext::at(t0));
    assert!(r.real_servers.is_empty());
}

#[test]
#[ignore = "privileged: loads BPF"]
fn a_dr_real_server_without_a_mac_gets_no_flows_until_it_resolves() {
    let (r1, r2) = ("198.51.100.11", "198.51.100.12");
    let mut dp = XdpDataplane::new(XdpDirector::load(opts()).unwrap(), neighbours(&[r1]));
    let p = plan(vec![service(
        "203.0.113.1",
        80,
        Forwarding::Dr,
        &[(r1, 80, 1), (r2, 80, 1)],
    )]);
    let r = dp.apply(&p, &ApplyContext::at(Instant::now()));
    assert!(r.service(&key("203.0.113.1", 80)).unwrap().is_programmed());
    assert_eq!(r.real_servers.len(), 1, "{r:?}");
    assert!(matches!(
        r.real_servers[0].state,
        RealServerState::Unresolved(_)
    ));
    assert_eq!(r.real_servers[0].real_server.ip(), ip(r2));
    assert!(dp.neighbours().solicited.contains(&IpAddr::V4(ip(r2))));
    for p in 40000..40200 {
        assert_eq!(
            dr_target(dp.director(), "203.0.113.1", p, TCP_SYN),
            Some(mac_of(r1).1)
        );
    }
    // It resolves: it takes new flows again.
    dp.neighbours().known.insert(mac_of(r2).0, mac_of(r2).1);
    let r = dp.apply(&p, &ApplyContext::at(Instant::now()));
    assert!(r.real_servers.is_empty());
    assert!((41000..41200)
        .any(|p| dr_target(dp.director(), "203.0.113.1", p, TCP_SYN) == Some(mac_of(r2).1)));
}

/// A pin directory on bpffs, removed even when the test fails.
struct PinDir(PathBuf);

impl PinDir {
    fn new(tag: &str) -> Self {
        Self(PathBuf::from("/sys/fs/bpf").join(unique(&format!("kubelvs-test-{tag}"))))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
#[ignore = "privileged: loads BPF"]
fn a_pinned_vip_entry_with_an_out_of_range_id_never_panics() {
    let mut o = opts();
    let pins = PinDir::new("stray");
    let dir = pins.0.clone();
    o.pin_dir = Some(dir.clone());
    let d = XdpDirector::load(o.clone()).unwrap();
    drop(d);
    // Another writer (an older layout, a bug) leaves VIP entries with ids past max_vips.
    {
        let mut vips: aya::maps::HashMap<_, VipKey, VipMeta> = aya::maps::HashMap::try_from(
            aya::maps::Map::HashMap(aya::maps::MapData::from_pin(dir.join("vips")).unwrap()),
        )
        .unwrap();
        for (addr, id) in [("203.0.113.1", 1000), ("203.0.113.9", 7)] {
            let k = VipKey {
                addr: u32::from_ne_bytes(addr.parse::<Ipv4Addr>().unwrap().octets()),
                port: 80u16.to_be(),
                proto: 6,
                pad: 0,
            };
            let m = VipMeta {
                vip_id: id,
                ..VipMeta::default()
            };
            vips.insert(k, m, 0).unwrap();
        }
    }
    let mut d = XdpDirector::load(o).unwrap();
    let neigh = HashMap::from([mac_of("198.51.100.11")]);
    let r = d
        .apply(
            &[service(
                "203.0.113.1",
                80,
                Forwarding::Dr,
                &[("198.51.100.11", 80, 1)],
            )],
            &neigh,
        )
        .unwrap();
    assert!(r.skipped.is_empty(), "{r:?}");
    let id = d.vip_id(&key("203.0.113.1", 80)).unwrap();
    assert!(id < 4, "re-programmed with a valid id, got {id}");
    assert_eq!(
        dr_target(&d, "203.0.113.1", 40000, TCP_SYN),
        Some(mac_of("198.51.100.11").1)
    );
    // The stray entry nobody wants is gone.
    assert_eq!(dr_target(&d, "203.0.113.9", 40000, TCP_SYN), None);
    d.detach().unwrap();
}

#[test]
#[ignore = "privileged: loads BPF"]
fn conns_per_cpu_is_what_one_cpu_holds() {
    // All flows from one CPU: its LRU list alone must hold conns_per_cpu of them.
    #[allow(unsafe_code)]
    // SAFETY: sched_setaffinity on this thread with a zeroed, then filled, cpu_set_t.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0
        );
    }
    let mut o = opts();
    o.conns_per_cpu = 512;
    let mut d = XdpDirector::load(o).unwrap();
    let cap = d.conn_capacity().unwrap();
    assert_eq!(cap.per_cpu, 512);
    assert!(cap.cpus >= 1);
    let neigh = HashMap::from([mac_of("198.51.100.11")]);
    d.apply(
        &[service(
            "203.0.113.1",
            80,
            Forwarding::Dr,
            &[("198.51.100.11", 80, 1)],
        )],
        &neigh,
    )
    .unwrap();
    for p in 0..512u16 {
        assert!(dr_target(&d, "203.0.113.1", 10000 + p, TCP_SYN).is_some());
    }
    assert_eq!(
        d.connection_count(),
        512,
        "flows were evicted before the table was full"
    );
}
