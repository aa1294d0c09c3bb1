//! End to end through the XDP director (crate kubelvs-xdp): real TCP connections
//! from the client namespace to the VIP, answered by real servers in their own
//! namespaces, in DR, TUN and NAT.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use kubelvs_model::{
    Forwarding, NodePlan, Persistence, Protocol, RealServerState, Service, Tunnel,
};
use kubelvs_xdp::DirectorOptions;
use kubelvs_xdp_lab::client::{self, Spread};
use kubelvs_xdp_lab::director::XdpLab;
use kubelvs_xdp_lab::plan::{service, service6};
use kubelvs_xdp_lab::topology::VIP6;
use kubelvs_xdp_lab::{LabConfig, ReturnPath};

const PORT: u16 = 80;
const TIMEOUT: Duration = Duration::from_secs(5);

fn vip(x: &XdpLab) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(x.lab.vip, PORT))
}

/// The lab's TCP virtual service VIP:80 over the real servers with `weights`,
/// listening on `target_port`.
fn web(x: &XdpLab, forwarding: Forwarding, weights: &[u32], target_port: u16) -> Vec<Service> {
    vec![service(
        &x.lab,
        PORT,
        Protocol::Tcp,
        forwarding,
        weights,
        target_port,
    )]
}

fn assert_every_real_server_served(spread: &Spread, n: usize) {
    assert_eq!(spread.total(), n);
    for rs in ["rs1", "rs2", "rs3"] {
        assert!(spread.count(rs) > 0, "{rs} got no connection: {spread:?}");
    }
}

/// Opens `n` connections through the VIP (the first one retried while the lab settles).
fn connect_many(x: &XdpLab, n: usize) -> Spread {
    connect_many_to(x, vip(x), n)
}

fn connect_many_to(x: &XdpLab, vip: SocketAddr, n: usize) -> Spread {
    x.lab
        .client
        .netns
        .run(move || -> kubelvs_xdp_lab::Result<Spread> {
            let mut first = client::open_with_retry(vip, TIMEOUT)?;
            let rs = first.real_server().to_owned();
            assert_eq!(first.echo("first")?, format!("{rs} first"));
            // LVS keeps the client's address (no source NAT in dr, tun or nat).
            let local = first.local_addr().expect("connected socket");
            assert_eq!(first.seen_as()?, local.to_string());
            first.reset();
            client::spread(vip, n, TIMEOUT)
        })
        .unwrap()
        .unwrap()
}

#[test]
#[ignore = "privileged: netns + XDP"]
fn dr_real_tcp_spreads_by_weight() {
    let x = XdpLab::build(LabConfig::default()).unwrap();
    let servers = x.lab.start_servers(PORT).unwrap();
    let weights = [1, 2, 3];
    let report = x.apply(web(&x, Forwarding::Dr, &weights, PORT)).unwrap();
    assert_eq!(report.vips_added, 1, "{report:?}");
    assert!(report.skipped.is_empty(), "{report:?}");

    // 1200 flows from fixed source ports: the spread is a function of the flow hash
    // and the maglev table only, the same on every run.
    let n = 1200;
    let (vip, client_addr) = (vip(&x), x.lab.client.addr);
    let owners = x
        .lab
        .client
        .netns
        .run(move || {
            client::open_with_retry(vip, TIMEOUT)?.reset();
            let from = (30_000..30_000 + n as u16)
                .map(|p| SocketAddr::V4(SocketAddrV4::new(client_addr, p)));
            client::flows(from, vip, TIMEOUT)
        })
        .unwrap()
        .unwrap();
    let mut spread = Spread::default();
    for rs in owners.values() {
        *spread.counts.entry(rs.clone()).or_default() += 1;
    }
    assert_eq!(spread.total(), n);
    // Each real server's share within 0.04 of its weight's share (a uniform hash
    // over 1200 flows has a standard deviation of at most 0.015).
    let total: u32 = weights.iter().sum();
    for (i, w) in weights.iter().enumerate() {
        let rs = format!("rs{}", i + 1);
        let want = f64::from(*w) / f64::from(total);
        let got = spread.share(&rs);
        assert!(
            (got - want).abs() <= 0.04,
            "{rs}: share {got:.3}, want {want:.3}: {spread:?}"
        );
    }
    eprintln!("weights {weights:?}: {spread:?}");
    // Every connection (and the first, probing one) reached exactly one real server.
    let accepted: usize = servers.iter().map(|s| s.accepted()).sum();
    assert_eq!(accepted, n + 1);
    // The director counted the traffic it forwarded, per real server.
    let stats = x.stats().unwrap();
    let forwarded: u64 = stats.real_servers.values().map(|c| c.packets).sum();
    assert!(
        forwarded >= 3 * n as u64,
        "SYN, ACK, RST at least: {stats:?}"
    );
    for rs in &x.lab.real_servers {
        let key = SocketAddr::new(IpAddr::V4(rs.addr), PORT);
        assert!(
            stats
                .real_servers
                .get(&key)
                .is_some_and(|c| c.new_conns > 0),
            "{key}: {stats:?}"
        );
    }
}

#[test]
#[ignore = "privileged: netns + XDP"]
fn tun_real_tcp_with_decap_on_the_real_servers() {
    let mut x = XdpLab::build(LabConfig::default()).unwrap();
    // This kernel has no ipip module: the real servers strip IPIP with XDP.
    x.attach_decap().unwrap();
    let _servers = x.lab.start_servers(PORT).unwrap();
    x.apply(web(&x, Forwarding::Tun(Tunnel::Ipip), &[1, 1, 1], PORT))
        .unwrap();

    assert_every_real_server_served(&connect_many(&x, 60), 60);
    // Every real server received encapsulated packets and stripped them.
    let decapsulated = x.decapsulated().unwrap();
    assert!(decapsulated.iter().all(|&n| n > 0), "{decapsulated:?}");
}

#[test]
#[ignore = "privileged: netns + XDP"]
fn nat_real_tcp_with_port_mapping() {
    let x = XdpLab::build(LabConfig {
        vip_on_real_servers: false,
        return_path: ReturnPath::ViaDirector,
        ..LabConfig::default()
    })
    .unwrap();
    // Real servers listen on 8080 only: the director maps VIP:80 to it.
    let target = 8080;
    let _servers = x.lab.start_servers(target).unwrap();
    x.apply(web(&x, Forwarding::Nat, &[1, 1, 1], target))
        .unwrap();

    assert_every_real_server_served(&connect_many(&x, 60), 60);
    let stats = x.stats().unwrap();
    assert!(stats.counters.nat_replies > 0, "{stats:?}");
}

#[test]
#[ignore = "privileged: netns + XDP"]
fn removing_a_real_server_moves_only_its_flows() {
    let x = XdpLab::build(LabConfig::default()).unwrap();
    let _servers = x.lab.start_servers(PORT).unwrap();
    let vip = vip(&x);
    let client_addr = x.lab.client.addr;
    // The same 300 flows (fixed source ports) before and after.
    let flows = move || -> kubelvs_xdp_lab::Result<BTreeMap<SocketAddr, String>> {
        client::open_with_retry(vip, TIMEOUT)?.reset();
        let from = (20_000..20_300).map(|p| SocketAddr::V4(SocketAddrV4::new(client_addr, p)));
        client::flows(from, vip, TIMEOUT)
    };

    x.apply(web(&x, Forwarding::Dr, &[1, 1, 1], PORT)).unwrap();
    let before = x.lab.client.netns.run(flows).unwrap().unwrap();
    let on_rs3 = before.values().filter(|rs| *rs == "rs3").count();
    assert!(
        (60..=140).contains(&on_rs3),
        "about a third on rs3: {on_rs3}"
    );

    // rs3 leaves the plan: it drains (no ring slot, still alive for its flows), and
    // is removed once the drain deadline has passed.
    let t0 = Instant::now();
    let report = x
        .apply_at(web(&x, Forwarding::Dr, &[1, 1], PORT), t0)
        .unwrap();
    assert_eq!(report.real_servers_removed, 0, "{report:?}");
    assert_eq!(report.draining.len(), 1, "{report:?}");
    let past_deadline = t0 + DirectorOptions::new(x.lab.director.addr).drain_timeout;
    let report = x
        .apply_at(web(&x, Forwarding::Dr, &[1, 1], PORT), past_deadline)
        .unwrap();
    assert_eq!(report.real_servers_removed, 1, "{report:?}");

    let after = x.lab.client.netns.run(flows).unwrap().unwrap();
    assert_eq!(after.len(), before.len());
    let mut moved = 0;
    for (flow, was) in &before {
        let now = &after[flow];
        if was == "rs3" {
            assert!(now == "rs1" || now == "rs2", "{flow}: rs3 -> {now}");
            moved += 1;
        } else {
            assert_eq!(now, was, "{flow} moved although its real server stayed");
        }
    }
    assert_eq!(moved, on_rs3);
}

#[test]
#[ignore = "privileged: netns + XDP"]
fn restarting_the_loader_keeps_a_long_lived_connection() {
    let mut x = XdpLab::build(LabConfig::default()).unwrap();
    let _servers = x.lab.start_servers(PORT).unwrap();
    let plan = |weights: &[u32]| web(&x, Forwarding::Dr, weights, PORT);
    x.apply(plan(&[1, 1, 1])).unwrap();

    let vip = vip(&x);
    let mut conn = x
        .lab
        .client
        .netns
        .run(move || client::open_with_retry(vip, TIMEOUT))
        .unwrap()
        .unwrap();
    let rs = conn.real_server().to_owned();
    assert_eq!(conn.echo("before").unwrap(), format!("{rs} before"));
    // DR: the real server sees the client itself.
    let local = conn.local_addr().unwrap();
    assert_eq!(conn.seen_as().unwrap(), local.to_string());

    // Quiesce the connection's real server: from now on only the connection table
    // keeps this flow there (the maglev ring no longer has it), so the flow
    // survives the restart only if the table does.
    let mut weights = [1, 1, 1];
    weights[x
        .lab
        .real_servers
        .iter()
        .position(|h| h.role == rs)
        .unwrap()] = 0;
    let quiesced = plan(&weights);
    x.apply(quiesced.clone()).unwrap();
    assert_eq!(conn.echo("quiesced").unwrap(), format!("{rs} quiesced"));

    // The agent stops: the program stays attached, the maps stay pinned.
    x.drop_director();
    assert_eq!(
        conn.echo("while stopped").unwrap(),
        format!("{rs} while stopped")
    );

    // The agent starts again from the pinned state and applies the same plan.
    x.attach_director().unwrap();
    let report = x.apply(quiesced).unwrap();
    assert_eq!(
        report.vips_added, 0,
        "the VIP was recovered from the maps: {report:?}"
    );
    assert_eq!(report.real_servers_added, 0, "{report:?}");
    for i in 0..20 {
        let msg = format!("after {i}");
        assert_eq!(conn.echo(&msg).unwrap(), format!("{rs} {msg}"));
    }
    // The connection table survived the restart: it still binds this flow.
    let SocketAddr::V4(local) = conn.local_addr().unwrap() else {
        panic!("IPv4 lab")
    };
    let SocketAddr::V4(vip) = vip else {
        panic!("IPv4 lab")
    };
    let rs_addr = x
        .lab
        .real_servers
        .iter()
        .find(|h| h.role == rs)
        .unwrap()
        .addr;
    assert_eq!(
        x.connection(local, vip).unwrap(),
        Some(SocketAddr::new(IpAddr::V4(rs_addr), PORT))
    );
}

#[test]
#[ignore = "privileged: netns + XDP"]
fn quiesced_real_server_keeps_its_connections_and_gets_no_new_ones() {
    let x = XdpLab::build(LabConfig::default()).unwrap();
    let _servers = x.lab.start_servers(PORT).unwrap();
    x.apply(web(&x, Forwarding::Dr, &[1, 1, 1], PORT)).unwrap();
    let vip = vip(&x);
    // Connections until one lands on rs1 (a third of them do).
    let mut on_rs1 = x
        .lab
        .client
        .netns
        .run(move || -> kubelvs_xdp_lab::Result<client::Conn> {
            for _ in 0..100 {
                let c = client::open_with_retry(vip, TIMEOUT)?;
                if c.real_server() == "rs1" {
                    return Ok(c);
                }
                c.reset();
            }
            panic!("no connection reached rs1 in 100");
        })
        .unwrap()
        .unwrap();

    // Weight 0 (a failed health check, or drain): quiesced, not removed.
    x.apply(web(&x, Forwarding::Dr, &[0, 1, 1], PORT)).unwrap();
    assert_eq!(on_rs1.echo("still here").unwrap(), "rs1 still here");
    let spread = x
        .lab
        .client
        .netns
        .run(move || client::spread(vip, 90, TIMEOUT))
        .unwrap()
        .unwrap();
    assert_eq!(spread.count("rs1"), 0, "{spread:?}");
    assert_eq!(spread.total(), 90);
    assert_eq!(on_rs1.echo("and still").unwrap(), "rs1 and still");
}

#[test]
#[ignore = "privileged: netns + XDP"]
fn persistence_sends_every_connection_of_a_client_to_one_real_server() {
    let x = XdpLab::build(LabConfig::default()).unwrap();
    let _servers = x.lab.start_servers(PORT).unwrap();
    let mut svc = service(
        &x.lab,
        PORT,
        Protocol::Tcp,
        Forwarding::Dr,
        &[1, 1, 1],
        PORT,
    );
    // ipvsadm -p 300 -M 255.255.255.255: the client address alone picks the server.
    svc.persistence = Some(Persistence {
        timeout_seconds: 300,
        prefix_length: 32,
    });
    x.apply(vec![svc]).unwrap();
    let spread = connect_many(&x, 60);
    assert_eq!(spread.total(), 60);
    // Without persistence 60 flows over three servers all land on one with
    // probability 3^-59.
    assert_eq!(spread.counts.len(), 1, "{spread:?}");
}

#[test]
#[ignore = "privileged: netns + XDP"]
fn dr_real_tcp_over_ipv6() {
    let x = XdpLab::build(LabConfig {
        ipv6: true,
        ..LabConfig::default()
    })
    .unwrap();
    let _servers = x.lab.start_servers6(PORT).unwrap();
    let svc = service6(
        &x.lab,
        PORT,
        Protocol::Tcp,
        Forwarding::Dr,
        &[1, 1, 1],
        PORT,
    );
    let report = x.apply(vec![svc.clone()]).unwrap();
    assert!(report.skipped.is_empty(), "{report:?}");

    let vip6 = SocketAddr::new(IpAddr::V6(VIP6), PORT);
    assert_every_real_server_served(&connect_many_to(&x, vip6, 60), 60);
    let stats = x.stats().unwrap();
    assert!(
        stats.vips.get(&svc.key).is_some_and(|c| c.new_conns > 0),
        "{stats:?}"
    );
}

#[test]
#[ignore = "privileged: netns + XDP"]
fn tun_real_tcp_over_ipv6_with_decap() {
    let mut x = XdpLab::build(LabConfig {
        ipv6: true,
        ..LabConfig::default()
    })
    .unwrap();
    x.attach_decap().unwrap();
    let _servers = x.lab.start_servers6(PORT).unwrap();
    let tun = Forwarding::Tun(Tunnel::Ipip);
    let report = x
        .apply(vec![service6(
            &x.lab,
            PORT,
            Protocol::Tcp,
            tun,
            &[1, 1, 1],
            PORT,
        )])
        .unwrap();
    assert!(report.skipped.is_empty(), "{report:?}");

    let vip6 = SocketAddr::new(IpAddr::V6(VIP6), PORT);
    assert_every_real_server_served(&connect_many_to(&x, vip6, 60), 60);
    let decapsulated = x.decapsulated().unwrap();
    assert!(decapsulated.iter().all(|&n| n > 0), "{decapsulated:?}");
}

#[test]
#[ignore = "privileged: netns + XDP"]
fn nat_real_tcp_over_ipv6_with_port_mapping() {
    let x = XdpLab::build(LabConfig {
        ipv6: true,
        vip_on_real_servers: false,
        return_path: ReturnPath::ViaDirector,
        ..LabConfig::default()
    })
    .unwrap();
    let target = 8080;
    let _servers = x.lab.start_servers6(target).unwrap();
    let report = x
        .apply(vec![service6(
            &x.lab,
            PORT,
            Protocol::Tcp,
            Forwarding::Nat,
            &[1, 1, 1],
            target,
        )])
        .unwrap();
    assert!(report.skipped.is_empty(), "{report:?}");

    let vip6 = SocketAddr::new(IpAddr::V6(VIP6), PORT);
    assert_every_real_server_served(&connect_many_to(&x, vip6, 60), 60);
    let stats = x.stats().unwrap();
    assert!(stats.counters.nat_replies > 0, "{stats:?}");
}

#[test]
#[ignore = "privileged: netns + XDP"]
fn scale_down_through_the_dataplane_trait_keeps_an_open_connection() {
    let x = XdpLab::build(LabConfig::default()).unwrap();
    let _servers = x.lab.start_servers(PORT).unwrap();
    let plan = |weights: &[u32]| NodePlan {
        node: "director".into(),
        services: web(&x, Forwarding::Dr, weights, PORT),
        ..NodePlan::default()
    };
    let t0 = Instant::now();
    let report = x.apply_plan(plan(&[1, 1, 1]), t0).unwrap();
    assert!(report.problems().next().is_none(), "{report:?}");
    let vip = vip(&x);
    // A long-lived connection on rs3, the real server the scale-down removes.
    let mut conn = x
        .lab
        .client
        .netns
        .run(move || -> kubelvs_xdp_lab::Result<client::Conn> {
            for _ in 0..200 {
                let c = client::open_with_retry(vip, TIMEOUT)?;
                if c.real_server() == "rs3" {
                    return Ok(c);
                }
            }
            panic!("no connection landed on rs3")
        })
        .unwrap()
        .unwrap();

    let report = x.apply_plan(plan(&[1, 1]), t0).unwrap();
    assert!(report.problems().next().is_none(), "{report:?}");
    assert_eq!(report.real_servers.len(), 1, "{report:?}");
    assert_eq!(report.real_servers[0].state, RealServerState::Draining);
    for i in 0..10 {
        let msg = format!("draining {i}");
        assert_eq!(conn.echo(&msg).unwrap(), format!("rs3 {msg}"));
    }
    // New connections go to the others only.
    let spread = connect_many(&x, 30);
    assert_eq!(spread.count("rs3"), 0, "{spread:?}");
    assert_eq!(spread.total(), 30);
    // Re-applying while draining writes nothing and keeps the connection.
    let again = x.apply_plan(plan(&[1, 1]), t0).unwrap();
    assert_eq!(again.writes, 0, "{again:?}");
    assert_eq!(conn.echo("still").unwrap(), "rs3 still");
}
