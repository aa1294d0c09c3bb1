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

mod scale;

use std::time::{Duration, Instant};

use scale::{agent, director_netns, metrics, wait_programmed, xdp_args, Edits, EDITS};

const PORTS_PER_VIP: usize = 50;

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

fn main() {
    let (n, m) = kubelvs_measure::bench_size((10_000, 10));
    let ns = director_netns("klscale");
    let dir = std::env::temp_dir().join(format!("kubelvs-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("scale.yaml");
    let text = yaml(n, m, 1);
    std::fs::write(&file, &text).unwrap();
    let pin = format!("/sys/fs/bpf/klscale{}", std::process::id());
    let started = Instant::now();
    let mut args = xdp_args(n, &dir, &pin);
    args.extend(
        [
            "--config",
            &file.display().to_string(),
            "--node-address",
            scale::DIRECTOR_ADDR,
        ]
        .map(String::from),
    );
    let (agent, applies) = agent(&ns, &args, &[]);
    let pid = agent.pid();
    let first = wait_programmed(&ns, n, started);
    println!("first complete apply after {:.1} s", first.as_secs_f64());
    let cpu0 = kubelvs_measure::cpu_seconds(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(65));
    let cpu1 = kubelvs_measure::cpu_seconds(pid);
    let rss = kubelvs_measure::rss_kib(pid);
    let [anon, mapped] = ["RssAnon", "RssFile"].map(|f| kubelvs_measure::status_kib(pid, f) / 1024);
    let idle = (cpu1 - cpu0) / t0.elapsed().as_secs_f64();
    let m0 = metrics(&ns);
    let count =
        kubelvs_measure::sample(&m0, "kubelvs_apply_duration_seconds_count", "").unwrap_or(0.0);
    let sum = kubelvs_measure::sample(&m0, "kubelvs_apply_duration_seconds_sum", "").unwrap_or(0.0);
    // Weights changed in the file: time from the rename to the apply that wrote them.
    // The texts are made before the clock starts; each edit waits for quiet first.
    // Two texts, alternated: the first real server's weight 2, then 3.
    let texts = [yaml(n, m, 2), yaml(n, m, 3)];
    let mut edits = Edits::default();
    for k in 0..EDITS {
        std::fs::write(dir.join("scale.tmp"), &texts[k % 2]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        applies.drain();
        let edited = Instant::now();
        std::fs::rename(dir.join("scale.tmp"), &file).unwrap();
        edits.push(edited, applies.next());
    }
    println!(
        "agent scale: {n} VirtualServices x {m} real servers ({} KiB of YAML), XDP NAT, ring 251:\n  first complete apply {:.1} s after start\n  resident memory {} MiB ({anon} MiB anonymous, {mapped} MiB of files)\n  idle CPU {:.1}% of one CPU (full re-apply every 30 s)\n  mean apply (plan + maps) {:.0} ms over {count} applies\n  one weight changed in the file -> maps written, {}",
        text.len() / 1024,
        first.as_secs_f64(),
        rss / 1024,
        idle * 100.0,
        1000.0 * sum / count.max(1.0),
        edits.report(),
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&pin);
    let _ = std::fs::remove_dir_all(&dir);
}
