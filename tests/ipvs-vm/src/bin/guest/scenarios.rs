//! Real-kernel scenarios: our apply programs IPVS, real TCP goes through it, and
//! `ipvsadm` (a client we did not write) witnesses the table.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use kubelvs_ipvs::{
    apply_fullnat, apply_sysctls, director_sysctls_for, ApplyReport, IpvsDataplane,
};
use kubelvs_ipvs_vm::ipvsadm;
use kubelvs_model::{
    DataplaneKind, Forwarding, ObjectKind, ObjectRef, Persistence, Protocol, RealServer, Scheduler,
    SchedulerFlags, Service, ServiceKey, Tunnel,
};

use crate::lab::{
    cmd, peers, tally, Lab, CLIENT, CLIENT6, CLIENTS, DIRECTOR_LAN, GUE_PORT, REAL_SERVERS,
    REAL_SERVERS6,
};
use crate::Reporter;

const NAT_VIP: &str = "203.0.113.1";
const DR_VIP: &str = "203.0.113.2";
const TUN_VIP: &str = "203.0.113.3";
const FULLNAT_VIP: &str = "203.0.113.4";
const GUE_VIP: &str = "203.0.113.10";
const GRE_VIP: &str = "203.0.113.11";
const WRR_VIP: &str = "203.0.113.5";
const SH_VIP: &str = "203.0.113.6";
const PERSIST_VIP: &str = "203.0.113.7";
const DRAIN_VIP: &str = "203.0.113.8";
/// A real server is removed from this service's plan while it holds a connection.
const REMOVE_VIP: &str = "203.0.113.9";
/// IPv6 NAT with persistence per /64: exercises 16-byte addresses and the IPv6
/// netmask, which IPVS takes as a prefix length.
const V6_VIP: &str = "2001:db8:f::1";
/// Created with ipvsadm before our first apply; it must survive every apply.
const FOREIGN_VIP: &str = "203.0.113.200";
const FOREIGN_KEY: &str = "TCP 203.0.113.200:80";
/// Programmed through the `Dataplane` trait (`IpvsDirector`), next to a service the
/// kernel refuses and the ipvsadm-made one.
const TRAIT_VIP: &str = "203.0.113.20";
const TRAIT_REFUSED_VIP: &str = "203.0.113.21";
const TRAIT_STATE_PATH: &str = "/run/kubelvs/ipvs-director-owned";

const STATE_PATH: &str = "/run/kubelvs/ipvs-owned-services";
const TIMEOUT: Duration = Duration::from_secs(3);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address constants are valid")
}

fn addr(vip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(vip), port)
}

/// A TCP virtual service on port 80 of `vip` over the three real servers with
/// `weights` (their IPv6 addresses when the VIP is IPv6).
pub fn service(
    vip: &str,
    scheduler: Scheduler,
    forwarding: Forwarding,
    weights: [u32; 3],
) -> Service {
    let addrs = if vip.contains(':') {
        REAL_SERVERS6
    } else {
        REAL_SERVERS.map(|(_, a)| a)
    };
    service_over(vip, scheduler, forwarding, weights, addrs)
}

fn service_over(
    vip: &str,
    scheduler: Scheduler,
    forwarding: Forwarding,
    weights: [u32; 3],
    addrs: [&str; 3],
) -> Service {
    // DR and TUN cannot map ports: the real server port is the virtual port.
    let rs_port = if forwarding.allows_port_mapping() {
        8080
    } else {
        80
    };
    let name = format!("vs-{vip}");
    Service {
        key: ServiceKey {
            vip: ip(vip),
            port: 80,
            protocol: Protocol::Tcp,
        },
        scheduler,
        scheduler_flags: SchedulerFlags::default(),
        forwarding,
        persistence: None,
        source_address: None,
        health_check: None,
        dataplane: DataplaneKind::Ipvs,
        real_servers: REAL_SERVERS
            .iter()
            .zip(addrs)
            .zip(weights)
            .map(|(((ns, _), a), weight)| RealServer {
                address: ip(a),
                port: rs_port,
                weight,
                source: ObjectRef::new(ObjectKind::RealServer, "lab", ns),
            })
            .collect(),
        source: ObjectRef::new(ObjectKind::VirtualService, "lab", &name),
    }
}

fn plan() -> Vec<Service> {
    let mut sh = service(SH_VIP, Scheduler::Sh, Forwarding::Nat, [1, 1, 1]);
    sh.scheduler_flags = SchedulerFlags {
        flag1: true,
        flag2: false,
        flag3: false,
    };
    let mut persist = service(PERSIST_VIP, Scheduler::Rr, Forwarding::Nat, [1, 1, 1]);
    persist.persistence = Some(Persistence {
        timeout_seconds: 60,
        prefix_length: 32,
    });
    let mut v6 = service(V6_VIP, Scheduler::Rr, Forwarding::Nat, [1, 1, 1]);
    v6.persistence = Some(Persistence {
        timeout_seconds: 30,
        prefix_length: 64,
    });
    let mut fullnat = service(FULLNAT_VIP, Scheduler::Rr, Forwarding::FullNat, [1, 1, 1]);
    fullnat.source_address = Some(ip(DIRECTOR_LAN));
    let mut services = vec![
        service(NAT_VIP, Scheduler::Rr, Forwarding::Nat, [1, 1, 1]),
        service(DR_VIP, Scheduler::Rr, Forwarding::Dr, [1, 1, 1]),
        service(
            TUN_VIP,
            Scheduler::Rr,
            Forwarding::Tun(Tunnel::Ipip),
            [1, 1, 1],
        ),
        service(
            GUE_VIP,
            Scheduler::Rr,
            Forwarding::Tun(Tunnel::Gue { port: GUE_PORT }),
            [1, 1, 1],
        ),
        service(
            GRE_VIP,
            Scheduler::Rr,
            Forwarding::Tun(Tunnel::Gre),
            [1, 1, 1],
        ),
        fullnat,
        service(WRR_VIP, Scheduler::Wrr, Forwarding::Nat, [1, 2, 3]),
        sh,
        persist,
        service(DRAIN_VIP, Scheduler::Rr, Forwarding::Nat, [1, 1, 1]),
        service(REMOVE_VIP, Scheduler::Rr, Forwarding::Nat, [1, 1, 1]),
        v6,
    ];
    services.sort_by_key(|s| s.key);
    services
}

pub fn check_report(report: &ApplyReport) -> Result<(), String> {
    if report.errors.is_empty() && report.conflicts.is_empty() {
        return Ok(());
    }
    let errors: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
    Err(format!(
        "apply errors: {errors:?}, conflicts: {:?}",
        report.conflicts
    ))
}

fn summary(r: &ApplyReport) -> String {
    format!(
        "writes={} services+{} ~{} -{} dests+{} ~{} -{} write_time={:?}",
        r.writes,
        r.added_services,
        r.updated_services,
        r.deleted_services,
        r.added_dests,
        r.updated_dests,
        r.deleted_dests,
        r.write_time
    )
}

/// Connections through `vip` reach every real server and the servers saw `expect_peer`.
fn all_servers_answer(lab: &Lab, vip: &str, expect_peer: &str) -> Result<String, String> {
    let results = lab.connect(addr(vip, 80), 30, TIMEOUT, &[])?;
    let (counts, errors) = tally(&results);
    if !errors.is_empty() {
        return Err(format!(
            "{} of 30 connections failed: {errors:?}",
            errors.len()
        ));
    }
    if counts.len() != REAL_SERVERS.len() {
        return Err(format!(
            "expected all 3 real servers to answer, got {counts:?}"
        ));
    }
    let seen = peers(&results);
    if seen != [ip(expect_peer)] {
        return Err(format!(
            "real servers saw sources {seen:?}, expected {expect_peer}"
        ));
    }
    Ok(format!(
        "30 connections {counts:?}, real servers saw {expect_peer}"
    ))
}

fn listing() -> Result<BTreeMap<String, ipvsadm::ListedService>, String> {
    let text = cmd("ipvsadm", &["-Ln"])?;
    println!("--- ipvsadm -Ln\n{text}---");
    ipvsadm::parse_list(&text).map_err(|e| e.to_string())
}

fn table_matches(services: &[Service]) -> Result<String, String> {
    let listed = listing()?;
    // Tunnel type and GUE port are visible only with --tun-info.
    let text = cmd("ipvsadm", &["-Ln", "--tun-info"])?;
    let tun_info = ipvsadm::parse_tun_info(&text).map_err(|e| e.to_string())?;
    for s in services {
        let key = format!(
            "{} {}",
            s.key.protocol,
            SocketAddr::new(s.key.vip, s.key.port)
        );
        let want = ipvsadm::expected_tun_info(s.forwarding);
        for r in &s.real_servers {
            let dest = SocketAddr::new(r.address, r.port).to_string();
            let got = tun_info.get(&key).and_then(|d| d.get(&dest));
            if !got.is_some_and(|g| g.starts_with(&want)) {
                return Err(format!(
                    "{key} -> {dest}: --tun-info shows {got:?}, expected {want}..."
                ));
            }
        }
    }
    let diffs = ipvsadm::table_differences(
        &listed,
        &ipvsadm::expected_listing(services),
        &[FOREIGN_KEY],
    );
    if diffs.is_empty() {
        Ok(format!(
            "{} services match the plan, tunnel types and GUE port included",
            services.len()
        ))
    } else {
        Err(diffs.join("; "))
    }
}

pub fn run(r: &mut Reporter) {
    let started = Instant::now();
    let vips = [
        NAT_VIP,
        DR_VIP,
        TUN_VIP,
        FULLNAT_VIP,
        WRR_VIP,
        SH_VIP,
        PERSIST_VIP,
        DRAIN_VIP,
        REMOVE_VIP,
        FOREIGN_VIP,
        V6_VIP,
        GUE_VIP,
        GRE_VIP,
        TRAIT_VIP,
        TRAIT_REFUSED_VIP,
    ];
    let lab = match Lab::up(&vips, &[DR_VIP, TUN_VIP, GUE_VIP, GRE_VIP]) {
        Ok(lab) => lab,
        Err(e) => {
            r.case("topology", Err(e));
            return;
        }
    };
    r.case(
        "topology",
        Ok("client, director, 3 real servers with TCP servers".into()),
    );
    r.measure("lab_setup", started.elapsed().as_secs_f64(), "s");

    // Another tool's service, present before we ever apply.
    let foreign = cmd(
        "ipvsadm",
        &["-A", "-t", &format!("{FOREIGN_VIP}:80"), "-s", "wlc"],
    )
    .and_then(|_| {
        cmd(
            "ipvsadm",
            &[
                "-a",
                "-t",
                &format!("{FOREIGN_VIP}:80"),
                "-r",
                "192.0.2.11:8080",
                "-m",
                "-w",
                "5",
            ],
        )
    });
    if !r.case(
        "foreign_service_created",
        foreign.map(|_| "ipvsadm -A/-a".into()),
    ) {
        return;
    }

    let _ = std::fs::create_dir_all("/run/kubelvs");
    let mut dp = match IpvsDataplane::new(STATE_PATH) {
        Ok(dp) => dp,
        Err(e) => {
            r.case("apply", Err(format!("IpvsDataplane::new: {e}")));
            return;
        }
    };
    let services = plan();
    let first = apply_sysctls(&director_sysctls_for(&services))
        .map_err(|e| e.to_string())
        .and_then(|()| {
            dp.apply(&services, Instant::now())
                .map_err(|e| e.to_string())
        })
        .and_then(|rep| check_report(&rep).map(|()| rep))
        .and_then(|rep| {
            apply_fullnat(&services)
                .map(|()| rep)
                .map_err(|e| e.to_string())
        });
    let first = match first {
        Ok(rep) => rep,
        Err(e) => {
            r.case("apply", Err(e));
            return;
        }
    };
    let expected_writes = services.len() * 4;
    r.measure("apply_initial_writes", first.writes as f64, "messages");
    r.case(
        "apply",
        if first.added_services == services.len() && first.added_dests == services.len() * 3 {
            Ok(summary(&first))
        } else {
            Err(format!(
                "expected {expected_writes} adds, got {}",
                summary(&first)
            ))
        },
    );

    r.case("ipvsadm_table", table_matches(&services));

    r.case(
        "reapply_zero_writes",
        match dp.apply(&services, Instant::now()) {
            Ok(rep) if rep.writes == 0 && rep.ops() == 0 && rep.errors.is_empty() => {
                Ok(format!("second apply: {}", summary(&rep)))
            }
            Ok(rep) => Err(format!("second apply was not empty: {}", summary(&rep))),
            Err(e) => Err(e.to_string()),
        },
    );

    r.case("nat", all_servers_answer(&lab, NAT_VIP, CLIENT));
    r.case("dr", all_servers_answer(&lab, DR_VIP, CLIENT));
    r.case("tun", all_servers_answer(&lab, TUN_VIP, CLIENT));
    r.case("tun_gue", all_servers_answer(&lab, GUE_VIP, CLIENT));
    r.case("tun_gre", all_servers_answer(&lab, GRE_VIP, CLIENT));
    r.case("ipv6_nat_persistence", ipv6(&lab));
    r.case("wrr_weights", wrr(&lab));
    r.case("sh_sticky", sticky(&lab, SH_VIP, "sh"));
    r.case(
        "persistence_sticky",
        sticky(&lab, PERSIST_VIP, "persistence"),
    );
    // The plan as last applied: the drain cases change it step by step.
    let mut current = services.clone();
    r.case("drain_weight_zero", drain(&lab, &mut dp, &mut current));
    r.case(
        "drain_removed_real_server",
        drain_removed(&lab, &mut dp, &mut current),
    );
    r.case("foreign_service_survives", foreign_survives(&dp));
    r.case("dataplane_trait", through_the_trait(&lab));
    // Last: it removes the real servers' route back to the client.
    r.case("fullnat", fullnat(&lab));
    r.case("ipvs_director_failover", crate::failover::run(&lab));
    r.case("ipvs_selftest", selftest());
    r.measure("scenarios", started.elapsed().as_secs_f64(), "s");
}

/// IPv6 end to end: 16-byte VIP and real servers, persistence per /64.
fn ipv6(lab: &Lab) -> Result<String, String> {
    let results = lab.connect(addr(V6_VIP, 80), 10, TIMEOUT, &[])?;
    let (counts, errors) = tally(&results);
    if !errors.is_empty() {
        return Err(format!(
            "{} of 10 connections failed: {errors:?}",
            errors.len()
        ));
    }
    if counts.len() != 1 {
        return Err(format!(
            "persistence /64: one client must stick to one real server: {counts:?}"
        ));
    }
    let seen = peers(&results);
    if seen != [ip(CLIENT6)] {
        return Err(format!("real servers saw {seen:?}, expected {CLIENT6}"));
    }
    Ok(format!(
        "10 connections to [{V6_VIP}]:80 -> {counts:?}, real server saw {CLIENT6}"
    ))
}

fn wrr(lab: &Lab) -> Result<String, String> {
    let results = lab.connect(addr(WRR_VIP, 80), 600, TIMEOUT, &[])?;
    let (counts, errors) = tally(&results);
    if !errors.is_empty() {
        return Err(format!(
            "{} of 600 connections failed: {:?}",
            errors.len(),
            &errors[..errors.len().min(3)]
        ));
    }
    for ((ns, _), expected) in REAL_SERVERS.iter().zip([100.0, 200.0, 300.0]) {
        let got = counts.get(*ns).copied().unwrap_or(0) as f64;
        if (got - expected).abs() > expected * 0.10 {
            return Err(format!(
                "{ns}: {got} connections, expected {expected} ±10%: {counts:?}"
            ));
        }
    }
    // The kernel's own per-real-server counters must agree with what the clients saw.
    // The estimator folds the per-CPU counters into what ipvsadm reads every 2 s,
    // so poll until they catch up.
    let key = format!("TCP {WRR_VIP}:80");
    poll(Duration::from_secs(8), || {
        let stats = cmd("ipvsadm", &["-Ln", "--stats", "--exact"])?;
        let table = ipvsadm::parse_columns(&stats).map_err(|e| e.to_string())?;
        for (ns, rs) in REAL_SERVERS {
            let conns = table
                .get(&key)
                .and_then(|s| s.get(&format!("{rs}:8080")))
                .and_then(|cols| cols.first().copied());
            let seen = counts.get(ns).copied().unwrap_or(0) as u64;
            if conns != Some(seen) {
                return Err(format!(
                    "ipvsadm --stats: {rs} Conns {conns:?}, clients saw {seen}"
                ));
            }
        }
        Ok(())
    })?;
    Ok(format!(
        "600 connections, weights 1:2:3 -> {counts:?}, matching ipvsadm --stats"
    ))
}

/// The library's own real-kernel checks (`kubelvs_ipvs::selftest`: GET_INFO,
/// timeouts, fwmark, tunnels, ZERO, daemons, errno mapping, FLUSH). They flush, so
/// they run in a namespace of their own, in a child process.
fn selftest() -> Result<String, String> {
    const NS: &str = "ipvs-selftest";
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    cmd("ip", &["netns", "add", NS])?;
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", NS])
        .arg(&exe)
        .arg("selftest-inner")
        .status()
        .map_err(|e| format!("selftest-inner: {e}"))?;
    if out.success() {
        Ok("every kubelvs_ipvs::selftest case passed (lines above)".into())
    } else {
        Err(format!(
            "selftest-inner exited with {out}; see its FAIL lines"
        ))
    }
}

/// Inside the selftest namespace: prints one PASS/FAIL line per library case.
pub fn selftest_inner() -> Result<(), String> {
    // IPv4 destinations need a routing table in the namespace; lo up creates it.
    cmd("ip", &["link", "set", "lo", "up"])?;
    let mut client = kubelvs_ipvs::IpvsClient::new().map_err(|e| e.to_string())?;
    let mut r = Reporter::default();
    let cases = kubelvs_ipvs::selftest::run(&mut client);
    if cases.is_empty() {
        return Err("kubelvs_ipvs::selftest::run returned no case".into());
    }
    let mut failed = 0;
    for (name, result) in cases {
        if !r.case(name, result) {
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(format!("{failed} selftest cases failed"));
    }
    Ok(())
}

/// Retries `check` until it succeeds or `limit` passes; the last error explains a failure.
fn poll(limit: Duration, mut check: impl FnMut() -> Result<(), String>) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(format!("after {limit:?}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Every client address reaches exactly one real server, connection after connection.
fn sticky(lab: &Lab, vip: &str, what: &str) -> Result<String, String> {
    // Sources in turn, so each client's connections interleave with the others'.
    let results = lab.connect(addr(vip, 80), CLIENTS.len() * 5, TIMEOUT, &CLIENTS)?;
    let mut per_client: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for (src, res) in &results {
        let g = res.as_ref().map_err(|e| format!("from {src}: {e}"))?;
        *per_client
            .entry(src.clone())
            .or_default()
            .entry(g.server.clone())
            .or_insert(0) += 1;
    }
    if per_client.len() != CLIENTS.len() {
        return Err(format!(
            "expected {} clients, got {per_client:?}",
            CLIENTS.len()
        ));
    }
    if let Some((src, servers)) = per_client.iter().find(|(_, s)| s.len() != 1) {
        return Err(format!(
            "{what}: client {src} reached several real servers: {servers:?}"
        ));
    }
    if what == "persistence" {
        persistence_templates(vip, &per_client)?;
    }
    let map: Vec<String> = per_client
        .iter()
        .map(|(c, s)| format!("{c}->{}", s.keys().next().map_or("", String::as_str)))
        .collect();
    Ok(format!(
        "{what}: each of {} clients stuck to one real server: {}",
        CLIENTS.len(),
        map.join(" ")
    ))
}

/// `ipvsadm -Ln --persistent-conn`: one persistence template per client, on the
/// real server that client stuck to.
fn persistence_templates(
    vip: &str,
    per_client: &BTreeMap<String, BTreeMap<String, usize>>,
) -> Result<(), String> {
    let text = cmd("ipvsadm", &["-Ln", "--persistent-conn"])?;
    let table = ipvsadm::parse_columns(&text).map_err(|e| e.to_string())?;
    let key = format!("TCP {vip}:80");
    for (ns, rs) in REAL_SERVERS {
        // Columns: Weight PersistConn ActiveConn InActConn.
        let templates = table
            .get(&key)
            .and_then(|s| s.get(&format!("{rs}:8080")))
            .and_then(|cols| cols.get(1).copied());
        let clients = per_client.values().filter(|s| s.contains_key(ns)).count() as u64;
        if templates != Some(clients) {
            return Err(format!(
                "ipvsadm --persistent-conn: {rs} PersistConn {templates:?}, expected {clients} clients\n{text}"
            ));
        }
    }
    Ok(())
}

/// Weight 0 on the real server holding an open connection: the connection goes on,
/// new connections avoid it, and the change is one netlink write.
fn drain(lab: &Lab, dp: &mut IpvsDataplane, current: &mut [Service]) -> Result<String, String> {
    let held = lab.hold(addr(DRAIN_VIP, 80))?;
    let victim = held
        .greeting
        .as_ref()
        .map(|g| g.server.clone())
        .ok_or("no greeting")?;
    let idx = REAL_SERVERS
        .iter()
        .position(|(ns, _)| *ns == victim)
        .ok_or_else(|| format!("unknown real server {victim}"))?;
    let svc = current
        .iter_mut()
        .find(|s| s.key.vip == ip(DRAIN_VIP))
        .ok_or("drain service missing from the plan")?;
    svc.real_servers[idx].weight = 0;
    let rep = dp
        .apply(current, Instant::now())
        .map_err(|e| e.to_string())?;
    check_report(&rep)?;
    if rep.writes != 1 || rep.updated_dests != 1 || rep.ops() != 1 {
        return Err(format!(
            "weight change should be one SET_DEST, got {}",
            summary(&rep)
        ));
    }
    let listed = listing()?;
    let key = format!("TCP {DRAIN_VIP}:80");
    let dest = listed
        .get(&key)
        .and_then(|s| s.dests.get(&format!("{}:8080", REAL_SERVERS[idx].1)))
        .ok_or_else(|| format!("{victim} missing from the listing of {key}"))?;
    if dest.weight != 0 || dest.active < 1 {
        return Err(format!(
            "{victim}: expected weight 0 with its active connection, listed {dest:?}"
        ));
    }
    let results = lab.connect(addr(DRAIN_VIP, 80), 30, TIMEOUT, &[])?;
    let (counts, errors) = tally(&results);
    if !errors.is_empty() {
        return Err(format!("new connections failed: {errors:?}"));
    }
    if counts.contains_key(&victim) || counts.len() != 2 {
        return Err(format!(
            "new connections must avoid drained {victim}: {counts:?}"
        ));
    }
    let echoed = held.echo()?;
    if echoed != "still-open" {
        return Err(format!("held connection echoed {echoed:?}"));
    }
    Ok(format!(
        "{victim} weight 0 in 1 write ({:?}); held connection still echoes; 30 new -> {counts:?}",
        rep.write_time
    ))
}

/// A real server removed from the plan while it holds a connection: first weight 0
/// (one write; the connection goes on, new ones avoid it), then, once the drain
/// deadline has passed, one DEL_DEST.
fn drain_removed(
    lab: &Lab,
    dp: &mut IpvsDataplane,
    current: &mut [Service],
) -> Result<String, String> {
    let held = lab.hold(addr(REMOVE_VIP, 80))?;
    let victim = held
        .greeting
        .as_ref()
        .map(|g| g.server.clone())
        .ok_or("no greeting")?;
    let rs = REAL_SERVERS
        .iter()
        .find(|(ns, _)| *ns == victim)
        .map(|(_, a)| format!("{a}:8080"))
        .ok_or_else(|| format!("unknown real server {victim}"))?;
    let svc = current
        .iter_mut()
        .find(|s| s.key.vip == ip(REMOVE_VIP))
        .ok_or("service missing from the plan")?;
    svc.real_servers.retain(|r| *r.source.name != *victim);
    let t0 = Instant::now();
    let rep = dp.apply(current, t0).map_err(|e| e.to_string())?;
    check_report(&rep)?;
    if rep.writes != 1 || rep.updated_dests != 1 || rep.draining != 1 {
        return Err(format!(
            "removal with an open connection should be one SET_DEST to weight 0 and one draining, got {} draining={}",
            summary(&rep),
            rep.draining
        ));
    }
    let key = format!("TCP {REMOVE_VIP}:80");
    let listed = listing()?;
    let dest = listed
        .get(&key)
        .and_then(|s| s.dests.get(&rs))
        .ok_or_else(|| format!("{rs} deleted while it still had a connection"))?;
    if dest.weight != 0 || dest.active < 1 {
        return Err(format!(
            "{rs}: expected weight 0 with its connection, listed {dest:?}"
        ));
    }
    let results = lab.connect(addr(REMOVE_VIP, 80), 20, TIMEOUT, &[])?;
    let (counts, errors) = tally(&results);
    if !errors.is_empty() || counts.contains_key(&victim) || counts.len() != 2 {
        return Err(format!(
            "new connections must avoid draining {victim}: {counts:?} {errors:?}"
        ));
    }
    let echoed = held.echo()?;
    if echoed != "still-open" {
        return Err(format!("held connection echoed {echoed:?}"));
    }
    // Past the deadline the connection no longer protects it.
    let later = t0 + kubelvs_ipvs::DEFAULT_DRAIN_TIMEOUT + Duration::from_secs(1);
    let rep = dp.apply(current, later).map_err(|e| e.to_string())?;
    check_report(&rep)?;
    if rep.writes != 1 || rep.deleted_dests != 1 || rep.draining != 0 {
        return Err(format!(
            "after the deadline: expected one DEL_DEST, got {} draining={}",
            summary(&rep),
            rep.draining
        ));
    }
    let listed = listing()?;
    let left: Vec<&String> = listed
        .get(&key)
        .map(|s| s.dests.keys().collect())
        .unwrap_or_default();
    if left.len() != 2 || left.contains(&&rs) {
        return Err(format!("after the deadline {key} lists {left:?}"));
    }
    Ok(format!(
        "{victim} removed: weight 0 in 1 write, connection kept, 20 new -> {counts:?}; deleted in 1 write after the deadline"
    ))
}

/// The ipvsadm-made service is exactly as ipvsadm made it.
fn foreign_untouched() -> Result<(), String> {
    let listed = listing()?;
    let svc = listed
        .get(FOREIGN_KEY)
        .ok_or("the ipvsadm-created service is gone")?;
    let dest = svc
        .dests
        .get("192.0.2.11:8080")
        .ok_or("its real server is gone")?;
    if svc.scheduler != "wlc" || dest.weight != 5 || dest.forward != "Masq" || svc.dests.len() != 1
    {
        return Err(format!("it was modified: {svc:?}"));
    }
    Ok(())
}

fn foreign_survives(dp: &IpvsDataplane) -> Result<String, String> {
    foreign_untouched()?;
    if dp
        .owned()
        .iter()
        .any(|id| format!("{id:?}").contains(FOREIGN_VIP))
    {
        return Err(format!("we claim to own it: {:?}", dp.owned()));
    }
    Ok(format!(
        "{FOREIGN_KEY} wlc -> 192.0.2.11:8080 w5 untouched after every apply"
    ))
}

/// `IpvsDirector` through `kubelvs_model::Dataplane` on the real kernel: one
/// service programmed and carrying traffic, one the kernel refuses (an IPv6 real
/// server behind an IPv4 NAT service: EAFNOSUPPORT/EINVAL) failed alone, the
/// ipvsadm-made service reported as a conflict and left alone; then a re-apply
/// writes nothing.
fn through_the_trait(lab: &Lab) -> Result<String, String> {
    use kubelvs_ipvs::{IpvsDirector, SystemHost};
    use kubelvs_model::{ApplyContext, Dataplane, NodePlan, Outcome};

    let good = service(TRAIT_VIP, Scheduler::Wrr, Forwarding::Nat, [1, 1, 1]);
    let mut refused = service(
        TRAIT_REFUSED_VIP,
        Scheduler::Wrr,
        Forwarding::Nat,
        [1, 1, 1],
    );
    refused.real_servers[0].address = ip(REAL_SERVERS6[0]);
    let foreign = service(FOREIGN_VIP, Scheduler::Wlc, Forwarding::Nat, [1, 1, 1]);
    let table = IpvsDataplane::new(TRAIT_STATE_PATH).map_err(|e| e.to_string())?;
    let mut d = IpvsDirector::new(table, SystemHost::default());
    let plan = |services: Vec<Service>| NodePlan {
        node: "director".into(),
        services,
        ..NodePlan::default()
    };
    let ctx = ApplyContext::at(Instant::now());
    let r = d.apply(&plan(vec![good.clone(), refused, foreign.clone()]), &ctx);
    let outcome = |vip: &str| {
        r.service(&ServiceKey {
            vip: ip(vip),
            port: 80,
            protocol: Protocol::Tcp,
        })
        .cloned()
        .ok_or(format!("no outcome for {vip}"))
    };
    if !outcome(TRAIT_VIP)?.is_programmed() {
        return Err(format!("{TRAIT_VIP}: {:?}", outcome(TRAIT_VIP)?));
    }
    let refused_reason = match outcome(TRAIT_REFUSED_VIP)? {
        Outcome::Failed(reason) => reason.message,
        o => return Err(format!("{TRAIT_REFUSED_VIP}: expected Failed, got {o:?}")),
    };
    match outcome(FOREIGN_VIP)? {
        Outcome::Conflict(_) => {}
        o => return Err(format!("{FOREIGN_VIP}: expected Conflict, got {o:?}")),
    }
    foreign_untouched()?;
    let answered = all_servers_answer(lab, TRAIT_VIP, CLIENT)?;
    // The refused service leaves the plan: its service (created, with the
    // destinations the kernel took) is deleted, and its VIP leaves the VIP guard: two
    // writes; then nothing to do.
    let dropped = d.apply(&plan(vec![good.clone(), foreign.clone()]), &ctx);
    if dropped.writes != 2 || listing()?.contains_key(&format!("TCP {TRAIT_REFUSED_VIP}:80")) {
        return Err(format!("dropping {TRAIT_REFUSED_VIP}: {dropped:?}"));
    }
    let again = d.apply(&plan(vec![good, foreign]), &ctx);
    if again.writes != 0 {
        return Err(format!("re-apply wrote {}: {again:?}", again.writes));
    }
    foreign_untouched()?;
    Ok(format!(
        "{TRAIT_VIP} programmed ({answered}); {TRAIT_REFUSED_VIP} failed alone ({refused_reason}); \
         {FOREIGN_VIP} a conflict, untouched; re-apply 0 writes"
    ))
}

fn fullnat(lab: &Lab) -> Result<String, String> {
    lab.cut_route_back()?;
    // Control: plain NAT needs the route back, so it must now fail.
    let control = lab.connect(addr(NAT_VIP, 80), 1, Duration::from_millis(1500), &[])?;
    if control.iter().any(|(_, r)| r.is_ok()) {
        return Err(
            "control: NAT still worked without a route back; the test proves nothing".into(),
        );
    }
    let ok = all_servers_answer(lab, FULLNAT_VIP, DIRECTOR_LAN)?;
    let rules = cmd(
        "nft",
        &["list", "table", "inet", kubelvs_ipvs::FULLNAT_TABLE],
    )
    .unwrap_or_default();
    println!(
        "--- nft list table inet {}\n{rules}---",
        kubelvs_ipvs::FULLNAT_TABLE
    );
    Ok(format!("without a route back (NAT control failed): {ok}"))
}
