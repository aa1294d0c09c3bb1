//! The connection table and the NAT reply table under id reuse and key sharing,
//! through BPF_PROG_TEST_RUN: a flow bound to a real server id that was freed and
//! given to another service's real server is rescheduled, not sent there; NAT
//! replies of two services mapping to one real server port restore the right VIP
//! port; a SYN reusing the ports of a flow bound to a quiesced real server is
//! scheduled from the ring.

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use common::*;
use kubelvs_model::Forwarding;
use kubelvs_xdp::{DirectorOptions, XdpDirector, XDP_TX};

const CLIENT: &str = "198.51.100.5";

fn opts() -> DirectorOptions {
    let mut o = DirectorOptions::new(ip("192.0.2.1"));
    o.max_vips = 4;
    // Ids 1..=3: a freed id is reused within a few allocations.
    o.max_reals = 4;
    o.conns_per_cpu = 1024;
    o.ring_size = 251;
    o
}

fn run(d: &XdpDirector, frame: &[u8]) -> (u32, Vec<u8>) {
    let r = run_once(d.program_fd(), frame);
    (r.retval, r.data_out)
}

/// The MAC a DR packet from CLIENT:sport to vip:80 is sent to.
fn dr_to(d: &XdpDirector, vip: &str, sport: u16, flags: u8) -> [u8; 6] {
    dr_target(d, vip, sport, flags).expect("the director transmits it (XDP_TX)")
}

#[test]
#[ignore = "privileged: loads BPF"]
fn a_flow_bound_to_a_reused_real_server_id_is_rescheduled() {
    let (x, w, y, z) = (
        "198.51.100.11",
        "198.51.100.12",
        "198.51.100.13",
        "198.51.100.14",
    );
    let neigh: HashMap<IpAddr, Mac> = [x, w, y, z].iter().map(|a| mac_of(a)).collect();
    let mut d = XdpDirector::load(opts()).unwrap();
    let a = |reals: &[&str]| {
        let r: Vec<(&str, u16, u32)> = reals.iter().map(|a| (*a, 80, 1)).collect();
        service("203.0.113.1", 80, Forwarding::Dr, &r)
    };
    let b = |reals: &[&str]| {
        let r: Vec<(&str, u16, u32)> = reals.iter().map(|a| (*a, 80, 1)).collect();
        service("203.0.113.2", 80, Forwarding::Dr, &r)
    };
    let t0 = Instant::now();
    d.apply_at(&[a(&[x, w])], &neigh, t0).unwrap();
    let x_id = d.real_id(ip(x), 80).unwrap();
    // A flow of VIP a bound to x.
    let sport = (40000..41000)
        .find(|p| dr_to(&d, "203.0.113.1", *p, TCP_SYN) == mac_of(x).1)
        .unwrap();

    // x leaves a (past its drain); b's real servers take the free ids, x's among them.
    let past = t0 + d.options().drain_timeout;
    d.apply_at(&[a(&[w])], &neigh, t0).unwrap();
    d.apply_at(&[a(&[w])], &neigh, past).unwrap();
    assert!(d.real_id(ip(x), 80).is_none());
    d.apply_at(&[a(&[w]), b(&[y, z])], &neigh, past).unwrap();
    let reused = [y, z]
        .into_iter()
        .find(|r| d.real_id(ip(r), 80) == Some(x_id))
        .expect("x's id was given to one of b's real servers");

    // The old binding names a live real server of another service: not trusted.
    let to = dr_to(&d, "203.0.113.1", sport, TCP_ACK);
    assert_ne!(
        to,
        mac_of(reused).1,
        "a flow of VIP a went to b's real server"
    );
    assert_eq!(to, mac_of(w).1);
}

#[test]
#[ignore = "privileged: loads BPF"]
fn nat_replies_restore_the_port_of_the_newest_flow_sharing_their_key() {
    let real = "192.0.2.20";
    let (rip, rmac) = mac_of(real);
    let neigh = HashMap::from([(rip, rmac)]);
    let vip = "203.0.113.10";
    let mut d = XdpDirector::load(opts()).unwrap();
    d.apply(
        &[
            service(vip, 80, Forwarding::Nat, &[(real, 8080, 1)]),
            service(vip, 81, Forwarding::Nat, &[(real, 8080, 1)]),
        ],
        &neigh,
    )
    .unwrap();
    let client = ip(CLIENT);
    let reply = eth(
        DIRECTOR_MAC,
        rmac,
        0x0800,
        &ipv4(
            ip(real),
            client,
            6,
            &tcp(ip(real), client, 8080, 40000, TCP_ACK, b""),
        ),
    );
    // The TCP source port of a reply as it leaves the director.
    let reply_port = |d: &XdpDirector| {
        let (verdict, out) = run(d, &reply);
        assert_eq!(verdict, XDP_TX);
        u16::from_be_bytes([out[34], out[35]])
    };
    for vport in [80, 81, 80] {
        // One flow ends, a new one from the same client port to the other service:
        // to the real server both are CLIENT:40000 -> 192.0.2.20:8080.
        let (verdict, _) = run(&d, &tcp_frame(client, 40000, ip(vip), vport, TCP_SYN));
        assert_eq!(verdict, XDP_TX);
        assert_eq!(reply_port(&d), vport, "reply of the flow to port {vport}");
    }
}

#[test]
#[ignore = "privileged: loads BPF"]
fn a_syn_reusing_the_ports_of_a_flow_to_a_quiesced_real_server_goes_by_the_ring() {
    let (x, w) = ("198.51.100.11", "198.51.100.12");
    let neigh: HashMap<IpAddr, Mac> = [x, w].iter().map(|a| mac_of(a)).collect();
    let mut d = XdpDirector::load(opts()).unwrap();
    let vip = "203.0.113.1";
    let svc =
        |weight_of_x: u32| service(vip, 80, Forwarding::Dr, &[(x, 80, weight_of_x), (w, 80, 1)]);
    let t0 = Instant::now();
    d.apply_at(&[svc(1)], &neigh, t0).unwrap();
    let sport = (40000..41000)
        .find(|p| dr_to(&d, vip, *p, TCP_SYN) == mac_of(x).1)
        .unwrap();

    // x quiesced (weight 0, as a failed health check does): out of the ring, and its
    // open connection carries on.
    d.apply_at(&[svc(0)], &neigh, t0).unwrap();
    assert_eq!(
        dr_to(&d, vip, sport, TCP_ACK),
        mac_of(x).1,
        "the open connection"
    );
    assert_eq!(
        dr_to(&d, vip, sport, TCP_SYN | TCP_ACK),
        mac_of(x).1,
        "SYN+ACK is not a client opening a connection"
    );

    // The client opens a new connection from the same port (the real server closed
    // the last one, so the client may reuse it at once): the ring decides, and the
    // binding follows the new connection.
    assert_eq!(
        dr_to(&d, vip, sport, TCP_SYN),
        mac_of(w).1,
        "a new connection to a quiesced real server"
    );
    assert_eq!(dr_to(&d, vip, sport, TCP_ACK), mac_of(w).1);
}
