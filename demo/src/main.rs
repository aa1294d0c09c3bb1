//! `kubelvs-demo` (run by `scripts/demo`): kube-lvs balancing real HTTP traffic on this
//! machine. It builds a lab of network namespaces (a client, a director, three real
//! servers on a bridge), runs `kube-lvs-agent` standalone on `examples/lab.yaml` in the
//! director (XDP dataplane, direct routing) and in each real server (VIP on lo, ARP
//! suppressed), then shows:
//!
//! - requests through the VIP, spread by weight;
//! - a real server stopped, taken out by the health check, and brought back;
//! - a weight changed live in the file.
//!
//! Everything it made is removed on exit or Ctrl-C, and it checks that nothing was
//! left behind. `--dataplane ipvs` directs with kernel IPVS instead (where the kernel
//! has it); `--ipvs-vm` runs this same program that way inside the test suite's
//! microVM, whose Debian kernel has IPVS.

mod cluster;
mod failover;
mod http;
mod lab;
mod standalone;
mod vm;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use lab::{Config, Dataplane, Result, STOP};

struct Args {
    agent: PathBuf,
    /// The lab's objects; `examples/lab.yaml`, built in, by default.
    config: Option<PathBuf>,
    requests: usize,
    /// Through the test suite's Kubernetes control plane: operator, agents, kubectl.
    cluster: bool,
    dataplane: Dataplane,
    /// The standalone demo on IPVS inside the microVM.
    ipvs_vm: bool,
}

fn usage() -> String {
    "usage: kubelvs-demo [--cluster | --ipvs-vm] [--dataplane xdp|ipvs] [--agent PATH] [--config FILE] [--requests N]"
        .into()
}

fn parse_args() -> Result<Args> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut a = Args {
        agent: exe.with_file_name("kube-lvs-agent"),
        config: None,
        requests: 300,
        cluster: false,
        dataplane: Dataplane::Xdp,
        ipvs_vm: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{}", usage()))
        };
        match flag.as_str() {
            "--agent" => a.agent = value()?.into(),
            "--config" => a.config = Some(value()?.into()),
            "--dataplane" => {
                a.dataplane = match value()?.as_str() {
                    "xdp" => Dataplane::Xdp,
                    "ipvs" => Dataplane::Ipvs,
                    other => return Err(format!("--dataplane {other}: xdp or ipvs\n{}", usage())),
                }
            }
            "--ipvs-vm" => a.ipvs_vm = true,
            "--requests" => {
                a.requests = value()?
                    .parse()
                    .map_err(|_| format!("--requests: a number\n{}", usage()))?
            }
            "--cluster" => a.cluster = true,
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown flag {other}\n{}", usage())),
        }
    }
    if a.ipvs_vm && (a.cluster || a.config.is_some()) {
        return Err(format!(
            "--ipvs-vm runs the built-in lab standalone\n{}",
            usage()
        ));
    }
    if a.cluster && a.dataplane == Dataplane::Ipvs {
        return Err(format!("--cluster runs the lab on XDP\n{}", usage()));
    }
    Ok(a)
}

/// The lab's objects: `--config FILE`, or `examples/lab.yaml` as built in.
fn config(path: &Option<PathBuf>) -> Result<Config> {
    match path {
        Some(p) => Ok(Config {
            text: std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
            name: p.canonicalize().unwrap_or(p.clone()).display().to_string(),
        }),
        None => Ok(Config {
            text: include_str!("../../examples/lab.yaml").to_owned(),
            name: "examples/lab.yaml (built in)".into(),
        }),
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    if STOP.swap(true, Ordering::Relaxed) {
        // A second one: leave now, without cleaning up.
        #[allow(unsafe_code)]
        // SAFETY: _exit is async-signal-safe.
        unsafe {
            libc::_exit(130)
        };
    }
}

/// Ctrl-C (and SIGTERM, SIGHUP) only set a flag: the demo stops at its next step and
/// its destructors remove the lab. A handler, not a blocked mask, so that the agents
/// started later do not inherit blocked signals (exec resets handlers, not masks).
fn catch_signals() {
    for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        #[allow(unsafe_code)]
        // SAFETY: installs a handler that only touches an atomic (or _exits).
        unsafe {
            libc::signal(
                s,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

/// What the lab could leave behind: namespaces of this process, pinned maps, agents.
fn leftovers_check() -> Vec<String> {
    let mut left = Vec::new();
    let ours = format!("klab{}x", std::process::id());
    if let Ok(list) = std::fs::read_dir("/run/netns") {
        for e in list.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&ours) {
                left.push(format!("namespace {name}"));
            }
        }
    }
    if let Ok(list) = std::fs::read_dir("/sys/fs/bpf") {
        for e in list.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&ours) {
                left.push(format!("pinned /sys/fs/bpf/{name}"));
            }
        }
    }
    if let Ok(list) = std::fs::read_dir("/proc") {
        let me = std::process::id().to_string();
        for e in list.flatten() {
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let ppid = after.split_whitespace().nth(1).unwrap_or("");
            // Agents (through `ip netns exec`), the operator, the control plane.
            if ppid == me && !after.trim_start().starts_with('Z') {
                left.push(format!("process {}", e.file_name().to_string_lossy()));
            }
        }
    }
    left
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if args.ipvs_vm {
        // Nothing on this host but qemu: no root needed, nothing to clean up here.
        return match vm::run(&args.agent, args.requests) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("\nkubelvs-demo --ipvs-vm: {e}");
                ExitCode::from(1)
            }
        };
    }
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "kubelvs-demo: run as root (network namespaces and XDP need it): sudo scripts/demo"
        );
        return ExitCode::from(2);
    }
    catch_signals();
    let result = if !args.agent.exists() {
        Err(format!(
            "{} not found: build it (cargo build -p kubelvs-agent) or pass --agent",
            args.agent.display()
        ))
    } else {
        config(&args.config).and_then(|c| {
            if args.cluster {
                cluster::run(&args.agent, &c, args.requests)
            } else {
                standalone::run(&args.agent, &c, args.requests, args.dataplane)
            }
        })
    };
    let left = leftovers_check();
    if left.is_empty() {
        println!("      ✓ nothing left behind: no namespaces, links, processes or pinned maps");
    } else {
        println!("      ✗ left behind: {}", left.join(", "));
    }
    match result {
        Ok(()) if left.is_empty() => {
            let again = match (args.cluster, args.dataplane) {
                (true, _) => " --cluster",
                (false, Dataplane::Ipvs) => " --dataplane ipvs",
                (false, Dataplane::Xdp) => "",
            };
            println!(
                "\ndone. Run it again with `scripts/demo{again}`; the agent's flags are in docs/agent.md."
            );
            ExitCode::SUCCESS
        }
        Ok(()) => ExitCode::from(1),
        Err(e) if e == "interrupted" => ExitCode::from(130),
        Err(e) => {
            eprintln!("\nkubelvs-demo: {e}");
            ExitCode::from(1)
        }
    }
}
