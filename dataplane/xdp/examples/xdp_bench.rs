//! Nanoseconds per packet of the director program under BPF_PROG_TEST_RUN,
//! net of an empty XDP program's cost. Needs root (loads BPF, creates a netns):
//!
//! ```text
//! cargo run --release -p kubelvs-xdp --example xdp_bench
//! ```
//!
//! Two methods, both net of an empty program measured the same way:
//!
//! 1. Wrapped, repeat=100000 (the headline): `bench.c` wraps the director so
//!    every run starts from the original frame (with repeat > 1 the kernel
//!    reuses one buffer, and an encapsulating program would otherwise see its
//!    own output); the wrapper also picks the flow of each run, so established
//!    runs cycle through every pre-filled flow of the VIP and new-flow runs are
//!    flows never seen before. The empty wrapper does the same save/restore.
//! 2. repeat=1, one syscall per packet: caches are cold on every run, so this
//!    is an upper bound, reported for comparison.
//!
//! Synthetic flows come from 198.18.0.0/15 (RFC 2544 benchmarking range).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::BorrowedFd;
use std::process::Command;

use kubelvs_model::{
    DataplaneKind, Forwarding, ObjectKind, ObjectRef, Protocol, RealServer, Scheduler,
    SchedulerFlags, Service, ServiceKey, Tunnel,
};
use kubelvs_xdp::bench::{BenchCfg, BenchDirector};
use kubelvs_xdp::maps::{Conn, Flow6Key, FlowKey};
use kubelvs_xdp::{test_run, DirectorOptions, TestRun, XdpDirector, XdpPass, XDP_TX};

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const RUNS: usize = 20_000;

fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("spawn");
    assert!(st.success(), "{args:?}");
}

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn csum(data: &[u8], mut s: u32) -> u16 {
    for c in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Ethernet + IPv4 + TCP ACK with 64 bytes of payload (checksums valid).
fn frame(src: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let payload = [0x61u8; 64];
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(&payload);
    let mut ps = 0u32;
    for o in [src.octets(), VIP.octets()] {
        ps += u32::from(u16::from_be_bytes([o[0], o[1]]))
            + u32::from(u16::from_be_bytes([o[2], o[3]]));
    }
    let c = csum(&t, ps + 6 + t.len() as u32);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&((20 + t.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&VIP.octets());
    let c = csum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 8, 0];
    f.extend_from_slice(&ip);
    f.extend_from_slice(&t);
    f
}

/// The i-th synthetic client flow: address in 198.18.0.0/15, port from i.
fn flow(i: u32) -> (Ipv4Addr, u16) {
    let a = 0xc612_0000u32 | ((i >> 14) & 0x1_ffff);
    (Ipv4Addr::from(a), 1024 + (i & 0x3fff) as u16)
}

fn median_ns(prog: BorrowedFd<'_>, ifindex: u32, frames: &[Vec<u8>], want: u32) -> (f64, f64) {
    let mut d: Vec<u32> = Vec::with_capacity(frames.len());
    for f in frames {
        let r = test_run(
            prog,
            &TestRun {
                data_in: f,
                repeat: 1,
                ingress_ifindex: Some(ifindex),
                ..TestRun::default()
            },
        )
        .expect("BPF_PROG_TEST_RUN");
        assert_eq!(r.retval, want, "unexpected verdict: {:?}", r);
        d.push(r.duration_ns);
    }
    let mean = d.iter().map(|&x| f64::from(x)).sum::<f64>() / d.len() as f64;
    d.sort_unstable();
    (f64::from(d[d.len() / 2]), mean)
}

fn service(port: u16, forwarding: Forwarding, reals: &[Ipv4Addr]) -> Service {
    Service {
        key: ServiceKey {
            vip: IpAddr::V4(VIP),
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
            .map(|a| RealServer {
                address: IpAddr::V4(*a),
                port,
                weight: 1,
                source: ObjectRef::new(ObjectKind::RealServer, "bench", "rs"),
            })
            .collect(),
        source: ObjectRef::new(ObjectKind::VirtualService, "bench", "web"),
    }
}

fn main() {
    let ns = Netns(format!("klvsbench{}", std::process::id()));
    sh(&["ip", "netns", "add", &ns.0]);
    let ex = |args: &[&str]| {
        let mut v = vec!["ip", "netns", "exec", ns.0.as_str()];
        v.extend_from_slice(args);
        sh(&v);
    };
    ex(&[
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
    ex(&["ip", "addr", "add", "192.0.2.1/24", "dev", "v0"]);
    ex(&["ip", "link", "set", "v0", "up"]);
    ex(&["ip", "link", "set", "v1", "up"]);
    // bpf_fib_lookup answers only on interfaces that forward.
    ex(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    let reals: Vec<Ipv4Addr> = (20..30).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect();
    let mut neigh = HashMap::new();
    for r in &reals {
        let o = r.octets();
        let mac = [2, 0xaa, o[0], o[1], o[2], o[3]];
        let s = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        ex(&[
            "ip",
            "neigh",
            "add",
            &r.to_string(),
            "lladdr",
            &s,
            "dev",
            "v0",
            "nud",
            "permanent",
        ]);
        neigh.insert(IpAddr::V4(*r), mac);
    }
    // Real servers the kernel knows but the caller gives no MAC for: TUN uses bpf_fib_lookup.
    let fib_reals: Vec<Ipv4Addr> = (40..50).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect();
    for r in &fib_reals {
        let o = r.octets();
        let s = format!("02:bb:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
        ex(&[
            "ip",
            "neigh",
            "add",
            &r.to_string(),
            "lladdr",
            &s,
            "dev",
            "v0",
            "nud",
            "permanent",
        ]);
    }
    kubelvs_xdp::enter_netns(&std::path::Path::new("/var/run/netns").join(&ns.0)).expect("setns");
    let ifindex = kubelvs_xdp::ifindex("v0").unwrap();

    let mut opts = DirectorOptions::new(Ipv4Addr::new(192, 0, 2, 1));
    opts.max_vips = 4;
    // Room for 1M pre-filled flows plus the new ones on each CPU's LRU list
    // (per-CPU lists split the capacity): measure inserts, not evictions.
    opts.conns_per_cpu = (1 << 22) / aya::util::nr_cpus().unwrap() as u32;
    let mut bench = BenchDirector::load(opts).expect("load director");
    let d = &mut bench.director;
    d.apply(
        &[
            service(80, Forwarding::Dr, &reals),
            service(81, Forwarding::Tun(Tunnel::Ipip), &reals),
            service(82, Forwarding::Tun(Tunnel::Ipip), &fib_reals),
        ],
        &neigh,
    )
    .expect("apply");
    let empty = XdpPass::load().expect("load empty program");

    let fill = |d: &mut XdpDirector, from: u32, to: u32| {
        let vip = u32::from_ne_bytes(VIP.octets());
        for i in from..to {
            let (src, sport) = flow(i);
            // A third of the table on each VIP, as established flows of each.
            let dport: u16 = 80 + (i % 3) as u16;
            let key = FlowKey {
                src: u32::from_ne_bytes(src.octets()),
                dst: vip,
                sport: sport.to_be(),
                dport: dport.to_be(),
                proto: 6,
                pad: [0; 3],
            };
            let vip_id = d
                .vip_id(&ServiceKey {
                    vip: IpAddr::V4(VIP),
                    port: dport,
                    protocol: Protocol::Tcp,
                })
                .unwrap();
            let set = if dport == 82 { &fib_reals } else { &reals };
            let real_id = d.real_id(set[(i % 10) as usize], dport).unwrap();
            let gen = d.real_gen(real_id).unwrap();
            d.insert_connection(
                &key,
                &Conn {
                    real_id,
                    vip_id,
                    gen,
                },
            )
            .unwrap();
        }
    };

    let pass_frames: Vec<Vec<u8>> = (0..RUNS as u32)
        .map(|i| {
            let (s, p) = flow(i);
            frame(s, p, 80)
        })
        .collect();
    let (empty_med, empty_mean) = median_ns(
        empty.program_fd(),
        ifindex,
        &pass_frames,
        kubelvs_xdp::XDP_PASS,
    );

    // DR leaves a frame of the same flow, so repeat > 1 is valid for it: the
    // kernel's loop without per-call syscall overhead, for comparison.
    let repeat = |prog: BorrowedFd<'_>, f: &[u8]| -> u32 {
        let mut best = u32::MAX;
        for _ in 0..20 {
            let r = test_run(
                prog,
                &TestRun {
                    data_in: f,
                    repeat: 10_000,
                    ingress_ifindex: Some(ifindex),
                    ..TestRun::default()
                },
            )
            .unwrap();
            best = best.min(r.duration_ns);
        }
        best
    };

    // Method 1: wrapped, repeat=100000, the fastest of 7 calls (the machine is
    // shared: the minimum is the figure least disturbed by other work).
    let wrapped = |fd: BorrowedFd<'_>, f: &[u8], want: u32, repeat: u32| -> u32 {
        let v: Vec<u32> = (0..7)
            .map(|_| {
                let r = test_run(
                    fd,
                    &TestRun {
                        data_in: f,
                        repeat,
                        ingress_ifindex: Some(ifindex),
                        ..TestRun::default()
                    },
                )
                .unwrap();
                assert_eq!(r.retval, want, "unexpected verdict: {:?}", r);
                r.duration_ns
            })
            .collect();
        v.into_iter().min().unwrap()
    };
    println!("== wrapped (every run restores the frame), repeat=100000 (new: 10000), fastest of 7, ns/packet");
    println!(
        "{:<10} {:<8} {:<12} {:>10} {:>10} {:>8}",
        "table", "fwd", "flow", "director", "empty", "net"
    );
    let mut filled = 0u32;
    let mut new_base = 1u32 << 24;
    for target in [10_000u32, 1_000_000] {
        fill(&mut bench.director, filled, target);
        filled = target;
        for (fwd, port) in [("dr", 80u16), ("tun", 81), ("tun-fib", 82)] {
            let (s0, p0) = flow(0);
            let f = frame(s0, p0, port);
            let residue = u32::from(port - 80);
            // Established, hot: 1,024 flows spread over the table, cycled
            // (cache-resident, as a busy director's active flows mostly are).
            // Established, all: every pre-filled flow of this VIP in turn
            // (each lookup misses the CPU caches).
            let per_vip = target / 3;
            for (what, count, stride) in [
                ("est-hot", 1024, 3 * (per_vip / 1024)),
                ("est-all", per_vip, 3),
            ] {
                bench
                    .set_flows(BenchCfg {
                        base: residue,
                        count,
                        stride,
                        ipv6: 0,
                    })
                    .unwrap();
                let e = wrapped(bench.empty_fd(), &f, XDP_TX, 100_000);
                let m = wrapped(bench.director_fd(), &f, XDP_TX, 100_000);
                println!(
                    "{target:<10} {fwd:<8} {what:<12} {m:>10} {e:>10} {:>8}",
                    i64::from(m) - i64::from(e)
                );
            }
            // New: flows never seen, repeat=10000 so the table grows by only
            // 70,000 per row (no evictions: the table has room).
            bench
                .set_flows(BenchCfg {
                    base: new_base,
                    count: 1 << 30,
                    stride: 1,
                    ipv6: 0,
                })
                .unwrap();
            new_base += 1 << 26;
            let e = wrapped(bench.empty_fd(), &f, XDP_TX, 10_000);
            let m = wrapped(bench.director_fd(), &f, XDP_TX, 10_000);
            println!(
                "{target:<10} {fwd:<8} {:<12} {m:>10} {e:>10} {:>8}",
                "new",
                i64::from(m) - i64::from(e)
            );
        }
    }

    drop(bench);
    ipv6_rows(ifindex);

    // Method 2: repeat=1 per syscall, on a fresh director with the same fills.
    let mut opts = DirectorOptions::new(Ipv4Addr::new(192, 0, 2, 1));
    opts.max_vips = 4;
    // Room for 1M pre-filled flows plus the new ones on each CPU's LRU list
    // (per-CPU lists split the capacity): measure inserts, not evictions.
    opts.conns_per_cpu = (1 << 22) / aya::util::nr_cpus().unwrap() as u32;
    let mut d = XdpDirector::load(opts).expect("load director");
    d.apply(
        &[
            service(80, Forwarding::Dr, &reals),
            service(81, Forwarding::Tun(Tunnel::Ipip), &reals),
            service(82, Forwarding::Tun(Tunnel::Ipip), &fib_reals),
        ],
        &neigh,
    )
    .expect("apply");
    println!("== repeat=1, one syscall per packet (cold caches), ns/packet");
    println!("empty XDP program (repeat=1): median {empty_med:.0} ns, mean {empty_mean:.0} ns");
    println!(
        "{:<10} {:<8} {:<12} {:>12} {:>12} {:>10}",
        "table", "fwd", "flow", "median ns", "mean ns", "net ns"
    );

    let mut filled = 0u32;
    let mut next_new = 4_000_000u32; // flows above every pre-filled index
    for target in [10_000u32, 1_000_000] {
        fill(&mut d, filled, target);
        filled = target;
        for (fwd, port) in [("dr", 80u16), ("tun", 81), ("tun-fib", 82)] {
            // Established: 1,024 distinct flows of this VIP from the table, cycled.
            let residue = u32::from(port - 80);
            let est: Vec<Vec<u8>> = (0..RUNS as u32)
                .map(|k| {
                    let i = residue + 3 * ((k % 1024) * (target / 3 / 1024));
                    let (s, p) = flow(i);
                    frame(s, p, port)
                })
                .collect();
            let (m, mean) = median_ns(d.program_fd(), ifindex, &est, XDP_TX);
            println!(
                "{target:<10} {fwd:<8} {:<12} {m:>12.0} {mean:>12.0} {:>10.0}",
                "established",
                m - empty_med
            );
            if fwd == "dr" {
                let e = repeat(empty.program_fd(), &est[0]);
                let r = repeat(d.program_fd(), &est[0]);
                println!(
                    "{target:<10} {fwd:<8} {:<12} {r:>12} {:>12} {:>10}   (repeat=10000, one flow, best of 20; empty {e} ns)",
                    "established", "-", i64::from(r) - i64::from(e)
                );
            }
            let new: Vec<Vec<u8>> = (0..RUNS as u32)
                .map(|_| {
                    next_new += 1;
                    let (s, p) = flow(next_new);
                    frame(s, p, port)
                })
                .collect();
            let (m, mean) = median_ns(d.program_fd(), ifindex, &new, XDP_TX);
            println!(
                "{target:<10} {fwd:<8} {:<12} {m:>12.0} {mean:>12.0} {:>10.0}",
                "new",
                m - empty_med
            );
        }
    }
}

const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);

/// Flow i over IPv6: client 2001:db8:1::(i >> 14), port 1024 + (i & 0x3fff), as bench.c writes it.
fn flow6(i: u32) -> (Ipv6Addr, u16) {
    let host = i >> 14;
    let (high, low) = ((host >> 16) as u16, host as u16);
    (
        Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, high, low),
        1024 + (i & 0x3fff) as u16,
    )
}

/// Ethernet + IPv6 + TCP ACK with 64 bytes of payload (the director checks no L4 checksum).
fn frame6(src: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut f = vec![
        2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd, 0x60, 0, 0, 0,
    ];
    f.extend_from_slice(&(20u16 + 64).to_be_bytes());
    f.extend_from_slice(&[6, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&VIP6.octets());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(&[0x61; 64]);
    f
}

/// The wrapped method for IPv6 VIPs: DR and IPv6-in-IPv6 with caller MACs.
fn ipv6_rows(ifindex: u32) {
    let mut opts = DirectorOptions::new(Ipv4Addr::new(192, 0, 2, 1));
    opts.director_addr6 = Some(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    opts.max_vips = 4;
    opts.conns_per_cpu = (1 << 22) / aya::util::nr_cpus().unwrap() as u32;
    let mut bench = BenchDirector::load(opts).expect("load director");
    let reals: Vec<Ipv6Addr> = (0x20..0x2a)
        .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i))
        .collect();
    let neigh: HashMap<IpAddr, [u8; 6]> = reals
        .iter()
        .map(|r| (IpAddr::V6(*r), [2, 0xcc, 0, 0, 0, r.octets()[15]]))
        .collect();
    let svc = |port: u16, forwarding: Forwarding| {
        let mut s = service(port, forwarding, &[]);
        s.key.vip = IpAddr::V6(VIP6);
        s.real_servers = reals
            .iter()
            .map(|a| RealServer {
                address: IpAddr::V6(*a),
                port,
                weight: 1,
                source: ObjectRef::new(ObjectKind::RealServer, "bench", "rs"),
            })
            .collect();
        s
    };
    bench
        .director
        .apply(
            &[
                svc(80, Forwarding::Dr),
                svc(81, Forwarding::Tun(Tunnel::Ipip)),
            ],
            &neigh,
        )
        .expect("apply IPv6");
    let wrapped = |fd: BorrowedFd<'_>, f: &[u8], repeat: u32| -> u32 {
        (0..7)
            .map(|_| {
                let r = test_run(
                    fd,
                    &TestRun {
                        data_in: f,
                        repeat,
                        ingress_ifindex: Some(ifindex),
                        ..TestRun::default()
                    },
                )
                .unwrap();
                assert_eq!(r.retval, XDP_TX, "unexpected verdict: {r:?}");
                r.duration_ns
            })
            .min()
            .unwrap()
    };
    println!("== IPv6 VIPs, wrapped as above, ns/packet");
    let mut filled = 0u32;
    let mut new_base = 1u32 << 24;
    for target in [10_000u32, 1_000_000] {
        for i in filled..target {
            let (src, sport) = flow6(i);
            let dport = 80 + (i % 2) as u16;
            let key = Flow6Key {
                src: src.octets(),
                dst: VIP6.octets(),
                sport: sport.to_be(),
                dport: dport.to_be(),
                proto: 6,
                pad: [0; 3],
            };
            let d = &mut bench.director;
            let vip_id = d
                .vip_id(&ServiceKey {
                    vip: IpAddr::V6(VIP6),
                    port: dport,
                    protocol: Protocol::Tcp,
                })
                .unwrap();
            let real_id = d.real_id(reals[(i % 10) as usize], dport).unwrap();
            let gen = d.real_gen(real_id).unwrap();
            d.insert_connection6(
                &key,
                &Conn {
                    real_id,
                    vip_id,
                    gen,
                },
            )
            .unwrap();
        }
        filled = target;
        for (fwd, port) in [("dr6", 80u16), ("tun6", 81)] {
            let (s0, p0) = flow6(0);
            let f = frame6(s0, p0, port);
            let residue = u32::from(port - 80);
            let per_vip = target / 2;
            for (what, count, stride, base) in [
                ("est-hot", 1024, 2 * (per_vip / 1024), residue),
                ("est-all", per_vip, 2, residue),
                ("new", 1 << 30, 1, new_base),
            ] {
                bench
                    .set_flows(BenchCfg {
                        base,
                        count,
                        stride,
                        ipv6: 1,
                    })
                    .unwrap();
                let repeat = if what == "new" { 10_000 } else { 100_000 };
                let e = wrapped(bench.empty_fd(), &f, repeat);
                let m = wrapped(bench.director_fd(), &f, repeat);
                println!(
                    "{target:<10} {fwd:<8} {what:<12} {m:>10} {e:>10} {:>8}",
                    i64::from(m) - i64::from(e)
                );
            }
            new_base += 1 << 26;
        }
    }
}
