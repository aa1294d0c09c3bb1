//! Guest side (PID 1's child in the microVM, root network namespace of a fresh VM,
//! so flushing IPVS is fine): prints one `KUBELVS PASS|FAIL` line per case.

use std::process::Command;

use kubelvs_ipvs::{selftest, IpvsClient};

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    // IPv4 destinations need a routing table in the namespace (see docs/ipvs.md).
    let _ = run("ip", &["link", "set", "lo", "up"]);
    let (mut passed, mut failed) = (0, 0);
    let mut report = |name: &str, r: Result<String, String>| match r {
        Ok(d) => {
            passed += 1;
            println!("KUBELVS PASS {name} {d}");
        }
        Err(e) => {
            failed += 1;
            println!("KUBELVS FAIL {name} {e}");
        }
    };
    match IpvsClient::new() {
        Ok(mut c) => {
            for (name, r) in selftest::run(&mut c) {
                report(name, r);
            }
            if mode == "reload" {
                let (name, r) = selftest::module_reload(&mut c, || {
                    for m in [
                        "ip_vs_rr",
                        "ip_vs_wrr",
                        "ip_vs_lc",
                        "ip_vs_wlc",
                        "ip_vs_sh",
                        "ip_vs_dh",
                        "ip_vs_mh",
                        "ip_vs_sed",
                        "ip_vs_nq",
                        "ip_vs",
                    ] {
                        // Modules the image did not load are not there to remove.
                        let _ = run("rmmod", &[m]);
                    }
                    run("modprobe", &["ip_vs"])
                });
                report(name, r);
            }
        }
        Err(e) => report("client", Err(e.to_string())),
    }
    println!("KUBELVS END {passed} {failed}");
}
