//! The test driver inside the microVM (started by the initramfs `init`, in the
//! VM's root network namespace, which plays the director).
//!
//! Modes: `scenarios`, `bench` and `reload` (in a boot of its own: it unloads
//! ip_vs) print results in the line protocol of `kubelvs_ipvs_vm::protocol`; `serve`, `client` and `hold` are helpers the
//! scenarios start inside the real server and client namespaces
//! (`ip netns exec <ns> <this binary> ...`), so no code here enters a namespace itself.

#![forbid(unsafe_code)]

mod agent;
mod agent_forwarding;
mod agent_scale;
mod bench;
mod failover;
mod lab;
mod reload;
mod scenarios;

use std::io::{BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use kubelvs_ipvs_vm::protocol::Event;
use kubelvs_ipvs_vm::traffic;

/// Counts and prints case results.
#[derive(Debug, Default)]
pub struct Reporter {
    passed: u32,
    failed: u32,
}

impl Reporter {
    pub fn case(&mut self, case: &str, result: Result<String, String>) -> bool {
        let ok = result.is_ok();
        let event = match result {
            Ok(detail) => {
                self.passed += 1;
                Event::Pass {
                    case: case.into(),
                    detail,
                }
            }
            Err(reason) => {
                self.failed += 1;
                Event::Fail {
                    case: case.into(),
                    reason,
                }
            }
        };
        println!("{event}");
        let _ = std::io::stdout().flush();
        ok
    }

    pub fn measure(&mut self, name: &str, value: f64, unit: &str) {
        println!(
            "{}",
            Event::Measure {
                name: name.into(),
                value,
                unit: unit.into()
            }
        );
    }

    fn end(&self) {
        println!(
            "{}",
            Event::End {
                passed: self.passed,
                failed: self.failed
            }
        );
        let _ = std::io::stdout().flush();
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match words[..] {
        ["scenarios"] | ["bench"] | ["all"] => {
            let mut r = Reporter::default();
            let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
            let up = uptime
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0);
            r.measure("guest_start_uptime", up, "s");
            if words[0] != "bench" {
                scenarios::run(&mut r);
            }
            if words[0] != "scenarios" {
                bench::run(&mut r);
            }
            r.end();
            Ok(())
        }
        ["agent"] => {
            let mut r = Reporter::default();
            agent::run(&mut r);
            r.end();
            Ok(())
        }
        [mode] if mode.starts_with("demo-") => {
            let mut r = Reporter::default();
            demo(&mut r, mode);
            r.end();
            Ok(())
        }
        [mode] if mode.starts_with("agent-scale-") => {
            let mut r = Reporter::default();
            agent_scale::run(&mut r, mode);
            r.end();
            Ok(())
        }
        ["reload"] => {
            let mut r = Reporter::default();
            reload::run(&mut r);
            r.end();
            Ok(())
        }
        ["serve", name, ref ports @ ..] => ports
            .iter()
            .map(|p| p.parse::<u16>().map_err(|e| format!("port {p:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|ports| traffic::serve(name, &ports).map_err(|e| format!("serve: {e}"))),
        ["client", target, count, timeout_ms, ref sources @ ..] => client(target, count, timeout_ms, sources),
        ["hold", target] => hold(target),
        ["ipvs-director", state, sloppy] => {
            failover::program(state, &[failover::mh_service()], sloppy == "sloppy")
        }
        ["bench-inner"] => bench::inner(),
        ["selftest-inner"] => scenarios::selftest_inner(),
        _ => Err(format!("usage: scenarios | bench | all | agent | reload | serve NAME PORT... | client TARGET COUNT TIMEOUT_MS [SOURCE...] | hold TARGET; got {args:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `scripts/demo --ipvs-vm`: the demo binary (put in the image as /bin/kubelvs-demo)
/// on this kernel's IPVS, its output straight to the console. Mode `demo-N`: N
/// requests a round.
fn demo(r: &mut Reporter, mode: &str) {
    let requests = mode.trim_start_matches("demo-");
    let status = std::process::Command::new("/bin/kubelvs-demo")
        .args(["--agent", "/bin/kube-lvs-agent", "--dataplane", "ipvs"])
        .args(["--requests", requests])
        .status();
    r.case(
        "demo",
        match status {
            Ok(s) if s.success() => Ok("the demo passed".into()),
            Ok(s) => Err(format!("the demo exited with {s}")),
            Err(e) => Err(format!("/bin/kubelvs-demo: {e}")),
        },
    );
}

/// `COUNT` sequential connections, source addresses taken in turn; one output line each:
/// `OK <source|-> <server> <peer>` or `ERR <source|-> <error>`.
fn client(target: &str, count: &str, timeout_ms: &str, sources: &[&str]) -> Result<(), String> {
    let target: SocketAddr = target
        .parse()
        .map_err(|e| format!("target {target:?}: {e}"))?;
    let count: usize = count.parse().map_err(|e| format!("count {count:?}: {e}"))?;
    let timeout = Duration::from_millis(
        timeout_ms
            .parse()
            .map_err(|e| format!("timeout {timeout_ms:?}: {e}"))?,
    );
    let sources = sources
        .iter()
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|e| format!("source {s:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for i in 0..count {
        let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        let src = source.map_or("-".to_owned(), |s| s.to_string());
        let line = match traffic::connect(target, source, timeout) {
            Ok((g, _conn)) => format!("OK {src} {} {}", g.server, g.peer),
            Err(e) => format!("ERR {src} {e}"),
        };
        writeln!(out, "{line}").map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())
}

/// Opens one connection and keeps it: prints `HELD <server> <peer>`, waits for a
/// line on stdin, then proves the connection still carries data: `ECHO <text>`.
fn hold(target: &str) -> Result<(), String> {
    let target: SocketAddr = target
        .parse()
        .map_err(|e| format!("target {target:?}: {e}"))?;
    let (g, mut conn) = traffic::connect(target, None, Duration::from_secs(5))
        .map_err(|e| format!("connect {target}: {e}"))?;
    println!("HELD {} {}", g.server, g.peer);
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let echoed = traffic::echo(&mut conn, "still-open")
        .map_err(|e| format!("echo on held connection: {e}"))?;
    println!("ECHO {echoed}");
    Ok(())
}
