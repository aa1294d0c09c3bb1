//! Plan -> IPVS conversion, FullNAT ruleset (checked by a real nft in a netns),
//! director sysctls, and the client's generic-netlink lookup against the host kernel.

use std::process::Command;

use kubelvs_ipvs::codec::{
    Netmask, FWD_DROUTE, FWD_MASQ, FWD_TUNNEL, SVC_F_PERSISTENT, SVC_F_SCHED1, SVC_F_SCHED2,
    TUN_TYPE_GRE, TUN_TYPE_GUE,
};
use kubelvs_ipvs::fullnat::apply_nft_script_via;
use kubelvs_ipvs::sysctl::{apply_sysctls_at, read_sysctls_at};
use kubelvs_ipvs::{director_sysctls, fullnat_ruleset, DesiredService, Error, IpvsClient};
use kubelvs_model::{
    DataplaneKind, Forwarding, ObjectKind, ObjectRef, Persistence, Protocol, RealServer, Scheduler,
    SchedulerFlags, Service, ServiceKey, Tunnel,
};

fn rs(addr: &str, port: u16, weight: u32) -> RealServer {
    RealServer {
        address: addr.parse().unwrap(),
        port,
        weight,
        source: ObjectRef::new(ObjectKind::RealServer, "default", addr),
    }
}

fn svc(vip: &str, port: u16, proto: Protocol, fwd: Forwarding) -> Service {
    Service {
        key: ServiceKey {
            vip: vip.parse().unwrap(),
            port,
            protocol: proto,
        },
        scheduler: Scheduler::Wrr,
        scheduler_flags: SchedulerFlags::default(),
        forwarding: fwd,
        persistence: None,
        source_address: None,
        health_check: None,
        dataplane: DataplaneKind::Ipvs,
        real_servers: vec![rs("192.0.2.1", 8080, 1), rs("192.0.2.2", 8081, 2)],
        source: ObjectRef::new(ObjectKind::VirtualService, "shop", "web"),
    }
}

#[test]
fn nat_keeps_real_server_ports_dr_and_tun_use_the_service_port() {
    let nat = DesiredService::from_model(&svc("203.0.113.1", 80, Protocol::Tcp, Forwarding::Nat))
        .unwrap();
    assert_eq!(
        nat.dests.iter().map(|d| d.id.port).collect::<Vec<_>>(),
        [8080, 8081]
    );
    assert!(nat.dests.iter().all(|d| d.config.fwd_method == FWD_MASQ));

    let dr =
        DesiredService::from_model(&svc("203.0.113.1", 80, Protocol::Tcp, Forwarding::Dr)).unwrap();
    assert!(dr
        .dests
        .iter()
        .all(|d| d.id.port == 80 && d.config.fwd_method == FWD_DROUTE));

    let gue = DesiredService::from_model(&svc(
        "203.0.113.1",
        443,
        Protocol::Tcp,
        Forwarding::Tun(Tunnel::Gue { port: 5555 }),
    ))
    .unwrap();
    let d = gue.dests[0].config;
    assert_eq!(
        (gue.dests[0].id.port, d.fwd_method, d.tun_type, d.tun_port),
        (443, FWD_TUNNEL, TUN_TYPE_GUE, 5555)
    );
    let gre = DesiredService::from_model(&svc(
        "203.0.113.1",
        443,
        Protocol::Tcp,
        Forwarding::Tun(Tunnel::Gre),
    ))
    .unwrap();
    assert_eq!(gre.dests[0].config.tun_type, TUN_TYPE_GRE);

    let full =
        DesiredService::from_model(&svc("203.0.113.1", 80, Protocol::Tcp, Forwarding::FullNat))
            .unwrap();
    assert_eq!(full.dests[0].config.fwd_method, FWD_MASQ);
    assert_eq!(full.dests[1].id.port, 8081);
}

#[test]
fn dr_real_servers_on_one_address_collapse_to_one_destination() {
    let mut s = svc("203.0.113.1", 80, Protocol::Tcp, Forwarding::Dr);
    s.real_servers = vec![rs("192.0.2.1", 8080, 3), rs("192.0.2.1", 9090, 5)];
    let d = DesiredService::from_model(&s).unwrap();
    assert_eq!(d.dests.len(), 1);
    assert_eq!(d.dests[0].config.weight, 3);
}

#[test]
fn persistence_and_scheduler_flags() {
    let mut s = svc("203.0.113.1", 0, Protocol::Tcp, Forwarding::Nat);
    s.scheduler = Scheduler::Sh;
    s.scheduler_flags = SchedulerFlags {
        flag1: true,
        flag2: true,
        flag3: false,
    };
    s.persistence = Some(Persistence {
        timeout_seconds: 600,
        prefix_length: 24,
    });
    let d = DesiredService::from_model(&s).unwrap();
    assert_eq!(d.config.scheduler, "sh");
    assert_eq!(
        d.config.flags,
        SVC_F_PERSISTENT | SVC_F_SCHED1 | SVC_F_SCHED2
    );
    assert_eq!(d.config.timeout, 600);
    assert_eq!(d.config.netmask, Netmask::V4([255, 255, 255, 0].into()));

    let mut v6 = svc("2001:db8::10", 443, Protocol::Tcp, Forwarding::Nat);
    v6.real_servers = vec![rs("2001:db8::1", 443, 1)];
    let d = DesiredService::from_model(&v6).unwrap();
    assert_eq!(d.config.netmask, Netmask::V6Prefix(128));
    v6.persistence = Some(Persistence {
        timeout_seconds: 60,
        prefix_length: 64,
    });
    let d = DesiredService::from_model(&v6).unwrap();
    assert_eq!(d.config.netmask, Netmask::V6Prefix(64));
    // The kernel refuses an IPv6 prefix of 0 with EINVAL: refuse it before sending.
    v6.persistence = Some(Persistence {
        timeout_seconds: 60,
        prefix_length: 0,
    });
    let e = DesiredService::from_model(&v6).unwrap_err();
    assert!(e.to_string().contains("[2001:db8::10]:443/TCP"), "{e}");
    // A v4 prefix over 32 is refused too.
    let mut v4 = svc("203.0.113.1", 80, Protocol::Udp, Forwarding::Nat);
    v4.persistence = Some(Persistence {
        timeout_seconds: 60,
        prefix_length: 33,
    });
    assert!(DesiredService::from_model(&v4).is_err());
    v4.persistence = Some(Persistence {
        timeout_seconds: 60,
        prefix_length: 0,
    });
    assert_eq!(
        DesiredService::from_model(&v4).unwrap().config.netmask,
        Netmask::V4([0, 0, 0, 0].into())
    );
}

#[test]
fn every_kernel_scheduler_converts_and_maglev_does_not() {
    for s in Scheduler::ALL {
        let mut v = svc("203.0.113.1", 80, Protocol::Tcp, Forwarding::Nat);
        v.scheduler = s;
        match DesiredService::from_model(&v) {
            Ok(d) => assert_eq!(d.config.scheduler, s.name()),
            Err(e) => {
                assert_eq!(s, Scheduler::Maglev);
                assert!(e.to_string().contains("maglev"), "{e}");
            }
        }
    }
}

#[test]
fn fullnat_ruleset_text() {
    let mut a = svc("203.0.113.1", 80, Protocol::Tcp, Forwarding::FullNat);
    a.source_address = Some("198.51.100.1".parse().unwrap());
    let mut b = svc("2001:db8::10", 53, Protocol::Udp, Forwarding::FullNat);
    b.source_address = None;
    let nat = svc("203.0.113.2", 80, Protocol::Tcp, Forwarding::Nat);
    let text = fullnat_ruleset(&[b, nat, a]);
    let want = "add table inet kubelvs_fullnat
delete table inet kubelvs_fullnat
table inet kubelvs_fullnat {
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta l4proto tcp ct direction original ct original ip daddr 203.0.113.1 ct original proto-dst 80 snat ip to 198.51.100.1 comment \"VirtualService shop/web\"
\t\tmeta l4proto udp ct direction original ct original ip6 daddr 2001:db8::10 ct original proto-dst 53 masquerade comment \"VirtualService shop/web\"
\t}
}
";
    assert_eq!(text, want);
    // No FullNAT service: only the removal of our table.
    assert_eq!(
        fullnat_ruleset(&[svc("203.0.113.2", 80, Protocol::Tcp, Forwarding::Nat)]),
        "add table inet kubelvs_fullnat\ndelete table inet kubelvs_fullnat\n"
    );
}

/// A network namespace for one test, removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("klvs-ipvs-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {name}");
        Self(name)
    }
    fn nft(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
#[ignore = "privileged: creates a network namespace and loads an nftables ruleset"]
fn fullnat_ruleset_loads_in_a_real_nft_and_replaces_only_our_table() {
    let ns = Netns::new("fullnat");
    // Another tool's table must survive.
    ns.nft(&["add", "table", "inet", "other_tool"]);
    let mut a = svc("203.0.113.1", 80, Protocol::Tcp, Forwarding::FullNat);
    a.source_address = Some("198.51.100.1".parse().unwrap());
    let mut b = svc("2001:db8::10", 53, Protocol::Udp, Forwarding::FullNat);
    b.source_address = Some("2001:db8::1".parse().unwrap());
    let prefix = ["ip", "netns", "exec", ns.0.as_str()];

    apply_nft_script_via(&prefix, &fullnat_ruleset(&[a.clone(), b])).unwrap();
    let listed = ns.nft(&["list", "table", "inet", "kubelvs_fullnat"]);
    assert!(listed.contains("snat ip to 198.51.100.1"), "{listed}");
    assert!(listed.contains("snat ip6 to 2001:db8::1"), "{listed}");
    assert!(
        listed.contains("ct original ip daddr 203.0.113.1"),
        "{listed}"
    );

    // Re-apply with one service: replaced, not appended.
    apply_nft_script_via(&prefix, &fullnat_ruleset(std::slice::from_ref(&a))).unwrap();
    let listed = ns.nft(&["list", "table", "inet", "kubelvs_fullnat"]);
    assert_eq!(listed.matches("snat").count(), 1, "{listed}");

    // None left: our table is gone, the other tool's table is not.
    apply_nft_script_via(&prefix, &fullnat_ruleset(&[])).unwrap();
    let tables = ns.nft(&["list", "tables"]);
    assert!(!tables.contains("kubelvs_fullnat"), "{tables}");
    assert!(tables.contains("other_tool"), "{tables}");

    // An nft failure is an error naming the table.
    let e = apply_nft_script_via(&prefix, "table inet kubelvs_fullnat { nonsense }\n").unwrap_err();
    assert!(e.to_string().contains("kubelvs_fullnat"), "{e}");
}

#[test]
fn director_sysctls_are_written_and_read_back() {
    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let guard =
        Dir(std::env::temp_dir().join(format!("kubelvs-ipvs-sysctl-{}", std::process::id())));
    let dir = guard.0.clone();
    let list = director_sysctls();
    // Every entry says why.
    assert!(list.iter().all(|s| s.why.len() > 20));
    let paths: Vec<&str> = list.iter().map(|s| s.path).collect();
    assert_eq!(
        paths,
        [
            "net/ipv4/ip_forward",
            "net/ipv4/vs/conntrack",
            "net/ipv4/vs/expire_nodest_conn",
            "net/ipv4/vs/expire_quiescent_template"
        ]
    );
    // A missing entry (ip_vs not loaded) is an error that names the path.
    let e = apply_sysctls_at(&dir, &list).unwrap_err();
    assert!(matches!(e, Error::Sysctl { .. }));
    assert!(e.to_string().contains("net/ipv4/ip_forward"), "{e}");
    std::fs::create_dir_all(dir.join("net/ipv4/vs")).unwrap();
    apply_sysctls_at(&dir, &list).unwrap();
    assert_eq!(read_sysctls_at(&dir, &list).unwrap(), ["1", "1", "1", "1"]);
}

#[test]
fn generic_netlink_lookup_against_the_running_kernel() {
    // The genl controller is always there: its id is fixed at 0x10.
    let mut c = IpvsClient::open().unwrap();
    assert_eq!(c.lookup_family("nlctrl").unwrap(), 0x10);
    // Unknown family: ENOENT mapped to a typed error that names it.
    match c.lookup_family("kubelvs-none") {
        Err(Error::FamilyNotFound(name)) => assert_eq!(name, "kubelvs-none"),
        other => panic!("expected FamilyNotFound, got {other:?}"),
    }
    // The socket stays usable after an error (sequence numbers keep matching).
    assert_eq!(c.lookup_family("nlctrl").unwrap(), 0x10);
    assert_eq!(c.writes(), 0);
}

#[test]
fn batch_size_fits_the_granted_receive_buffer() {
    let c = IpvsClient::open().unwrap();
    // As root the 8 MiB FORCE request is granted (1024 per batch); otherwise rmem_max
    // (typically 208 KiB) gives about 100. Never fewer than 16.
    assert!((16..=1024).contains(&c.batch_size()), "{}", c.batch_size());
}

#[test]
fn pipelined_requests_are_acknowledged_one_by_one_in_order() {
    // Against the running kernel's genl controller: 300 requests (several batches of 16
    // and more), every 7th for an unknown family. Each result must land in its own slot.
    let mut c = IpvsClient::open().unwrap();
    c.set_batch_size(16);
    let names: Vec<&str> = (0..300)
        .map(|i| if i % 7 == 3 { "kubelvs-none" } else { "nlctrl" })
        .collect();
    let results = c.pipeline_family_lookups(&names);
    assert_eq!(results.len(), 300);
    for (i, r) in results.iter().enumerate() {
        if i % 7 == 3 {
            assert_eq!(*r, Err(2), "slot {i}");
        } else {
            assert_eq!(*r, Ok(()), "slot {i}");
        }
    }
    // The socket is still in step afterwards.
    assert_eq!(c.lookup_family("nlctrl").unwrap(), 0x10);
}

#[test]
fn kernel_errors_are_typed_and_name_the_object() {
    use kubelvs_ipvs::{Command, KernelError};
    let e = Error::Kernel {
        cmd: Command::NewDest,
        object: "service tcp 203.0.113.1 80 destination 192.0.2.1:8080".into(),
        errno: 17,
    };
    assert!(e.is_exists() && !e.is_not_found());
    assert_eq!(e.kernel_error(), Some(KernelError::Exists));
    assert_eq!(
        e.to_string(),
        "IPVS NEW_DEST service tcp 203.0.113.1 80 destination 192.0.2.1:8080: File exists (os error 17)"
    );
    for (errno, kind) in [
        (3, KernelError::NoSuchService),
        (2, KernelError::NotFound),
        (22, KernelError::Invalid),
        (34, KernelError::Range),
        (1, KernelError::Permission),
        (95, KernelError::NotSupported),
        (97, KernelError::FamilyNotSupported),
        (19, KernelError::NoDevice),
        (12, KernelError::Other(12)),
    ] {
        assert_eq!(KernelError::from_errno(errno), kind);
    }
    let gone = Error::Kernel {
        cmd: Command::DelService,
        object: String::new(),
        errno: 3,
    };
    assert!(gone.is_not_found());
    assert_eq!(Error::FamilyNotFound("IPVS".into()).kernel_error(), None);
}

#[test]
fn ipv6_forwarding_only_for_ipv6_nat() {
    use kubelvs_ipvs::director_sysctls_for;
    let v4 = svc("203.0.113.1", 80, Protocol::Tcp, Forwarding::Nat);
    let v6_dr = svc("2001:db8::10", 80, Protocol::Tcp, Forwarding::Dr);
    let v6_nat = svc("2001:db8::10", 80, Protocol::Tcp, Forwarding::FullNat);
    let has_v6 =
        |l: Vec<kubelvs_ipvs::Sysctl>| l.iter().any(|s| s.path == "net/ipv6/conf/all/forwarding");
    assert!(!has_v6(director_sysctls_for(&[v4.clone(), v6_dr])));
    assert!(has_v6(director_sysctls_for(&[v4, v6_nat])));
}

#[test]
fn sloppy_tcp_only_with_mh() {
    use kubelvs_ipvs::director_sysctls_for;
    let wrr = svc("203.0.113.1", 80, Protocol::Tcp, Forwarding::Dr);
    let mut mh = svc("203.0.113.2", 80, Protocol::Tcp, Forwarding::Dr);
    mh.scheduler = kubelvs_model::Scheduler::Mh;
    let sloppy = |l: Vec<kubelvs_ipvs::Sysctl>| {
        l.iter()
            .filter(|s| s.path.starts_with("net/ipv4/vs/sloppy_"))
            .map(|s| (s.path, s.value))
            .collect::<Vec<_>>()
    };
    assert!(sloppy(director_sysctls_for(std::slice::from_ref(&wrr))).is_empty());
    assert_eq!(
        sloppy(director_sysctls_for(&[wrr, mh])),
        [
            ("net/ipv4/vs/sloppy_tcp", "1"),
            ("net/ipv4/vs/sloppy_sctp", "1")
        ]
    );
}

#[test]
fn a_dump_that_fails_to_decode_leaves_the_socket_usable() {
    // Against the running kernel: dump the genl controller's families through the
    // IPVS reply path. They do not decode as IPVS messages, so each dump fails; the
    // rest of the dump must be read off, or the next dump would get EBUSY.
    // A fresh socket read 8 KiB at a time makes the kernel cut the dump in many parts
    // (the first at NLMSG_GOODSIZE), so the failure comes with most of it unread.
    let mut c = IpvsClient::open().unwrap();
    for _ in 0..3 {
        match c.dump_foreign_family(0x10, 3, 8192) {
            Err(Error::Decode { .. }) => {}
            other => panic!("expected a decode error, got {other:?}"),
        }
    }
    assert_eq!(c.lookup_family("nlctrl").unwrap(), 0x10);
}

#[test]
fn weights_above_int_max_are_refused_before_sending() {
    let mut s = svc("203.0.113.1", 80, Protocol::Tcp, Forwarding::Nat);
    s.real_servers[1].weight = 1 << 31;
    let e = DesiredService::from_model(&s).unwrap_err();
    assert!(e.to_string().contains("192.0.2.2"), "{e}");
    s.real_servers[1].weight = i32::MAX as u32;
    assert!(DesiredService::from_model(&s).is_ok());
}
