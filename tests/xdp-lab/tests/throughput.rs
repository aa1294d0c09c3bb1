//! Smoke test of the throughput harness (the benchmark itself is the
//! `xdp-throughput` binary): the generator's frames really cross the lab, through
//! every director, with both switches and both generators.

use std::time::Duration;

use kubelvs_xdp_lab::bench::{BenchLab, Director, Switch, Throughput};
use kubelvs_xdp_lab::generator::{GeneratorChoice, GeneratorKind};

fn assert_every_real_server_got_some(what: &str, t: &Throughput) {
    eprintln!("{what}: {t:?}, {:.0} pps delivered", t.delivered_pps());
    assert!(t.sent > 0, "{what}: {t:?}");
    assert!(t.delivered() <= t.sent, "{what}: {t:?}");
    // Many flows over 3 real servers (numgen round robin, or maglev): everyone gets some.
    for (i, n) in t.per_real_server.iter().enumerate() {
        assert!(*n > 0, "{what}: rs{} got nothing: {t:?}", i + 1);
    }
}

fn smoke(switch: Switch, generator: GeneratorChoice, directors: &[Director]) -> BenchLab {
    let bench = BenchLab::build(64, 64, switch, generator).unwrap();
    let kind = bench.generator.kind();
    eprintln!(
        "{switch:?}: generator {kind} (fallback: {:?})",
        bench.generator.fallback_reason
    );
    // No load balancer: the director has no route for the VIP, nothing arrives.
    let idle = bench.measure(Duration::from_millis(200)).unwrap();
    assert!(idle.sent > 0, "{idle:?}");
    assert_eq!(idle.delivered(), 0, "{idle:?}");

    let (warmup, duration) = (Duration::from_millis(100), Duration::from_millis(250));
    for &director in directors {
        let t = bench.measure_director(director, warmup, duration).unwrap();
        assert_every_real_server_got_some(&format!("{switch:?} {kind} {}", director.name()), &t);
    }
    // The floor spreads flows by source port over the real servers too.
    let floor = bench
        .measure_director(Director::Floor, warmup, duration)
        .unwrap();
    assert_every_real_server_got_some("floor", &floor);
    // Each director was removed after its measurement.
    let idle = bench.measure(Duration::from_millis(200)).unwrap();
    assert_eq!(idle.delivered(), 0, "{idle:?}");
    bench
}

#[test]
#[ignore = "privileged: netns + XDP + BPF_PROG_RUN"]
fn generator_traffic_crosses_both_directors_over_the_kernel_bridge() {
    smoke(
        Switch::Bridge,
        GeneratorChoice::Auto,
        &[Director::NftDnat, Director::XdpDr],
    );
}

#[test]
#[ignore = "privileged: netns + XDP + BPF_PROG_RUN"]
fn generator_traffic_crosses_every_director_over_the_xdp_switch() {
    smoke(
        Switch::Xdp,
        GeneratorChoice::Auto,
        &[
            Director::NftDnat,
            Director::XdpDr,
            Director::XdpNat,
            Director::XdpTun,
        ],
    );
}

/// The fallback generator works on every kernel, also where live frames run.
#[test]
#[ignore = "privileged: netns + XDP + AF_PACKET"]
fn packet_socket_traffic_crosses_every_director_over_the_xdp_switch() {
    let bench = smoke(
        Switch::Xdp,
        GeneratorChoice::PacketSocket,
        &[
            Director::NftDnat,
            Director::XdpDr,
            Director::XdpNat,
            Director::XdpTun,
        ],
    );
    assert_eq!(bench.generator.kind(), GeneratorKind::PacketSocket);
    assert_eq!(bench.generator.fallback_reason, None);
}

/// `auto` picks live frames exactly where the kernel runs them: asked for live frames
/// explicitly, the same kernel either sends (auto chose them) or refuses with the
/// error auto gave as its reason.
#[test]
#[ignore = "privileged: netns + XDP + BPF_PROG_RUN"]
fn auto_falls_back_only_where_the_kernel_refuses_live_frames() {
    let auto = BenchLab::build(8, 64, Switch::Bridge, GeneratorChoice::Auto).unwrap();
    let live = BenchLab::build(8, 64, Switch::Bridge, GeneratorChoice::LiveFrames).unwrap();
    let sent = live.measure(Duration::from_millis(50));
    match auto.generator.kind() {
        GeneratorKind::LiveFrames => {
            assert_eq!(auto.generator.fallback_reason, None);
            assert!(sent.unwrap().sent > 0);
        }
        GeneratorKind::PacketSocket => {
            let reason = auto.generator.fallback_reason.clone().unwrap();
            let err = sent.unwrap_err().to_string();
            eprintln!("live frames refused: {err}; auto's reason: {reason}");
            let errno = |s: &str| s.rsplit("(os error").next().map(str::to_owned);
            assert!(reason.contains("os error"), "{reason}");
            assert_eq!(errno(&err), errno(&reason), "{err} vs {reason}");
        }
    }
}
