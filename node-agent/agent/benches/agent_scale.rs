//! `kube-lvs-agent` at scale, standalone with the XDP dataplane on this kernel:
//! N VirtualServices x M real servers (NAT) in one file, the agent in a network
//! namespace of its own attached to a veth. Reports the time to the first complete
//! apply, resident memory, CPU while idle (periodic full re-applies included), the
//! duration of a full apply, and the time from a one-line file change to the maps:
//! `EDITS` edits, each a weight changed and the file renamed into place, timed from the
//! rename to the agent's log line saying the apply that wrote it is done.
//!
//! Needs root. `cargo bench -p kubelvs-agent --bench agent_scale` (options: N M).
//! `KUBELVS_AGENT_WRAPPER="heaptrack -o /tmp/agent"` runs the agent under a profiler.

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kubelvs_xdp_lab::netns::Netns;

const AGENT: &str = env!("CARGO_BIN_EXE_kube-lvs-agent");
const PORTS_PER_VIP: usize = 50;
const EDITS: usize = 20;

fn yaml(n: usize, m: usize, weight_of_first: u32) -> String {
    let mut y = String::with_capacity(n * 700 + m * 250);
    for i in 0..n {
        let vip = format!("203.0.113.{}", 1 + i / PORTS_PER_VIP);
        let port = 1000 + i % PORTS_PER_VIP;
        y += &format!(
            "---\napiVersion: kubelvs.io/v1alpha1\nkind: VirtualService\nmetadata: {{name: vs{i}, namespace: scale}}\nspec:\n  vip: {vip}\n  ports: [{{port: {port}, targetPort: 8080}}]\n  scheduler: maglev\n  forwarding: nat\n  dataplane: xdp\n  realServerSelector: {{matchLabels: {{vs: vs{i}}}}}\n"
        );
        for j in 0..m {
            let w = if i == 0 && j == 0 { weight_of_first } else { 1 };
            y += &format!(
                "---\napiVersion: kubelvs.io/v1alpha1\nkind: RealServer\nmetadata: {{name: rs{i}-{j}, namespace: scale, labels: {{vs: vs{i}}}}}\nspec: {{address: 198.51.100.{}, weight: {w}}}\n",
                1 + (i * m + j) % 250
            );
        }
    }
    y
}

fn metrics(ns: &Netns) -> String {
    ns.run(|| {
        let mut s = TcpStream::connect("127.0.0.1:9641").ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut t = String::new();
        s.read_to_string(&mut t).ok()?;
        Some(t)
    })
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// The agent process, stopped even when the bench panics (its namespace goes first,
/// and a process left in a deleted namespace would run on unnoticed).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn main() {
    let (n, m) = kubelvs_measure::bench_size((10_000, 10));
    let ns = Netns::create(&format!("klscale{}", std::process::id())).unwrap();
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ])
    .unwrap();
    ns.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"])
        .unwrap();
    for l in ["eth0", "peer0"] {
        ns.ip(&["link", "set", l, "up"]).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("kubelvs-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("scale.yaml");
    let text = yaml(n, m, 1);
    std::fs::write(&file, &text).unwrap();
    let pin = format!("/sys/fs/bpf/klscale{}", std::process::id());
    let started = Instant::now();
    let wrapper = std::env::var("KUBELVS_AGENT_WRAPPER").unwrap_or_default();
    let mut agent = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .args(wrapper.split_whitespace())
        .arg(AGENT)
        .args([
            "--config",
            &file.display().to_string(),
            "--node",
            "director",
        ])
        .args([
            "--interface",
            "eth0",
            "--dataplane",
            "xdp",
            "--xdp-pin-dir",
            &pin,
        ])
        .args([
            "--xdp-max-vips",
            &(n + 16).to_string(),
            "--xdp-max-real-servers",
            "1024",
        ])
        .args([
            "--xdp-ring-size",
            "251",
            "--state-dir",
            &dir.join("state").display().to_string(),
        ])
        .args([
            "--metrics-address",
            "127.0.0.1:9641",
            "--node-address",
            "192.0.2.2",
        ])
        // The apply's own line ("applied writes=N"), not every service's.
        .env(
            "RUST_LOG",
            "warn,kubelvs_agent=info,kubelvs_agent::node=warn,kubelvs_agent::health=warn",
        )
        // Plain log lines (tracing-subscriber honours NO_COLOR).
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = agent.id();
    // Each apply that wrote something: when its log line (on stdout) arrived, and the
    // milliseconds it says the read, the plan and the apply took.
    let (applied_tx, applied) = mpsc::channel::<(Instant, [u64; 3])>();
    let log = agent.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(log).lines() {
            let Ok(line) = line else { return };
            let field = |name: &str| {
                line.split(&format!(" {name}="))
                    .nth(1)
                    .and_then(|w| w.split_whitespace().next())
                    .and_then(|w| w.parse::<u64>().ok())
            };
            if line.contains("applied") && field("writes").is_some_and(|w| w > 0) {
                let stages = ["read_ms", "plan_ms", "took_ms"].map(|f| field(f).unwrap_or(0));
                let _ = applied_tx.send((Instant::now(), stages));
            }
        }
    });
    let agent = Running(agent);
    let programmed = format!("kubelvs_services{{dataplane=\"xdp\",outcome=\"Programmed\"}} {n}");
    while !metrics(&ns).contains(&programmed) {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "no full apply within 600 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let first = started.elapsed();
    println!("first complete apply after {:.1} s", first.as_secs_f64());
    let cpu0 = kubelvs_measure::cpu_seconds(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(65));
    let cpu1 = kubelvs_measure::cpu_seconds(pid);
    let rss = kubelvs_measure::rss_kib(pid);
    let idle = (cpu1 - cpu0) / t0.elapsed().as_secs_f64();
    let m0 = metrics(&ns);
    let count =
        kubelvs_measure::sample(&m0, "kubelvs_apply_duration_seconds_count", "").unwrap_or(0.0);
    let sum = kubelvs_measure::sample(&m0, "kubelvs_apply_duration_seconds_sum", "").unwrap_or(0.0);
    // Weights changed in the file: time from the rename to the apply that wrote them.
    // The texts are made before the clock starts; each edit waits for quiet first.
    // Two texts, alternated: the first real server's weight 2, then 3.
    let texts = [yaml(n, m, 2), yaml(n, m, 3)];
    let mut edits: Vec<Duration> = Vec::new();
    let mut stages: [Vec<u64>; 3] = Default::default();
    for k in 0..EDITS {
        std::fs::write(dir.join("scale.tmp"), &texts[k % 2]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        while applied.try_recv().is_ok() {}
        let edited = Instant::now();
        std::fs::rename(dir.join("scale.tmp"), &file).unwrap();
        let (done, took) = applied
            .recv_timeout(Duration::from_secs(600))
            .expect("no apply 600 s after the edit");
        edits.push(done.saturating_duration_since(edited));
        for (all, ms) in stages.iter_mut().zip(took) {
            all.push(ms);
        }
    }
    edits.sort();
    let [read, plan, apply] = stages.map(|mut all| {
        all.sort();
        all[all.len() / 2]
    });
    let pct = |p: f64| edits[((edits.len() as f64 * p).ceil() as usize).clamp(1, edits.len()) - 1];
    println!(
        "agent scale: {n} VirtualServices x {m} real servers ({} KiB of YAML), XDP NAT, ring 251:\n  first complete apply {:.1} s after start\n  resident memory {} MiB\n  idle CPU {:.1}% of one CPU (full re-apply every 30 s)\n  mean apply (plan + maps) {:.0} ms over {count} applies\n  one weight changed in the file -> maps written, {EDITS} edits: median {:.0} ms, p99 {:.0} ms, max {:.0} ms\n  of which (medians, from the agent's log) reading the file {read} ms, planning {plan} ms, applying {apply} ms",
        text.len() / 1024,
        first.as_secs_f64(),
        rss / 1024,
        idle * 100.0,
        1000.0 * sum / count.max(1.0),
        pct(0.5).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
        edits.last().unwrap().as_secs_f64() * 1000.0,
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&pin);
    let _ = std::fs::remove_dir_all(&dir);
}
