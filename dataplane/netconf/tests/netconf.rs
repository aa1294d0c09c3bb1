//! Netconf through the `Dataplane` trait on the fake and faulty node: the director
//! and real-server roles, every outcome kind, zero writes on re-apply, undo of only
//! what kube-lvs added, and every failure isolated to what needed it.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Instant;

use kubelvs_model::{
    ApplyContext, Dataplane, DataplaneKind, DataplaneReport, Forwarding, NodePlan, ObjectKind,
    ObjectRef, Outcome, Protocol, RealServerVip, Scheduler, SchedulerFlags, Service, ServiceKey,
    TunnelKind,
};
use kubelvs_netconf::{
    FakeNet, FaultyNet, LocalAddress, NetFault, NetKernel, Netconf, NetconfOptions,
};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("kubelvs-netconf-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Self(p)
    }
    fn state(&self) -> PathBuf {
        self.0.join("owned")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn rs_vip(vip: &str, tunnel: Option<TunnelKind>) -> RealServerVip {
    RealServerVip {
        vip: ip(vip),
        tunnel,
        sources: vec![ObjectRef::new(
            ObjectKind::VirtualService,
            "shop",
            &format!("vs-{vip}"),
        )],
    }
}

fn service(vip: &str, fwd: Forwarding, dataplane: DataplaneKind) -> Service {
    Service {
        key: ServiceKey {
            vip: ip(vip),
            port: 80,
            protocol: Protocol::Tcp,
        },
        scheduler: Scheduler::Wrr,
        scheduler_flags: SchedulerFlags::default(),
        forwarding: fwd,
        persistence: None,
        source_address: None,
        health_check: None,
        dataplane,
        real_servers: Vec::new(),
        source: ObjectRef::new(ObjectKind::VirtualService, "shop", &format!("vs-{vip}")),
    }
}

fn plan(services: Vec<Service>, vips: Vec<RealServerVip>) -> NodePlan {
    NodePlan {
        node: "n1".into(),
        services,
        real_server_vips: vips,
        ..NodePlan::default()
    }
}

fn eth0() -> NetconfOptions {
    NetconfOptions {
        interface: Some("eth0".into()),
        ..NetconfOptions::default()
    }
}

fn apply<K: NetKernel>(n: &mut Netconf<K>, p: &NodePlan) -> DataplaneReport {
    n.apply(p, &ApplyContext::at(Instant::now()))
}

fn vip_outcome<'a>(r: &'a DataplaneReport, vip: &str) -> &'a Outcome {
    &r.vips.iter().find(|v| v.vip == ip(vip)).unwrap().outcome
}

fn on_lo(vip: &str) -> LocalAddress {
    LocalAddress::host("lo", ip(vip))
}

#[test]
fn dr_real_server_gets_the_vip_on_lo_with_arp_suppressed_and_undone_after() {
    let t = TempDir::new("dr");
    let mut n = Netconf::new(FakeNet::node(), eth0(), t.state()).unwrap();
    let p = plan(vec![], vec![rs_vip("203.0.113.10", None)]);
    let r = apply(&mut n, &p);
    assert_eq!(r.dataplane, "netconf");
    assert!(vip_outcome(&r, "203.0.113.10").is_programmed(), "{r:?}");
    let k = n.kernel();
    assert!(k.addresses.contains(&on_lo("203.0.113.10")));
    for scope in ["all", "eth0"] {
        assert_eq!(k.sysctls[&format!("net/ipv4/conf/{scope}/arp_ignore")], "1");
        assert_eq!(
            k.sysctls[&format!("net/ipv4/conf/{scope}/arp_announce")],
            "2"
        );
    }
    assert_eq!(r.writes, 5);
    assert_eq!(apply(&mut n, &p).writes, 0);

    let r = apply(&mut n, &plan(vec![], vec![]));
    assert!(r.vips.is_empty());
    let k = n.kernel();
    assert!(k.addresses.is_empty());
    assert_eq!(k.sysctls["net/ipv4/conf/all/arp_ignore"], "0");
    assert_eq!(k.sysctls["net/ipv4/conf/eth0/arp_announce"], "0");
    assert_eq!(n.owned(), &Default::default());
}

#[test]
fn what_someone_else_configured_is_never_taken_away() {
    let t = TempDir::new("foreign");
    let mut node = FakeNet::node();
    // By hand: the VIP already on lo, arp_ignore already 1 on all, and an unrelated address.
    node.addresses.insert(on_lo("203.0.113.10"));
    node.addresses.insert(on_lo("192.0.2.200"));
    node.sysctls
        .insert("net/ipv4/conf/all/arp_ignore".into(), "1".into());
    let mut n = Netconf::new(node, eth0(), t.state()).unwrap();
    let r = apply(&mut n, &plan(vec![], vec![rs_vip("203.0.113.10", None)]));
    assert!(vip_outcome(&r, "203.0.113.10").is_programmed());
    assert!(!n.owned().addresses.contains(&on_lo("203.0.113.10")));

    // Someone changes a sysctl we set: on undo it stays as they set it.
    n.kernel()
        .sysctls
        .insert("net/ipv4/conf/eth0/arp_ignore".into(), "8".into());
    apply(&mut n, &plan(vec![], vec![]));
    let k = n.kernel();
    assert!(k.addresses.contains(&on_lo("203.0.113.10")));
    assert!(k.addresses.contains(&on_lo("192.0.2.200")));
    assert_eq!(k.sysctls["net/ipv4/conf/all/arp_ignore"], "1");
    assert_eq!(k.sysctls["net/ipv4/conf/eth0/arp_ignore"], "8");
    assert_eq!(
        k.sysctls["net/ipv4/conf/all/arp_announce"], "0",
        "ours: restored"
    );
}

#[test]
fn tun_real_server_brings_the_tunnel_up_or_says_why_not() {
    let t = TempDir::new("tun");
    let mut n = Netconf::new(FakeNet::node().with_link("tunl0"), eth0(), t.state()).unwrap();
    let p = plan(
        vec![],
        vec![
            rs_vip("203.0.113.10", Some(TunnelKind::Ipip)),
            rs_vip("203.0.113.11", Some(TunnelKind::Gre)),
        ],
    );
    let r = apply(&mut n, &p);
    assert!(vip_outcome(&r, "203.0.113.10").is_programmed(), "{r:?}");
    assert!(n.kernel().links["tunl0"]);
    assert_eq!(n.kernel().sysctls["net/ipv4/conf/tunl0/rp_filter"], "0");
    assert_eq!(n.kernel().sysctls["net/ipv4/conf/all/rp_filter"], "0");
    match vip_outcome(&r, "203.0.113.11") {
        Outcome::Unsupported(reason) => assert_eq!(reason.field, "spec.tunnel.type"),
        o => panic!("{o:?}"),
    }
    assert!(!n.kernel().addresses.contains(&on_lo("203.0.113.11")));
    apply(&mut n, &plan(vec![], vec![]));
    assert!(
        !n.kernel().links["tunl0"],
        "we brought it up: we set it down"
    );

    // No ipip module: no tunl0.
    let t2 = TempDir::new("tun-none");
    let mut n = Netconf::new(FakeNet::node(), eth0(), t2.state()).unwrap();
    let r = apply(
        &mut n,
        &plan(vec![], vec![rs_vip("203.0.113.10", Some(TunnelKind::Ipip))]),
    );
    match vip_outcome(&r, "203.0.113.10") {
        Outcome::Unsupported(reason) => assert!(reason.message.contains("tunl0"), "{reason}"),
        o => panic!("{o:?}"),
    }
    assert_eq!(r.writes, 0);
}

#[test]
fn directors_carry_their_vips_and_xdp_nat_gets_forwarding() {
    let t = TempDir::new("director");
    let mut n = Netconf::new(FakeNet::node(), eth0(), t.state()).unwrap();
    let p = plan(
        vec![
            service("203.0.113.1", Forwarding::Dr, DataplaneKind::Ipvs),
            service("203.0.113.2", Forwarding::Nat, DataplaneKind::Xdp),
        ],
        vec![],
    );
    let r = apply(&mut n, &p);
    assert_eq!(r.services.len(), 2);
    assert!(r.problems().next().is_none(), "{r:?}");
    let k = n.kernel();
    assert!(k
        .addresses
        .contains(&LocalAddress::host("eth0", ip("203.0.113.1"))));
    assert!(k
        .addresses
        .contains(&LocalAddress::host("eth0", ip("203.0.113.2"))));
    assert_eq!(k.sysctls["net/ipv4/ip_forward"], "1");

    // Without an interface they go on lo.
    let t2 = TempDir::new("director-lo");
    let mut n = Netconf::new(FakeNet::node(), NetconfOptions::default(), t2.state()).unwrap();
    apply(&mut n, &p);
    assert!(n.kernel().addresses.contains(&on_lo("203.0.113.1")));
}

#[test]
fn a_director_on_lo_refuses_the_real_server_role_as_a_conflict() {
    let t = TempDir::new("both");
    let mut n = Netconf::new(FakeNet::node(), NetconfOptions::default(), t.state()).unwrap();
    let p = plan(
        vec![service("203.0.113.1", Forwarding::Dr, DataplaneKind::Ipvs)],
        vec![rs_vip("203.0.113.10", None)],
    );
    let r = apply(&mut n, &p);
    match vip_outcome(&r, "203.0.113.10") {
        Outcome::Conflict(reason) => assert!(reason.message.contains("--interface")),
        o => panic!("{o:?}"),
    }
    assert_eq!(n.kernel().sysctls["net/ipv4/conf/all/arp_ignore"], "0");
    assert!(r.services[0].outcome.is_programmed());
}

#[test]
fn a_refused_address_fails_its_vip_only_and_is_retried() {
    let t = TempDir::new("faulty-addr");
    let kernel = FaultyNet {
        inner: FakeNet::node(),
        faults: vec![NetFault::AddAddress(ip("203.0.113.11"))],
    };
    let mut n = Netconf::new(kernel, eth0(), t.state()).unwrap();
    let p = plan(
        vec![],
        vec![rs_vip("203.0.113.10", None), rs_vip("203.0.113.11", None)],
    );
    let r = apply(&mut n, &p);
    assert!(vip_outcome(&r, "203.0.113.10").is_programmed());
    match vip_outcome(&r, "203.0.113.11") {
        Outcome::Failed(reason) => {
            assert_eq!(&*reason.object.name, "vs-203.0.113.11");
            assert!(reason.message.contains("203.0.113.11"));
        }
        o => panic!("{o:?}"),
    }
    n.kernel().faults.clear();
    let r = apply(&mut n, &p);
    assert!(r.problems().next().is_none(), "{r:?}");
    assert_eq!(r.writes, 1);
}

#[test]
fn a_failed_read_fails_everything_and_writes_nothing() {
    let t = TempDir::new("faulty-dump");
    let kernel = FaultyNet {
        inner: FakeNet::node(),
        faults: vec![NetFault::DumpAddresses],
    };
    let mut n = Netconf::new(kernel, eth0(), t.state()).unwrap();
    let r = apply(&mut n, &plan(vec![], vec![rs_vip("203.0.113.10", None)]));
    assert_eq!(vip_outcome(&r, "203.0.113.10").name(), "Failed");
    assert_eq!(n.kernel().inner.writes, 0);
}

#[test]
fn a_sysctl_that_cannot_be_written_or_does_not_exist_fails_what_needs_it() {
    let t = TempDir::new("faulty-sysctl");
    let kernel = FaultyNet {
        inner: FakeNet::node(),
        faults: vec![NetFault::WriteSysctl("net/ipv4/conf/all/arp_ignore".into())],
    };
    let mut n = Netconf::new(kernel, eth0(), t.state()).unwrap();
    let p = plan(
        vec![service("203.0.113.1", Forwarding::Dr, DataplaneKind::Ipvs)],
        vec![rs_vip("203.0.113.10", None)],
    );
    let r = apply(&mut n, &p);
    assert_eq!(vip_outcome(&r, "203.0.113.10").name(), "Failed");
    assert!(
        r.services[0].outcome.is_programmed(),
        "the director VIP needs no ARP sysctl"
    );

    let t2 = TempDir::new("no-iface");
    let opts = NetconfOptions {
        interface: Some("eth9".into()),
        ..NetconfOptions::default()
    };
    let mut n = Netconf::new(FakeNet::node(), opts, t2.state()).unwrap();
    let r = apply(&mut n, &plan(vec![], vec![rs_vip("203.0.113.10", None)]));
    match vip_outcome(&r, "203.0.113.10") {
        Outcome::Failed(reason) => assert!(reason.message.contains("eth9"), "{reason}"),
        o => panic!("{o:?}"),
    }
}

#[test]
fn ownership_survives_a_restart() {
    let t = TempDir::new("restart");
    let mut n = Netconf::new(FakeNet::node(), eth0(), t.state()).unwrap();
    apply(&mut n, &plan(vec![], vec![rs_vip("203.0.113.10", None)]));
    let node = n.kernel().clone();
    drop(n);

    let mut n = Netconf::new(node, eth0(), t.state()).unwrap();
    let r = apply(&mut n, &plan(vec![], vec![rs_vip("203.0.113.10", None)]));
    assert_eq!(r.writes, 0, "adopted, nothing rewritten");
    apply(&mut n, &plan(vec![], vec![]));
    assert!(n.kernel().addresses.is_empty());
    assert_eq!(n.kernel().sysctls["net/ipv4/conf/all/arp_ignore"], "0");

    std::fs::write(t.state(), "address lo not-an-address\n").unwrap();
    let e = Netconf::new(FakeNet::node(), eth0(), t.state()).unwrap_err();
    assert!(e.to_string().contains("line 1"), "{e}");
}

#[test]
fn without_tunl0_the_xdp_decap_option_still_gives_the_vip_and_arp_suppression() {
    let t = TempDir::new("xdp-decap");
    let opts = NetconfOptions {
        interface: Some("eth0".into()),
        xdp_decap: true,
    };
    let mut n = Netconf::new(FakeNet::node(), opts, t.state()).unwrap();
    let r = apply(
        &mut n,
        &plan(vec![], vec![rs_vip("203.0.113.10", Some(TunnelKind::Ipip))]),
    );
    assert!(vip_outcome(&r, "203.0.113.10").is_programmed(), "{r:?}");
    assert!(n.kernel().addresses.contains(&on_lo("203.0.113.10")));
    assert_eq!(n.kernel().sysctls["net/ipv4/conf/all/arp_ignore"], "1");
    assert!(!n.kernel().links.contains_key("tunl0"));
}

/// `--cleanup`: a fresh process undoes what an earlier one owned; a sysctl it cannot
/// restore is named and stays owned, so a second run can finish the job.
#[test]
fn remove_all_undoes_what_was_owned_and_names_what_it_could_not() {
    let t = TempDir::new("remove-all");
    let mut n = Netconf::new(FakeNet::node(), eth0(), t.state()).unwrap();
    apply(&mut n, &plan(vec![], vec![rs_vip("203.0.113.10", None)]));
    let node = n.kernel().clone();
    drop(n);

    let stuck = "net/ipv4/conf/all/arp_ignore";
    let kernel = FaultyNet {
        inner: node,
        faults: vec![NetFault::WriteSysctl(stuck.into())],
    };
    let mut n = Netconf::new(kernel, eth0(), t.state()).unwrap();
    let e = n.remove_all(&ApplyContext::at(Instant::now())).unwrap_err();
    assert!(e.contains(stuck), "{e}");
    assert!(n.kernel().inner.addresses.is_empty(), "the VIP went");
    let node = n.kernel().inner.clone();
    drop(n);

    let mut n = Netconf::new(node, eth0(), t.state()).unwrap();
    let writes = n.remove_all(&ApplyContext::at(Instant::now())).unwrap();
    assert_eq!(writes, 1, "only what was left");
    assert_eq!(n.kernel().sysctls[stuck], "0");
    assert_eq!(n.owned(), &Default::default());
}

#[test]
fn a_vip_another_director_announces_sits_on_lo_silently_and_a_takeover_is_announced() {
    let t = TempDir::new("announce");
    let mut n = Netconf::new(FakeNet::node(), eth0(), t.state()).unwrap();
    let v4 = service("203.0.113.1", Forwarding::Dr, DataplaneKind::Xdp);
    let v6 = service("2001:db8::1", Forwarding::Dr, DataplaneKind::Xdp);
    let mut quiet = plan(vec![v4.clone(), v6.clone()], vec![]);
    quiet.unannounced_vips = [ip("203.0.113.1"), ip("2001:db8::1")].into();
    let r = apply(&mut n, &quiet);
    assert!(r.problems().next().is_none(), "{r:?}");
    let k = n.kernel();
    assert!(k.addresses.contains(&on_lo("203.0.113.1")));
    assert!(k.addresses.contains(&on_lo("2001:db8::1")));
    assert!(!k.addresses.iter().any(|a| a.ifname == "eth0"));
    // ARP on the interface answers only for its own addresses; `all` is left alone.
    assert_eq!(k.sysctls["net/ipv4/conf/eth0/arp_ignore"], "1");
    assert_eq!(k.sysctls["net/ipv4/conf/eth0/arp_announce"], "2");
    assert_eq!(k.sysctls["net/ipv4/conf/all/arp_ignore"], "0");
    assert!(k.announced.is_empty(), "{:?}", k.announced);

    // The owner died: this node takes over, moves the VIPs to eth0 and announces them
    // once each; the ARP limit goes back to what it was.
    let owner = plan(vec![v4, v6], vec![]);
    let r = apply(&mut n, &owner);
    assert!(r.problems().next().is_none(), "{r:?}");
    let k = n.kernel();
    let on_eth0 = |v: &str| LocalAddress::host("eth0", ip(v));
    assert_eq!(
        k.announced,
        vec![on_eth0("203.0.113.1"), on_eth0("2001:db8::1")]
    );
    assert!(!k.addresses.contains(&on_lo("203.0.113.1")));
    assert_eq!(k.sysctls["net/ipv4/conf/eth0/arp_ignore"], "0");
    // Nothing moves again, nothing is announced again.
    assert_eq!(apply(&mut n, &owner).writes, 0);
    assert_eq!(n.kernel().announced.len(), 2);
    assert!(n.kernel().withdrawn.is_empty());

    // Another director came alive: what this one announces is announced again (the
    // newcomer may have announced it while it saw no other director).
    let again = n.apply(
        &owner,
        &ApplyContext {
            reannounce: true,
            ..ApplyContext::at(Instant::now())
        },
    );
    assert_eq!(again.writes, 0);
    assert_eq!(n.kernel().announced.len(), 4);

    // Another director takes over: the announcements' repeats stop, or they would
    // send the neighbours back here.
    apply(&mut n, &quiet);
    assert_eq!(
        n.kernel().withdrawn,
        vec![on_eth0("203.0.113.1"), on_eth0("2001:db8::1")]
    );
}

#[test]
fn a_failed_announcement_fails_its_service_and_is_retried() {
    let t = TempDir::new("announce-fail");
    let faulty = FaultyNet {
        inner: FakeNet::node(),
        faults: vec![NetFault::Announce(ip("203.0.113.1"))],
    };
    let mut n = Netconf::new(faulty, eth0(), t.state()).unwrap();
    let p = plan(
        vec![service("203.0.113.1", Forwarding::Dr, DataplaneKind::Xdp)],
        vec![],
    );
    let r = apply(&mut n, &p);
    let failed: Vec<_> = r.problems().collect();
    assert_eq!(failed.len(), 1, "{r:?}");
    assert!(format!("{r:?}").contains("announcing"), "{r:?}");
    n.kernel().faults.clear();
    let r = apply(&mut n, &p);
    assert!(r.problems().next().is_none(), "{r:?}");
    assert_eq!(
        n.kernel().inner.announced,
        vec![LocalAddress::host("eth0", ip("203.0.113.1"))]
    );
}
