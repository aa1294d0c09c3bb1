//! BGP announcement (AddressPools in mode `bgp`): every director announces each VIP
//! it can serve, as a /32 (/128), to the pool's peers, so the routers spread flows
//! over the directors (ECMP); a VIP it cannot serve (a port not programmed, no usable
//! real server) is withdrawn. The speaker is BIRD 2, run by the agent as a child that
//! dies with it (`PR_SET_PDEATHSIG`): an announcement never outlives the agent. The
//! agent owns BIRD's whole configuration; BIRD touches no kernel table here.
//!
//! [`servable`] and [`bird_config`] are pure; [`Speaker`] is the seam ([`Bird`]; tests
//! use a recording one).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kubelvs_crds::DirectorStatus;
use kubelvs_model::{BgpSession, NodePlan, ObjectRef};

/// The plan's sessions with only the VIPs this director can serve now: every
/// VirtualService on the VIP with an entry that says it announces (every port
/// programmed, at least one real server it sends connections to: the rule is
/// [`crate::status::directors`]', whose entries `directors` are).
pub fn servable(
    plan: &NodePlan,
    directors: &BTreeMap<ObjectRef, DirectorStatus>,
) -> Vec<BgpSession> {
    let mut ok: BTreeMap<IpAddr, bool> = BTreeMap::new();
    for s in &plan.services {
        let serves = directors.get(&s.source).is_some_and(|d| d.announcing);
        *ok.entry(s.key.vip).or_insert(true) &= serves;
    }
    plan.bgp_sessions
        .iter()
        .map(|s| BgpSession {
            vips: s
                .vips
                .iter()
                .copied()
                .filter(|v| ok.get(v).copied().unwrap_or(false))
                .collect(),
            ..s.clone()
        })
        .collect()
}

fn prefix(vip: IpAddr) -> String {
    match vip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// Secrets of the agents' namespace (standalone: of the file): name -> key -> value.
pub type Secrets = BTreeMap<String, BTreeMap<String, String>>;

/// TCP MD5 passwords by peer.
pub type Passwords = BTreeMap<IpAddr, String>;

/// The sessions whose password (if they name one) is found in `secrets`, their
/// passwords, and why the others are left out (naming the peer and the Secret).
pub fn with_passwords(
    sessions: &[BgpSession],
    secrets: &Secrets,
) -> (Vec<BgpSession>, Passwords, Vec<String>) {
    let (mut kept, mut passwords, mut refused) = (Vec::new(), Passwords::new(), Vec::new());
    for s in sessions {
        let Some((name, key)) = &s.password_secret else {
            kept.push(s.clone());
            continue;
        };
        match secrets.get(name).and_then(|k| k.get(key)) {
            None => refused.push(format!(
                "BGP peer {}: no key {key:?} in Secret {name:?} of the agents' namespace",
                s.peer
            )),
            // BIRD's string syntax, and RFC 2385's 80-byte key.
            Some(p) if p.len() > 80 || p.contains(['"', '\\', '\n']) => refused.push(format!(
                "BGP peer {}: the password in Secret {name:?} key {key:?} must be at most 80 \
                 characters without quotes, backslashes or newlines",
                s.peer
            )),
            Some(p) => {
                passwords.insert(s.peer, p.clone());
                kept.push(s.clone());
            }
        }
    }
    (kept, passwords, refused)
}

/// The GRACEFUL_SHUTDOWN community (RFC 8326): routers that honour it prefer any other
/// path to these routes, so traffic leaves a draining director before it withdraws.
pub const GRACEFUL_SHUTDOWN: (u16, u16) = (65535, 0);

/// BIRD 2's configuration for `sessions`, with `router_id` (an IPv4 address of the
/// node). Static blackhole routes hold the VIPs to announce; each session exports
/// only its own VIPs, next hop self, tagged [`GRACEFUL_SHUTDOWN`] when `draining`;
/// nothing is imported, and no kernel protocol is defined, so BIRD changes no routing
/// table of the node.
pub fn bird_config(
    router_id: std::net::Ipv4Addr,
    sessions: &[BgpSession],
    passwords: &Passwords,
    draining: bool,
) -> String {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# Written by kube-lvs-agent: every change is applied with `birdc configure`."
    );
    let _ = writeln!(c, "router id {router_id};");
    let _ = writeln!(c, "protocol device {{}}");
    if sessions.iter().any(|s| s.bfd) {
        let _ = writeln!(
            c,
            "protocol bfd {{ interface \"*\" {{ min rx interval 300 ms; min tx interval 300 ms; multiplier 3; }}; }}"
        );
    }
    let announced: BTreeSet<IpAddr> = sessions
        .iter()
        .flat_map(|s| s.vips.iter().copied())
        .collect();
    for (family, v4) in [("ipv4", true), ("ipv6", false)] {
        let _ = writeln!(c, "protocol static kubelvs_{family} {{");
        let _ = writeln!(c, "  {family};");
        for vip in announced.iter().filter(|v| v.is_ipv4() == v4) {
            let _ = writeln!(c, "  route {} blackhole;", prefix(*vip));
        }
        let _ = writeln!(c, "}}");
    }
    for (i, s) in sessions.iter().enumerate() {
        let family = if s.peer.is_ipv4() { "ipv4" } else { "ipv6" };
        let _ = writeln!(c, "protocol bgp peer{i} {{");
        let _ = writeln!(c, "  local as {};", s.local_asn);
        let _ = writeln!(
            c,
            "  neighbor {} port {} as {};",
            s.peer, s.port, s.peer_asn
        );
        let _ = writeln!(c, "  hold time {};", s.hold_time_seconds);
        if let Some(p) = passwords.get(&s.peer) {
            let _ = writeln!(c, "  password \"{p}\";");
        }
        let _ = writeln!(c, "  keepalive time {};", (s.hold_time_seconds / 3).max(1));
        // BIRD waits 5 s before its first connection by default, 120 s between tries.
        let _ = writeln!(c, "  connect delay time 1;");
        let _ = writeln!(c, "  connect retry time 5;");
        if s.bfd {
            let _ = writeln!(c, "  bfd on;");
        }
        let _ = writeln!(c, "  {family} {{");
        let _ = writeln!(c, "    import none;");
        if s.vips.is_empty() {
            let _ = writeln!(c, "    export none;");
        } else {
            let set: Vec<String> = s.vips.iter().map(|v| prefix(*v)).collect();
            let tag = if draining {
                format!(
                    "bgp_community.add(({}, {})); ",
                    GRACEFUL_SHUTDOWN.0, GRACEFUL_SHUTDOWN.1
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                c,
                "    export filter {{ if net ~ [ {} ] then {{ {tag}accept; }} reject; }};",
                set.join(", ")
            );
        }
        let _ = writeln!(c, "    next hop self;");
        let _ = writeln!(c, "  }};");
        let _ = writeln!(c, "}}");
    }
    c
}

/// What announces the configuration.
pub trait Speaker: Send {
    /// Makes the speaker run `config` (starting it the first time).
    fn configure(&mut self, config: &str) -> Result<(), String>;
}

/// BIRD 2 (`bird`, `birdc` from Debian's bird2), configured in `dir`.
#[derive(Debug)]
pub struct Bird {
    bird: PathBuf,
    birdc: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
}

impl Bird {
    /// `bird` is the daemon's path; `birdc` is looked for next to it.
    pub fn new(bird: &Path, dir: &Path) -> Self {
        let birdc = bird.with_file_name("birdc");
        Self {
            bird: bird.to_owned(),
            birdc,
            dir: dir.to_owned(),
            child: None,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("bird.conf")
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    #[allow(unsafe_code)]
    fn start(&mut self) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let _ = std::fs::remove_file(self.socket());
        let mut cmd = Command::new(&self.bird);
        cmd.arg("-f")
            .arg("-c")
            .arg(self.config_path())
            .arg("-s")
            .arg(self.socket())
            .stdin(Stdio::null());
        // SAFETY: prctl is async-signal-safe and the closure allocates nothing. BIRD
        // must die with the agent: its routes would outlive the agent otherwise.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bird.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.socket().exists() {
            if !self.running() {
                return Err(format!(
                    "{} exited at start (its configuration: {})",
                    self.bird.display(),
                    self.config_path().display()
                ));
            }
            if Instant::now() > deadline {
                return Err("BIRD did not open its control socket within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Speaker for Bird {
    fn configure(&mut self, config: &str) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let tmp = self.config_path().with_extension("tmp");
        // It may hold BGP passwords: readable by root alone.
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
            f.write_all(config.as_bytes())
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
        }
        std::fs::rename(&tmp, self.config_path()).map_err(|e| e.to_string())?;
        if !self.running() {
            return self.start();
        }
        let out = Command::new(&self.birdc)
            .arg("-s")
            .arg(self.socket())
            .arg("configure")
            .output()
            .map_err(|e| format!("{}: {e}", self.birdc.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && text.contains("Reconfigur") {
            Ok(())
        } else {
            Err(format!(
                "birdc configure: {}{}",
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

/// Keeps the speaker in step with the plan: started the first time a session is
/// wanted, reconfigured when what to announce changed (and after a failure).
pub struct Announcements {
    make: Box<dyn FnMut() -> Box<dyn Speaker> + Send>,
    speaker: Option<Box<dyn Speaker>>,
    applied: Option<String>,
    /// What was last asked for: the router id, the sessions and their passwords.
    wanted: Option<(std::net::Ipv4Addr, Vec<BgpSession>, Passwords)>,
}

impl std::fmt::Debug for Announcements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcements")
            .field("applied", &self.applied.is_some())
            .finish_non_exhaustive()
    }
}

impl Announcements {
    /// `make` builds the speaker when one is first needed.
    pub fn new(make: impl FnMut() -> Box<dyn Speaker> + Send + 'static) -> Self {
        Self {
            make: Box::new(make),
            speaker: None,
            applied: None,
            wanted: None,
        }
    }

    /// Announces what `sessions` say (see [`servable`]), with the passwords they name
    /// from `secrets`; `Ok(true)` when the speaker was (re)configured. A session whose
    /// password is missing is left out, and said so in the error, the others applied.
    pub fn update(
        &mut self,
        addresses: &[IpAddr],
        secrets: &Secrets,
        sessions: &[BgpSession],
    ) -> Result<bool, String> {
        if sessions.is_empty() && self.speaker.is_none() {
            return Ok(false);
        }
        let router_id = addresses
            .iter()
            .find_map(|a| match a {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .ok_or("BGP needs an IPv4 address of the node for its router id (--node-address)")?;
        let (sessions, passwords, refused) = with_passwords(sessions, secrets);
        let changed = self.configure(bird_config(router_id, &sessions, &passwords, false));
        self.wanted = Some((router_id, sessions, passwords));
        match (changed, refused.is_empty()) {
            (Err(e), _) => Err(e),
            (Ok(c), true) => Ok(c),
            (Ok(_), false) => Err(refused.join("; ")),
        }
    }

    /// Before the agent stops: every announcement tagged [`GRACEFUL_SHUTDOWN`], so the
    /// routers move traffic to the other directors while this one still forwards.
    /// `Ok(true)` when there was something to drain (then wait before stopping).
    pub fn drain(&mut self) -> Result<bool, String> {
        let Some((router_id, sessions, passwords)) = self.wanted.clone() else {
            return Ok(false);
        };
        if sessions.iter().all(|s| s.vips.is_empty()) {
            return Ok(false);
        }
        self.configure(bird_config(router_id, &sessions, &passwords, true))
            .map(|_| true)
    }

    fn configure(&mut self, config: String) -> Result<bool, String> {
        if self.applied.as_ref() == Some(&config) {
            return Ok(false);
        }
        let speaker = self.speaker.get_or_insert_with(|| (self.make)());
        self.applied = None;
        speaker.configure(&config)?;
        self.applied = Some(config);
        Ok(true)
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubelvs_model::ObjectKind;
    use kubelvs_model::*;

    fn session(vips: &[&str]) -> BgpSession {
        BgpSession {
            local_asn: 64512,
            peer: "192.0.2.250".parse().unwrap(),
            peer_asn: 64500,
            port: 179,
            hold_time_seconds: 9,
            bfd: true,
            password_secret: None,
            vips: vips.iter().map(|v| v.parse().unwrap()).collect(),
        }
    }

    fn service(vip: &str, vs: &str) -> Service {
        Service {
            key: ServiceKey {
                vip: vip.parse().unwrap(),
                port: 80,
                protocol: Protocol::Tcp,
            },
            scheduler: Scheduler::Maglev,
            scheduler_flags: SchedulerFlags::default(),
            forwarding: Forwarding::Dr,
            persistence: None,
            source_address: None,
            health_check: None,
            dataplane: DataplaneKind::Xdp,
            real_servers: vec![],
            source: ObjectRef::new(ObjectKind::VirtualService, "lab", vs),
        }
    }

    #[test]
    fn only_vips_programmed_with_a_usable_real_server_are_announced() {
        let plan = NodePlan {
            services: vec![
                service("203.0.113.1", "ok"),
                service("203.0.113.2", "failed"),
                service("203.0.113.3", "empty"),
                service("203.0.113.4", "ok"),
                service("203.0.113.4", "failed"),
            ],
            bgp_sessions: vec![session(&[
                "203.0.113.1",
                "203.0.113.2",
                "203.0.113.3",
                "203.0.113.4",
            ])],
            ..NodePlan::default()
        };
        // As `status::directors` says it for BGP VIPs.
        let entry = |programmed, healthy| DirectorStatus {
            programmed,
            healthy_real_servers: healthy,
            announcing: programmed && healthy > 0,
            ..DirectorStatus::default()
        };
        let directors = [
            ("ok", entry(true, 2)),
            ("failed", entry(false, 2)),
            ("empty", entry(true, 0)),
        ]
        .into_iter()
        .map(|(n, e)| (ObjectRef::new(ObjectKind::VirtualService, "lab", n), e))
        .collect();
        let s = servable(&plan, &directors);
        assert_eq!(
            s[0].vips,
            ["203.0.113.1".parse::<IpAddr>().unwrap()].into(),
            "a VIP one of whose ports fails is withdrawn whole"
        );
    }

    #[derive(Default, Clone)]
    struct Recorded(std::sync::Arc<std::sync::Mutex<Vec<String>>>, bool);

    impl Speaker for Recorded {
        fn configure(&mut self, config: &str) -> Result<(), String> {
            self.0.lock().unwrap().push(config.to_owned());
            if self.1 {
                Err("refused".into())
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn the_speaker_starts_when_needed_and_hears_only_changes() {
        let rec = Recorded::default();
        let seen = rec.0.clone();
        let make = move || Box::new(rec.clone()) as Box<dyn Speaker>;
        let mut a = Announcements::new(make);
        let addrs = ["192.0.2.2".parse().unwrap()];
        assert_eq!(
            a.update(&addrs, &Secrets::new(), &[]),
            Ok(false),
            "no BGP: no speaker"
        );
        assert_eq!(
            a.update(&addrs, &Secrets::new(), &[session(&["203.0.113.1"])]),
            Ok(true)
        );
        assert_eq!(
            a.update(&addrs, &Secrets::new(), &[session(&["203.0.113.1"])]),
            Ok(false)
        );
        // Withdrawn: the speaker stays, announcing nothing.
        assert_eq!(a.update(&addrs, &Secrets::new(), &[]), Ok(true));
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert!(a
            .update(
                &["2001:db8::2".parse().unwrap()],
                &Secrets::new(),
                &[session(&[])]
            )
            .is_err());
    }

    #[test]
    fn a_refused_configuration_is_tried_again() {
        let rec = Recorded(Default::default(), true);
        let seen = rec.0.clone();
        let mut a = Announcements::new(move || Box::new(rec.clone()) as Box<dyn Speaker>);
        let addrs = ["192.0.2.2".parse().unwrap()];
        assert!(a
            .update(&addrs, &Secrets::new(), &[session(&["203.0.113.1"])])
            .is_err());
        assert!(a
            .update(&addrs, &Secrets::new(), &[session(&["203.0.113.1"])])
            .is_err());
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_session_gets_the_password_its_secret_holds_or_is_left_out_saying_why() {
        let mut with = session(&["203.0.113.1"]);
        with.password_secret = Some(("bgp".into(), "tor1".into()));
        let mut other = with.clone();
        other.peer = "192.0.2.251".parse().unwrap();
        other.password_secret = Some(("bgp".into(), "missing".into()));
        let secrets: Secrets = [(
            "bgp".to_owned(),
            [("tor1".to_owned(), "s3cret".to_owned())].into(),
        )]
        .into();
        let (kept, passwords, refused) = with_passwords(&[with.clone(), other], &secrets);
        assert_eq!(kept, [with.clone()]);
        assert_eq!(passwords[&with.peer], "s3cret");
        assert!(
            refused[0].contains("192.0.2.251") && refused[0].contains("missing"),
            "{refused:?}"
        );
        let c = bird_config("192.0.2.2".parse().unwrap(), &kept, &passwords, false);
        assert!(c.contains("password \"s3cret\";"), "{c}");
        let quoted: Secrets = [(
            "bgp".to_owned(),
            [("tor1".to_owned(), "a\"b".to_owned())].into(),
        )]
        .into();
        let (kept, _, refused) = with_passwords(&[with], &quoted);
        assert!(
            kept.is_empty() && refused[0].contains("quotes"),
            "{refused:?}"
        );
    }

    #[test]
    fn the_configuration_exports_each_sessions_vips_and_imports_nothing() {
        let c = bird_config(
            "192.0.2.2".parse().unwrap(),
            &[session(&["203.0.113.1", "203.0.113.2"])],
            &Passwords::new(),
            false,
        );
        assert!(c.contains("router id 192.0.2.2;"), "{c}");
        assert!(c.contains("route 203.0.113.1/32 blackhole;"), "{c}");
        assert!(c.contains("neighbor 192.0.2.250 port 179 as 64500;"), "{c}");
        assert!(
            c.contains(
                "export filter { if net ~ [ 203.0.113.1/32, 203.0.113.2/32 ] then { accept; } reject; };"
            ),
            "{c}"
        );
        assert!(c.contains("import none;"), "{c}");
        assert!(c.contains("bfd on;") && c.contains("multiplier 3"), "{c}");
        assert!(
            !c.contains("protocol kernel"),
            "BIRD must not touch the node's routes: {c}"
        );
        let draining = bird_config(
            "192.0.2.2".parse().unwrap(),
            &[session(&["203.0.113.1"])],
            &Passwords::new(),
            true,
        );
        assert!(
            draining.contains("bgp_community.add((65535, 0)); accept;"),
            "{draining}"
        );
        let withdrawn = bird_config(
            "192.0.2.2".parse().unwrap(),
            &[session(&[])],
            &Passwords::new(),
            false,
        );
        assert!(withdrawn.contains("export none;"), "{withdrawn}");
        assert!(!withdrawn.contains("blackhole"), "{withdrawn}");
    }
}
