//! `scripts/demo`, run as a person would (non-interactively): what it printed says every
//! real server answered, the spread followed the weights, the stopped real server was
//! taken out within fall x interval + 1 s and came back, the weight change was applied,
//! and nothing was left behind; and the machine agrees.

use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
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

#[test]
#[ignore = "privileged: network namespaces and XDP; scripts/test runs it"]
fn scripts_demo_balances_takes_out_brings_back_reweights_and_cleans_up() {
    let out = Command::new(repo().join("scripts/demo"))
        .args(["--requests", "200"])
        .current_dir(repo())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{err}");

    // Four tables of three rows: all up, rs2 down, rs2 back, rs3 re-weighted.
    let rows = rows(&text);
    assert_eq!(rows.len(), 12, "{text}");
    let table = |i: usize| &rows[i * 3..i * 3 + 3];
    assert!(
        table(0).iter().all(|(_, _, n)| *n > 0),
        "every real server answered: {text}"
    );
    assert_eq!(
        table(1)[1],
        ("rs2".into(), 0, 0),
        "stopped rs2 answered nothing: {text}"
    );
    assert!(table(2)[1].2 > 0, "rs2 came back: {text}");
    assert_eq!(table(3)[2].1, 1, "rs3's new weight: {text}");
    // The demo checks each row against its weight; every row passed.
    assert!(!text.contains('✗'), "{text}");
    assert_eq!(
        text.matches("✓ no request failed; the spread follows the weights")
            .count(),
        4
    );

    let out_after = seconds_after(&text, "the health check took rs2 out in ");
    assert!(
        out_after <= 2.0 * 1.0 + 1.0 + 0.5,
        "fall 2 x interval 1 s + 1 s: {out_after}"
    );
    assert!(seconds_after(&text, "the director's agent applied it ") < 1.0);
    assert!(
        text.contains("rs1: VIP 203.0.113.10 on lo: yes, arp_ignore=1 arp_announce=2"),
        "{text}"
    );
    assert!(text.contains("✓ nothing left behind"), "{text}");

    // And the machine agrees: no lab namespace, pinned map or agent is left.
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let pid_prefix = "kubelvs-demo-";
    let listing = String::from_utf8_lossy(&netns.stdout);
    let demo_line = text
        .lines()
        .find(|l| l.contains("namespaces klab"))
        .unwrap_or_else(|| panic!("{text}"));
    let prefix = demo_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches("-*,");
    assert!(!listing.contains(prefix), "{prefix} left: {listing}");
    assert!(!Path::new("/sys/fs/bpf")
        .join(format!("{prefix}-br"))
        .exists());
    assert!(!std::env::temp_dir()
        .join(format!("{pid_prefix}{prefix}-br"))
        .exists());
    let agents = Command::new("pgrep")
        .args(["-f", &format!("kube-lvs-agent.*{prefix}")])
        .output()
        .unwrap();
    assert!(
        agents.stdout.is_empty(),
        "agents left: {}",
        String::from_utf8_lossy(&agents.stdout)
    );
}
