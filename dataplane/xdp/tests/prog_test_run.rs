//! BPF_PROG_TEST_RUN fixtures for the director and decap programs: each case is
//! a described input frame, the expected verdict and the expected output bytes.
//! Cases that need `bpf_fib_lookup` run in a fresh network namespace with a
//! veth and permanent neighbours, so routes and MACs are known exactly.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use common::*;
use kubelvs_model::Forwarding;
use kubelvs_xdp::maps::FlowKey;
use kubelvs_xdp::{
    test_run, DirectorOptions, TestRun, XdpDecap, XdpDirector, XDP_DROP, XDP_PASS, XDP_TX,
};

const VIP: &str = "203.0.113.10";
const CLIENT: &str = "198.51.100.5";

fn small_opts() -> DirectorOptions {
    let mut o = DirectorOptions::new(ip("192.0.2.1"));
    o.max_vips = 8;
    o.max_reals = 64;
    o.conns_per_cpu = 4096;
    o.ring_size = 251;
    o
}

struct Case {
    what: &'static str,
    input: Vec<u8>,
    verdict: u32,
    /// `None`: the output must equal the input.
    output: Option<Vec<u8>>,
}

fn run_cases(prog: std::os::fd::BorrowedFd<'_>, ifindex: Option<u32>, cases: &[Case]) {
    for c in cases {
        let r = test_run(
            prog,
            &TestRun {
                data_in: &c.input,
                repeat: 1,
                ingress_ifindex: ifindex,
                ..TestRun::default()
            },
        )
        .unwrap_or_else(|e| panic!("{}: BPF_PROG_TEST_RUN: {e}", c.what));
        assert_eq!(r.retval, c.verdict, "{}: verdict", c.what);
        let want = c.output.as_ref().unwrap_or(&c.input);
        assert_eq!(&r.data_out, want, "{}: output bytes", c.what);
    }
}

fn with_mac(mut frame: Vec<u8>, dst: Mac, src: Mac) -> Vec<u8> {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame
}

#[test]
#[ignore = "privileged: loads BPF"]
fn dr_rewrites_macs_and_passes_everything_else() {
    let mut d = XdpDirector::load(small_opts()).unwrap();
    let real = "198.51.100.11";
    let (rip, rmac) = mac_of(real);
    let neigh = HashMap::from([(rip, rmac)]);
    let report = d
        .apply(
            &[service(VIP, 80, Forwarding::Dr, &[(real, 80, 1)])],
            &neigh,
        )
        .unwrap();
    assert_eq!((report.vips_added, report.real_servers_added), (1, 1));
    assert_eq!(report.ring_slots_written, 251);

    let syn = tcp_frame(ip(CLIENT), 40000, ip(VIP), 80, TCP_SYN);
    let ack = tcp_frame(ip(CLIENT), 40000, ip(VIP), 80, TCP_ACK);
    let other_vip = tcp_frame(ip(CLIENT), 40000, ip("203.0.113.99"), 80, TCP_SYN);
    let other_port = tcp_frame(ip(CLIENT), 40000, ip(VIP), 81, TCP_SYN);
    let other_port_ack = tcp_frame(ip(CLIENT), 40000, ip(VIP), 81, TCP_ACK);
    let udp_same_port = eth(
        DIRECTOR_MAC,
        CLIENT_MAC,
        0x0800,
        &ipv4(
            ip(CLIENT),
            ip(VIP),
            17,
            &udp(ip(CLIENT), ip(VIP), 5353, 80, b"x"),
        ),
    );
    let arp = eth([0xff; 6], CLIENT_MAC, 0x0806, &[0u8; 28]);
    let ipv6 = eth(DIRECTOR_MAC, CLIENT_MAC, 0x86dd, &[0x60; 60]);
    let icmp = eth(
        DIRECTOR_MAC,
        CLIENT_MAC,
        0x0800,
        &ipv4(ip(CLIENT), ip(VIP), 1, &[8, 0, 0, 0, 0, 0, 0, 0]),
    );

    run_cases(
        d.program_fd(),
        None,
        &[
            Case {
                what: "DR: SYN to the VIP leaves with the real server's MAC, IP untouched",
                output: Some(with_mac(syn.clone(), rmac, DIRECTOR_MAC)),
                input: syn,
                verdict: XDP_TX,
            },
            Case {
                what: "DR: established ACK of the same flow",
                output: Some(with_mac(ack.clone(), rmac, DIRECTOR_MAC)),
                input: ack.clone(),
                verdict: XDP_TX,
            },
            Case {
                what: "another address on the same port is not a VIP",
                input: other_vip,
                verdict: XDP_PASS,
                output: None,
            },
            Case {
                what: "the VIP on another port: dropped, the director's own listeners \
                       never answer on a VIP",
                input: other_port,
                verdict: XDP_DROP,
                output: None,
            },
            Case {
                what: "TCP that opens nothing on the VIP's other port: the host may reset \
                       it (or it answers a connection the node opened from the VIP)",
                input: other_port_ack,
                verdict: XDP_PASS,
                output: None,
            },
            Case {
                what: "UDP to the VIP's TCP port is not the service: dropped too",
                input: udp_same_port,
                verdict: XDP_DROP,
                output: None,
            },
            Case {
                what: "ARP passes",
                input: arp,
                verdict: XDP_PASS,
                output: None,
            },
            Case {
                what: "IPv6 passes",
                input: ipv6,
                verdict: XDP_PASS,
                output: None,
            },
            Case {
                what: "ICMP to the VIP passes (the kernel answers it)",
                input: icmp,
                verdict: XDP_PASS,
                output: None,
            },
        ],
    );

    let s = d.stats().unwrap();
    let vip = s.vips.values().next().copied().unwrap();
    assert_eq!(vip.packets, 2);
    assert_eq!(vip.new_conns, 1, "the ACK found the connection table entry");
    assert_eq!(vip.bytes, 2 * ack.len() as u64);
    let rs = s.real_servers[&"198.51.100.11:80".parse().unwrap()];
    assert_eq!((rs.packets, rs.new_conns), (2, 1));
    assert_eq!(
        s.counters.passed, 4,
        "the ACK went by unserved_verdict, uncounted"
    );
    let flow = FlowKey {
        src: u32::from_ne_bytes(ip(CLIENT).octets()),
        dst: u32::from_ne_bytes(ip(VIP).octets()),
        sport: 40000u16.to_be(),
        dport: 80u16.to_be(),
        proto: 6,
        pad: [0; 3],
    };
    assert_eq!(
        d.connection(&flow).unwrap(),
        Some("198.51.100.11:80".parse().unwrap())
    );

    // Applying the same plan again touches nothing.
    let again = d
        .apply(
            &[service(VIP, 80, Forwarding::Dr, &[(real, 80, 1)])],
            &neigh,
        )
        .unwrap();
    assert!(again.is_noop(), "{again:?}");
}

#[test]
#[ignore = "privileged: loads BPF"]
fn truncated_and_malformed_frames_are_handled() {
    let mut d = XdpDirector::load(small_opts()).unwrap();
    let (rip, rmac) = mac_of("198.51.100.11");
    d.apply(
        &[service(
            VIP,
            80,
            Forwarding::Dr,
            &[("198.51.100.11", 80, 1)],
        )],
        &HashMap::from([(rip, rmac)]),
    )
    .unwrap();
    let syn = tcp_frame(ip(CLIENT), 40001, ip(VIP), 80, TCP_SYN);
    let mut bad_ihl = syn.clone();
    bad_ihl[14] = 0x43;
    let mut fragment = syn.clone();
    fragment[20] = 0x20; // more fragments
    let mut other_fragment = tcp_frame(ip(CLIENT), 40001, ip("203.0.113.99"), 80, TCP_SYN);
    other_fragment[20] = 0x20;
    let mut options = syn.clone();
    options[14] = 0x4f; // ihl 15 claims 40 bytes of options: ports would be past the frame

    run_cases(
        d.program_fd(),
        None,
        &[
            Case {
                what: "a VIP frame cut inside the TCP header (ports present) is dropped",
                input: syn[..14 + 20 + 10].to_vec(),
                verdict: XDP_DROP,
                output: None,
            },
            Case {
                what: "a frame cut before the ports passes (we cannot tell the service)",
                input: syn[..14 + 20 + 2].to_vec(),
                verdict: XDP_PASS,
                output: None,
            },
            Case {
                what: "a frame cut inside the IPv4 header passes",
                input: syn[..14 + 10].to_vec(),
                verdict: XDP_PASS,
                output: None,
            },
            // (BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.)
            Case {
                what: "a bare Ethernet header passes",
                input: syn[..14].to_vec(),
                verdict: XDP_PASS,
                output: None,
            },
            Case {
                what: "IHL below 5 passes",
                input: bad_ihl,
                verdict: XDP_PASS,
                output: None,
            },
            Case {
                what: "an IPv4 fragment to the VIP is dropped: reassembled, it would go to \
                       the host's own listeners, never to a real server",
                input: fragment,
                verdict: XDP_DROP,
                output: None,
            },
            Case {
                what: "an IPv4 fragment to another address passes for reassembly",
                input: other_fragment,
                verdict: XDP_PASS,
                output: None,
            },
            Case {
                what:
                    "IPv4 options longer than the frame: the ports are read in bounds or not at all",
                input: options[..14 + 20 + 20 + 4].to_vec(),
                verdict: XDP_PASS,
                output: None,
            },
        ],
    );
    let s = d.stats().unwrap();
    assert_eq!(s.counters.malformed, 1);
    assert_eq!(s.vips.values().next().unwrap().drops, 1);
    assert_eq!(s.counters.passed, 6);
}

#[test]
#[ignore = "privileged: loads BPF"]
fn no_real_server_drops_and_dr_without_mac_drops() {
    let mut d = XdpDirector::load(small_opts()).unwrap();
    // Weight 0 everywhere: quiesced, the ring is empty.
    d.apply(
        &[
            service(VIP, 80, Forwarding::Dr, &[("198.51.100.11", 80, 0)]),
            service(VIP, 443, Forwarding::Dr, &[("198.51.100.12", 443, 1)]),
        ],
        &HashMap::new(),
    )
    .unwrap();
    run_cases(
        d.program_fd(),
        None,
        &[
            Case {
                what: "VIP whose only real server has weight 0: new flows dropped",
                input: tcp_frame(ip(CLIENT), 40002, ip(VIP), 80, TCP_SYN),
                verdict: XDP_DROP,
                output: None,
            },
            Case {
                what: "DR real server with no known MAC: no ring slot until it resolves, dropped",
                input: tcp_frame(ip(CLIENT), 40002, ip(VIP), 443, TCP_SYN),
                verdict: XDP_DROP,
                output: None,
            },
        ],
    );
    let c = d.stats().unwrap().counters;
    assert_eq!((c.no_real_server, c.no_neighbour), (2, 0));

    // An established flow whose real server's MAC goes away: dropped, counted.
    let (rip, rmac) = mac_of("198.51.100.12");
    let svc = [service(
        VIP,
        443,
        Forwarding::Dr,
        &[("198.51.100.12", 443, 1)],
    )];
    d.apply(&svc, &HashMap::from([(rip, rmac)])).unwrap();
    let syn = tcp_frame(ip(CLIENT), 40003, ip(VIP), 443, TCP_SYN);
    run_cases(
        d.program_fd(),
        None,
        &[Case {
            what: "DR with the MAC known: transmitted",
            output: Some(with_mac(syn.clone(), rmac, DIRECTOR_MAC)),
            input: syn,
            verdict: XDP_TX,
        }],
    );
    d.apply(&svc, &HashMap::new()).unwrap();
    run_cases(
        d.program_fd(),
        None,
        &[Case {
            what: "established DR flow whose real server lost its MAC: dropped, counted",
            input: tcp_frame(ip(CLIENT), 40003, ip(VIP), 443, TCP_ACK),
            verdict: XDP_DROP,
            output: None,
        }],
    );
    let c = d.stats().unwrap().counters;
    assert_eq!((c.no_real_server, c.no_neighbour), (2, 1));
}

/// The ring and the hash the program uses agree with the userspace maglev and
/// `flow_hash` mirror, and the spread follows the weights.
#[test]
#[ignore = "privileged: loads BPF"]
fn new_flows_follow_the_maglev_ring_and_weights() {
    let mut opts = small_opts();
    opts.ring_size = kubelvs_maglev::DEFAULT_TABLE_SIZE;
    let mut d = XdpDirector::load(opts).unwrap();
    let reals = [
        ("198.51.100.21", 80, 1),
        ("198.51.100.22", 80, 2),
        ("198.51.100.23", 80, 3),
    ];
    let neigh: HashMap<IpAddr, Mac> = reals.iter().map(|r| mac_of(r.0)).collect();
    let svc = service(VIP, 80, Forwarding::Dr, &reals);
    d.apply(std::slice::from_ref(&svc), &neigh).unwrap();

    // Userspace prediction: same endpoints (sorted by address), same hash.
    let endpoints: Vec<kubelvs_maglev::Endpoint> = reals
        .iter()
        .map(|(a, p, w)| {
            let mut id = ip(a).octets().to_vec();
            id.extend_from_slice(&p.to_be_bytes());
            kubelvs_maglev::Endpoint::new(id, *w)
        })
        .collect();
    let table = kubelvs_maglev::build(&endpoints, kubelvs_maglev::DEFAULT_TABLE_SIZE).unwrap();

    let mut hits = [0u32; 3];
    let flows = 3000u16;
    for i in 0..flows {
        let sport = 10_000 + i;
        let to = dr_target(&d, VIP, sport, TCP_SYN).expect("XDP_TX");
        let got = reals
            .iter()
            .position(|x| mac_of(x.0).1 == to)
            .expect("destination MAC is one of the real servers");
        let h = kubelvs_xdp::maps::director_flow_hash(
            u32::from_ne_bytes(ip(CLIENT).octets()),
            u32::from_ne_bytes(ip(VIP).octets()),
            sport.to_be(),
            80u16.to_be(),
            6,
        );
        assert_eq!(table.lookup(h), Some(got as u32), "flow from port {sport}");
        hits[got] += 1;
    }
    // 1:2:3 within a few percent of 3000 flows.
    for (i, w) in [1.0f64, 2.0, 3.0].iter().enumerate() {
        let share = f64::from(hits[i]) / f64::from(flows);
        assert!((share - w / 6.0).abs() < 0.04, "spread {hits:?}");
    }

    // Quiescing a real server (weight 0): its established flows stay, new ones avoid it.
    let before = dr_target(&d, VIP, 10_000, TCP_ACK);
    let owner = reals
        .iter()
        .position(|x| Some(mac_of(x.0).1) == before)
        .unwrap();
    let mut quiesced = reals;
    quiesced[owner].2 = 0;
    let rep = d
        .apply(&[service(VIP, 80, Forwarding::Dr, &quiesced)], &neigh)
        .unwrap();
    assert!(
        rep.ring_slots_written > 0 && rep.vips_updated == 0,
        "{rep:?}"
    );
    assert_eq!(
        dr_target(&d, VIP, 10_000, TCP_ACK),
        before,
        "established flow kept its real server"
    );
    for i in 0..300u16 {
        assert_ne!(
            dr_target(&d, VIP, 20_000 + i, TCP_SYN),
            Some(mac_of(reals[owner].0).1),
            "new flow sent to a quiesced server"
        );
    }
}

/// Each ring is mapped only while it is written, at its own place in the rings map:
/// every VIP id, rings across page boundaries included, must send a VIP's flows to
/// its own real server, after the first write and after a rewrite.
#[test]
#[ignore = "needs root (BPF)"]
fn every_vips_ring_is_written_where_the_program_reads_it() {
    let opts = small_opts();
    let vips = opts.max_vips as usize;
    let mut d = XdpDirector::load(opts).unwrap();
    let vip = |i: usize| format!("203.0.113.{}", 10 + i);
    let real = |i: usize, round: usize| format!("198.51.100.{}", 20 + i + 10 * round);
    for round in 0..2 {
        let reals: Vec<String> = (0..vips).map(|i| real(i, round)).collect();
        let neigh: HashMap<IpAddr, Mac> = reals.iter().map(|r| mac_of(r)).collect();
        let services: Vec<_> = (0..vips)
            .map(|i| service(&vip(i), 80, Forwarding::Dr, &[(&reals[i], 80, 1)]))
            .collect();
        let rep = d.apply(&services, &neigh).unwrap();
        assert_eq!(rep.ring_slots_written, 251 * vips, "round {round}: {rep:?}");
        for (i, r) in reals.iter().enumerate() {
            let to = dr_target(&d, &vip(i), 40_000, TCP_SYN);
            assert_eq!(to, Some(mac_of(r).1), "round {round}, VIP {i}");
        }
    }
}

/// A namespace with veth v0 (192.0.2.1/24, the director) and permanent
/// neighbours, so bpf_fib_lookup has a definite answer.
fn fib_lab() -> (Netns, Mac) {
    let ns = Netns::new();
    ns.exec(&[
        "ip",
        "link",
        "add",
        "v0",
        "address",
        "02:00:00:00:00:02",
        "type",
        "veth",
        "peer",
        "name",
        "v1",
    ]);
    ns.exec(&["ip", "addr", "add", "192.0.2.1/24", "dev", "v0"]);
    ns.exec(&["ip", "link", "set", "v0", "up"]);
    ns.exec(&["ip", "link", "set", "v1", "up"]);
    ns.exec(&["ip", "link", "set", "lo", "up"]);
    // A second interface: real servers behind it are reached by redirect.
    ns.exec(&[
        "ip",
        "link",
        "add",
        "w0",
        "address",
        "02:00:00:00:00:03",
        "type",
        "veth",
        "peer",
        "name",
        "w1",
    ]);
    ns.exec(&["ip", "addr", "add", "203.0.113.1/25", "dev", "w0"]);
    ns.exec(&["ip", "link", "set", "w0", "up"]);
    ns.exec(&["ip", "link", "set", "w1", "up"]);
    ns.exec(&[
        "ip",
        "neigh",
        "add",
        "203.0.113.50",
        "lladdr",
        "02:aa:cb:00:71:32",
        "dev",
        "w0",
        "nud",
        "permanent",
    ]);
    // A NAT director forwards: bpf_fib_lookup refuses forwarding lookups otherwise.
    ns.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    // An on-link real server, and a gateway for one further away.
    let (_, rmac) = mac_of("192.0.2.20");
    let (_, gwmac) = mac_of("192.0.2.254");
    let fmt = |m: Mac| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    ns.exec(&[
        "ip",
        "neigh",
        "add",
        "192.0.2.20",
        "lladdr",
        &fmt(rmac),
        "dev",
        "v0",
        "nud",
        "permanent",
    ]);
    ns.exec(&[
        "ip",
        "neigh",
        "add",
        "192.0.2.254",
        "lladdr",
        &fmt(gwmac),
        "dev",
        "v0",
        "nud",
        "permanent",
    ]);
    ns.exec(&[
        "ip",
        "route",
        "add",
        "198.51.100.128/25",
        "via",
        "192.0.2.254",
    ]);
    // The client sits behind the same gateway.
    ns.exec(&[
        "ip",
        "route",
        "add",
        "198.51.100.0/25",
        "via",
        "192.0.2.254",
    ]);
    (ns, DIRECTOR_MAC)
}

fn ipip(director: Ipv4Addr, real: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    let mut outer = ipv4(director, real, 4, inner);
    // The program writes id 0, flags 0, ttl 64: rebuild our header the same way.
    outer[4..8].copy_from_slice(&[0, 0, 0, 0]);
    outer[10..12].copy_from_slice(&[0, 0]);
    let c = csum(&outer[..20], 0);
    outer[10..12].copy_from_slice(&c.to_be_bytes());
    outer
}

#[test]
#[ignore = "privileged: loads BPF, creates a network namespace"]
fn tun_encapsulates_with_fib_next_hop_and_valid_checksum() {
    let (ns, v0mac) = fib_lab();
    ns.run(|| {
        let ifindex = kubelvs_xdp::ifindex("v0").unwrap();
        // The neighbour helper sees this thread's namespace.
        let neigh = kubelvs_xdp::read_neighbours(Some("v0")).unwrap();
        assert_eq!(neigh.get(&IpAddr::V4(ip("192.0.2.20"))), Some(&mac_of("192.0.2.20").1));
        assert_eq!(neigh.len(), 2, "{neigh:?}");
        let mut d = XdpDirector::load(small_opts()).unwrap();
        d.apply(
            &[
                service(VIP, 80, TUN, &[("192.0.2.20", 80, 1)]),
                service(VIP, 443, TUN, &[("198.51.100.200", 443, 1)]),
                service(VIP, 8443, TUN, &[("192.0.2.30", 8443, 1)]),
                service(VIP, 9443, TUN, &[("203.0.113.200", 9443, 1)]),
                service(VIP, 7443, TUN, &[("203.0.113.50", 7443, 1)]),
            ],
            // A MAC from the caller: used as is, no route lookup (192.0.2.30 has
            // no kernel neighbour, so a lookup would fail).
            &HashMap::from([mac_of("192.0.2.30")]),
        )
        .unwrap();
        let syn8443 = tcp_frame(ip(CLIENT), 40003, ip(VIP), 8443, TCP_SYN);
        let want8443 = eth(mac_of("192.0.2.30").1, DIRECTOR_MAC, 0x0800, &ipip(ip("192.0.2.1"), ip("192.0.2.30"), &syn8443[14..]));
        let syn9443 = tcp_frame(ip(CLIENT), 40003, ip(VIP), 9443, TCP_SYN);
        let syn7443 = tcp_frame(ip(CLIENT), 40003, ip(VIP), 7443, TCP_SYN);
        let want7443 = eth(mac_of("203.0.113.50").1, [2, 0, 0, 0, 0, 3], 0x0800, &ipip(ip("192.0.2.1"), ip("203.0.113.50"), &syn7443[14..]));
        let syn = tcp_frame(ip(CLIENT), 40003, ip(VIP), 80, TCP_SYN);
        let syn443 = tcp_frame(ip(CLIENT), 40003, ip(VIP), 443, TCP_SYN);
        let (_, rmac) = mac_of("192.0.2.20");
        let (_, gwmac) = mac_of("192.0.2.254");
        let want80 = eth(rmac, v0mac, 0x0800, &ipip(ip("192.0.2.1"), ip("192.0.2.20"), &syn[14..]));
        let want443 = eth(gwmac, v0mac, 0x0800, &ipip(ip("192.0.2.1"), ip("198.51.100.200"), &syn443[14..]));
        assert_checksums(&want80, 14);
        run_cases(
            d.program_fd(),
            Some(ifindex),
            &[
                Case {
                    what: "TUN to an on-link real server: IPIP, outer src = director, dst MAC from the neighbour",
                    input: syn,
                    verdict: XDP_TX,
                    output: Some(want80),
                },
                Case {
                    what: "TUN to a routed real server: dst MAC is the gateway's",
                    input: syn443,
                    verdict: XDP_TX,
                    output: Some(want443),
                },
                Case {
                    what: "TUN with the next-hop MAC given by the caller: no route lookup",
                    input: syn8443,
                    verdict: XDP_TX,
                    output: Some(want8443),
                },
                Case {
                    what: "TUN to a real server behind another interface: redirected there, its MAC as source",
                    input: syn7443,
                    verdict: kubelvs_xdp::XDP_REDIRECT,
                    output: Some(want7443),
                },
                Case {
                    what: "TUN to a real server with no route and no MAC: dropped",
                    input: syn9443,
                    verdict: XDP_DROP,
                    output: None,
                },
            ],
        );
        let s = d.stats().unwrap();
        assert_eq!(s.vips.values().map(|c| c.new_conns).sum::<u64>(), 5);
        assert_eq!(s.vips.values().map(|c| c.drops).sum::<u64>(), 1);
        assert_eq!(s.counters.no_route, 1);
    });
}

#[test]
#[ignore = "privileged: loads BPF, creates a network namespace"]
fn nat_rewrites_destination_and_reverses_replies() {
    let (ns, v0mac) = fib_lab();
    ns.run(|| {
        let ifindex = kubelvs_xdp::ifindex("v0").unwrap();
        let mut d = XdpDirector::load(small_opts()).unwrap();
        d.apply(
            &[service(VIP, 80, Forwarding::Nat, &[("192.0.2.20", 8080, 1)])],
            &HashMap::new(),
        )
        .unwrap();
        let (_, rmac) = mac_of("192.0.2.20");
        let client = ip(CLIENT);
        let real = ip("192.0.2.20");
        let syn = tcp_frame(client, 40004, ip(VIP), 80, TCP_SYN);
        let fwd = eth(rmac, v0mac, 0x0800, &ipv4(client, real, 6, &tcp(client, real, 40004, 8080, TCP_SYN, b"GET / HTTP/1.0\r\n\r\n")));
        let reply_in = eth(v0mac, rmac, 0x0800, &ipv4(real, client, 6, &tcp(real, client, 8080, 40004, TCP_SYN | TCP_ACK, b"")));
        let reply_out = eth(CLIENT_MAC, DIRECTOR_MAC, 0x0800, &ipv4(ip(VIP), client, 6, &tcp(ip(VIP), client, 80, 40004, TCP_SYN | TCP_ACK, b"")));
        // UDP: checksum updated too, and a zero checksum stays zero.
        let mut udp_nocsum = udp(client, ip(VIP), 5000, 80, b"ping");
        udp_nocsum[6..8].copy_from_slice(&[0, 0]);
        let mut udp_nocsum_out = udp(client, real, 5000, 8080, b"ping");
        udp_nocsum_out[6..8].copy_from_slice(&[0, 0]);
        run_cases(
            d.program_fd(),
            Some(ifindex),
            &[
                Case {
                    what: "NAT: destination rewritten to the real server's address and port, checksums fixed",
                    input: syn,
                    verdict: XDP_TX,
                    output: Some(fwd.clone()),
                },
                Case {
                    what: "NAT reply: source restored to VIP:port, sent back to the client's MAC",
                    input: reply_in,
                    verdict: XDP_TX,
                    output: Some(reply_out.clone()),
                },
                Case {
                    what: "a packet from the real server on an unknown flow passes untouched",
                    input: eth(v0mac, rmac, 0x0800, &ipv4(real, client, 6, &tcp(real, client, 8080, 40999, TCP_ACK, b""))),
                    verdict: XDP_PASS,
                    output: None,
                },
            ],
        );
        assert_checksums(&fwd, 14);
        assert_checksums(&reply_out, 14);

        d.apply(
            &[
                service(VIP, 80, Forwarding::Nat, &[("192.0.2.20", 8080, 1)]),
                {
                    let mut s = service(VIP, 80, Forwarding::Nat, &[("192.0.2.20", 8080, 1)]);
                    s.key.protocol = kubelvs_model::Protocol::Udp;
                    s
                },
            ],
            &HashMap::new(),
        )
        .unwrap();
        let udp_in = eth(DIRECTOR_MAC, CLIENT_MAC, 0x0800, &ipv4(client, ip(VIP), 17, &udp(client, ip(VIP), 5000, 80, b"ping")));
        let udp_out = eth(rmac, v0mac, 0x0800, &ipv4(client, real, 17, &udp(client, real, 5000, 8080, b"ping")));
        let r = run_once_from(d.program_fd(), &udp_in, Some(ifindex));
        assert_eq!((r.retval, &r.data_out), (XDP_TX, &udp_out), "UDP NAT");
        assert_checksums(&r.data_out, 14);
        let nc_in = eth(DIRECTOR_MAC, CLIENT_MAC, 0x0800, &ipv4(client, ip(VIP), 17, &udp_nocsum));
        let nc_out = eth(rmac, v0mac, 0x0800, &ipv4(client, real, 17, &udp_nocsum_out));
        let r = run_once_from(d.program_fd(), &nc_in, Some(ifindex));
        assert_eq!((r.retval, &r.data_out), (XDP_TX, &nc_out), "UDP without checksum");

        let s = d.stats().unwrap();
        assert_eq!(s.counters.nat_replies, 1);
        assert_eq!(s.counters.passed, 1);
    });
}

#[test]
#[ignore = "privileged: loads BPF"]
fn decap_strips_ipip_for_local_vips_only() {
    let vip = ip(VIP);
    let d = XdpDecap::load(&[vip]).unwrap();
    let inner = ipv4(
        ip(CLIENT),
        vip,
        6,
        &tcp(ip(CLIENT), vip, 40005, 80, TCP_SYN, b""),
    );
    let frame = eth(
        DIRECTOR_MAC,
        CLIENT_MAC,
        0x0800,
        &ipip(ip("192.0.2.1"), ip("192.0.2.20"), &inner),
    );
    let other_inner = ipv4(
        ip(CLIENT),
        ip("203.0.113.77"),
        6,
        &tcp(ip(CLIENT), ip("203.0.113.77"), 1, 80, TCP_SYN, b""),
    );
    let other = eth(
        DIRECTOR_MAC,
        CLIENT_MAC,
        0x0800,
        &ipip(ip("192.0.2.1"), ip("192.0.2.20"), &other_inner),
    );
    let plain = tcp_frame(ip(CLIENT), 40005, vip, 80, TCP_SYN);
    run_cases(
        d.program_fd(),
        None,
        &[
            Case {
                what: "IPIP to a local VIP: outer header removed, Ethernet kept",
                output: Some(eth(DIRECTOR_MAC, CLIENT_MAC, 0x0800, &inner)),
                input: frame.clone(),
                verdict: XDP_PASS,
            },
            Case {
                what: "IPIP for a VIP not bound here passes untouched",
                input: other,
                verdict: XDP_PASS,
                output: None,
            },
            Case {
                what: "plain TCP passes untouched",
                input: plain,
                verdict: XDP_PASS,
                output: None,
            },
            Case {
                what: "IPIP truncated inside the inner header passes untouched",
                input: frame[..14 + 20 + 12].to_vec(),
                verdict: XDP_PASS,
                output: None,
            },
        ],
    );
    assert_eq!(d.decapsulated().unwrap(), 1);
}

#[test]
#[ignore = "privileged: loads BPF, creates a network namespace"]
fn restart_keeps_program_attached_and_connection_table() {
    let ns = Netns::new();
    ns.exec(&[
        "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1",
    ]);
    ns.exec(&["ip", "link", "set", "d0", "up"]);
    ns.exec(&["ip", "link", "set", "d1", "up"]);
    let pin = std::path::PathBuf::from("/sys/fs/bpf").join(unique("klvstest"));
    struct Unpin(std::path::PathBuf);
    impl Drop for Unpin {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _unpin = Unpin(pin.clone());
    ns.run(|| {
        let mut opts = small_opts();
        opts.pin_dir = Some(pin.clone());
        let svc = [service(
            VIP,
            80,
            Forwarding::Dr,
            &[("198.51.100.11", 80, 1), ("198.51.100.12", 80, 1)],
        )];
        let neigh: HashMap<IpAddr, Mac> = [mac_of("198.51.100.11"), mac_of("198.51.100.12")].into();
        let flow = FlowKey {
            src: u32::from_ne_bytes(ip(CLIENT).octets()),
            dst: u32::from_ne_bytes(ip(VIP).octets()),
            sport: 40006u16.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            pad: [0; 3],
        };
        let prog_id = || {
            let out = std::process::Command::new("ip")
                .args(["-j", "link", "show", "d0"])
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v[0]["xdp"]["prog"]["id"].as_u64()
        };
        {
            let mut d = XdpDirector::attach_with("d0", opts.clone()).unwrap();
            d.apply(&svc, &neigh).unwrap();
            let syn = tcp_frame(ip(CLIENT), 40006, ip(VIP), 80, TCP_SYN);
            let r = run_once(d.program_fd(), &syn);
            assert_eq!(r.retval, XDP_TX);
            assert!(d.connection(&flow).unwrap().is_some());
        } // dropped: the "agent" exits
        let first = prog_id().expect("program still attached after the loader exited");

        let mut d = XdpDirector::attach_with("d0", opts.clone()).unwrap();
        let second = prog_id().expect("attached after restart");
        assert_ne!(
            first, second,
            "the new program replaced the old behind the pinned link"
        );
        assert!(
            d.connection(&flow).unwrap().is_some(),
            "connection table survived the restart"
        );
        let rep = d.apply(&svc, &neigh).unwrap();
        assert!(
            rep.is_noop(),
            "state recovered from the pinned maps: {rep:?}"
        );
        d.detach().unwrap();
        assert_eq!(prog_id(), None, "detach removes the program");
        assert!(!pin.join("conns").exists());
    });
}

#[test]
#[ignore = "privileged: loads BPF"]
fn pinned_maps_with_other_sizes_are_refused() {
    let pin = std::path::PathBuf::from("/sys/fs/bpf").join(unique("klvstest"));
    let mut opts = small_opts();
    opts.pin_dir = Some(pin.clone());
    let d = XdpDirector::load(opts.clone()).unwrap();
    drop(d);
    opts.max_reals = 128;
    let err = XdpDirector::load(opts).unwrap_err();
    let _ = std::fs::remove_dir_all(&pin);
    match err {
        kubelvs_xdp::XdpError::PinnedMapMismatch {
            map: "reals",
            found,
            wanted,
            ..
        } => {
            assert_eq!((found.max_entries, wanted.max_entries), (64, 128));
            assert_eq!(found.value_size, wanted.value_size);
        }
        other => panic!("{other}"),
    }
}

#[test]
#[ignore = "privileged: loads BPF"]
fn replacing_a_vip_in_one_apply_reuses_its_id_cleanly() {
    let mut d = XdpDirector::load(small_opts()).unwrap();
    let neigh: HashMap<IpAddr, Mac> = [mac_of("198.51.100.11"), mac_of("198.51.100.12")].into();
    d.apply(
        &[service(
            VIP,
            80,
            Forwarding::Dr,
            &[("198.51.100.11", 80, 1)],
        )],
        &neigh,
    )
    .unwrap();
    let old_id = d
        .vip_id(&service(VIP, 80, Forwarding::Dr, &[]).key)
        .unwrap();
    // One apply removes VIP:80 and adds VIP2:80 with another real server.
    let vip2 = "203.0.113.20";
    let rep = d
        .apply(
            &[service(
                vip2,
                80,
                Forwarding::Dr,
                &[("198.51.100.12", 80, 1)],
            )],
            &neigh,
        )
        .unwrap();
    assert_eq!((rep.vips_added, rep.vips_removed), (1, 1), "{rep:?}");
    assert_eq!(
        (rep.real_servers_added, rep.real_servers_removed),
        (1, 1),
        "{rep:?}"
    );
    assert_eq!(
        d.vip_id(&service(vip2, 80, Forwarding::Dr, &[]).key),
        Some(old_id)
    );
    let to_new = tcp_frame(ip(CLIENT), 41000, ip(vip2), 80, TCP_SYN);
    run_cases(
        d.program_fd(),
        None,
        &[
            Case {
                what: "the new VIP's ring is complete although its id was freed in the same apply",
                output: Some(with_mac(
                    to_new.clone(),
                    mac_of("198.51.100.12").1,
                    DIRECTOR_MAC,
                )),
                input: to_new,
                verdict: XDP_TX,
            },
            Case {
                what: "the removed VIP is no longer a VIP",
                input: tcp_frame(ip(CLIENT), 41000, ip(VIP), 80, TCP_SYN),
                verdict: XDP_PASS,
                output: None,
            },
        ],
    );
    // The new VIP's counters start from zero although it reuses the id.
    let s = d.stats().unwrap();
    assert_eq!(s.vips.len(), 1);
    assert_eq!(s.vips.values().next().unwrap().packets, 1);
}

#[test]
#[ignore = "privileged: loads BPF, creates a network namespace"]
fn a_pinned_link_to_a_deleted_interface_is_replaced() {
    let ns = Netns::new();
    let mk = |ns: &Netns| {
        ns.exec(&[
            "ip", "link", "add", "e0", "type", "veth", "peer", "name", "e1",
        ]);
        ns.exec(&["ip", "link", "set", "e0", "up"]);
        ns.exec(&["ip", "link", "set", "e1", "up"]);
    };
    mk(&ns);
    let pin = std::path::PathBuf::from("/sys/fs/bpf").join(unique("klvstest"));
    let mut opts = small_opts();
    opts.pin_dir = Some(pin.clone());
    let attached = |ns: &Netns| {
        let out = std::process::Command::new("ip")
            .args(["-n", &ns.name, "-j", "link", "show", "e0"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["xdp"]["prog"]["id"].as_u64().is_some()
    };
    let o = opts.clone();
    ns.run(move || drop(XdpDirector::attach_with("e0", o).unwrap()));
    assert!(attached(&ns));
    ns.exec(&["ip", "link", "del", "e0"]);
    mk(&ns);
    assert!(!attached(&ns));
    let o = opts.clone();
    let result = ns.run(|| {
        let d = XdpDirector::attach_with("e0", o).map_err(|e| e.to_string())?;
        let now = attached(&ns);
        d.detach().map_err(|e| e.to_string())?;
        Ok::<_, String>(now)
    });
    let _ = std::fs::remove_dir_all(&pin);
    assert!(result.unwrap(), "attached to the new interface");
}

/// Persistence: every connection from one client network goes to one real
/// server (the hash covers only the masked client address).
#[test]
#[ignore = "privileged: loads BPF"]
fn persistence_keeps_a_client_network_on_one_real_server() {
    let mut d = XdpDirector::load(small_opts()).unwrap();
    let reals = [
        ("198.51.100.21", 80, 1),
        ("198.51.100.22", 80, 1),
        ("198.51.100.23", 80, 1),
    ];
    let neigh: HashMap<IpAddr, Mac> = reals.iter().map(|r| mac_of(r.0)).collect();
    let mut svc = service(VIP, 80, Forwarding::Dr, &reals);
    svc.persistence = Some(kubelvs_model::Persistence {
        timeout_seconds: 300,
        prefix_length: 28,
    });
    d.apply(&[svc], &neigh).unwrap();
    let owner = |d: &XdpDirector, client: &str, sport: u16| {
        let f = tcp_frame(ip(client), sport, ip(VIP), 80, TCP_SYN);
        let r = run_once(d.program_fd(), &f);
        assert_eq!(r.retval, XDP_TX);
        reals
            .iter()
            .position(|x| mac_of(x.0).1 == r.data_out[0..6])
            .unwrap()
    };
    // Many ports and hosts of 198.51.100.0/28: one real server.
    let first = owner(&d, "198.51.100.5", 1000);
    for (host, port) in [
        ("198.51.100.5", 2000),
        ("198.51.100.1", 3000),
        ("198.51.100.14", 4000),
    ] {
        assert_eq!(owner(&d, host, port), first, "{host}:{port}");
    }
    // Different client networks (the sixteen /28s of 203.0.113.0/24) spread
    // over the real servers.
    let owners: std::collections::HashSet<usize> = (0..16u8)
        .map(|n| owner(&d, &format!("203.0.113.{}", n * 16 + 9), 5000))
        .collect();
    assert_eq!(owners.len(), 3, "16 client networks all land on {owners:?}");

    // Scheduler sh without persistence: the same, by the whole client address.
    let mut sh = service(VIP, 80, Forwarding::Dr, &reals);
    sh.scheduler = kubelvs_model::Scheduler::Sh;
    d.apply(&[sh], &neigh).unwrap();
    let first = owner(&d, "198.51.100.7", 1000);
    for port in [2000, 3000, 4000, 5000] {
        assert_eq!(owner(&d, "198.51.100.7", port), first);
    }
    let owners: std::collections::HashSet<usize> = (1..40u8)
        .map(|n| owner(&d, &format!("203.0.113.{n}"), 5000))
        .collect();
    assert_eq!(owners.len(), 3, "sh hashes whole addresses: {owners:?}");
}

/// A removed real server's established flows stay while it drains, then are
/// rescheduled (its id is marked dead), not sent to a stale or reused id.
#[test]
#[ignore = "privileged: loads BPF"]
fn flows_of_a_removed_real_server_are_rescheduled() {
    let mut d = XdpDirector::load(small_opts()).unwrap();
    let reals = [("198.51.100.21", 80, 1), ("198.51.100.22", 80, 1)];
    let neigh: HashMap<IpAddr, Mac> = reals.iter().map(|r| mac_of(r.0)).collect();
    d.apply(&[service(VIP, 80, Forwarding::Dr, &reals)], &neigh)
        .unwrap();
    let dst_of = |d: &XdpDirector, sport: u16| {
        let f = tcp_frame(ip(CLIENT), sport, ip(VIP), 80, TCP_ACK);
        let r = run_once(d.program_fd(), &f);
        assert_eq!(r.retval, XDP_TX);
        let m: Mac = r.data_out[0..6].try_into().unwrap();
        m
    };
    // Find a flow owned by the first real server.
    let sport = (1000..2000u16)
        .find(|p| dst_of(&d, *p) == mac_of(reals[0].0).1)
        .expect("some flow lands on the first real server");
    // Removed: it drains; once the drain deadline has passed it is deleted.
    let t0 = std::time::Instant::now();
    let one = [service(VIP, 80, Forwarding::Dr, &reals[1..])];
    let rep = d.apply_at(&one, &neigh, t0).unwrap();
    assert_eq!(rep.real_servers_removed, 0);
    assert_eq!(
        dst_of(&d, sport),
        mac_of(reals[0].0).1,
        "draining keeps the flow"
    );
    let rep = d
        .apply_at(&one, &neigh, t0 + d.options().drain_timeout)
        .unwrap();
    assert_eq!(rep.real_servers_removed, 1);
    assert_eq!(
        dst_of(&d, sport),
        mac_of(reals[1].0).1,
        "rescheduled to the remaining server"
    );
}

/// Random corruptions of valid frames: the verdict is always one the director
/// can give, and a passed frame is untouched.
#[test]
#[ignore = "privileged: loads BPF"]
fn corrupted_frames_never_abort_and_pass_untouched() {
    let mut d = XdpDirector::load(small_opts()).unwrap();
    let neigh: HashMap<IpAddr, Mac> = [mac_of("198.51.100.11")].into();
    d.apply(
        &[
            service(VIP, 80, Forwarding::Dr, &[("198.51.100.11", 80, 1)]),
            service(VIP, 81, TUN, &[("198.51.100.11", 81, 1)]),
            service(VIP, 82, Forwarding::Nat, &[("198.51.100.11", 8082, 1)]),
            service(
                "2001:db8::10",
                80,
                Forwarding::Dr,
                &[("2001:db8::11", 80, 1)],
            ),
        ],
        &neigh,
    )
    .unwrap();
    let seeds = [
        tcp_frame(ip(CLIENT), 40000, ip(VIP), 80, TCP_SYN),
        tcp_frame(ip(CLIENT), 40000, ip(VIP), 81, TCP_SYN),
        tcp_frame(ip(CLIENT), 40000, ip(VIP), 82, TCP_SYN),
        tcp6_frame(
            ip6("2001:db8:1::5"),
            40000,
            ip6("2001:db8::10"),
            80,
            TCP_SYN,
        ),
    ];
    // xorshift: deterministic, no dependency.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..4000 {
        let mut f = seeds[i % seeds.len()].clone();
        for _ in 0..(next() % 4 + 1) {
            let pos = (next() as usize) % f.len();
            f[pos] = next() as u8;
        }
        let cut = 14 + (next() as usize) % (f.len() - 13);
        f.truncate(cut);
        let r = run_once(d.program_fd(), &f);
        assert!(
            [XDP_DROP, XDP_PASS, XDP_TX].contains(&r.retval),
            "verdict {} for {f:02x?}",
            r.retval
        );
        if r.retval == XDP_PASS {
            assert_eq!(r.data_out, f, "a passed frame is untouched");
        }
    }
}

/// Needs no privilege: the options are checked before anything reaches the kernel.
#[test]
fn invalid_options_are_refused_before_loading() {
    let mut o = small_opts();
    o.ring_size = 250;
    let err = XdpDirector::load(o).unwrap_err();
    assert!(
        matches!(
            err,
            kubelvs_xdp::XdpError::InvalidOptions {
                field: "ring_size",
                ..
            }
        ),
        "{err}"
    );
    let mut o = small_opts();
    o.max_reals = 0;
    assert!(matches!(
        XdpDirector::load(o).unwrap_err(),
        kubelvs_xdp::XdpError::InvalidOptions {
            field: "max_reals",
            ..
        }
    ));
}

/// ICMP "fragmentation needed" about a reply a real server sent from the VIP
/// reaches that real server (DR: MAC rewrite; TUN: encapsulated), so path-MTU
/// discovery works through the director.
#[test]
#[ignore = "privileged: loads BPF"]
fn icmp_frag_needed_goes_to_the_flows_real_server() {
    let mut d = XdpDirector::load(small_opts()).unwrap();
    let reals = [
        ("198.51.100.21", 80, 1),
        ("198.51.100.22", 80, 1),
        ("198.51.100.23", 80, 1),
    ];
    let mut neigh: HashMap<IpAddr, Mac> = reals.iter().map(|r| mac_of(r.0)).collect();
    neigh.insert(mac_of("198.51.100.31").0, mac_of("198.51.100.31").1);
    d.apply(
        &[
            service(VIP, 80, Forwarding::Dr, &reals),
            service(VIP, 443, TUN, &[("198.51.100.31", 443, 1)]),
        ],
        &neigh,
    )
    .unwrap();
    let router = ip("203.0.113.254");
    // The router quotes the reply's IP header and the first 8 bytes of TCP.
    let frag_needed = |vport: u16, cport: u16| {
        let quoted = ipv4(
            ip(VIP),
            ip(CLIENT),
            6,
            &tcp(ip(VIP), ip(CLIENT), vport, cport, TCP_ACK, &[0; 1400])[..8],
        );
        let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0xdc];
        icmp.extend_from_slice(&quoted[..28]);
        let c = csum(&icmp, 0);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        eth(
            DIRECTOR_MAC,
            CLIENT_MAC,
            0x0800,
            &ipv4(router, ip(VIP), 1, &icmp),
        )
    };
    let first_hop = |d: &XdpDirector, f: &[u8]| {
        let r = run_once(d.program_fd(), f);
        (r.retval, r.data_out)
    };
    // An established flow: the ICMP error follows it.
    let syn = tcp_frame(ip(CLIENT), 40100, ip(VIP), 80, TCP_SYN);
    let (_, out) = first_hop(&d, &syn);
    let owner: Mac = out[0..6].try_into().unwrap();
    let icmp = frag_needed(80, 40100);
    assert_eq!(
        first_hop(&d, &icmp),
        (XDP_TX, with_mac(icmp.clone(), owner, DIRECTOR_MAC))
    );
    // No table entry: the ICMP error takes the ring slot the flow would take.
    let icmp2 = frag_needed(80, 40200);
    let (v, out2) = first_hop(&d, &icmp2);
    let syn2 = tcp_frame(ip(CLIENT), 40200, ip(VIP), 80, TCP_SYN);
    let (_, out_syn2) = first_hop(&d, &syn2);
    assert_eq!((v, &out2[0..6]), (XDP_TX, &out_syn2[0..6]));
    // TUN: the ICMP packet travels encapsulated.
    let icmp3 = frag_needed(443, 40300);
    let want = eth(
        mac_of("198.51.100.31").1,
        DIRECTOR_MAC,
        0x0800,
        &ipip(ip("192.0.2.1"), ip("198.51.100.31"), &icmp3[14..]),
    );
    assert_eq!(first_hop(&d, &icmp3), (XDP_TX, want));
    // Other ICMP, and errors about flows of no VIP, pass untouched.
    let other = frag_needed(8080, 40100);
    assert_eq!(first_hop(&d, &other), (XDP_PASS, other.clone()));
    let mut unreachable = icmp.clone();
    unreachable[14 + 20 + 1] = 1; // host unreachable
    assert_eq!(first_hop(&d, &unreachable), (XDP_PASS, unreachable.clone()));
    assert_eq!(d.stats().unwrap().counters.icmp_to_real, 3);
}
