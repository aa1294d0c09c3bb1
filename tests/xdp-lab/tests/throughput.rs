//! Smoke test of the throughput harness (the benchmark itself is the
//! `xdp-throughput` binary): the generator's frames really cross the lab, through
//! both directors, with both switches.

use std::time::Duration;

use kubelvs_xdp_lab::bench::{BenchLab, Director, Switch, Throughput};

fn assert_every_real_server_got_some(what: &str, t: &Throughput) {
    eprintln!("{what}: {t:?}, {:.0} pps delivered", t.delivered_pps());
    assert!(t.sent > 0, "{what}: {t:?}");
    assert!(t.delivered() <= t.sent, "{what}: {t:?}");
    // Many flows over 3 real servers (numgen round robin, or maglev): everyone gets some.
    for (i, n) in t.per_real_server.iter().enumerate() {
        assert!(*n > 0, "{what}: rs{} got nothing: {t:?}", i + 1);
    }
}

fn smoke(switch: Switch, directors: &[Director]) {
    let bench = BenchLab::build(64, 64, switch).unwrap();
    // No load balancer: the director has no route for the VIP, nothing arrives.
    let idle = bench.measure(Duration::from_millis(200)).unwrap();
    assert!(idle.sent > 0, "{idle:?}");
    assert_eq!(idle.delivered(), 0, "{idle:?}");

    let (warmup, duration) = (Duration::from_millis(100), Duration::from_millis(250));
    for &director in directors {
        let t = bench.measure_director(director, warmup, duration).unwrap();
        assert_every_real_server_got_some(&format!("{switch:?} {}", director.name()), &t);
    }
    // The floor spreads flows by source port over the real servers too.
    let floor = bench
        .measure_director(Director::Floor, warmup, duration)
        .unwrap();
    assert_every_real_server_got_some("floor", &floor);
    // Each director was removed after its measurement.
    let idle = bench.measure(Duration::from_millis(200)).unwrap();
    assert_eq!(idle.delivered(), 0, "{idle:?}");
}

#[test]
#[ignore = "privileged: netns + XDP + BPF_PROG_RUN"]
fn generator_traffic_crosses_both_directors_over_the_kernel_bridge() {
    smoke(Switch::Bridge, &[Director::NftDnat, Director::XdpDr]);
}

#[test]
#[ignore = "privileged: netns + XDP + BPF_PROG_RUN"]
fn generator_traffic_crosses_every_director_over_the_xdp_switch() {
    smoke(
        Switch::Xdp,
        &[
            Director::NftDnat,
            Director::XdpDr,
            Director::XdpNat,
            Director::XdpTun,
        ],
    );
}
