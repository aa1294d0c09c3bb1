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
//! left behind.

mod http;

use std::io::{IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::HttpServer;
use kubelvs_xdp_lab::bpf::Attached;
use kubelvs_xdp_lab::netns::Netns;
use kubelvs_xdp_lab::topology::{Host, Lab, HOST_IFNAME};
use kubelvs_xdp_lab::LabConfig;

const PORT: u16 = 80;
const METRICS_PORT: u16 = 9641;
const DIRECTOR_LABEL: &str = "node-role.kubelvs.io/director=";
/// The health check of examples/lab.yaml.
const INTERVAL_S: f64 = 1.0;
const FALL: u32 = 2;
/// How far a real server's share may be from its weight's: this many standard
/// deviations of a binomial sample of the request count, plus 2 points for the
/// maglev table's own unevenness.
const SIGMAS: f64 = 4.0;

static STOP: AtomicBool = AtomicBool::new(false);

type Result<T> = std::result::Result<T, String>;

struct Args {
    agent: PathBuf,
    config: PathBuf,
    requests: usize,
}

fn usage() -> String {
    "usage: kubelvs-demo [--agent PATH] [--config examples/lab.yaml] [--requests N]".into()
}

fn parse_args() -> Result<Args> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut a = Args {
        agent: exe.with_file_name("kube-lvs-agent"),
        config: Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lab.yaml"),
        requests: 300,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{}", usage()))
        };
        match flag.as_str() {
            "--agent" => a.agent = value()?.into(),
            "--config" => a.config = value()?.into(),
            "--requests" => {
                a.requests = value()?
                    .parse()
                    .map_err(|_| format!("--requests: a number\n{}", usage()))?
            }
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown flag {other}\n{}", usage())),
        }
    }
    Ok(a)
}

fn stopped() -> Result<()> {
    if STOP.load(Ordering::Relaxed) {
        eprintln!("\nstopping: cleaning up (Ctrl-C again to leave at once)");
        Err("interrupted".into())
    } else {
        Ok(())
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

/// The agent as a process inside a lab host's namespace; stopped (SIGTERM) on drop.
struct Agent {
    role: String,
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(agent: &Path, host: &Host, args: &[String], dir: &Path) -> Result<Self> {
        let log = dir.join(format!("agent-{}.log", host.role));
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", host.netns.name()])
            .arg(agent)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", agent.display()))?;
        Ok(Self {
            role: host.role.clone(),
            child,
            log,
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) of our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn agent_args(host: &Host, dir: &Path, config: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--node".into(),
        host.role.clone(),
        "--interface".into(),
        HOST_IFNAME.into(),
        "--node-address".into(),
        host.addr.to_string(),
        "--state-dir".into(),
        dir.join(format!("state-{}", host.role))
            .display()
            .to_string(),
        "--metrics-address".into(),
        format!("127.0.0.1:{METRICS_PORT}"),
        "--config".into(),
        config.display().to_string(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// GET `path` from the agent's metrics port in `netns`.
fn scrape(netns: &Netns, path: &str) -> Option<(u16, String)> {
    let path = path.to_owned();
    netns
        .run(move || {
            let mut s = TcpStream::connect(("127.0.0.1", METRICS_PORT)).ok()?;
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .ok()?;
            let mut text = String::new();
            s.read_to_string(&mut text).ok()?;
            let status = text.split_whitespace().nth(1)?.parse().ok()?;
            let body = text.split_once("\r\n\r\n")?.1.to_owned();
            Some((status, body))
        })
        .ok()
        .flatten()
}

/// The value of the first metric line starting with `prefix` and containing `label`.
fn metric(body: &str, prefix: &str, label: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Polls `f` every 50 ms until it gives a value, `limit` passes, or Ctrl-C.
fn poll<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        stopped()?;
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `n` requests through the VIP from the client, with a progress bar on a
/// terminal; the answers, one per request (`error: ...` for a failed one).
fn requests(lab: &Lab, n: usize) -> Result<Vec<String>> {
    let to = SocketAddr::from((lab.vip, PORT));
    let tty = std::io::stdout().is_terminal();
    let out = lab
        .client
        .netns
        .run(move || {
            let mut answers = Vec::with_capacity(n);
            for i in 1..=n {
                if STOP.load(Ordering::Relaxed) {
                    break;
                }
                answers.push(
                    http::get(to, Duration::from_secs(2)).unwrap_or_else(|e| format!("error: {e}")),
                );
                if tty {
                    let done = i * 30 / n;
                    print!(
                        "\r      [{}{}] {i}/{n}",
                        "#".repeat(done),
                        ".".repeat(30 - done)
                    );
                    let _ = std::io::stdout().flush();
                    // Slow enough for a person to see the bar move.
                    std::thread::sleep(Duration::from_millis(4));
                }
            }
            if tty {
                println!();
            }
            answers
        })
        .map_err(|e| e.to_string())?;
    stopped()?;
    println!(
        "      {} requests sent to http://{}:{PORT}/",
        out.len(),
        lab.vip
    );
    Ok(out)
}

/// Twelve quick requests through the VIP, without output.
fn burst(lab: &Lab) -> Option<Vec<String>> {
    let to = SocketAddr::from((lab.vip, PORT));
    lab.client
        .netns
        .run(move || {
            (0..12)
                .map(|_| {
                    http::get(to, Duration::from_millis(500))
                        .unwrap_or_else(|e| format!("error: {e}"))
                })
                .collect()
        })
        .ok()
}

/// Prints how many requests each real server answered against its weight; checks the
/// spread follows the weights (a weight of 0 must get nothing).
fn table(answers: &[String], weights: &[(&str, u32)]) -> Result<()> {
    let failed: Vec<&String> = answers.iter().filter(|a| a.starts_with("error")).collect();
    let total_weight: u32 = weights.iter().map(|(_, w)| w).sum();
    println!("      real server  weight  answered   share  expected");
    let mut ok = true;
    for (name, w) in weights {
        let got = answers.iter().filter(|a| a == name).count();
        let share = 100.0 * got as f64 / answers.len().max(1) as f64;
        let expected = 100.0 * *w as f64 / total_weight as f64;
        let p = expected / 100.0;
        let tolerance = SIGMAS * 100.0 * (p * (1.0 - p) / answers.len().max(1) as f64).sqrt() + 2.0;
        let good = (share - expected).abs() <= tolerance && (*w > 0) == (got > 0);
        ok &= good;
        println!(
            "      {name:<11}  {w:>6}  {got:>8}  {share:>5.1}%  {expected:>7.1}%  {}",
            if good { "✓" } else { "✗" }
        );
    }
    if !failed.is_empty() {
        return Err(format!(
            "{} requests failed, e.g. {}",
            failed.len(),
            failed[0]
        ));
    }
    if !ok {
        return Err(format!(
            "the spread does not follow the weights (within {SIGMAS} standard deviations)"
        ));
    }
    println!(
        "      ✓ no request failed; the spread follows the weights (each within {SIGMAS} standard deviations)"
    );
    Ok(())
}

/// `real_server="192.0.2.12:80"` health gauge on the director: 1 healthy, 0 quiesced.
fn healthy(lab: &Lab, rs: &Host) -> Option<bool> {
    let (_, body) = scrape(&lab.director.netns, "/metrics")?;
    metric(
        &body,
        "kubelvs_real_server_healthy{",
        &format!("real_server=\"{}:{PORT}\"", rs.addr),
    )
    .map(|v| v > 0.5)
}

fn applies(lab: &Lab) -> Option<f64> {
    let (_, body) = scrape(&lab.director.netns, "/metrics")?;
    metric(&body, "kubelvs_apply_duration_seconds_count", "")
}

/// Removes what the lab's agents leave for the next start (pinned maps), and the
/// demo's files.
struct Leftovers {
    pin: PathBuf,
    dir: PathBuf,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn show(weights: &[(String, u32)], answers: &[String]) -> Result<()> {
    let refs: Vec<(&str, u32)> = weights.iter().map(|(n, w)| (n.as_str(), *w)).collect();
    table(answers, &refs)
}

/// `weights` with `name`'s at 0 (quiesced).
fn with_zero(weights: &[(String, u32)], name: &str) -> Vec<(String, u32)> {
    weights
        .iter()
        .map(|(n, w)| (n.clone(), if n == name { 0 } else { *w }))
        .collect()
}

fn set_weight(config: &str, real_server: &str, weight: u32) -> Result<String> {
    let mut out = String::new();
    let mut inside = false;
    let mut changed = false;
    for line in config.lines() {
        if line.starts_with("metadata:") {
            inside = line.contains(&format!("name: {real_server},"));
        }
        if inside && line.starts_with("spec:") && line.contains("weight:") {
            let (head, tail) = line.split_once("weight: ").ok_or("no weight")?;
            let rest = tail.split_once(',').map_or("}", |(_, r)| r);
            out += &format!("{head}weight: {weight},{rest}\n");
            changed = true;
            continue;
        }
        out += line;
        out += "\n";
    }
    changed
        .then_some(out)
        .ok_or_else(|| format!("no weight for {real_server} in the config"))
}

fn weights_of(config: &str) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let mut name = None;
    for line in config.lines() {
        if let Some(n) = line
            .strip_prefix("metadata: {name: ")
            .and_then(|r| r.split(',').next())
        {
            name = Some(n.to_owned());
        }
        if let (Some(n), Some(w)) = (
            name.as_ref(),
            line.split_once("weight: ")
                .and_then(|(_, r)| r.split([',', '}']).next()?.trim().parse().ok()),
        ) {
            out.push((n.clone(), w));
        }
    }
    out
}

fn run(args: &Args) -> Result<()> {
    let config_text = std::fs::read_to_string(&args.config)
        .map_err(|e| format!("{}: {e}", args.config.display()))?;
    if !args.agent.exists() {
        return Err(format!(
            "{} not found: build it (cargo build -p kubelvs-agent) or pass --agent",
            args.agent.display()
        ));
    }

    println!("kube-lvs demo: a load balancer in network namespaces on this machine\n");
    println!("[1/6] building the lab");
    let lab = Lab::build(LabConfig {
        real_servers: 3,
        vip_on_real_servers: false,
        ..LabConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let leftovers = Leftovers {
        pin: PathBuf::from("/sys/fs/bpf").join(lab.bridge.name()),
        dir: std::env::temp_dir().join(format!("kubelvs-demo-{}", lab.bridge.name())),
    };
    std::fs::create_dir_all(&leftovers.dir).map_err(|e| e.to_string())?;
    // The director's XDP_TX frames reach the bridge only if its veth peer runs XDP.
    let _pass = Attached::attach(&lab.bridge, &lab.director.bridge_port, "xdp_pass")
        .map_err(|e| e.to_string())?;
    let config = leftovers.dir.join("lab.yaml");
    std::fs::write(&config, &config_text).map_err(|e| e.to_string())?;
    println!(
        "      client {} --> VIP {}:{PORT} on director {} (XDP, maglev, direct routing)",
        lab.client.addr, lab.vip, lab.director.addr
    );
    for rs in &lab.real_servers {
        println!(
            "      real server {} {} (HTTP on :{PORT})",
            rs.role, rs.addr
        );
    }
    println!(
        "      namespaces {}-*, config {}",
        lab.bridge.name().trim_end_matches("-br"),
        args.config
            .canonicalize()
            .unwrap_or(args.config.clone())
            .display()
    );

    let mut servers: Vec<Option<HttpServer>> = lab
        .real_servers
        .iter()
        .map(|rs| HttpServer::start(&rs.netns, PORT, &rs.role).map(Some))
        .collect::<std::io::Result<_>>()
        .map_err(|e| e.to_string())?;

    println!("\n[2/6] starting kube-lvs-agent, standalone, on each host");
    let started = Instant::now();
    let mut agents = Vec::new();
    for rs in &lab.real_servers {
        agents.push(Agent::start(
            &args.agent,
            rs,
            &agent_args(rs, &leftovers.dir, &config, &["--dataplane", "none"]),
            &leftovers.dir,
        )?);
    }
    let pin = leftovers.pin.display().to_string();
    agents.push(Agent::start(
        &args.agent,
        &lab.director,
        &agent_args(
            &lab.director,
            &leftovers.dir,
            &config,
            &[
                "--node-label",
                DIRECTOR_LABEL,
                "--dataplane",
                "xdp",
                "--xdp-pin-dir",
                &pin,
                "--traffic-interval-seconds",
                "1",
            ],
        ),
        &leftovers.dir,
    )?);
    let to = SocketAddr::from((lab.vip, PORT));
    let ready = poll(Duration::from_secs(30), "the VIP answering", || {
        scrape(&lab.director.netns, "/readyz").filter(|(s, _)| *s == 200)?;
        lab.client
            .netns
            .run(move || http::get(to, Duration::from_secs(1)).ok())
            .ok()
            .flatten()
    });
    if let Err(e) = ready {
        let logs: Vec<String> = agents
            .iter()
            .map(|a| {
                format!(
                    "--- {} ---\n{}",
                    a.role,
                    std::fs::read_to_string(&a.log).unwrap_or_default()
                )
            })
            .collect();
        return Err(format!("{e}\n{}", logs.join("\n")));
    }
    println!(
        "      director: VIP programmed in XDP; the VIP answers after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for rs in &lab.real_servers {
        let lo = rs
            .netns
            .ip(&["-o", "addr", "show", "dev", "lo"])
            .unwrap_or_default();
        let arp = rs
            .netns
            .sysctl_get("net.ipv4.conf.all.arp_ignore")
            .unwrap_or_default();
        let announce = rs
            .netns
            .sysctl_get("net.ipv4.conf.all.arp_announce")
            .unwrap_or_default();
        let has_vip = lo.contains(&format!(" {}/32 ", lab.vip));
        println!(
            "      {}: VIP {} on lo: {}, arp_ignore={arp} arp_announce={announce}",
            rs.role,
            lab.vip,
            if has_vip { "yes" } else { "no" }
        );
        if !has_vip {
            return Err(format!("{}: the agent did not put the VIP on lo", rs.role));
        }
    }

    let weights = weights_of(&config_text);
    println!("\n[3/6] {} requests through the VIP", args.requests);
    let answers = requests(&lab, args.requests)?;
    show(&weights, &answers)?;

    let victim = 1;
    let rs = &lab.real_servers[victim];
    println!("\n[4/6] stopping {}'s HTTP server", rs.role);
    let down = Instant::now();
    servers[victim] = None;
    let limit = Duration::from_secs_f64(f64::from(FALL) * INTERVAL_S + INTERVAL_S + 2.0);
    // Taken out: the director reports it down, and a burst of new connections all
    // succeed without reaching it (connections in between are refused: it is down).
    poll(limit, "the health check taking it out", || {
        (healthy(&lab, rs) == Some(false)).then_some(())?;
        let burst = burst(&lab)?;
        (!burst
            .iter()
            .any(|a| a == &rs.role || a.starts_with("error")))
        .then_some(())
    })?;
    println!(
        "      the health check took {} out in {:.2} s (fall {FALL} x interval {INTERVAL_S} s, plus up to one interval)",
        rs.role,
        down.elapsed().as_secs_f64()
    );
    let answers = requests(&lab, args.requests)?;
    show(&with_zero(&weights, &rs.role), &answers)?;
    println!("      ✓ {} got no new connection while down", rs.role);

    println!("\n[5/6] starting {}'s HTTP server again", rs.role);
    let up = Instant::now();
    servers[victim] =
        Some(HttpServer::start(&rs.netns, PORT, &rs.role).map_err(|e| e.to_string())?);
    poll(
        Duration::from_secs(10),
        "the health check bringing it back",
        || {
            (healthy(&lab, rs) == Some(true)).then_some(())?;
            burst(&lab)?.iter().any(|a| a == &rs.role).then_some(())
        },
    )?;
    println!(
        "      {} is back after {:.2} s (rise 1)",
        rs.role,
        up.elapsed().as_secs_f64()
    );
    let answers = requests(&lab, args.requests)?;
    show(&weights, &answers)?;
    println!("      ✓ {} came back", rs.role);

    let (changed, from, to_weight) = (
        "rs3",
        weights.iter().find(|(n, _)| n == "rs3").map_or(0, |w| w.1),
        1,
    );
    println!("\n[6/6] changing {changed}'s weight {from} -> {to_weight} in the file, live");
    let before = applies(&lab).unwrap_or(0.0);
    let edited = set_weight(&config_text, changed, to_weight)?;
    let tmp = config.with_extension("tmp");
    std::fs::write(&tmp, &edited).map_err(|e| e.to_string())?;
    let edit = Instant::now();
    std::fs::rename(&tmp, &config).map_err(|e| e.to_string())?;
    poll(
        Duration::from_secs(10),
        "the agent applying the edit",
        || (applies(&lab)? > before).then_some(()),
    )?;
    println!(
        "      the director's agent applied it {:.2} s after the file changed",
        edit.elapsed().as_secs_f64()
    );
    let answers = requests(&lab, args.requests)?;
    show(&weights_of(&edited), &answers)?;

    // Counters are read from the XDP maps once a second.
    let counted = poll(Duration::from_secs(3), "traffic counters", || {
        let (_, body) = scrape(&lab.director.netns, "/metrics")?;
        metric(&body, "kubelvs_virtual_service_connections_total{", "")
            .filter(|n| *n > 0.0)
            .map(|_| body)
    });
    if let Ok(body) = counted {
        println!(
            "\n      the director's /metrics, connections per virtual service and real server:"
        );
        for l in body.lines().filter(|l| {
            l.starts_with("kubelvs_virtual_service_connections_total{")
                || l.starts_with("kubelvs_real_server_connections_total{")
        }) {
            println!("        {l}");
        }
    }

    println!("\ncleaning up");
    drop(agents);
    drop(servers);
    Ok(())
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
            if ppid == me && stat.contains("(ip)") {
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
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "kubelvs-demo: run as root (network namespaces and XDP need it): sudo scripts/demo"
        );
        return ExitCode::from(2);
    }
    catch_signals();
    let result = run(&args);
    let left = leftovers_check();
    if left.is_empty() {
        println!("      ✓ nothing left behind: no namespaces, links, processes or pinned maps");
    } else {
        println!("      ✗ left behind: {}", left.join(", "));
    }
    match result {
        Ok(()) if left.is_empty() => {
            println!(
                "\ndone. Run it again with `scripts/demo`; the agent's flags are in docs/agent.md."
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
