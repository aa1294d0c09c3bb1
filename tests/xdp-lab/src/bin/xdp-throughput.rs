//! Datapath throughput through the namespace lab: the XDP director (DR) against the
//! nftables DNAT load balancer, same topology, same generator, one run.
//!
//! ```text
//! cargo run --release -p kubelvs-xdp-lab --bin xdp-throughput -- [--seconds S] [--rounds R] [--flows F] [--frame-len B] [--switch xdp|bridge] [--generator auto|live-frames|packet-socket]
//! ```
//! Needs root (network namespaces, XDP, BPF_PROG_RUN). The generator is live frames
//! where the kernel runs them, else an AF_PACKET socket; the first line says which. Rounds alternate the two
//! directors, one short measurement each, so that load from elsewhere on the machine
//! hits both alike; the headline ratio is the median of the per-round ratios.

use std::process::ExitCode;
use std::time::Duration;

use kubelvs_xdp_lab::bench::{BenchLab, Director, Switch, Throughput};
use kubelvs_xdp_lab::generator::GeneratorChoice;

struct Args {
    seconds: f64,
    rounds: usize,
    flows: u16,
    frame_len: usize,
    switch: Switch,
    generator: GeneratorChoice,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        seconds: 1.0,
        rounds: 10,
        flows: 256,
        frame_len: 64,
        switch: Switch::Xdp,
        generator: GeneratorChoice::Auto,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--seconds" => a.seconds = value.parse().map_err(|e| bad(&e))?,
            "--rounds" => a.rounds = value.parse().map_err(|e| bad(&e))?,
            "--flows" => a.flows = value.parse().map_err(|e| bad(&e))?,
            "--frame-len" => a.frame_len = value.parse().map_err(|e| bad(&e))?,
            "--switch" => {
                a.switch = match value.as_str() {
                    "xdp" => Switch::Xdp,
                    "bridge" => Switch::Bridge,
                    _ => return Err(format!("--switch {value}: xdp or bridge")),
                }
            }
            "--generator" => {
                a.generator = GeneratorChoice::parse(&value).ok_or_else(|| {
                    format!("--generator {value}: auto, live-frames or packet-socket")
                })?
            }
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    if a.rounds == 0 || a.seconds <= 0.0 || a.flows == 0 {
        return Err("--rounds, --seconds and --flows must be positive".into());
    }
    Ok(a)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn report(d: Director, round: usize, t: &Throughput) {
    println!(
        "round {round} {:<24} sent {:>9.0} pps  delivered {:>9.0} pps  ({:.1}%)  per real server {:?}",
        d.name(),
        t.sent_pps(),
        t.delivered_pps(),
        100.0 * t.delivered() as f64 / t.sent.max(1) as f64,
        t.per_real_server,
    );
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("xdp-throughput: {e}");
            return ExitCode::from(2);
        }
    };
    let bench = match BenchLab::build(args.flows, args.frame_len, args.switch, args.generator) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("xdp-throughput: building the lab: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "generator: {}{}",
        bench.generator.kind(),
        bench
            .generator
            .fallback_reason
            .as_ref()
            .map_or(String::new(), |r| format!(" (live frames refused: {r})"))
    );
    let warmup = Duration::from_millis(300);
    let duration = Duration::from_secs_f64(args.seconds);
    println!(
        "switch {:?}: {} flows of {}-byte UDP frames, {} s per measurement, {} rounds, {} CPUs",
        args.switch,
        args.flows,
        args.frame_len,
        args.seconds,
        args.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let directors = [
        Director::NftDnat,
        Director::XdpDr,
        Director::Floor,
        Director::XdpNat,
        Director::XdpTun,
    ];
    // pps[d][round]
    let mut pps: Vec<Vec<f64>> = vec![Vec::new(); directors.len()];
    for round in 1..=args.rounds {
        for (i, d) in directors.into_iter().enumerate() {
            match bench.measure_director(d, warmup, duration) {
                Ok(t) => {
                    report(d, round, &t);
                    pps[i].push(t.delivered_pps());
                }
                Err(e) => {
                    eprintln!("xdp-throughput: {}: {e}", d.name());
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let (nft, xdp, floor, nat, tun) = (&pps[0], &pps[1], &pps[2], &pps[3], &pps[4]);
    let ratios: Vec<f64> = xdp.iter().zip(nft).map(|(x, n)| x / n.max(1.0)).collect();
    // Per-packet cost above the floor, in ns: 1/pps(director) - 1/pps(floor).
    let above = |d: &[f64]| -> Vec<f64> {
        d.iter()
            .zip(floor)
            .map(|(p, f)| 1e9 / p.max(1.0) - 1e9 / f.max(1.0))
            .collect()
    };
    let (nft_ns, xdp_ns, nat_ns, tun_ns) = (above(nft), above(xdp), above(nat), above(tun));
    println!(
        "median delivered: nftables DNAT {:.3} Mpps, XDP DR {:.3} Mpps, floor {:.3} Mpps, XDP NAT {:.3} Mpps, XDP TUN {:.3} Mpps",
        median(nft.clone()) / 1e6,
        median(xdp.clone()) / 1e6,
        median(floor.clone()) / 1e6,
        median(nat.clone()) / 1e6,
        median(tun.clone()) / 1e6,
    );
    println!(
        "XDP/nftables, median of rounds: {:.2}x (per round: {})",
        median(ratios.clone()),
        ratios
            .iter()
            .map(|r| format!("{r:.2}x"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "per-packet cost above the floor, median of rounds: nftables DNAT {:.0} ns, XDP DR {:.0} ns, XDP NAT {:.0} ns, XDP TUN {:.0} ns",
        median(nft_ns),
        median(xdp_ns),
        median(nat_ns),
        median(tun_ns),
    );
    ExitCode::SUCCESS
}
