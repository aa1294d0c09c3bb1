//! The test driver that runs inside the microVM (started by the initramfs `init`).
//! It prints results in the line protocol of `kubelvs_ipvs_vm::protocol`.

#![forbid(unsafe_code)]

use std::process::Command;

use kubelvs_ipvs_vm::protocol::Event;

fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let up: f64 = uptime
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    println!(
        "{}",
        Event::Measure {
            name: "guest_start_uptime".into(),
            value: up,
            unit: "s".into()
        }
    );
    let mut passed = 0;
    let mut failed = 0;
    let mut report = |case: &str, r: Result<String, String>| match r {
        Ok(detail) => {
            passed += 1;
            println!(
                "{}",
                Event::Pass {
                    case: case.into(),
                    detail
                }
            );
        }
        Err(reason) => {
            failed += 1;
            println!(
                "{}",
                Event::Fail {
                    case: case.into(),
                    reason
                }
            );
        }
    };
    report("mode", Ok(mode));
    report(
        "ipvsadm",
        sh("ipvsadm", &["-Ln"]).map(|s| s.lines().next().unwrap_or("").to_owned()),
    );
    report("nft", sh("nft", &["list", "ruleset"]));
    report("netns", sh("ip", &["netns", "add", "probe"]));
    println!("{}", Event::End { passed, failed });
}
