//! The lab itself, proven without any load balancer, then with the nftables DNAT
//! load balancer (the baseline the XDP director is compared with).

use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use kubelvs_xdp_lab::client::{self, Conn};
use kubelvs_xdp_lab::nft::{self, L4};
use kubelvs_xdp_lab::{Lab, LabConfig, ReturnPath};

const PORT: u16 = 80;
const TIMEOUT: Duration = Duration::from_secs(5);

fn sock(addr: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(addr, port))
}

#[test]
#[ignore = "privileged: netns"]
fn plain_routing_reaches_each_real_server_and_the_vip_on_lo() {
    let lab = Lab::build(LabConfig::default()).unwrap();
    let _servers = lab.start_servers(PORT).unwrap();

    // Every real server answers on its own address, with its own identity.
    let rs_addrs: Vec<_> = lab
        .real_servers
        .iter()
        .map(|rs| (rs.addr, rs.role.clone()))
        .collect();
    let answered = lab
        .client
        .netns
        .run(move || {
            rs_addrs
                .iter()
                .map(|(addr, role)| {
                    let c = client::open_with_retry(sock(*addr, PORT), TIMEOUT)?;
                    Ok((role.clone(), c.real_server().to_owned()))
                })
                .collect::<kubelvs_xdp_lab::Result<Vec<_>>>()
        })
        .unwrap()
        .unwrap();
    for (role, identity) in answered {
        assert_eq!(role, identity);
    }

    // Plain routing, no load balancer: the director routes the VIP to rs2, which
    // carries it on lo and answers the client directly from the VIP.
    let rs2 = &lab.real_servers[1];
    lab.director
        .netns
        .ip(&[
            "route",
            "add",
            &format!("{}/32", lab.vip),
            "via",
            &rs2.addr.to_string(),
        ])
        .unwrap();
    let vip = sock(lab.vip, PORT);
    let mut conn = lab
        .client
        .netns
        .run(move || client::open_with_retry(vip, TIMEOUT))
        .unwrap()
        .unwrap();
    assert_eq!(conn.real_server(), "rs2");
    assert_eq!(conn.echo("hello").unwrap(), "rs2 hello");

    // ARP suppression: were the VIP on-link for the client, no real server would
    // answer ARP for it, so a connection cannot even start.
    lab.client
        .netns
        .ip(&[
            "route",
            "replace",
            &format!("{}/32", lab.vip),
            "dev",
            "eth0",
        ])
        .unwrap();
    let refused = lab
        .client
        .netns
        .run(move || Conn::open(vip, Duration::from_millis(1500)))
        .unwrap();
    assert!(refused.is_err(), "a real server answered ARP for the VIP");
    for rs in &lab.real_servers {
        assert_eq!(
            rs.netns
                .sysctl_get("net.ipv4.conf.eth0.arp_ignore")
                .unwrap(),
            "1"
        );
        assert_eq!(
            rs.netns
                .sysctl_get("net.ipv4.conf.eth0.arp_announce")
                .unwrap(),
            "2"
        );
    }
}

#[test]
#[ignore = "privileged: netns"]
fn lab_namespaces_are_removed_even_when_a_test_panics() {
    let names = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::build(LabConfig::default()).unwrap();
        *names.lock().unwrap() = lab
            .hosts()
            .map(|h| h.netns.name().to_owned())
            .chain([lab.bridge.name().to_owned()])
            .collect();
        panic!("test failure inside a lab");
    });
    assert!(result.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(
        names.len(),
        6,
        "bridge, client, director, three real servers"
    );
    for name in names {
        assert!(
            !Path::new("/run/netns").join(&name).exists(),
            "{name} left behind"
        );
    }
}

#[test]
#[ignore = "privileged: netns + nftables"]
fn nftables_dnat_round_robins_real_tcp_over_the_real_servers() {
    let lab = Lab::build(LabConfig {
        vip_on_real_servers: false,
        return_path: ReturnPath::ViaDirector,
        ..LabConfig::default()
    })
    .unwrap();
    let servers = lab.start_servers(PORT).unwrap();
    let rs_addrs: Vec<_> = lab.real_servers.iter().map(|rs| rs.addr).collect();
    nft::install_dnat(&lab.director.netns, lab.vip, PORT, L4::Tcp, &rs_addrs).unwrap();

    let vip = sock(lab.vip, PORT);
    let (first, spread) = lab
        .client
        .netns
        .run(move || -> kubelvs_xdp_lab::Result<_> {
            // The first connection waits for ARP; it takes one numgen slot too.
            let mut first = client::open_with_retry(vip, TIMEOUT)?;
            let echoed = first.echo("through dnat")?;
            let spread = client::spread(vip, 30, TIMEOUT)?;
            Ok((echoed, spread))
        })
        .unwrap()
        .unwrap();
    assert!(first.ends_with(" through dnat"), "{first}");
    // numgen inc: strict round robin over new connections. 31 in all.
    assert_eq!(spread.total(), 30);
    let mut counts: Vec<_> = servers.iter().map(|s| s.accepted()).collect();
    counts.sort();
    assert_eq!(counts, vec![10, 10, 11], "{spread:?}");
    for rs in ["rs1", "rs2", "rs3"] {
        assert!((9..=11).contains(&spread.count(rs)), "{spread:?}");
    }
}

#[test]
#[ignore = "privileged: netns"]
fn a_namespace_left_by_a_killed_run_is_replaced() {
    let name = format!("{}-stale", kubelvs_xdp_lab::netns::unique_prefix());
    // A run killed before its guards ran leaves the namespace behind.
    let leaked = kubelvs_xdp_lab::Netns::create(&name).unwrap();
    leaked
        .ip(&["link", "add", "br0", "type", "bridge"])
        .unwrap();
    std::mem::forget(leaked);

    let fresh = kubelvs_xdp_lab::Netns::create(&name).unwrap();
    // A fresh namespace: the leftover's bridge is gone with it.
    assert!(fresh.ip(&["link", "show", "br0"]).is_err());
    drop(fresh);
    assert!(!Path::new("/run/netns").join(&name).exists());
}
