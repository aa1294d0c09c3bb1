//! Restarts, stops, edits and mistakes lose nothing: `kube-lvs-agent` standalone in the
//! netns lab (director on XDP, DR, real servers with their own agents), as a user
//! running it in namespaces would.
//!
//! - A stopped director agent (not restarting) leaves forwarding working: new
//!   connections and open ones, with pins on a bpffs the host sees. The agent says at
//!   start what its veth and its pins need.
//! - A real server known to be down stays out across an edit of the check's timing
//!   and across an agent restart.
//! - A truncated or half-written file changes nothing, also for an agent started on
//!   it; an empty List removes everything, deliberately.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use kubelvs_xdp_lab::bpf::Attached;
use kubelvs_xdp_lab::server::TcpServer;
use kubelvs_xdp_lab::topology::{Host, Lab};
use kubelvs_xdp_lab::LabConfig;

fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn director_args(lab: &Lab, file: &Path, dir: &Path, pin: &Path) -> Vec<String> {
    let (file, pin, addr) = (
        file.display().to_string(),
        pin.display().to_string(),
        lab.director.addr.to_string(),
    );
    agent_args(
        &lab.director,
        dir,
        &[
            "--config",
            &file,
            "--node-label",
            "node-role.kubelvs.io/director=",
            "--dataplane",
            "xdp",
            "--xdp-pin-dir",
            &pin,
            "--node-address",
            &addr,
        ],
    )
}

fn real_server_args(rs: &Host, file: &Path, dir: &Path) -> Vec<String> {
    let (file, addr) = (file.display().to_string(), rs.addr.to_string());
    agent_args(
        rs,
        dir,
        &[
            "--config",
            &file,
            "--dataplane",
            "none",
            "--node-address",
            &addr,
        ],
    )
}

/// The lab with its servers and real-server agents, a file, and a host bpffs.
struct Setup {
    lab: Lab,
    _pass: Attached,
    _app: Vec<TcpServer>,
    health: Vec<Option<TcpServer>>,
    rs_agents: Vec<Agent>,
    file: std::path::PathBuf,
    dir: std::path::PathBuf,
    bpffs: HostBpffs,
}

impl Setup {
    fn new() -> Self {
        let lab = Lab::build(LabConfig {
            vip_on_real_servers: false,
            ..LabConfig::default()
        })
        .unwrap();
        // The director's XDP_TX frames are received by the bridge only if its veth
        // peer runs XDP (the agent says so at start: see `stopped_agent...`).
        let pass = Attached::attach(&lab.bridge, &lab.director.bridge_port, "xdp_pass").unwrap();
        let dir = std::env::temp_dir().join(format!("kubelvs-restarts-{}", lab.bridge.name()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("lab.yaml");
        write_config(&file, &lab_objects(&lab, "dr", PORT, true, &[0, 1, 2]));
        let app = lab.start_servers(PORT).unwrap();
        let health = lab
            .real_servers
            .iter()
            .map(|rs| Some(TcpServer::start(&rs.netns, HEALTH_PORT, &rs.role).unwrap()))
            .collect();
        let rs_agents = lab
            .real_servers
            .iter()
            .map(|rs| Agent::start(rs, &real_server_args(rs, &file, &dir), &dir))
            .collect();
        let bpffs = HostBpffs::mount(lab.bridge.name());
        Self {
            lab,
            _pass: pass,
            _app: app,
            health,
            rs_agents,
            file,
            dir,
            bpffs,
        }
    }

    fn pin(&self) -> std::path::PathBuf {
        self.bpffs.dir.join("director")
    }

    fn start_director(&self) -> Agent {
        let args = director_args(&self.lab, &self.file, &self.dir, &self.pin());
        Agent::start(&self.lab.director, &args, &self.dir)
    }

    fn wait_ready(&self, director: &Agent) {
        eventually(Duration::from_secs(20), "director ready", || {
            http_get(&self.lab.director.netns, "/readyz").filter(|(s, _)| *s == 200)
        });
        assert!(!director.log().contains("panicked"), "{}", director.log());
    }

    fn every_real_server_answers(&self) {
        eventually(Duration::from_secs(10), "every real server answers", || {
            let r = reached(&self.lab, 30);
            ["rs1", "rs2", "rs3"]
                .iter()
                .all(|rs| r.iter().any(|x| x == rs))
                .then_some(r)
        });
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.rs_agents.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
#[ignore = "privileged: netns + XDP + bpffs"]
fn a_stopped_or_restarted_director_agent_loses_no_connection() {
    let s = Setup::new();
    let mut director = s.start_director();
    s.wait_ready(&director);
    s.every_real_server_answers();
    // Said at start: the lab's interface is a veth (its peer runs XDP_PASS here); the
    // pins are on the host's bpffs, so nothing to say about them.
    let log = director.log();
    assert!(
        log.contains("is a veth") && log.contains("XDP_PASS"),
        "{log}"
    );
    assert!(!log.contains("pin directory"), "{log}");

    // Stopped for good: forwarding goes on, for new connections and open ones.
    let mut long = open(&s.lab);
    let rs = long.real_server().to_owned();
    director.stop();
    let stopped = Instant::now();
    let mut rounds = 0;
    while stopped.elapsed() < Duration::from_secs(3) {
        let r = reached_at_once(&s.lab, 10);
        assert!(
            r.iter().all(|x| !x.starts_with("error")),
            "new connections with the agent stopped {:?}: {r:?}",
            stopped.elapsed()
        );
        let msg = format!("stopped {rounds}");
        assert_eq!(long.echo(&msg).unwrap(), format!("{rs} {msg}"));
        rounds += 1;
    }
    eprintln!(
        "agent stopped: {} rounds of 10 new connections, open one kept",
        rounds
    );

    // Restarted, five times, with a connection open across each and new ones after.
    for i in 0..5 {
        director = s.start_director();
        s.wait_ready(&director);
        let r = reached_at_once(&s.lab, 10);
        assert!(
            r.iter().all(|x| !x.starts_with("error")),
            "restart {i}: {r:?}"
        );
        let msg = format!("restart {i}");
        assert_eq!(long.echo(&msg).unwrap(), format!("{rs} {msg}"));
        director.stop();
    }

    // Under `ip netns exec` with pins on /sys/fs/bpf (that namespace's own bpffs),
    // the agent says its pins will not outlive it.
    let private_pin = std::path::PathBuf::from("/sys/fs/bpf").join(s.lab.bridge.name());
    let before = director.log().len();
    let args = director_args(&s.lab, &s.file, &s.dir, &private_pin);
    // The host-pinned director is still attached through its pinned link: unpinned,
    // it detaches.
    std::fs::remove_dir_all(s.pin()).unwrap();
    let private = Agent::start(&s.lab.director, &args, &s.dir);
    s.wait_ready(&private);
    let log = private.log()[before..].to_owned();
    assert!(
        log.contains("pin directory") && log.contains("ip netns exec"),
        "{log}"
    );
}

/// Counts of "objects read" (one per reload of the file) in the agent's log so far.
fn reloads(agent: &Agent) -> usize {
    agent.log().matches("objects read").count()
}

#[test]
#[ignore = "privileged: netns + XDP + bpffs"]
fn check_edits_restarts_and_truncated_files_put_nothing_back_and_remove_nothing() {
    let mut s = Setup::new();
    let mut director = s.start_director();
    s.wait_ready(&director);
    s.every_real_server_answers();

    // rs2's health endpoint stops: quiesced.
    s.health[1] = None;
    eventually(
        Duration::from_secs(FALL * INTERVAL_S + 3),
        "rs2 quiesced",
        || (!reached(&s.lab, 12).iter().any(|x| x == "rs2")).then_some(()),
    );

    // An edit of the check's timing keeps rs2 out.
    let n = reloads(&director);
    let objects = lab_objects(&s.lab, "dr", PORT, true, &[0, 1, 2]);
    let edited = objects.replace(
        &format!("intervalSeconds: {INTERVAL_S}"),
        &format!("intervalSeconds: {}", INTERVAL_S + 1),
    );
    assert_ne!(edited, objects);
    write_config(&s.file, &edited);
    eventually(Duration::from_secs(3), "edit read", || {
        (reloads(&director) > n).then_some(())
    });
    let r = reached_at_once(&s.lab, 30);
    assert!(!r.iter().any(|x| x == "rs2"), "after the edit: {r:?}");
    assert!(r.iter().all(|x| !x.starts_with("error")), "{r:?}");

    // A restart of the director's agent keeps rs2 out too.
    director.stop();
    director = s.start_director();
    s.wait_ready(&director);
    let r = reached_at_once(&s.lab, 30);
    assert!(!r.iter().any(|x| x == "rs2"), "after the restart: {r:?}");
    assert!(director.log().contains("start down"), "{}", director.log());
    // It comes back when its check passes again.
    s.health[1] = Some(TcpServer::start(&s.lab.real_servers[1].netns, HEALTH_PORT, "rs2").unwrap());
    s.every_real_server_answers();

    // Truncated (`generate > lab.yaml`), then cut short in its first object: refused by
    // every agent, nothing removed.
    let refused = |h: &Host| metric(h, "kubelvs_config_refused_total").unwrap_or(0.0);
    for (i, text) in ["", &edited[..40]].into_iter().enumerate() {
        std::fs::write(&s.file, text).unwrap();
        let want = (i + 1) as f64;
        eventually(Duration::from_secs(3), "refused by the director", || {
            (refused(&s.lab.director) >= want).then_some(())
        });
        for rs in &s.lab.real_servers {
            eventually(Duration::from_secs(3), "refused by a real server", || {
                (refused(rs) >= want).then_some(())
            });
            let lo = rs.netns.ip(&["-o", "addr", "show", "dev", "lo"]).unwrap();
            assert!(
                lo.contains(&format!(" {}/32 ", s.lab.vip)),
                "{}: {lo}",
                rs.role
            );
        }
        let r = reached_at_once(&s.lab, 30);
        assert!(r.iter().all(|x| !x.starts_with("error")), "{text:?}: {r:?}");
        assert!(
            ["rs1", "rs2", "rs3"]
                .iter()
                .all(|rs| r.iter().any(|x| x == rs)),
            "{r:?}"
        );
    }
    // An agent started on the empty file leaves what its predecessor programmed, and
    // is not ready.
    std::fs::write(&s.file, "").unwrap();
    director.stop();
    let before = director.log().len();
    director = s.start_director();
    eventually(
        Duration::from_secs(10),
        "the new agent refused the file",
        || {
            director.log()[before..]
                .contains("configuration not applied")
                .then_some(())
        },
    );
    let status = eventually(Duration::from_secs(5), "/readyz answers", || {
        http_get(&s.lab.director.netns, "/readyz").map(|(status, _)| status)
    });
    assert_eq!(status, 503);
    let r = reached_at_once(&s.lab, 30);
    assert!(r.iter().all(|x| !x.starts_with("error")), "{r:?}");

    // Deliberately empty: everything goes, on the director and the real servers.
    write_config(&s.file, "apiVersion: v1\nkind: List\nitems: []\n");
    s.wait_ready(&director);
    eventually(
        Duration::from_secs(5),
        "VIP gone from the real servers",
        || {
            s.lab
                .real_servers
                .iter()
                .all(|rs| {
                    let lo = rs.netns.ip(&["-o", "addr", "show", "dev", "lo"]).unwrap();
                    !lo.contains(&format!(" {}/32 ", s.lab.vip))
                })
                .then_some(())
        },
    );
    eventually(Duration::from_secs(5), "the VIP no longer served", || {
        reached_at_once(&s.lab, 3)
            .iter()
            .all(|x| x.starts_with("error"))
            .then_some(())
    });
    assert!(!director.log().contains("panicked"), "{}", director.log());
    drop(director);
    let _ = std::fs::remove_dir_all(s.pin());
}
