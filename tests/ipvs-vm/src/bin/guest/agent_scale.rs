//! `kube-lvs-agent` at scale on kernel IPVS: N VirtualServices x M real servers (NAT,
//! wrr) in one standalone file. Measures the time from start to the first complete
//! apply, resident memory, CPU while idle (a full re-apply every 30 s included), the
//! mean apply, and the time from a one-line file change to the kernel. Mode
//! `agent-scale-NxM`; the bench `agent_scale` of this crate boots it.

use std::time::{Duration, Instant};

use crate::agent::{metrics, poll, write_config};
use crate::lab::cmd;
use crate::Reporter;

const PORTS_PER_VIP: usize = 50;

fn yaml(n: usize, m: usize, weight_of_first: u32) -> String {
    let mut y = String::with_capacity(n * 500 + n * m * 230);
    for i in 0..n {
        let vip = format!(
            "203.0.{}.{}",
            113 + i / PORTS_PER_VIP / 250,
            1 + (i / PORTS_PER_VIP) % 250
        );
        let port = 1000 + i % PORTS_PER_VIP;
        y += &format!(
            "---\napiVersion: kubelvs.io/v1alpha1\nkind: VirtualService\nmetadata: {{name: vs{i}, namespace: scale}}\nspec:\n  vip: {vip}\n  ports: [{{port: {port}, targetPort: 8080}}]\n  scheduler: wrr\n  forwarding: nat\n  realServerSelector: {{matchLabels: {{vs: vs{i}}}}}\n"
        );
        for j in 0..m {
            let w = if i == 0 && j == 0 { weight_of_first } else { 1 };
            y += &format!(
                "---\napiVersion: kubelvs.io/v1alpha1\nkind: RealServer\nmetadata: {{name: rs{i}-{j}, namespace: scale, labels: {{vs: vs{i}}}}}\nspec: {{address: 192.0.2.{}, weight: {w}}}\n",
                10 + (i * m + j) % 240
            );
        }
    }
    y
}

/// `mode` is `agent-scale-NxM`.
pub fn run(r: &mut Reporter, mode: &str) {
    let size = mode
        .strip_prefix("agent-scale-")
        .and_then(|s| s.split_once('x'))
        .and_then(|(n, m)| Some((n.parse::<usize>().ok()?, m.parse::<usize>().ok()?)));
    let Some((n, m)) = size else {
        r.case(
            "agent_scale",
            Err(format!("mode {mode:?}: expected agent-scale-NxM")),
        );
        return;
    };
    let _ = std::fs::create_dir_all("/run/agent/state");
    let setup = cmd("ip", &["link", "add", "lvs0", "type", "dummy"])
        .and_then(|_| cmd("ip", &["link", "set", "lvs0", "up"]))
        .and_then(|_| cmd("ip", &["link", "set", "lo", "up"]))
        .and_then(|_| write_config(&yaml(n, m, 1)));
    if !r.case(
        "agent_scale_setup",
        setup.map(|()| format!("{n} x {m} written")),
    ) {
        return;
    }
    let agent = match crate::agent::start_agent_with("warn", &[]) {
        Ok(a) => a,
        Err(e) => {
            r.case("agent_scale_started", Err(e));
            return;
        }
    };
    let pid = agent.id();
    let programmed = format!("kubelvs_services{{dataplane=\"ipvs\",outcome=\"Programmed\"}} {n}");
    let first = poll(Duration::from_secs(1800), || {
        std::thread::sleep(Duration::from_millis(200));
        metrics()
            .ok()
            .filter(|t| t.contains(&programmed))
            .map(|_| ())
    });
    let Ok((_, first)) = first else {
        r.case("agent_scale_first_apply", first.map(|_| String::new()));
        crate::agent::stop_agent(agent);
        return;
    };
    let listed = cmd("ipvsadm", &["-Ln"]).unwrap_or_default();
    let dests = listed
        .lines()
        .filter(|l| l.trim_start().starts_with("->") && !l.contains("RemoteAddress"))
        .count();
    r.measure("agent_scale_first_apply", first.as_secs_f64(), "s");
    let ok = dests == n * m;
    r.case(
        "agent_scale_first_apply",
        if ok {
            Ok(format!(
                "{n} services, {dests} real servers in ipvsadm -Ln after {first:?}"
            ))
        } else {
            Err(format!(
                "ipvsadm -Ln lists {dests} real servers, want {}",
                n * m
            ))
        },
    );
    let cpu0 = kubelvs_measure::cpu_seconds(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(65));
    let cpu1 = kubelvs_measure::cpu_seconds(pid);
    let rss = kubelvs_measure::rss_kib(pid);
    r.measure(
        "agent_scale_idle_cpu",
        100.0 * (cpu1 - cpu0) / t0.elapsed().as_secs_f64(),
        "%",
    );
    r.measure("agent_scale_rss", rss as f64 / 1024.0, "MiB");
    let m0 = metrics().unwrap_or_default();
    let count =
        kubelvs_measure::sample(&m0, "kubelvs_apply_duration_seconds_count", "").unwrap_or(0.0);
    let sum = kubelvs_measure::sample(&m0, "kubelvs_apply_duration_seconds_sum", "").unwrap_or(0.0);
    r.measure(
        "agent_scale_mean_apply",
        1000.0 * sum / count.max(1.0),
        "ms",
    );
    // Of which reading the kernel's table (the services dump and the destination
    // dumps of a slice), over the same applies: a resync with nothing to change.
    let series = "kubelvs_kernel_read_duration_seconds";
    let reads = kubelvs_measure::sample(&m0, &format!("{series}_count"), "").unwrap_or(0.0);
    let read = kubelvs_measure::sample(&m0, &format!("{series}_sum"), "").unwrap_or(0.0);
    r.measure(
        "agent_scale_mean_kernel_read",
        1000.0 * read / reads.max(1.0),
        "ms",
    );
    // One weight changes in the file: time until the kernel has it.
    let edited = Instant::now();
    let edit = write_config(&yaml(n, m, 3)).and_then(|()| {
        poll(Duration::from_secs(600), || {
            let out = cmd("ipvsadm", &["-Ln", "-t", "203.0.113.1:1000"]).ok()?;
            out.lines()
                .find(|l| l.contains("192.0.2.10:8080"))
                .filter(|l| l.split_whitespace().nth(3) == Some("3"))
                .map(|_| ())
        })
    });
    let took = edited.elapsed();
    if edit.is_ok() {
        r.measure("agent_scale_edit_to_kernel", took.as_secs_f64(), "s");
    }
    r.case(
        "agent_scale_edit",
        edit.map(|_| format!("weight 3 in the kernel {took:?} after the edit")),
    );
    crate::agent::stop_agent(agent);
}
