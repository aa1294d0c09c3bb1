//! CPU of health-checking 10,000 real servers every 2 s (TCP connect), as the agent
//! does it: one tokio task per probe on a one-worker runtime. The real servers are
//! 10,000 loopback addresses (127.0.0.0/8) in front of one listener, run by a child
//! process so that only the checker's CPU is counted here.
//!
//! `cargo bench -p kubelvs-agent --bench health_checks` (options: TARGETS SECONDS).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kubelvs_agent::checker::Checker;
use kubelvs_agent::health::target_of;
use kubelvs_agent::metrics::Metrics;
use kubelvs_model::{HealthCheck, Probe};

const PORT: u16 = 9000;

fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc/self/stat (clock ticks).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.first().map(String::as_str) == Some("listen") {
        let l = TcpListener::bind(("0.0.0.0", PORT)).unwrap();
        println!("READY");
        for c in l.incoming() {
            drop(c);
        }
        return;
    }
    let targets: u32 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(30);
    let mut listener = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("listen")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(listener.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "READY");
    }
    let check = HealthCheck {
        probe: Probe::Tcp { port: None },
        interval_ms: 2000,
        timeout_ms: 1000,
        rise: 1,
        fall: 2,
    };
    let map: BTreeMap<_, _> = (0..targets)
        .map(|i| {
            let addr = IpAddr::V4(Ipv4Addr::new(
                127,
                1 + (i >> 16) as u8,
                (i >> 8) as u8,
                i as u8,
            ));
            (target_of(&check, addr, PORT), check.clone())
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (wake, events) = mpsc::channel();
    let mut checker = Checker::new(rt.handle().clone(), wake, Metrics::new(), 256);
    // Settle one interval (the first probes spread over it), then measure.
    checker.set_targets(&map);
    std::thread::sleep(Duration::from_secs(3));
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    let states = checker.states();
    let probed = states.values().filter(|s| s.last_probe.is_some()).count();
    let healthy = states.values().filter(|s| s.healthy).count();
    let transitions = events.try_iter().count();
    println!(
        "health checks: {targets} real servers, TCP every 2 s: {:.1}% of one CPU ({:.3} CPU-s over {wall:.0} s), {:.0} probes/s; {probed} probed, {healthy} healthy, {transitions} wake-ups of the agent loop (first results)",
        100.0 * cpu / wall,
        cpu,
        f64::from(targets) / 2.0
    );
    let _ = listener.kill();
    let _ = listener.wait();
}
