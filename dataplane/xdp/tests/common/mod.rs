//! Packet builders, checksum checks and a network-namespace guard for the
//! privileged BPF tests.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use kubelvs_model::{
    DataplaneKind, Forwarding, ObjectKind, ObjectRef, Protocol, RealServer, Scheduler,
    SchedulerFlags, Service, ServiceKey, Tunnel,
};

pub type Mac = [u8; 6];

pub const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
pub const DIRECTOR_MAC: Mac = [0x02, 0, 0, 0, 0, 0x02];
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

pub fn csum(data: &[u8], initial: u32) -> u16 {
    let mut s = initial;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        s += u32::from(w);
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut s = 0u32;
    for o in [src.octets(), dst.octets()] {
        s += u32::from(u16::from_be_bytes([o[0], o[1]]))
            + u32::from(u16::from_be_bytes([o[2], o[3]]));
    }
    s + u32::from(proto) + len as u32
}

/// IPv4 header (20 bytes, valid checksum) followed by `payload`.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = csum(&h, 0);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// TCP segment with a valid checksum for (src, dst).
pub fn tcp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + data.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&1000u32.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(data);
    let c = csum(&t, pseudo(src, dst, 6, t.len()));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + data.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let c = csum(&u, pseudo(src, dst, 17, u.len()));
    u[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    u
}

pub fn eth(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Ethernet + IPv4 + TCP from client to (dst, dport).
pub fn tcp_frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let seg = tcp(src, dst, sport, dport, flags, b"GET / HTTP/1.0\r\n\r\n");
    eth(DIRECTOR_MAC, CLIENT_MAC, 0x0800, &ipv4(src, dst, 6, &seg))
}

/// Asserts the IPv4 header at `off` and its TCP/UDP payload carry valid checksums.
pub fn assert_checksums(frame: &[u8], off: usize) {
    let ihl = usize::from(frame[off] & 0xf) * 4;
    assert_eq!(
        csum(&frame[off..off + ihl], 0),
        0,
        "IPv4 header checksum at {off}"
    );
    let total = usize::from(u16::from_be_bytes([frame[off + 2], frame[off + 3]]));
    let src = Ipv4Addr::new(
        frame[off + 12],
        frame[off + 13],
        frame[off + 14],
        frame[off + 15],
    );
    let dst = Ipv4Addr::new(
        frame[off + 16],
        frame[off + 17],
        frame[off + 18],
        frame[off + 19],
    );
    let proto = frame[off + 9];
    let l4 = &frame[off + ihl..off + total];
    if proto == 6 || (proto == 17 && l4[6..8] != [0, 0]) {
        assert_eq!(
            csum(l4, pseudo(src, dst, proto, l4.len())),
            0,
            "L4 checksum (proto {proto})"
        );
    }
}

pub fn service(
    vip: &str,
    port: u16,
    forwarding: Forwarding,
    reals: &[(&str, u16, u32)],
) -> Service {
    Service {
        key: ServiceKey {
            vip: vip.parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
        },
        scheduler: Scheduler::Maglev,
        scheduler_flags: SchedulerFlags::default(),
        forwarding,
        persistence: None,
        source_address: None,
        health_check: None,
        dataplane: DataplaneKind::Xdp,
        real_servers: reals
            .iter()
            .map(|(a, p, w)| RealServer {
                address: a.parse().unwrap(),
                port: *p,
                weight: *w,
                source: ObjectRef::new(ObjectKind::RealServer, "test", a),
            })
            .collect(),
        source: ObjectRef::new(ObjectKind::VirtualService, "test", "web"),
    }
}

pub const TUN: Forwarding = Forwarding::Tun(Tunnel::Ipip);

pub fn mac_of(ipaddr: &str) -> (IpAddr, Mac) {
    let o = ip(ipaddr).octets();
    (IpAddr::V4(ip(ipaddr)), [0x02, 0xaa, o[0], o[1], o[2], o[3]])
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique name for this process and call: netns, interfaces, pin dirs.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace that is deleted on drop, even when the test panics.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        let name = unique("klvsxdp");
        sh(&["ip", "netns", "add", &name]);
        Self { name }
    }

    pub fn exec(&self, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full);
    }

    pub fn path(&self) -> std::path::PathBuf {
        std::path::Path::new("/var/run/netns").join(&self.name)
    }

    /// Runs `f` on a fresh thread that has entered this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                kubelvs_xdp::enter_netns(&path).expect("setns");
                f()
            })
            .join()
            .expect("thread in netns panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn ip6(s: &str) -> std::net::Ipv6Addr {
    s.parse().unwrap()
}

fn pseudo6(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, proto: u8, len: usize) -> u32 {
    let mut s = 0u32;
    for o in [src.octets(), dst.octets()] {
        for c in o.chunks(2) {
            s += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
    }
    s + u32::from(proto) + len as u32
}

/// IPv6 header (40 bytes, hop limit 64) followed by `payload`.
pub fn ipv6(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

pub fn tcp6(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let mut t = tcp(
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        sport,
        dport,
        flags,
        data,
    );
    t[16..18].copy_from_slice(&[0, 0]);
    let c = csum(&t, pseudo6(src, dst, 6, t.len()));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

pub fn udp6(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    sport: u16,
    dport: u16,
    data: &[u8],
) -> Vec<u8> {
    let mut u = udp(
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        sport,
        dport,
        data,
    );
    u[6..8].copy_from_slice(&[0, 0]);
    let c = csum(&u, pseudo6(src, dst, 17, u.len()));
    u[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    u
}

/// Ethernet + IPv6 + TCP from client to (dst, dport).
pub fn tcp6_frame(
    src: std::net::Ipv6Addr,
    sport: u16,
    dst: std::net::Ipv6Addr,
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let seg = tcp6(src, dst, sport, dport, flags, b"GET / HTTP/1.0\r\n\r\n");
    eth(DIRECTOR_MAC, CLIENT_MAC, 0x86dd, &ipv6(src, dst, 6, &seg))
}

/// Asserts the TCP/UDP checksum of the IPv6 packet at `off`.
pub fn assert_checksums6(frame: &[u8], off: usize) {
    let len = usize::from(u16::from_be_bytes([frame[off + 4], frame[off + 5]]));
    let next = frame[off + 6];
    let src: [u8; 16] = frame[off + 8..off + 24].try_into().unwrap();
    let dst: [u8; 16] = frame[off + 24..off + 40].try_into().unwrap();
    let l4 = &frame[off + 40..off + 40 + len];
    assert_eq!(
        csum(l4, pseudo6(src.into(), dst.into(), next, l4.len())),
        0,
        "L4 checksum over IPv6 (next header {next})"
    );
}

pub fn mac6_of(a: &str) -> (IpAddr, Mac) {
    let o = ip6(a).octets();
    (IpAddr::V6(ip6(a)), [0x02, 0xbb, o[12], o[13], o[14], o[15]])
}

/// One BPF_PROG_TEST_RUN of `frame` through the program `prog`.
pub fn run_once(prog: std::os::fd::BorrowedFd<'_>, frame: &[u8]) -> kubelvs_xdp::TestRunResult {
    run_once_from(prog, frame, None)
}

/// [`run_once`] as if `frame` arrived on interface `ingress_ifindex`.
pub fn run_once_from(
    prog: std::os::fd::BorrowedFd<'_>,
    frame: &[u8],
    ingress_ifindex: Option<u32>,
) -> kubelvs_xdp::TestRunResult {
    use kubelvs_xdp::{test_run, TestRun};
    test_run(
        prog,
        &TestRun {
            data_in: frame,
            repeat: 1,
            ingress_ifindex,
            ..TestRun::default()
        },
    )
    .expect("BPF_PROG_TEST_RUN")
}

/// The real server (by MAC) a DR packet from 198.51.100.5, client port `sport`, to
/// `vip`:80 is sent to, or `None` when the director does not transmit it.
pub fn dr_target(
    d: &kubelvs_xdp::XdpDirector,
    vip: &str,
    sport: u16,
    flags: u8,
) -> Option<[u8; 6]> {
    let r = run_once(
        d.program_fd(),
        &tcp_frame(ip("198.51.100.5"), sport, ip(vip), 80, flags),
    );
    (r.retval == kubelvs_xdp::XDP_TX).then(|| r.data_out[0..6].try_into().unwrap())
}
