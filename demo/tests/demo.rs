//! `scripts/demo`, `scripts/demo --cluster` and `scripts/demo --ipvs-vm`, run as a
//! person would
//! (non-interactively): what they printed says every real server answered, the spread
//! followed the weights, the stopped real server was taken out within
//! fall x interval + 1 s and came back, the weight change was applied (and, through
//! Kubernetes, `kubectl get` and `kubectl lvs` showed it); and nothing was left behind,
//! which the machine confirms.

use std::path::Path;
use std::process::{Child, Command, Stdio};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Starts `scripts/demo` with `args`, its output piped. Its pid is the demo's (the
/// script execs it).
fn spawn_demo(args: &[&str]) -> Child {
    Command::new(repo().join("scripts/demo"))
        .args(args)
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs `scripts/demo` with `args`; its stdout, and its pid.
fn run_demo(args: &[&str]) -> (String, u32) {
    let child = spawn_demo(args);
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{err}");
    (text, pid)
}

/// Nothing of run `pid` is left: namespaces, pinned maps, temporary directories,
/// processes.
fn assert_nothing_left(pid: u32) {
    let prefix = format!("klab{pid}x");
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let listing = String::from_utf8_lossy(&netns.stdout);
    assert!(!listing.contains(&prefix), "{prefix} left: {listing}");
    for (dir, start) in [
        ("/sys/fs/bpf", prefix.clone()),
        ("/tmp", format!("kubelvs-demo-{prefix}")),
        ("/tmp", format!("kubelvs-cluster-{pid}-")),
    ] {
        let left: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&start))
            .collect();
        assert!(left.is_empty(), "left in {dir}: {left:?}");
    }
    let procs = Command::new("pgrep")
        .args(["-f", &format!("kube-lvs-.*{prefix}")])
        .output()
        .unwrap();
    assert!(
        procs.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&procs.stdout)
    );
}

/// The seconds printed after `prefix` on the line containing it.
fn seconds_after(out: &str, prefix: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.contains(prefix))
        .unwrap_or_else(|| panic!("no line with {prefix:?} in\n{out}"));
    line[line.find(prefix).unwrap() + prefix.len()..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no seconds after {prefix:?}: {line}"))
}

/// `(real server, weight, answered)` of each table row, in order.
fn rows(out: &str) -> Vec<(String, u32, usize)> {
    out.lines()
        .filter(|l| l.trim_start().starts_with("rs") && (l.ends_with('✓') || l.ends_with('✗')))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].to_owned(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

/// Four tables of three rows: all up, rs2 down, rs2 back, rs3 re-weighted to 1; rs2
/// taken out within `fall x interval + 1 s` (times `slack`: 1 natively; more on an
/// emulated CPU shared with the other tests).
fn assert_tables(text: &str, slack: f64) {
    let rows = rows(text);
    assert_eq!(rows.len(), 12, "{text}");
    assert!(
        rows[..3].iter().all(|(_, _, n)| *n > 0),
        "every real server answered: {text}"
    );
    assert_eq!(
        rows[4],
        ("rs2".into(), 0, 0),
        "stopped rs2 answered nothing: {text}"
    );
    assert!(rows[7].2 > 0, "rs2 came back: {text}");
    assert_eq!(rows[11].1, 1, "rs3's new weight: {text}");
    // The demo checks each row against its weight; every row passed.
    assert!(!text.contains('✗'), "{text}");
    assert_eq!(
        text.matches("✓ no request failed; the spread follows the weights")
            .count(),
        4
    );
    let out_after = seconds_after(text, "the health check took rs2 out in ");
    assert!(
        out_after <= (2.0 * 1.0 + 1.0 + 0.5) * slack,
        "fall 2 x interval 1 s + 1 s (x {slack}): {out_after}"
    );
    assert!(
        text.contains("rs1: VIP 203.0.113.10 on lo: yes, arp_ignore=1 arp_announce=2"),
        "{text}"
    );
    assert!(text.contains("✓ nothing left behind"), "{text}");
}

#[test]
#[ignore = "privileged: network namespaces and XDP; scripts/test runs it"]
fn scripts_demo_balances_takes_out_brings_back_reweights_and_cleans_up() {
    let (text, pid) = run_demo(&["--requests", "200"]);
    assert_tables(&text, 1.0);
    assert!(seconds_after(&text, "the director's agent applied it ") < 1.0);
    assert_nothing_left(pid);
}

#[test]
#[ignore = "privileged, and needs the test control plane (Go toolchain); scripts/test runs it"]
fn scripts_demo_cluster_runs_the_lab_through_kubernetes_and_the_plugin_shows_it() {
    let (text, pid) = run_demo(&["--cluster", "--requests", "200"]);
    assert_tables(&text, 1.0);
    assert!(
        text.contains("the operator allocated 203.0.113.10 from AddressPool lab"),
        "{text}"
    );
    assert!(
        text.contains("$ helm install kube-lvs charts/kube-lvs -n kube-lvs"),
        "{text}"
    );
    // `kubectl get` followed the health: HEALTHY 3/3, then 2/3, then 3/3 again.
    let healthy: Vec<&str> = text[..text.find("[8/8]").expect("step 8 shown")]
        .lines()
        .filter(|l| l.contains(" web ") || l.contains("virtualservice.kubelvs.io/web"))
        .filter_map(|l| l.split_whitespace().find(|f| f.ends_with("/3")))
        .collect();
    assert_eq!(healthy, ["3/3", "2/3", "3/3"], "{text}");
    // The plugin showed rs2 down at the director while it was stopped, and the new weight.
    let step = |from: &str, to: &str| {
        let a = text.find(from).unwrap();
        text[a..a + text[a..].find(to).unwrap()].to_owned()
    };
    assert!(
        step("[5/8]", "[6/8]")
            .contains("-> 192.0.2.12:80                Route   2      director:down"),
        "{text}"
    );
    let last = step("[7/8]", "[8/8]");
    assert!(
        last.contains("-> 192.0.2.13:80                Route   1      director:up"),
        "{text}"
    );
    // `kubectl lvs --stats`: the director agent's /metrics, every real server
    // with connections, the virtual service with at least the last 200 requests.
    let stats = &last[last
        .find("kubectl lvs -n lab --stats")
        .expect("--stats shown")..];
    let conns = |prefix: &str| -> u64 {
        let line = stats
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} row in {stats}"));
        line.split_whitespace()
            .rev()
            .nth(2)
            .unwrap()
            .parse()
            .unwrap()
    };
    let total = conns("TCP  203.0.113.10:80");
    assert!(total >= 200, "{stats}");
    // The same count the director's /metrics printed afterwards.
    assert!(
        stats.contains(&format!(
            "kubelvs_virtual_service_connections_total{{dataplane=\"xdp\",service=\"203.0.113.10:80/TCP\"}} {total}"
        )),
        "{stats}"
    );
    for rs in ["192.0.2.11:80", "192.0.2.12:80", "192.0.2.13:80"] {
        assert!(conns(&format!("-> {rs}")) > 0, "{rs}: {stats}");
    }
    // The announcing director killed mid-traffic: the other announced the VIP, and
    // not one request failed.
    let failover = step("[8/8]", "cleaning up");
    assert!(
        failover.contains("✓ no request failed while the announcing director died"),
        "{text}"
    );
    assert!(failover.contains(" 0 failed;"), "{text}");
    // `kubectl get lvs -o wide` named the owner, then the new one.
    let announced: Vec<&str> = failover
        .lines()
        .filter(|l| l.trim_start().starts_with("web "))
        .filter_map(|l| l.split_whitespace().nth(7))
        .collect();
    assert_eq!(announced.len(), 2, "{failover}");
    assert_ne!(announced[0], announced[1], "{failover}");
    assert!(
        failover.contains(&format!("{} announced 203.0.113.10", announced[1])),
        "{failover}"
    );
    assert_nothing_left(pid);
}

#[test]
#[ignore = "boots a microVM (qemu); scripts/test runs it"]
fn scripts_demo_ipvs_vm_runs_the_same_demo_on_kernel_ipvs_in_the_microvm() {
    let (text, _) = run_demo(&["--ipvs-vm", "--requests", "100"]);
    // The guest's console ends lines with \r\n.
    let text = text.replace('\r', "");
    // TCG: the guest's timers and agent run on an emulated CPU.
    assert_tables(&text, 2.0);
    assert!(
        text.contains("(kernel IPVS, wrr, direct routing)"),
        "{text}"
    );
    assert!(text.contains("director: VIP programmed in IPVS"), "{text}");
    assert!(
        text.contains("kubelvs_virtual_service_connections_total{dataplane=\"ipvs\""),
        "{text}"
    );
    assert!(text.contains("✓ nothing left behind"), "{text}");
    assert!(text.contains("KUBELVS PASS demo"), "{text}");
}

#[test]
#[ignore = "privileged: network namespaces and XDP; scripts/test runs it"]
fn ctrl_c_in_the_middle_cleans_everything_up() {
    use std::io::{BufRead, BufReader};
    let mut child = spawn_demo(&["--requests", "100000"]);
    let pid = child.id();
    // Wait until requests are flowing through the lab, then Ctrl-C.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen += &line;
        seen.push('\n');
        if line.starts_with("[3/6]") {
            break;
        }
    }
    assert!(seen.contains("[3/6]"), "{seen}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    #[allow(unsafe_code)]
    // SAFETY: kill(2) of our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGINT);
    }
    let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen}{}", rest.join("\n"));
    assert!(
        rest.iter().any(|l| l.contains("✓ nothing left behind")),
        "{}",
        rest.join("\n")
    );
    assert_nothing_left(pid);
}
