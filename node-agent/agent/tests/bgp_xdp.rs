//! BGP announcement with real BIRD 2 on both sides: a router namespace (BIRD with
//! ECMP into its kernel, BFD, L4 multipath hashing, GRACEFUL_SHUTDOWN honoured) in
//! front of three XDP directors, each an agent standalone on a file whose AddressPool
//! announces by BGP (TCP MD5 password from a Secret in the file); three DR real
//! servers. The VirtualService applied, the VIP's
//! route reaches the router through every director and connections spread over them;
//! one director is drained (its agent stopped: GRACEFUL_SHUTDOWN, then withdrawn)
//! and another dies (link cut, agent killed: BFD withdraws its path), and no
//! connection is lost (Maglev on every director).

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use kubelvs_xdp_lab::bpf::Attached;
use kubelvs_xdp_lab::topology::{Host, Lab, HOST_IFNAME};
use kubelvs_xdp_lab::LabConfig;

const DIRECTOR2_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
const DIRECTOR3_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 4);
const ROUTER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 250);
const BIRD: &str = "/usr/sbin/bird";
/// The sessions' TCP MD5 password: the directors read it from a Secret in their file.
const PASSWORD: &str = "kube-lvs-bgp";
const CONNECTIONS: usize = 100;

/// One lab at a time: the withdrawal times measured are one router's and its
/// directors', not two labs' on the same cores.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
/// How long a stopping agent keeps its announcements up, tagged GRACEFUL_SHUTDOWN.
const DRAIN_SECONDS: u64 = 3;

/// BIRD on the router: any director of 192.0.2.0/24 may peer (AS 64512), what it
/// learns goes to the kernel with equal paths merged (ECMP), BFD on every session, and
/// a path tagged GRACEFUL_SHUTDOWN is least preferred (RFC 8326), so it leaves ECMP.
fn router_config(bfd: bool) -> String {
    let bfd = if bfd { "bfd on;" } else { "" };
    format!(
        "router id {ROUTER_ADDR};
protocol device {{}}
protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}
protocol bfd {{ interface \"*\" {{ min rx interval 300 ms; min tx interval 300 ms; multiplier 3; }}; }}
protocol bgp directors {{
  local as 64500;
  neighbor range 192.0.2.0/24 as 64512;
  password \"{PASSWORD}\";
  hold time 9;
  {bfd}
  ipv4 {{
    import filter {{ if (65535, 0) ~ bgp_community then bgp_local_pref = 0; accept; }};
    export none;
  }};
}}
"
    )
}

/// The router's BIRD, stopped on drop.
struct RouterBird(std::process::Child);

impl Drop for RouterBird {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_router_bird(router: &Host, dir: &Path, bfd: bool) -> RouterBird {
    let conf = dir.join("router-bird.conf");
    std::fs::write(&conf, router_config(bfd)).unwrap();
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", router.netns.name(), BIRD, "-f", "-c"])
        .arg(&conf)
        .arg("-s")
        .arg(dir.join("router-bird.ctl"));
    RouterBird(kubelvs_test_cluster::spawn_tied(cmd).unwrap())
}

/// The directors the router's route to the VIP goes through.
fn next_hops(router: &Host, vip: &str) -> Vec<String> {
    let out = router.netns.ip(&["route", "show", vip]).unwrap_or_default();
    let mut hops: Vec<String> = out
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_owned())
        .collect();
    hops.sort();
    hops
}

fn pool(vip: Ipv4Addr) -> String {
    pool_with(vip, "")
}

/// [`pool`] with more fields of the peer (`, bfd: false`).
fn pool_with(vip: Ipv4Addr, peer: &str) -> String {
    format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: bgp}}
stringData: {{router: {PASSWORD}}}
---
apiVersion: kubelvs.io/v1alpha1
kind: AddressPool
metadata: {{name: routed}}
spec:
  addresses: [{vip}/32]
  announcement:
    mode: bgp
    bgp:
      localASN: 64512
      peers: [{{address: {ROUTER_ADDR}, asn: 64500, passwordSecretRef: {{name: bgp, key: router}}{peer}}}]
---
"
    )
}

#[test]
#[ignore = "privileged: netns + XDP; needs bird2"]
fn directors_announce_by_bgp_and_a_drained_or_dead_one_is_withdrawn_without_losing_connections() {
    let _one = serial();
    let lab = Lab::build(LabConfig::default()).unwrap();
    let director2 = lab.add_host("director2", DIRECTOR2_ADDR, 0x03).unwrap();
    let director3 = lab.add_host("director3", DIRECTOR3_ADDR, 0x04).unwrap();
    let router = lab.add_host("router", ROUTER_ADDR, 0x25).unwrap();
    let directors = [&lab.director, &director2, &director3];
    let _pass: Vec<Attached> = directors
        .iter()
        .map(|d| Attached::attach(&lab.bridge, &d.bridge_port, "xdp_pass").unwrap())
        .collect();
    let vip = lab.vip.to_string();
    let (dir, _router_bird) = routed(&lab, &router, true);

    // The agents start on the pool alone: nothing to announce yet.
    let file = dir.join("lab.yaml");
    write_config(&file, &pool(lab.vip));
    let _app = lab.start_servers(PORT).unwrap();
    let pins: Vec<PathBuf> = directors.iter().map(|d| pin(&dir, d)).collect();
    let drain = DRAIN_SECONDS.to_string();
    let mut agents: Vec<Agent> = directors
        .iter()
        .zip(&pins)
        .map(|(d, pin)| {
            let flags = [
                "--bird",
                BIRD,
                "--traffic-interval-seconds",
                "1",
                "--bgp-drain-seconds",
                &drain,
            ];
            Agent::start(d, &director_args_on(d, &file, &dir, pin, &flags), &dir)
        })
        .collect();
    for d in directors {
        eventually(Duration::from_secs(60), "agent ready", || {
            http_get(&d.netns, "/readyz").filter(|(s, _)| *s == 200)
        });
    }
    assert!(next_hops(&router, &vip).is_empty());

    // The VirtualService applied: routed through every director.
    write_config(
        &file,
        &(pool(lab.vip) + &lab_objects(&lab, "dr", PORT, false, &[0, 1, 2])),
    );
    let applied = Instant::now();
    let all: Vec<String> = [lab.director.addr, DIRECTOR2_ADDR, DIRECTOR3_ADDR]
        .iter()
        .map(ToString::to_string)
        .collect();
    let announced = eventually(
        Duration::from_secs(60),
        "the VIP routed via every director",
        || (next_hops(&router, &vip) == all).then(|| applied.elapsed()),
    );
    eprintln!("BGP: the VIP's route through every director {announced:?} after it was applied");

    // Long-lived connections, spread by the router over the directors.
    let mut conns = hold(&lab, CONNECTIONS);
    let through = |d: &Host| {
        metric(
            d,
            &format!(
                "kubelvs_virtual_service_connections_total{{dataplane=\"xdp\",service=\"{vip}:{PORT}/TCP\"}}"
            ),
        )
        .unwrap_or(0.0)
    };
    let spread = eventually(
        Duration::from_secs(10),
        "connections counted on every director",
        || {
            let c: Vec<f64> = directors.iter().map(|d| through(d)).collect();
            (c.iter().all(|n| *n > 0.0) && c.iter().sum::<f64>() >= CONNECTIONS as f64).then_some(c)
        },
    );
    eprintln!("connections through each director: {spread:?}");

    // director3 drained: its agent stopped. Its path leaves the router's ECMP while
    // its agent still runs (GRACEFUL_SHUTDOWN), then its session goes with it.
    agents[2].terminate();
    let drained_at = Instant::now();
    let left = eventually(
        Duration::from_secs(DRAIN_SECONDS),
        "the drained director's path out of ECMP",
        || (next_hops(&router, &vip) == all[..2]).then(|| drained_at.elapsed()),
    );
    assert!(
        agents[2].running(),
        "withdrawn only after the agent stopped: no drain"
    );
    eprintln!("BGP: the drained director left ECMP {left:?} after its agent was told to stop, before it withdrew");
    eventually(Duration::from_secs(10), "the drained agent stopped", || {
        (!agents[2].running()).then_some(())
    });

    // director dies.
    let withdrawn = kill_first_director(&lab, &router, &mut agents[0]);
    eprintln!(
        "BGP: the dead director's path withdrawn {withdrawn:?} after it died (BFD 300 ms x 3)"
    );
    assert!(
        withdrawn < Duration::from_secs(3),
        "withdrawn after {withdrawn:?}"
    );

    let lost = lost(&mut conns);
    eprintln!("{lost} of {CONNECTIONS} connections lost");
    assert_eq!(lost, 0);
    // New connections go through the survivor.
    let r = reached(&lab, 10);
    assert!(r.iter().all(|x| !x.starts_with("error")), "{r:?}");
    drop(agents);
    for pin in pins {
        let _ = std::fs::remove_dir_all(pin);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The client's route to the VIP through `router` (redirects off, L4 multipath
/// hashing), BIRD started there (`bfd` or not); the directory for the agents' files.
fn routed(lab: &Lab, router: &Host, bfd: bool) -> (PathBuf, RouterBird) {
    // The client sends the VIP's traffic to the router, which forwards it back out
    // its one interface to a director: no redirect may short-cut it.
    for (k, v) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.eth0.send_redirects", "0"),
        ("net.ipv4.fib_multipath_hash_policy", "1"),
    ] {
        router.netns.sysctl(k, v).unwrap();
    }
    lab.client
        .netns
        .sysctl("net.ipv4.conf.all.accept_redirects", "0")
        .unwrap();
    lab.client
        .netns
        .ip(&[
            "route",
            "replace",
            &format!("{}/32", lab.vip),
            "via",
            &ROUTER_ADDR.to_string(),
        ])
        .unwrap();
    let dir = std::env::temp_dir().join(format!("kubelvs-bgp-{}", lab.bridge.name()));
    std::fs::create_dir_all(&dir).unwrap();
    let bird = start_router_bird(router, &dir, bfd);
    (dir, bird)
}

/// The lab's director dies (link cut, agent killed, its BIRD with it): how long until
/// the router routes the VIP through director2 alone.
fn kill_first_director(lab: &Lab, router: &Host, agent: &mut Agent) -> Duration {
    lab.director
        .netns
        .ip(&["link", "set", HOST_IFNAME, "down"])
        .unwrap();
    // Timed from the link going, not from the killed agent reaped.
    let died = Instant::now();
    agent.kill();
    eventually(
        Duration::from_secs(15),
        "the dead director's path withdrawn",
        || {
            (next_hops(router, &lab.vip.to_string()) == [DIRECTOR2_ADDR.to_string()])
                .then(|| died.elapsed())
        },
    )
}

/// Where `host`'s agent pins its XDP objects.
fn pin(dir: &Path, host: &Host) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/{}-{}",
        dir.file_name().unwrap().to_string_lossy(),
        host.role
    ))
}

#[test]
#[ignore = "privileged: netns + XDP; needs bird2"]
fn without_bfd_a_dead_director_is_withdrawn_within_the_hold_time() {
    let _one = serial();
    let lab = Lab::build(LabConfig::default()).unwrap();
    let director2 = lab.add_host("director2", DIRECTOR2_ADDR, 0x03).unwrap();
    let router = lab.add_host("router", ROUTER_ADDR, 0x25).unwrap();
    let directors = [&lab.director, &director2];
    let _pass: Vec<Attached> = directors
        .iter()
        .map(|d| Attached::attach(&lab.bridge, &d.bridge_port, "xdp_pass").unwrap())
        .collect();
    let vip = lab.vip.to_string();
    let (dir, _router_bird) = routed(&lab, &router, false);
    let file = dir.join("lab.yaml");
    write_config(
        &file,
        &(pool_with(lab.vip, ", bfd: false, holdTimeSeconds: 3")
            + &lab_objects(&lab, "dr", PORT, false, &[0, 1])),
    );
    let mut agents: Vec<Agent> = directors
        .iter()
        .map(|d| {
            let args = director_args_on(d, &file, &dir, &pin(&dir, d), &["--bird", BIRD]);
            Agent::start(d, &args, &dir)
        })
        .collect();
    let both = vec![lab.director.addr.to_string(), DIRECTOR2_ADDR.to_string()];
    eventually(Duration::from_secs(60), "routed via both", || {
        (next_hops(&router, &vip) == both).then_some(())
    });
    let withdrawn = kill_first_director(&lab, &router, &mut agents[0]);
    eprintln!("BGP without BFD: the dead director's path withdrawn {withdrawn:?} after it died (hold time 3 s)");
    assert!(
        withdrawn > Duration::from_secs(1) && withdrawn < Duration::from_secs(4),
        "{withdrawn:?}: the hold time, not BFD, must have done it"
    );
    drop(agents);
    for d in directors {
        let _ = std::fs::remove_dir_all(pin(&dir, d));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
