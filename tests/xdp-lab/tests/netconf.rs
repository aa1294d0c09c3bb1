//! kubelvs-netconf on real kernels, in the lab's network namespaces: the director
//! carries the VIP, DR real servers get the VIP on lo with ARP suppressed, and then
//! an ARP request for the VIP from the client is answered by the director only while
//! real TCP through the VIP is answered by the real servers directly. Undone when the
//! plan drops it; an address added by hand survives.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use kubelvs_model::{
    ApplyContext, Dataplane, DataplaneKind, DataplaneReport, Forwarding, NodePlan, ObjectKind,
    ObjectRef, Protocol, RealServerVip, Tunnel, TunnelKind,
};
use kubelvs_netconf::{Netconf, NetconfOptions, RtNetlink};
use kubelvs_xdp::DecapDataplane;
use kubelvs_xdp_lab::actor::NsActor;
use kubelvs_xdp_lab::director::XdpLab;
use kubelvs_xdp_lab::netns::Netns;
use kubelvs_xdp_lab::plan::service;
use kubelvs_xdp_lab::topology::{Host, HOST_IFNAME};
use kubelvs_xdp_lab::{arp, client, LabConfig};

const PORT: u16 = 80;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Applies `plan` with netconf inside `host`'s namespace (a fresh netlink socket
/// each time, as a restarted agent would have), ownership kept in `state`.
fn netconf(host: &Host, state: &Path, plan: NodePlan) -> DataplaneReport {
    netconf_with(host, state, plan, false)
}

fn netconf_with(host: &Host, state: &Path, plan: NodePlan, xdp_decap: bool) -> DataplaneReport {
    let state = state.to_path_buf();
    host.netns
        .run(move || {
            let opts = NetconfOptions {
                interface: Some(HOST_IFNAME.into()),
                xdp_decap,
            };
            let mut n = Netconf::new(RtNetlink::new().unwrap(), opts, state).unwrap();
            n.apply(&plan, &ApplyContext::at(Instant::now()))
        })
        .unwrap()
}

fn real_server_plan(vip: IpAddr) -> NodePlan {
    real_server_plan_tunnel(vip, None)
}

fn real_server_plan_tunnel(vip: IpAddr, tunnel: Option<TunnelKind>) -> NodePlan {
    NodePlan {
        node: "rs".into(),
        real_server_vips: vec![RealServerVip {
            vip,
            tunnel,
            sources: vec![ObjectRef::new(ObjectKind::VirtualService, "lab", "web")],
        }],
        ..NodePlan::default()
    }
}

fn who_has_vip(x: &XdpLab) -> Vec<[u8; 6]> {
    let c = &x.lab.client;
    let (ifindex, mac, addr, vip) = (c.ifindex, c.mac, c.addr, x.lab.vip);
    c.netns
        .run(move || arp::who_has(ifindex, mac, addr, vip, Duration::from_millis(300)))
        .unwrap()
        .unwrap()
}

fn has_on_lo(ns: &Netns, addr: &str) -> bool {
    ns.ip(&["-o", "addr", "show", "dev", "lo"])
        .unwrap()
        .contains(&format!(" {addr}/32 "))
}

#[test]
#[ignore = "privileged: netns + XDP"]
fn dr_real_servers_answer_the_vip_while_only_the_director_answers_arp() {
    let x = XdpLab::build(LabConfig {
        vip_on_real_servers: false,
        ..LabConfig::default()
    })
    .unwrap();
    let vip = x.lab.vip;
    let vip_s = vip.to_string();
    // The client sends to the VIP on-link: it must learn the VIP's MAC by ARP.
    x.lab
        .client
        .netns
        .ip(&["route", "replace", &format!("{vip}/32"), "dev", HOST_IFNAME])
        .unwrap();
    let dir = std::env::temp_dir().join(format!("kubelvs-netconf-lab-{}", std::process::id()));
    let state = |h: &Host| dir.join(&h.role);

    // The director carries the VIP (on its interface, as --interface says).
    let mut director_plan = NodePlan {
        node: "director".into(),
        services: vec![service(
            &x.lab,
            PORT,
            Protocol::Tcp,
            Forwarding::Dr,
            &[1, 1, 1],
            PORT,
        )],
        ..NodePlan::default()
    };
    director_plan.services[0].dataplane = DataplaneKind::Xdp;
    let r = netconf(&x.lab.director, &state(&x.lab.director), director_plan);
    assert!(r.problems().next().is_none(), "{r:?}");
    assert_eq!(
        who_has_vip(&x),
        [x.lab.director.mac],
        "only the director has the VIP yet"
    );

    // rs1 gets the VIP by hand, without ARP suppression: it answers ARP too. This is
    // the failure ARP suppression exists for (and proves the check can fail).
    let rs1 = &x.lab.real_servers[0];
    rs1.netns
        .ip(&["addr", "add", &format!("{vip}/32"), "dev", "lo"])
        .unwrap();
    let replies = who_has_vip(&x);
    assert!(replies.contains(&rs1.mac), "{replies:x?}");

    // netconf on every real server.
    for rs in &x.lab.real_servers {
        let r = netconf(rs, &state(rs), real_server_plan(IpAddr::V4(vip)));
        assert!(r.problems().next().is_none(), "{}: {r:?}", rs.role);
        assert!(has_on_lo(&rs.netns, &vip_s), "{}", rs.role);
        for scope in ["all", HOST_IFNAME] {
            assert_eq!(
                rs.netns
                    .sysctl_get(&format!("net.ipv4.conf.{scope}.arp_ignore"))
                    .unwrap(),
                "1"
            );
            assert_eq!(
                rs.netns
                    .sysctl_get(&format!("net.ipv4.conf.{scope}.arp_announce"))
                    .unwrap(),
                "2"
            );
        }
    }
    assert_eq!(who_has_vip(&x), [x.lab.director.mac]);

    // Real TCP through the XDP director in DR: each real server answers directly.
    let _servers = x.lab.start_servers(PORT).unwrap();
    x.apply(vec![service(
        &x.lab,
        PORT,
        Protocol::Tcp,
        Forwarding::Dr,
        &[1, 1, 1],
        PORT,
    )])
    .unwrap();
    let to = SocketAddr::V4(SocketAddrV4::new(vip, PORT));
    let served = x
        .lab
        .client
        .netns
        .run(move || -> kubelvs_xdp_lab::Result<Vec<String>> {
            let mut seen = Vec::new();
            for _ in 0..30 {
                let mut c = client::open_with_retry(to, TIMEOUT)?;
                // DR: the real server sees the client itself.
                assert_eq!(c.seen_as()?, c.local_addr().unwrap().to_string());
                seen.push(c.real_server().to_owned());
            }
            Ok(seen)
        })
        .unwrap()
        .unwrap();
    for rs in ["rs1", "rs2", "rs3"] {
        assert!(
            served.iter().any(|s| s == rs),
            "{rs} answered nothing: {served:?}"
        );
    }

    // The plan drops the real-server role: undone, but rs1's hand-made VIP stays.
    for rs in &x.lab.real_servers {
        let r = netconf(rs, &state(rs), NodePlan::default());
        assert!(r.vips.is_empty());
        assert_eq!(
            rs.netns.sysctl_get("net.ipv4.conf.all.arp_ignore").unwrap(),
            "0"
        );
        assert_eq!(
            has_on_lo(&rs.netns, &vip_s),
            rs.role == "rs1",
            "{}: the VIP on lo",
            rs.role
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "privileged: netns + XDP"]
fn tun_real_servers_without_ipip_get_the_vip_and_xdp_decapsulation() {
    let x = XdpLab::build(LabConfig {
        vip_on_real_servers: false,
        ..LabConfig::default()
    })
    .unwrap();
    let vip = IpAddr::V4(x.lab.vip);
    let dir = std::env::temp_dir().join(format!("kubelvs-netconf-tun-{}", std::process::id()));
    let ctx = || ApplyContext::at(Instant::now());
    // This kernel has no ipip module (no tunl0): netconf with xdp_decap plus the
    // decapsulation dataplane take the real-server role.
    let mut decaps = Vec::new();
    for rs in &x.lab.real_servers {
        let plan = real_server_plan_tunnel(vip, Some(TunnelKind::Ipip));
        let r = netconf_with(rs, &dir.join(&rs.role), plan.clone(), true);
        assert!(r.problems().next().is_none(), "{}: {r:?}", rs.role);
        let d = NsActor::start(&rs.netns, "decap", || {
            Ok::<_, String>(DecapDataplane::new(HOST_IFNAME))
        })
        .unwrap();
        let p = plan.clone();
        let r = d.call(move |d| d.apply(&p, &ctx())).unwrap();
        assert!(r.problems().next().is_none(), "{}: {r:?}", rs.role);
        assert_eq!(r.writes, 2, "attached, VIP set");
        let r = d.call(move |d| d.apply(&plan, &ctx())).unwrap();
        assert_eq!(r.writes, 0, "re-apply");
        decaps.push(d);
    }
    let _servers = x.lab.start_servers(PORT).unwrap();
    x.apply(vec![service(
        &x.lab,
        PORT,
        Protocol::Tcp,
        Forwarding::Tun(Tunnel::Ipip),
        &[1, 1, 1],
        PORT,
    )])
    .unwrap();
    let to = SocketAddr::V4(SocketAddrV4::new(x.lab.vip, PORT));
    let served = x
        .lab
        .client
        .netns
        .run(move || -> kubelvs_xdp_lab::Result<Vec<String>> {
            (0..30)
                .map(|_| client::open_with_retry(to, TIMEOUT).map(|c| c.real_server().to_owned()))
                .collect()
        })
        .unwrap()
        .unwrap();
    for (rs, d) in x.lab.real_servers.iter().zip(&decaps) {
        assert!(
            served.contains(&rs.role),
            "{} answered nothing: {served:?}",
            rs.role
        );
        let n = d.call(|d| d.decapsulated().unwrap()).unwrap();
        assert!(n > 0, "{}: nothing decapsulated", rs.role);
    }
    // The plan drops the role: the program is detached and the VIP leaves lo.
    for (rs, d) in x.lab.real_servers.iter().zip(&decaps) {
        let r = d
            .call(move |d| d.apply(&NodePlan::default(), &ctx()))
            .unwrap();
        assert_eq!(r.writes, 1);
        assert!(!rs
            .netns
            .ip(&["link", "show", HOST_IFNAME])
            .unwrap()
            .contains("xdp"));
        netconf_with(rs, &dir.join(&rs.role), NodePlan::default(), true);
        assert!(!has_on_lo(&rs.netns, &x.lab.vip.to_string()));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `host`'s line for `addr` in `ip -6 addr show dev eth`, if it has it.
fn ip6_line(host: &Host, addr: &str) -> Option<String> {
    host.netns
        .ip(&["-o", "-6", "addr", "show", "dev", HOST_IFNAME])
        .unwrap()
        .lines()
        .find(|l| l.contains(&format!(" {addr}/128 ")))
        .map(str::to_owned)
}

#[test]
#[ignore = "privileged: netns"]
fn two_directors_on_one_segment_both_carry_an_ipv6_vip_without_duplicate_address_detection() {
    // Two directors of one IPv6 VIP on the same L2 segment: with DAD, the second one's
    // copy fails it (`dadfailed`, never usable) while the agent says Programmed.
    let x = XdpLab::build(LabConfig::default()).unwrap();
    let lab = &x.lab;
    let vip = kubelvs_xdp_lab::topology::VIP6.to_string();
    let dir = std::env::temp_dir().join(format!("kubelvs-netconf-dad-{}", std::process::id()));
    let second = &lab.real_servers[0];
    // The second director joins once the first carries the VIP (its DAD, if any, done).
    // Its own earlier copy was added with DAD, as agents did before, and failed it: the
    // apply replaces it.
    let mut lines = Vec::new();
    for (i, host) in [&lab.director, second].into_iter().enumerate() {
        if i == 1 {
            host.netns
                .ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{vip}/128"),
                    "dev",
                    HOST_IFNAME,
                ])
                .unwrap();
            let deadline = Instant::now() + TIMEOUT;
            while !ip6_line(host, &vip).is_some_and(|l| l.contains("dadfailed")) {
                assert!(Instant::now() < deadline, "{:?}", ip6_line(host, &vip));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let plan = NodePlan {
            node: host.role.clone(),
            services: vec![kubelvs_xdp_lab::plan::service6(
                lab,
                PORT,
                Protocol::Tcp,
                Forwarding::Dr,
                &[1, 1, 1],
                PORT,
            )],
            ..NodePlan::default()
        };
        let r = netconf(host, &dir.join(&host.role), plan);
        assert!(r.problems().next().is_none(), "{r:?}");
        let deadline = Instant::now() + TIMEOUT;
        let line = loop {
            let l = ip6_line(host, &vip).expect("the VIP on the interface");
            if !l.contains("tentative") || l.contains("dadfailed") || Instant::now() > deadline {
                break l;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        lines.push(line);
    }
    for l in &lines {
        assert!(!l.contains("dadfailed") && !l.contains("tentative"), "{l}");
    }
    for l in &lines {
        assert!(l.contains("nodad"), "{l}");
        // Never the source of the node's own connections.
        assert!(
            l.contains("deprecated") || l.contains("preferred_lft 0sec"),
            "{l}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The client's neighbour entry for `addr` (IPv4 or IPv6): its MAC, if it has one.
fn neighbour_mac(client: &Host, addr: &str) -> Option<String> {
    let family = if addr.contains(':') { "-6" } else { "-4" };
    let out = client
        .netns
        .ip(&[family, "neigh", "show", addr, "dev", HOST_IFNAME])
        .unwrap();
    let mut words = out.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next().map(str::to_owned)
}

#[test]
#[ignore = "privileged: netns"]
fn a_takeover_moves_the_vip_and_neighbours_learn_the_new_announcer_unasked() {
    // Two directors of one VIP (IPv4 and IPv6) on one segment: only the announcer
    // answers ARP/NDP; when the other takes over, its gratuitous ARP and unsolicited
    // NA rewrite the client's neighbour entries without the client asking.
    let lab = kubelvs_xdp_lab::Lab::build(LabConfig {
        vip_on_real_servers: false,
        ipv6: true,
        ..LabConfig::default()
    })
    .unwrap();
    let vip = lab.vip.to_string();
    let vip6 = kubelvs_xdp_lab::topology::VIP6.to_string();
    let client = &lab.client;
    client
        .netns
        .ip(&["route", "replace", &format!("{vip}/32"), "dev", HOST_IFNAME])
        .unwrap();
    client
        .netns
        .ip(&[
            "-6",
            "route",
            "replace",
            &format!("{vip6}/128"),
            "dev",
            HOST_IFNAME,
        ])
        .unwrap();
    let dir = std::env::temp_dir().join(format!("kubelvs-netconf-l2-{}", std::process::id()));
    let (a, b) = (&lab.director, &lab.real_servers[0]);
    let plan = |host: &Host, announces: bool| {
        let mut services = vec![
            service(&lab, PORT, Protocol::Tcp, Forwarding::Dr, &[1, 1, 1], PORT),
            kubelvs_xdp_lab::plan::service6(
                &lab,
                PORT,
                Protocol::Tcp,
                Forwarding::Dr,
                &[1, 1, 1],
                PORT,
            ),
        ];
        for s in &mut services {
            s.dataplane = DataplaneKind::Xdp;
        }
        let mut p = NodePlan {
            node: host.role.clone(),
            services,
            ..NodePlan::default()
        };
        if !announces {
            p.unannounced_vips = [lab.vip.into(), kubelvs_xdp_lab::topology::VIP6.into()].into();
        }
        p
    };
    let who_has = || {
        let (ifindex, mac, addr, target) = (client.ifindex, client.mac, client.addr, lab.vip);
        client
            .netns
            .run(move || arp::who_has(ifindex, mac, addr, target, Duration::from_millis(300)))
            .unwrap()
            .unwrap()
    };
    for (host, announces) in [(a, true), (b, false)] {
        let r = netconf(host, &dir.join(&host.role), plan(host, announces));
        assert!(r.problems().next().is_none(), "{r:?}");
    }
    assert_eq!(who_has(), [a.mac], "only the announcer answers ARP");
    assert!(
        has_on_lo(&b.netns, &vip),
        "the silent director still carries the VIP"
    );
    // The client talked to the VIP through a (its entries as traffic leaves them).
    let mac = |h: &Host| kubelvs_xdp_lab::topology::format_mac(h.mac);
    for addr in [&vip, &vip6] {
        client
            .netns
            .ip(&[
                "neigh",
                "replace",
                addr,
                "lladdr",
                &mac(a),
                "dev",
                HOST_IFNAME,
                "nud",
                "stale",
            ])
            .unwrap();
    }

    // b takes over; a steps back.
    let took_over = Instant::now();
    for (host, announces) in [(b, true), (a, false)] {
        let r = netconf(host, &dir.join(&host.role), plan(host, announces));
        assert!(r.problems().next().is_none(), "{r:?}");
    }
    for addr in [&vip, &vip6] {
        let deadline = took_over + TIMEOUT;
        while neighbour_mac(client, addr).as_deref() != Some(mac(b).as_str()) {
            assert!(
                Instant::now() < deadline,
                "{addr}: the client still has {:?}, not b's {}",
                neighbour_mac(client, addr),
                mac(b)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{addr}: the client learnt the new announcer in {:?}",
            took_over.elapsed()
        );
    }
    assert_eq!(who_has(), [b.mac], "only the new announcer answers ARP");
    let _ = std::fs::remove_dir_all(&dir);
}
