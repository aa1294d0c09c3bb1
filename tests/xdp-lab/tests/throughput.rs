//! Smoke test of the throughput harness (the benchmark itself is the
//! `xdp-throughput` binary): the generator's frames really cross the lab.

use std::time::Duration;

use kubelvs_xdp_lab::bench::BenchLab;
use kubelvs_xdp_lab::bpf::BENCH_PORT;
use kubelvs_xdp_lab::nft::{self, L4};

#[test]
#[ignore = "privileged: netns + XDP + BPF_PROG_RUN"]
fn generator_traffic_reaches_every_real_server_through_nftables_dnat() {
    let bench = BenchLab::build(64, 64).unwrap();
    let lab = &bench.lab;
    let rs: Vec<_> = lab.real_servers.iter().map(|r| r.addr).collect();

    // No load balancer yet: the director drops the VIP's traffic (no route).
    let idle = bench.measure(Duration::from_millis(200)).unwrap();
    assert!(idle.sent > 0, "{idle:?}");
    assert_eq!(idle.delivered(), 0, "{idle:?}");

    nft::install_dnat(&lab.director.netns, lab.vip, BENCH_PORT, L4::Udp, &rs).unwrap();
    // The first frames of each flow wait for the director's ARP; measure after.
    bench.measure(Duration::from_millis(200)).unwrap();
    let t = bench.measure(Duration::from_millis(500)).unwrap();
    eprintln!(
        "nftables DNAT: {t:?}, {:.0} pps delivered",
        t.delivered_pps()
    );
    assert!(t.sent > 0 && t.delivered() > 0, "{t:?}");
    assert!(t.delivered() <= t.sent, "{t:?}");
    // 64 flows round-robined by numgen over 3 real servers: everyone gets some.
    for (i, n) in t.per_real_server.iter().enumerate() {
        assert!(*n > 0, "rs{} got nothing: {t:?}", i + 1);
    }
}
