//! What the agent's scale benches share: a network namespace with a veth for the
//! XDP director, the agent process, its metrics, and the applies its log reports.

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdout, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kubelvs_xdp_lab::netns::Netns;

pub const AGENT: &str = env!("CARGO_BIN_EXE_kube-lvs-agent");
/// The director's address in its namespace (on `eth0`).
pub const DIRECTOR_ADDR: &str = "192.0.2.2";
pub const EDITS: usize = 20;

/// A namespace named `tag` + pid with `eth0` (a veth, [`DIRECTOR_ADDR`]/24) up.
pub fn director_netns(tag: &str) -> Netns {
    let ns = Netns::create(&format!("{tag}{}", std::process::id())).unwrap();
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ])
    .unwrap();
    ns.ip(&["addr", "add", &format!("{DIRECTOR_ADDR}/24"), "dev", "eth0"])
        .unwrap();
    for l in ["eth0", "peer0"] {
        ns.ip(&["link", "set", l, "up"]).unwrap();
    }
    ns
}

/// The agent's flags for XDP in `ns`, sized for `n` services; state and pins of its own.
pub fn xdp_args(n: usize, dir: &std::path::Path, pin: &str) -> Vec<String> {
    [
        "--node",
        "director",
        "--interface",
        "eth0",
        "--dataplane",
        "xdp",
        "--xdp-pin-dir",
        pin,
        "--xdp-max-vips",
        &(n + 16).to_string(),
        "--xdp-max-real-servers",
        "1024",
        "--xdp-ring-size",
        "251",
        "--state-dir",
        &dir.join("state").display().to_string(),
        "--metrics-address",
        "127.0.0.1:9641",
    ]
    .map(String::from)
    .to_vec()
}

/// The agent in `ns` with `args` (under `KUBELVS_AGENT_WRAPPER` if set), logging each
/// apply to stdout in plain text.
pub fn agent(ns: &Netns, args: &[String], env: &[(&str, &str)]) -> (Running, Applies) {
    let wrapper = std::env::var("KUBELVS_AGENT_WRAPPER").unwrap_or_default();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name()])
        .args(wrapper.split_whitespace())
        .arg(AGENT)
        .args(args)
        // The apply's own line ("applied writes=N"), not every service's.
        .env(
            "RUST_LOG",
            "warn,kubelvs_agent=info,kubelvs_agent::node=warn,kubelvs_agent::health=warn",
        )
        // Plain log lines (tracing-subscriber honours NO_COLOR).
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let applies = Applies::follow(child.stdout.take().unwrap());
    (Running(child), applies)
}

/// The agent process, stopped even when the bench panics (its namespace goes first,
/// and a process left in a deleted namespace would run on unnoticed).
pub struct Running(pub Child);

impl Running {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// The agent's /metrics, from inside `ns`.
pub fn metrics(ns: &Netns) -> String {
    ns.run(|| {
        let mut s = TcpStream::connect("127.0.0.1:9641").ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut t = String::new();
        s.read_to_string(&mut t).ok()?;
        Some(t)
    })
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// Waits until the agent reports all `n` services programmed; the time it took from
/// `started`.
pub fn wait_programmed(ns: &Netns, n: usize, started: Instant) -> Duration {
    let programmed = format!("kubelvs_services{{dataplane=\"xdp\",outcome=\"Programmed\"}} {n}");
    while !metrics(ns).contains(&programmed) {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "no full apply within 900 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    started.elapsed()
}

/// Each apply that wrote something: when its log line (on stdout) arrived, and the
/// milliseconds it says the read, the plan and the apply took.
pub struct Applies(mpsc::Receiver<(Instant, [u64; 3])>);

impl Applies {
    fn follow(log: ChildStdout) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(log).lines() {
                let Ok(line) = line else { return };
                let field = |name: &str| {
                    line.split(&format!(" {name}="))
                        .nth(1)
                        .and_then(|w| w.split_whitespace().next())
                        .and_then(|w| w.parse::<u64>().ok())
                };
                if line.contains("applied") && field("writes").is_some_and(|w| w > 0) {
                    let stages = ["read_ms", "plan_ms", "took_ms"].map(|f| field(f).unwrap_or(0));
                    let _ = tx.send((Instant::now(), stages));
                }
            }
        });
        Self(rx)
    }

    /// Forgets the applies reported so far.
    pub fn drain(&self) {
        while self.0.try_recv().is_ok() {}
    }

    /// The next apply that wrote something.
    pub fn next(&self) -> (Instant, [u64; 3]) {
        self.0
            .recv_timeout(Duration::from_secs(600))
            .expect("no apply within 600 s")
    }
}

/// Edits timed to the apply that wrote them.
#[derive(Default)]
pub struct Edits {
    times: Vec<Duration>,
    stages: [Vec<u64>; 3],
    /// The slowest edit's time and stages.
    slowest: Option<(Duration, [u64; 3])>,
}

impl Edits {
    /// The edit made at `at` was applied as `applied` says.
    pub fn push(&mut self, at: Instant, (done, stages): (Instant, [u64; 3])) {
        let took = done.saturating_duration_since(at);
        self.times.push(took);
        if self.slowest.is_none_or(|(t, _)| took > t) {
            self.slowest = Some((took, stages));
        }
        for (all, ms) in self.stages.iter_mut().zip(stages) {
            all.push(ms);
        }
    }

    /// Median, p99 and max; then the stages' medians from the agent's log.
    pub fn report(&self) -> String {
        let mut t = self.times.clone();
        t.sort();
        let pct = |p: f64| t[((t.len() as f64 * p).ceil() as usize).clamp(1, t.len()) - 1];
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let [read, plan, apply] = self.stages.clone().map(|mut all| {
            all.sort();
            all[all.len() / 2]
        });
        let each: Vec<String> = self
            .times
            .iter()
            .map(|d| format!("{:.0}", ms(*d)))
            .collect();
        let [r, p, a] = self.slowest.map_or([0; 3], |(_, s)| s);
        format!(
            "{} edits: median {:.0} ms, p99 {:.0} ms, max {:.0} ms\n  of which (medians, from the agent's log) reading {read} ms, planning {plan} ms, applying {apply} ms\n  each in order (ms): {}; the slowest read {r} ms, planned {p} ms, applied {a} ms",
            t.len(),
            ms(pct(0.5)),
            ms(pct(0.99)),
            ms(*t.last().unwrap()),
            each.join(" "),
        )
    }
}
