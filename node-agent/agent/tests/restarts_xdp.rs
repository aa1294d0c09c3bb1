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

use std::time::{Duration, Instant};

use common::*;
use kubelvs_xdp_lab::bpf::Attached;
use kubelvs_xdp_lab::server::TcpServer;
use kubelvs_xdp_lab::topology::{Host, Lab};
use kubelvs_xdp_lab::LabConfig;

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
        Self::prepared(|_| {})
    }

    /// With `others` run on the lab before any agent starts (what other software made).
    fn prepared(others: impl FnOnce(&Lab)) -> Self {
        let lab = Lab::build(LabConfig {
            vip_on_real_servers: false,
            ..LabConfig::default()
        })
        .unwrap();
        others(&lab);
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
        let args = director_args(&self.lab, &self.file, &self.dir, &self.pin(), &[]);
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
    let args = director_args(&s.lab, &s.file, &s.dir, &private_pin, &[]);
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

    // rs2's health endpoint stops: quiesced. The agent's word first (a dozen
    // connections can miss a healthy rs2 by chance), then the traffic.
    s.health[1] = None;
    eventually(
        Duration::from_secs(FALL * INTERVAL_S + 3),
        "rs2 down in the agent's log",
        || director.log().contains("real server down").then_some(()),
    );
    eventually(Duration::from_secs(3), "rs2 quiesced", || {
        let r = reached(&s.lab, 30);
        (!r.iter().any(|x| x == "rs2") && r.iter().all(|x| !x.starts_with("error"))).then_some(())
    });

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

/// `kube-lvs-agent ARGS --cleanup` on `host`, to the end: success and its log.
fn cleanup(host: &Host, args: &[String]) -> (bool, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", host.netns.name(), AGENT])
        .args(args)
        .arg("--cleanup")
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), log)
}

fn addresses(host: &Host, dev: &str) -> String {
    host.netns.ip(&["-o", "addr", "show", "dev", dev]).unwrap()
}

#[test]
#[ignore = "privileged: netns + XDP + bpffs"]
fn cleanup_removes_what_kube_lvs_owns_and_restores_what_it_changed() {
    const OTHERS: &str = "198.51.100.77";
    let s = Setup::prepared(|lab| {
        // Made by others before kube-lvs came: an address on the director's interface
        // and on a real server's lo, and a real server's own ARP announce policy.
        lab.director
            .netns
            .ip(&[
                "addr",
                "add",
                &format!("{OTHERS}/32"),
                "dev",
                &lab.director.ifname,
            ])
            .unwrap();
        let rs1 = &lab.real_servers[0];
        rs1.netns
            .ip(&["addr", "add", &format!("{OTHERS}/32"), "dev", "lo"])
            .unwrap();
        rs1.netns
            .sysctl("net.ipv4.conf.all.arp_announce", "1")
            .unwrap();
    });
    let mut director = s.start_director();
    s.wait_ready(&director);
    s.every_real_server_answers();
    let vip = format!(" {}/32 ", s.lab.vip);
    assert!(addresses(&s.lab.director, &s.lab.director.ifname).contains(&vip));
    for rs in &s.lab.real_servers {
        assert!(addresses(rs, "lo").contains(&vip), "{}", rs.role);
        assert_eq!(
            rs.netns
                .sysctl_get("net.ipv4.conf.all.arp_announce")
                .unwrap(),
            "2"
        );
    }

    // Uninstall: the agents stop, then each runs --cleanup with its own flags.
    director.stop();
    let mut s = s;
    s.rs_agents.clear();
    let (ok, log) = cleanup(
        &s.lab.director,
        &director_args(&s.lab, &s.file, &s.dir, &s.pin(), &[]),
    );
    assert!(ok, "{log}");
    assert!(log.contains("left nothing"), "{log}");
    for rs in &s.lab.real_servers {
        let (ok, log) = cleanup(rs, &real_server_args(rs, &s.file, &s.dir));
        assert!(ok, "{}: {log}", rs.role);
    }

    // Nothing of kube-lvs is left: VIPs, the XDP program and its pins, sysctls,
    // state files; what others made is there as it was.
    let director_addrs = addresses(&s.lab.director, &s.lab.director.ifname);
    assert!(!director_addrs.contains(&vip), "{director_addrs}");
    assert!(
        director_addrs.contains(&format!(" {OTHERS}/32 ")),
        "{director_addrs}"
    );
    let link = s
        .lab
        .director
        .netns
        .ip(&["-d", "link", "show", "dev", &s.lab.director.ifname])
        .unwrap();
    assert!(!link.contains("prog/xdp"), "{link}");
    assert!(!s.pin().exists(), "{}", s.pin().display());
    for rs in &s.lab.real_servers {
        let lo = addresses(rs, "lo");
        assert!(!lo.contains(&vip), "{}: {lo}", rs.role);
        for iface in ["all", kubelvs_xdp_lab::topology::HOST_IFNAME] {
            let key = format!("net.ipv4.conf.{iface}.arp_ignore");
            assert_eq!(
                rs.netns.sysctl_get(&key).unwrap(),
                "0",
                "{}: {key}",
                rs.role
            );
        }
        let announce = rs
            .netns
            .sysctl_get("net.ipv4.conf.all.arp_announce")
            .unwrap();
        let before = if rs.role == "rs1" { "1" } else { "0" };
        assert_eq!(announce, before, "{}", rs.role);
    }
    assert!(addresses(&s.lab.real_servers[0], "lo").contains(&format!(" {OTHERS}/32 ")));
    for host in std::iter::once(&s.lab.director).chain(&s.lab.real_servers) {
        let state = s.dir.join(format!("state-{}", host.role));
        for f in ["netconf-owned", "ipvs-owned", "health-down"] {
            assert!(!state.join(f).exists(), "{}: {f}", host.role);
        }
    }
    let r = reached_at_once(&s.lab, 3);
    assert!(r.iter().all(|x| x.starts_with("error")), "{r:?}");

    // Again: nothing to do, and it says so.
    let (ok, log) = cleanup(
        &s.lab.director,
        &director_args(&s.lab, &s.file, &s.dir, &s.pin(), &[]),
    );
    assert!(ok && log.contains("left nothing"), "{log}");
}

#[test]
#[ignore = "privileged: netns + XDP + bpffs"]
fn a_real_servers_new_mac_is_programmed_as_soon_as_the_director_learns_it() {
    let s = Setup::new();
    // No health check: its probes' results would wake the agent too, and only the
    // neighbour table may here.
    write_config(&s.file, &lab_objects(&s.lab, "dr", PORT, false, &[0, 1, 2]));
    let director = s.start_director();
    s.wait_ready(&director);
    s.every_real_server_answers();

    // rs2 gets a new MAC (a replaced NIC, a VM moved): DR frames to the old one are
    // lost until the director's XDP maps have the new one.
    let rs2 = &s.lab.real_servers[1];
    let mac = [0x02, 0x6b, 0x6c, 0x76, 0x73, 0x12];
    let text = mac.map(|b| format!("{b:02x}")).join(":");
    rs2.netns
        .ip(&["link", "set", "dev", &rs2.ifname, "address", &text])
        .unwrap();
    // It announces itself (an ARP request to the director, as a gratuitous ARP would):
    // the director's kernel updates its neighbour entry.
    let (ifindex, addr, to) = (rs2.ifindex, rs2.addr, s.lab.director.addr);
    let applies = || metric(&s.lab.director, "kubelvs_apply_duration_seconds_count");
    let before = applies();
    rs2.netns
        .run(|| kubelvs_xdp_lab::arp::who_has(ifindex, mac, addr, to, Duration::ZERO))
        .unwrap()
        .unwrap();
    let learnt = Instant::now();
    // The apply it causes (nothing else wakes this agent: no check, no edit).
    let applied = eventually(Duration::from_secs(5), "an apply", || {
        (applies() > before).then(|| learnt.elapsed())
    });
    let neigh = s
        .lab
        .director
        .netns
        .ip(&["neigh", "show", &addr.to_string()])
        .unwrap();
    assert!(neigh.contains(&text), "{neigh}");
    eprintln!("applied {applied:?} after the director learnt the new MAC");
    assert!(applied < Duration::from_millis(500), "{applied:?}");
    let r = reached_at_once(&s.lab, 30);
    assert!(r.iter().any(|x| x == "rs2"), "{r:?}");
    assert!(r.iter().all(|x| !x.starts_with("error")), "{r:?}");
    assert!(!director.log().contains("panicked"), "{}", director.log());
}

/// The VIP is a local address of the director: without a rule, every listener of the
/// director host (sshd, the kubelet, the agent's metrics) answers on it. The XDP
/// program drops what reaches a VIP on a port no virtual service has.
#[test]
#[ignore = "privileged: netns + XDP + bpffs"]
fn the_directors_own_listeners_do_not_answer_on_the_vip() {
    let s = Setup::new();
    let director = s.start_director();
    s.wait_ready(&director);
    s.every_real_server_answers();
    const SSH: u16 = 2222;
    let _own = TcpServer::start(&s.lab.director.netns, SSH, "director").unwrap();
    let connect = |addr: std::net::Ipv4Addr| {
        let to = std::net::SocketAddr::from((addr, SSH));
        s.lab
            .client
            .netns
            .run(move || {
                kubelvs_xdp_lab::client::Conn::open(to, Duration::from_secs(1))
                    .map(|c| c.real_server().to_owned())
            })
            .unwrap()
    };
    // The listener is there, on the director's own address.
    assert_eq!(connect(s.lab.director.addr).unwrap(), "director");
    // Not on the VIP.
    let e = connect(s.lab.vip).unwrap_err().to_string();
    assert!(e.contains("connect"), "{e}");
    // The served port still is.
    let r = reached_at_once(&s.lab, 10);
    assert!(r.iter().all(|x| !x.starts_with("error")), "{r:?}");
}
