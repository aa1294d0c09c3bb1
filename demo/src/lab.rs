//! What both ways of running the demo share: the lab with its HTTP real servers, the
//! agents as processes in its namespaces, requests through the VIP and the table of
//! who answered, and the steps that stop a real server and bring it back.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::http::{self, HttpServer};
use kubelvs_xdp_lab::bpf::Attached;
use kubelvs_xdp_lab::netns::Netns;
use kubelvs_xdp_lab::topology::{Host, Lab, HOST_IFNAME};
use kubelvs_xdp_lab::LabConfig;

pub const PORT: u16 = 80;
pub const METRICS_PORT: u16 = 9641;
pub const DIRECTOR_LABEL: &str = "node-role.kubelvs.io/director=";
/// The health check of examples/lab.yaml.
pub const INTERVAL_S: f64 = 1.0;
pub const FALL: u32 = 2;
/// How far a real server's share may be from its weight's: this many standard
/// deviations of a binomial sample of the request count, plus 2 points for the
/// maglev table's own unevenness.
const SIGMAS: f64 = 4.0;

/// The lab's objects and where they came from.
pub struct Config {
    pub text: String,
    pub name: String,
}

/// What the director balances with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataplane {
    Xdp,
    Ipvs,
}

impl Dataplane {
    /// The lab's objects for this dataplane: examples/lab.yaml is written for XDP
    /// with maglev, a scheduler IPVS does not have; on IPVS it runs wrr, by weight too.
    pub fn adapt(self, text: &str) -> String {
        match self {
            Dataplane::Xdp => text.to_owned(),
            Dataplane::Ipvs => text
                .replace("dataplane: xdp", "dataplane: ipvs")
                .replace("scheduler: maglev", "scheduler: wrr"),
        }
    }

    pub fn adapted_note(self) -> &'static str {
        match self {
            Dataplane::Xdp => "",
            Dataplane::Ipvs => ", with dataplane ipvs and scheduler wrr",
        }
    }
}

/// Set by Ctrl-C (see main): every wait and every step checks it.
pub static STOP: AtomicBool = AtomicBool::new(false);

pub type Result<T> = std::result::Result<T, String>;

pub fn stopped() -> Result<()> {
    if STOP.load(Ordering::Relaxed) {
        eprintln!("\nstopping: cleaning up (Ctrl-C again to leave at once)");
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// The agent as a process inside a lab host's namespace; stopped (SIGTERM) on drop.
pub struct Agent {
    pub role: String,
    child: Child,
    pub log: PathBuf,
}

impl Agent {
    pub fn start(
        agent: &Path,
        host: &Host,
        args: &[String],
        dir: &Path,
        env: &[(&str, &Path)],
    ) -> Result<Self> {
        let log = dir.join(format!("agent-{}.log", host.role));
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", host.netns.name()])
            .arg(agent)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
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

impl Agent {
    /// SIGKILL: the agent dies without a word, as on a crashed node.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
    }

    fn signal(&mut self, signal: i32) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        #[allow(unsafe_code)]
        // SAFETY: kill(2) of our own child, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.signal(libc::SIGTERM);
    }
}

pub fn agent_args(host: &Host, dir: &Path, extra: &[&str]) -> Vec<String> {
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
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// GET `path` from the agent's metrics port in `netns`.
pub fn scrape(netns: &Netns, path: &str) -> Option<(u16, String)> {
    netns.http_get(METRICS_PORT, path)
}

/// Polls `f` every 50 ms until it gives a value, `limit` passes, or Ctrl-C.
pub fn poll<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
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
pub fn requests(lab: &Lab, n: usize) -> Result<Vec<String>> {
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
pub fn burst(lab: &Lab) -> Option<Vec<String>> {
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
pub fn table(answers: &[String], weights: &[(String, u32)]) -> Result<()> {
    let failed: Vec<&String> = answers.iter().filter(|a| a.starts_with("error")).collect();
    let total_weight: u32 = weights.iter().map(|(_, w)| w).sum();
    println!("      real server  weight  answered   share  expected");
    let mut ok = true;
    for (name, w) in weights {
        let got = answers.iter().filter(|a| *a == name).count();
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
pub fn healthy(lab: &Lab, rs: &Host) -> Option<bool> {
    let (_, body) = scrape(&lab.director.netns, "/metrics")?;
    kubelvs_measure::sample(
        &body,
        "kubelvs_real_server_healthy{",
        &format!("real_server=\"{}:{PORT}\"", rs.addr),
    )
    .map(|v| v > 0.5)
}

pub fn applies(lab: &Lab) -> Option<f64> {
    let (_, body) = scrape(&lab.director.netns, "/metrics")?;
    kubelvs_measure::sample(&body, "kubelvs_apply_duration_seconds_count", "")
}

/// Removes what the lab's agents leave for the next start (pinned maps), and the
/// demo's files.
pub struct Leftovers {
    pub pin: PathBuf,
    pub dir: PathBuf,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `weights` with `name`'s at 0 (quiesced).
pub fn with_zero(weights: &[(String, u32)], name: &str) -> Vec<(String, u32)> {
    weights
        .iter()
        .map(|(n, w)| (n.clone(), if n == name { 0 } else { *w }))
        .collect()
}

pub fn set_weight(config: &str, real_server: &str, weight: u32) -> Result<String> {
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

pub fn weights_of(config: &str) -> Vec<(String, u32)> {
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

/// The lab with its HTTP real servers, removed (with what the agents leave) on drop.
/// Fields drop in order: servers, the bridge's XDP, the namespaces, then files.
pub struct Setup {
    pub servers: Vec<Option<HttpServer>>,
    _pass: Option<Attached>,
    dataplane: Dataplane,
    pub lab: Lab,
    pub leftovers: Leftovers,
}

impl Setup {
    pub fn build(dataplane: Dataplane) -> Result<Self> {
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
        let pass = match dataplane {
            Dataplane::Xdp => Some(
                Attached::attach(&lab.bridge, &lab.director.bridge_port, "xdp_pass")
                    .map_err(|e| e.to_string())?,
            ),
            Dataplane::Ipvs => None,
        };
        let servers = lab
            .real_servers
            .iter()
            .map(|rs| HttpServer::start(&rs.netns, PORT, &rs.role).map(Some))
            .collect::<std::io::Result<_>>()
            .map_err(|e| e.to_string())?;
        println!(
            "      client {} --> VIP {}:{PORT} on director {} ({}, direct routing)",
            lab.client.addr,
            lab.vip,
            lab.director.addr,
            match dataplane {
                Dataplane::Xdp => "XDP, maglev",
                Dataplane::Ipvs => "kernel IPVS, wrr",
            }
        );
        for rs in &lab.real_servers {
            println!(
                "      real server {} {} (HTTP on :{PORT})",
                rs.role, rs.addr
            );
        }
        println!(
            "      namespaces {}-*",
            lab.bridge.name().trim_end_matches("-br")
        );
        Ok(Self {
            servers,
            _pass: pass,
            dataplane,
            lab,
            leftovers,
        })
    }

    /// The director's agent flags (XDP) and a real server's (netconf only).
    pub fn director_args(&self, source: &[&str]) -> Vec<String> {
        let pin = self.leftovers.pin.display().to_string();
        let mut extra: Vec<&str> = source.to_vec();
        match self.dataplane {
            Dataplane::Xdp => extra.extend(["--dataplane", "xdp", "--xdp-pin-dir", &pin]),
            Dataplane::Ipvs => extra.extend(["--dataplane", "ipvs"]),
        }
        extra.extend(["--traffic-interval-seconds", "1"]);
        agent_args(&self.lab.director, &self.leftovers.dir, &extra)
    }

    pub fn real_server_args(&self, rs: &Host, source: &[&str]) -> Vec<String> {
        let mut extra: Vec<&str> = source.to_vec();
        extra.extend(["--dataplane", "none"]);
        agent_args(rs, &self.leftovers.dir, &extra)
    }

    /// Waits until the VIP answers; prints each real server's DR setup.
    pub fn wait_serving(&self, started: Instant, agents: &[Agent], limit: Duration) -> Result<()> {
        let lab = &self.lab;
        let to = SocketAddr::from((lab.vip, PORT));
        let ready = poll(limit, "the VIP answering", || {
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
            "      director: VIP programmed in {}; the VIP answers after {:.1} s",
            match self.dataplane {
                Dataplane::Xdp => "XDP",
                Dataplane::Ipvs => "IPVS",
            },
            started.elapsed().as_secs_f64()
        );
        for rs in &lab.real_servers {
            let lo = rs
                .netns
                .ip(&["-o", "addr", "show", "dev", "lo"])
                .unwrap_or_default();
            let sysctl = |k: &str| rs.netns.sysctl_get(k).unwrap_or_default();
            let has_vip = lo.contains(&format!(" {}/32 ", lab.vip));
            println!(
                "      {}: VIP {} on lo: {}, arp_ignore={} arp_announce={}",
                rs.role,
                lab.vip,
                if has_vip { "yes" } else { "no" },
                sysctl("net.ipv4.conf.all.arp_ignore"),
                sysctl("net.ipv4.conf.all.arp_announce")
            );
            if !has_vip {
                return Err(format!("{}: the agent did not put the VIP on lo", rs.role));
            }
        }
        Ok(())
    }

    /// `n` requests through the VIP and the table of who answered against `weights`.
    pub fn spread(&self, n: usize, weights: &[(String, u32)]) -> Result<()> {
        let answers = requests(&self.lab, n)?;
        table(&answers, weights)
    }

    /// Stops real server `i`'s HTTP server and waits until the health check took it
    /// out; then `n` requests, none of which it may answer.
    pub fn take_out(&mut self, i: usize, n: usize, weights: &[(String, u32)]) -> Result<()> {
        let rs = &self.lab.real_servers[i];
        let down = Instant::now();
        self.servers[i] = None;
        let limit = Duration::from_secs_f64(f64::from(FALL) * INTERVAL_S + INTERVAL_S + 2.0);
        // Taken out: the director reports it down, and a burst of new connections all
        // succeed without reaching it (connections in between are refused: it is down).
        poll(limit, "the health check taking it out", || {
            (healthy(&self.lab, rs) == Some(false)).then_some(())?;
            let burst = burst(&self.lab)?;
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
        self.spread(n, &with_zero(weights, &rs.role))?;
        println!("      ✓ {} got no new connection while down", rs.role);
        Ok(())
    }

    /// Starts real server `i`'s HTTP server again and waits until it is back.
    pub fn bring_back(&mut self, i: usize, n: usize, weights: &[(String, u32)]) -> Result<()> {
        let rs = &self.lab.real_servers[i];
        let up = Instant::now();
        self.servers[i] =
            Some(HttpServer::start(&rs.netns, PORT, &rs.role).map_err(|e| e.to_string())?);
        poll(
            Duration::from_secs(10),
            "the health check bringing it back",
            || {
                (healthy(&self.lab, rs) == Some(true)).then_some(())?;
                burst(&self.lab)?
                    .iter()
                    .any(|a| a == &rs.role)
                    .then_some(())
            },
        )?;
        println!(
            "      {} is back after {:.2} s (rise 1)",
            rs.role,
            up.elapsed().as_secs_f64()
        );
        self.spread(n, weights)?;
        println!("      ✓ {} came back", rs.role);
        Ok(())
    }

    /// The director's connection count for the VIP, as its /metrics has it.
    pub fn director_connections(&self) -> Option<u64> {
        let (_, body) = scrape(&self.lab.director.netns, "/metrics")?;
        kubelvs_measure::sample(&body, "kubelvs_virtual_service_connections_total{", "")
            .map(|c| c as u64)
    }

    pub fn print_counters(&self) {
        let counted = poll(Duration::from_secs(3), "traffic counters", || {
            let (_, body) = scrape(&self.lab.director.netns, "/metrics")?;
            kubelvs_measure::sample(&body, "kubelvs_virtual_service_connections_total{", "")
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
    }
}
