//! BPF_PROG_TEST_RUN fixtures for IPv6 VIPs: DR, IPv6-in-IPv6 tun, NAT and its
//! reverse, decapsulation, and what passes untouched. Addresses are from the
//! documentation prefix 2001:db8::/32.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

use common::*;
use kubelvs_model::Forwarding;
use kubelvs_xdp::maps::{flow_hash, Flow6Key};
use kubelvs_xdp::{DirectorOptions, XdpDecap, XdpDirector, XDP_DROP, XDP_PASS, XDP_TX};

const VIP6: &str = "2001:db8::10";
const CLIENT6: &str = "2001:db8:1::5";
const DIRECTOR6: &str = "2001:db8::1";

fn opts() -> DirectorOptions {
    let mut o = DirectorOptions::new("192.0.2.1".parse().unwrap());
    o.director_addr6 = Some(ip6(DIRECTOR6));
    o.max_vips = 8;
    o.max_reals = 64;
    o.conns_per_cpu = 4096;
    o.ring_size = 251;
    o
}

fn run(d: &XdpDirector, frame: &[u8], ifindex: Option<u32>) -> (u32, Vec<u8>) {
    let r = run_once_from(d.program_fd(), frame, ifindex);
    (r.retval, r.data_out)
}

fn with_mac(mut frame: Vec<u8>, dst: Mac, src: Mac) -> Vec<u8> {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame
}

/// The outer IPv6 header the director writes: traffic class copied, flow label
/// from the flow hash (entropy for ECMP), next header 41, hop limit 64.
fn ip6ip6(src: Ipv6Addr, dst: Ipv6Addr, inner: &[u8], sport: u16, dport: u16) -> Vec<u8> {
    let client = &inner[8..24];
    let vip = &inner[24..40];
    let label = flow_hash(
        u32::from(client[15]),
        u32::from(vip[15]),
        (u32::from(sport.to_be()) << 16) | u32::from(dport.to_be()),
    ) & 0xfffff;
    let tc = u32::from_be_bytes(inner[0..4].try_into().unwrap()) & 0x0ff0_0000;
    let mut outer = ipv6(src, dst, 41, inner);
    outer[0..4].copy_from_slice(&(0x6000_0000 | tc | label).to_be_bytes());
    outer
}

#[test]
#[ignore = "privileged: loads BPF"]
fn ipv6_dr_and_pass_through() {
    let mut d = XdpDirector::load(opts()).unwrap();
    let real = "2001:db8:2::11";
    let (rip, rmac) = mac6_of(real);
    let rep = d
        .apply(
            &[service(VIP6, 80, Forwarding::Dr, &[(real, 80, 1)])],
            &HashMap::from([(rip, rmac)]),
        )
        .unwrap();
    assert_eq!((rep.vips_added, rep.real_servers_added), (1, 1), "{rep:?}");
    let syn = tcp6_frame(ip6(CLIENT6), 40000, ip6(VIP6), 80, TCP_SYN);
    assert_eq!(
        run(&d, &syn, None),
        (XDP_TX, with_mac(syn.clone(), rmac, DIRECTOR_MAC))
    );

    // Not for a VIP: passed untouched.
    let other = tcp6_frame(ip6(CLIENT6), 40000, ip6("2001:db8::99"), 80, TCP_SYN);
    assert_eq!(run(&d, &other, None), (XDP_PASS, other.clone()));
    let mut hop_by_hop = other.clone();
    hop_by_hop[14 + 6] = 0; // next header: hop-by-hop options
    assert_eq!(run(&d, &hop_by_hop, None), (XDP_PASS, hop_by_hop.clone()));
    // For the VIP but not a service of it (another port, or a header we do not parse):
    // dropped, so the director's own listeners never answer on the VIP.
    let unserved = tcp6_frame(ip6(CLIENT6), 40000, ip6(VIP6), 22, TCP_SYN);
    assert_eq!(run(&d, &unserved, None).0, XDP_DROP);
    let mut hop_by_hop = syn.clone();
    hop_by_hop[14 + 6] = 0;
    assert_eq!(run(&d, &hop_by_hop, None).0, XDP_DROP);
    let icmp6 = eth(
        DIRECTOR_MAC,
        CLIENT_MAC,
        0x86dd,
        &ipv6(ip6(CLIENT6), ip6(VIP6), 58, &[128, 0, 0, 0]),
    );
    assert_eq!(run(&d, &icmp6, None), (XDP_PASS, icmp6.clone()));
    assert_eq!(
        run(&d, &syn[..14 + 30], None),
        (XDP_PASS, syn[..14 + 30].to_vec()),
        "cut in the IPv6 header"
    );
    assert_eq!(
        run(&d, &syn[..14 + 40 + 8], None).0,
        XDP_DROP,
        "cut in the TCP header of a VIP packet"
    );

    let s = d.stats().unwrap();
    let key = service(VIP6, 80, Forwarding::Dr, &[]).key;
    assert_eq!(
        (
            s.vips[&key].packets,
            s.vips[&key].new_conns,
            s.vips[&key].drops
        ),
        (1, 1, 1)
    );
    assert_eq!(
        s.real_servers[&format!("[{real}]:80").parse().unwrap()].packets,
        1
    );
    assert_eq!(s.counters.malformed, 1);
    let flow = Flow6Key {
        src: ip6(CLIENT6).octets(),
        dst: ip6(VIP6).octets(),
        sport: 40000u16.to_be(),
        dport: 80u16.to_be(),
        proto: 6,
        pad: [0; 3],
    };
    assert_eq!(
        d.connection6(&flow).unwrap(),
        Some(format!("[{real}]:80").parse().unwrap())
    );
    assert!(d
        .apply(
            &[service(VIP6, 80, Forwarding::Dr, &[(real, 80, 1)])],
            &HashMap::from([(rip, rmac)])
        )
        .unwrap()
        .is_noop());
}

#[test]
#[ignore = "privileged: loads BPF"]
fn ipv6_mixed_families_and_missing_tunnel_source_are_skipped() {
    let mut o = opts();
    o.director_addr6 = None;
    let mut d = XdpDirector::load(o).unwrap();
    let rep = d
        .apply(
            &[
                service(VIP6, 80, TUN, &[("2001:db8:2::11", 80, 1)]),
                service(VIP6, 81, Forwarding::Dr, &[("198.51.100.11", 81, 1)]),
            ],
            &HashMap::new(),
        )
        .unwrap();
    assert_eq!(rep.skipped.len(), 2, "{rep:?}");
    assert!(rep
        .skipped
        .iter()
        .any(|(_, why)| why.reason.contains("director_addr6")));
    assert!(rep
        .skipped
        .iter()
        .any(|(_, why)| why.reason.contains("address family")));
}

#[test]
#[ignore = "privileged: loads BPF"]
fn ipv6_tun_with_caller_mac() {
    let mut d = XdpDirector::load(opts()).unwrap();
    let real = "2001:db8:2::12";
    let (rip, rmac) = mac6_of(real);
    d.apply(
        &[service(VIP6, 443, TUN, &[(real, 443, 1)])],
        &HashMap::from([(rip, rmac)]),
    )
    .unwrap();
    let syn = tcp6_frame(ip6(CLIENT6), 40001, ip6(VIP6), 443, TCP_SYN);
    let want = eth(
        rmac,
        DIRECTOR_MAC,
        0x86dd,
        &ip6ip6(ip6(DIRECTOR6), ip6(real), &syn[14..], 40001, 443),
    );
    assert_eq!(run(&d, &syn, None), (XDP_TX, want));
}

/// A namespace whose v0 has 2001:db8::1/64 and a permanent neighbour, so the
/// IPv6 route lookup has a definite answer.
fn fib6_lab() -> Netns {
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
    ns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
    ns.exec(&[
        "ip",
        "-6",
        "addr",
        "add",
        "2001:db8::1/64",
        "dev",
        "v0",
        "nodad",
    ]);
    ns.exec(&["ip", "link", "set", "v0", "up"]);
    ns.exec(&["ip", "link", "set", "v1", "up"]);
    let (_, rmac) = mac6_of("2001:db8::20");
    let fmt = |m: Mac| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    ns.exec(&[
        "ip",
        "-6",
        "neigh",
        "add",
        "2001:db8::20",
        "lladdr",
        &fmt(rmac),
        "dev",
        "v0",
        "nud",
        "permanent",
    ]);
    ns
}

#[test]
#[ignore = "privileged: loads BPF, creates a network namespace"]
fn ipv6_tun_with_route_lookup() {
    let ns = fib6_lab();
    ns.run(|| {
        let ifindex = kubelvs_xdp::ifindex("v0").unwrap();
        let neigh = kubelvs_xdp::read_neighbours(Some("v0")).unwrap();
        assert_eq!(
            neigh.get(&IpAddr::V6(ip6("2001:db8::20"))),
            Some(&mac6_of("2001:db8::20").1)
        );
        let mut d = XdpDirector::load(opts()).unwrap();
        let real = "2001:db8::20";
        d.apply(
            &[service(VIP6, 443, TUN, &[(real, 443, 1)])],
            &HashMap::new(),
        )
        .unwrap();
        let syn = tcp6_frame(ip6(CLIENT6), 40002, ip6(VIP6), 443, TCP_SYN);
        let want = eth(
            mac6_of(real).1,
            DIRECTOR_MAC,
            0x86dd,
            &ip6ip6(ip6(DIRECTOR6), ip6(real), &syn[14..], 40002, 443),
        );
        assert_eq!(run(&d, &syn, Some(ifindex)), (XDP_TX, want));
    });
}

#[test]
#[ignore = "privileged: loads BPF"]
fn ipv6_nat_rewrite_and_reverse() {
    let mut d = XdpDirector::load(opts()).unwrap();
    let real = "2001:db8:2::13";
    let (rip, rmac) = mac6_of(real);
    let neigh = HashMap::from([(rip, rmac)]);
    let mut udp_svc = service(VIP6, 80, Forwarding::Nat, &[(real, 8080, 1)]);
    udp_svc.key.protocol = kubelvs_model::Protocol::Udp;
    d.apply(
        &[
            service(VIP6, 80, Forwarding::Nat, &[(real, 8080, 1)]),
            udp_svc,
        ],
        &neigh,
    )
    .unwrap();
    let (c, v, r) = (ip6(CLIENT6), ip6(VIP6), ip6(real));

    let syn = tcp6_frame(c, 40003, v, 80, TCP_SYN);
    let fwd = eth(
        rmac,
        DIRECTOR_MAC,
        0x86dd,
        &ipv6(
            c,
            r,
            6,
            &tcp6(c, r, 40003, 8080, TCP_SYN, b"GET / HTTP/1.0\r\n\r\n"),
        ),
    );
    assert_eq!(
        run(&d, &syn, None),
        (XDP_TX, fwd.clone()),
        "NAT: destination rewritten"
    );
    assert_checksums6(&fwd, 14);

    let reply = eth(
        DIRECTOR_MAC,
        rmac,
        0x86dd,
        &ipv6(r, c, 6, &tcp6(r, c, 8080, 40003, TCP_SYN | TCP_ACK, b"")),
    );
    let back = eth(
        CLIENT_MAC,
        DIRECTOR_MAC,
        0x86dd,
        &ipv6(v, c, 6, &tcp6(v, c, 80, 40003, TCP_SYN | TCP_ACK, b"")),
    );
    assert_eq!(
        run(&d, &reply, None),
        (XDP_TX, back.clone()),
        "NAT reply: VIP restored"
    );
    assert_checksums6(&back, 14);

    let u = eth(
        DIRECTOR_MAC,
        CLIENT_MAC,
        0x86dd,
        &ipv6(c, v, 17, &udp6(c, v, 5000, 80, b"ping")),
    );
    let u_out = eth(
        rmac,
        DIRECTOR_MAC,
        0x86dd,
        &ipv6(c, r, 17, &udp6(c, r, 5000, 8080, b"ping")),
    );
    assert_eq!(run(&d, &u, None), (XDP_TX, u_out), "UDP over IPv6 NAT");

    let unknown = eth(
        DIRECTOR_MAC,
        rmac,
        0x86dd,
        &ipv6(r, c, 6, &tcp6(r, c, 8080, 40999, TCP_ACK, b"")),
    );
    assert_eq!(run(&d, &unknown, None), (XDP_PASS, unknown.clone()));
    assert_eq!(d.stats().unwrap().counters.nat_replies, 1);
}

#[test]
#[ignore = "privileged: loads BPF"]
fn ipv6_decap_strips_for_local_vips_only() {
    let mut dc = XdpDecap::load(&[]).unwrap();
    dc.set_vip_addrs(&[IpAddr::V6(ip6(VIP6)), "203.0.113.10".parse().unwrap()])
        .unwrap();
    let inner = ipv6(
        ip6(CLIENT6),
        ip6(VIP6),
        6,
        &tcp6(ip6(CLIENT6), ip6(VIP6), 40004, 80, TCP_SYN, b""),
    );
    let frame = eth(
        DIRECTOR_MAC,
        CLIENT_MAC,
        0x86dd,
        &ipv6(ip6(DIRECTOR6), ip6("2001:db8::20"), 41, &inner),
    );
    let r = run_once(dc.program_fd(), &frame);
    assert_eq!(
        (r.retval, r.data_out),
        (XDP_PASS, eth(DIRECTOR_MAC, CLIENT_MAC, 0x86dd, &inner))
    );
    let other_inner = ipv6(
        ip6(CLIENT6),
        ip6("2001:db8::77"),
        6,
        &tcp6(ip6(CLIENT6), ip6("2001:db8::77"), 1, 80, TCP_SYN, b""),
    );
    let other = eth(
        DIRECTOR_MAC,
        CLIENT_MAC,
        0x86dd,
        &ipv6(ip6(DIRECTOR6), ip6("2001:db8::20"), 41, &other_inner),
    );
    let r = run_once(dc.program_fd(), &other);
    assert_eq!((r.retval, r.data_out), (XDP_PASS, other));
    assert_eq!(dc.decapsulated().unwrap(), 1);
}

/// ICMPv6 "packet too big" about a reply a real server sent from the IPv6 VIP
/// reaches that real server.
#[test]
#[ignore = "privileged: loads BPF"]
fn ipv6_packet_too_big_goes_to_the_flows_real_server() {
    let mut d = XdpDirector::load(opts()).unwrap();
    let reals = [
        ("2001:db8:2::21", 80, 1),
        ("2001:db8:2::22", 80, 1),
        ("2001:db8:2::23", 80, 1),
    ];
    let mut neigh: HashMap<IpAddr, Mac> = reals.iter().map(|r| mac6_of(r.0)).collect();
    neigh.insert(mac6_of("2001:db8:2::31").0, mac6_of("2001:db8:2::31").1);
    d.apply(
        &[
            service(VIP6, 80, Forwarding::Dr, &reals),
            service(VIP6, 443, TUN, &[("2001:db8:2::31", 443, 1)]),
        ],
        &neigh,
    )
    .unwrap();
    let (c, v) = (ip6(CLIENT6), ip6(VIP6));
    let too_big = |vport: u16, cport: u16| {
        let quoted = ipv6(v, c, 6, &tcp6(v, c, vport, cport, TCP_ACK, &[0; 1400])[..8]);
        let mut icmp = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00];
        icmp.extend_from_slice(&quoted);
        eth(
            DIRECTOR_MAC,
            CLIENT_MAC,
            0x86dd,
            &ipv6(ip6("2001:db8:ffff::1"), v, 58, &icmp),
        )
    };
    let syn = tcp6_frame(c, 40100, v, 80, TCP_SYN);
    let (_, out) = run(&d, &syn, None);
    let owner: Mac = out[0..6].try_into().unwrap();
    let icmp = too_big(80, 40100);
    assert_eq!(
        run(&d, &icmp, None),
        (XDP_TX, with_mac(icmp.clone(), owner, DIRECTOR_MAC))
    );
    // Not in the table: the ring slot the flow would take.
    let (verdict, out2) = run(&d, &too_big(80, 40200), None);
    let (_, syn2) = run(&d, &tcp6_frame(c, 40200, v, 80, TCP_SYN), None);
    assert_eq!((verdict, &out2[0..6]), (XDP_TX, &syn2[0..6]));
    // TUN: encapsulated, with the flow's own flow label.
    let icmp3 = too_big(443, 40300);
    let (_, rmac) = mac6_of("2001:db8:2::31");
    let mut want = eth(
        rmac,
        DIRECTOR_MAC,
        0x86dd,
        &ipv6(ip6(DIRECTOR6), ip6("2001:db8:2::31"), 41, &icmp3[14..]),
    );
    let label = flow_hash(
        u32::from(c.octets()[15]),
        u32::from(v.octets()[15]),
        (u32::from(40300u16.to_be()) << 16) | u32::from(443u16.to_be()),
    ) & 0xfffff;
    want[14..18].copy_from_slice(&(0x6000_0000 | label).to_be_bytes());
    assert_eq!(run(&d, &icmp3, None), (XDP_TX, want));
    // Echo requests and errors about other ports pass untouched.
    let echo = eth(
        DIRECTOR_MAC,
        CLIENT_MAC,
        0x86dd,
        &ipv6(c, v, 58, &[128, 0, 0, 0, 0, 1, 0, 1]),
    );
    assert_eq!(run(&d, &echo, None), (XDP_PASS, echo.clone()));
    let other = too_big(8080, 40100);
    assert_eq!(run(&d, &other, None), (XDP_PASS, other.clone()));
    assert_eq!(d.stats().unwrap().counters.icmp_to_real, 3);
}
