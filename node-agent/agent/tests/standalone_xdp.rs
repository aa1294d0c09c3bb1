//! `kube-lvs-agent` standalone, end to end on this kernel: one agent per lab host
//! (the director with the XDP dataplane, each real server with netconf only), all
//! reading the same YAML file. Real TCP through the VIP in DR; a real server whose
//! health endpoint stops is quiesced within fall x interval + 1 s with its open
//! connection untouched, and comes back; a file edit reaches the kernel within 1 s;
//! a malformed object is rejected while the rest applies; restarting the director's
//! agent 20 times during a long-lived connection breaks nothing.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

/// Traffic counters read every second: the test waits for them.
const TRAFFIC: &[&str] = &["--traffic-interval-seconds", "1"];
use kubelvs_xdp_lab::bpf::Attached;
use kubelvs_xdp_lab::server::TcpServer;
use kubelvs_xdp_lab::topology::Lab;
use kubelvs_xdp_lab::LabConfig;

fn config(lab: &Lab, real_servers: &[usize], extra: &str) -> String {
    lab_objects(lab, "dr", PORT, true, real_servers) + extra
}

#[test]
#[ignore = "privileged: netns + XDP"]
fn standalone_agents_direct_real_traffic_and_health_check_it() {
    let lab = Lab::build(LabConfig {
        vip_on_real_servers: false,
        ..LabConfig::default()
    })
    .unwrap();
    // The director's XDP_TX frames reach the bridge only if its veth peer runs XDP.
    let _pass = Attached::attach(&lab.bridge, &lab.director.bridge_port, "xdp_pass").unwrap();
    let dir = std::env::temp_dir().join(format!("kubelvs-agent-{}", lab.bridge.name()));
    std::fs::create_dir_all(&dir).unwrap();
    let pin = PathBuf::from("/sys/fs/bpf").join(lab.bridge.name());
    let file = dir.join("lab.yaml");
    write_config(&file, &config(&lab, &[0, 1, 2], ""));

    let _app: Vec<TcpServer> = lab.start_servers(PORT).unwrap();
    let mut health: Vec<Option<TcpServer>> = lab
        .real_servers
        .iter()
        .map(|rs| Some(TcpServer::start(&rs.netns, HEALTH_PORT, &rs.role).unwrap()))
        .collect();
    let _rs_agents: Vec<Agent> = lab
        .real_servers
        .iter()
        .map(|rs| Agent::start(rs, &real_server_args(rs, &file, &dir), &dir))
        .collect();
    let mut director = Agent::start(
        &lab.director,
        &director_args(&lab, &file, &dir, &pin, TRAFFIC),
        &dir,
    );
    eventually(Duration::from_secs(20), "director ready", || {
        http_get(&lab.director.netns, "/readyz").filter(|(s, _)| *s == 200)
    });

    // Real TCP in DR through the agent-programmed director, every real server.
    let first = eventually(Duration::from_secs(10), "every real server answers", || {
        let r = reached(&lab, 30);
        ["rs1", "rs2", "rs3"]
            .iter()
            .all(|rs| r.iter().any(|x| x == rs))
            .then_some(r)
    });
    assert!(first.iter().all(|r| !r.starts_with("error")), "{first:?}");
    // DR: the real server sees the client itself, and carries the VIP on lo.
    let mut conn = open(&lab);
    let local = conn.local_addr().unwrap();
    assert_eq!(conn.seen_as().unwrap(), local.to_string());
    for rs in &lab.real_servers {
        let lo = rs.netns.ip(&["-o", "addr", "show", "dev", "lo"]).unwrap();
        assert!(
            lo.contains(&format!(" {}/32 ", lab.vip)),
            "{}: {lo}",
            rs.role
        );
        assert_eq!(
            rs.netns.sysctl_get("net.ipv4.conf.all.arp_ignore").unwrap(),
            "1"
        );
    }

    // rs of the open connection: its health endpoint stops.
    let victim = conn.real_server().to_owned();
    let vi = lab
        .real_servers
        .iter()
        .position(|h| h.role == victim)
        .unwrap();
    let stopped = Instant::now();
    health[vi] = None;
    let limit = Duration::from_secs(FALL * INTERVAL_S + 1);
    let took = eventually(limit + Duration::from_secs(2), "quiesced", || {
        let r = reached(&lab, 12);
        (!r.contains(&victim)).then(|| stopped.elapsed())
    });
    assert!(
        took <= limit + Duration::from_millis(500),
        "quiesced after {took:?}, limit {limit:?}"
    );
    assert_eq!(
        conn.echo("still").unwrap(),
        format!("{victim} still"),
        "open connection kept"
    );
    let (_, metrics) = http_get(&lab.director.netns, "/metrics").unwrap();
    assert!(metrics.contains("kubelvs_real_server_healthy"), "{metrics}");
    // Traffic counters from the XDP maps, per virtual service and real server.
    let service = format!("service=\"{}:{PORT}/TCP\"", lab.vip);
    eventually(Duration::from_secs(5), "traffic counters", || {
        let (_, m) = http_get(&lab.director.netns, "/metrics")?;
        m.lines()
            .find(|l| {
                l.starts_with("kubelvs_virtual_service_connections_total") && l.contains(&service)
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .filter(|n| *n >= 30)
    });
    eprintln!(
        "health: {victim} quiesced {took:?} after its health endpoint stopped (limit {limit:?})"
    );

    // It comes back.
    health[vi] = Some(TcpServer::start(&lab.real_servers[vi].netns, HEALTH_PORT, &victim).unwrap());
    eventually(Duration::from_secs(5), "restored", || {
        reached(&lab, 30).contains(&victim).then_some(())
    });

    // A file edit (rs3 leaves the selector's set) reaches the kernel within 1 s.
    let edited = Instant::now();
    write_config(&file, &config(&lab, &[0, 1], ""));
    let took = eventually(Duration::from_secs(3), "edit applied", || {
        let r = reached(&lab, 12);
        (!r.iter().any(|x| x == "rs3")).then(|| edited.elapsed())
    });
    assert!(took < Duration::from_secs(1), "file edit took {took:?}");
    eprintln!("file edit to kernel: {took:?}");

    // A malformed object: reported, the rest still applies.
    let bad = "---\napiVersion: kubelvs.io/v1alpha1\nkind: RealServer\nmetadata: {name: broken, namespace: lab, labels: {app: web}}\nspec: {address: not-an-address}\n";
    write_config(&file, &config(&lab, &[0, 1, 2], bad));
    eventually(Duration::from_secs(3), "rejected object reported", || {
        director.log().contains("spec.address").then_some(())
    });
    eventually(Duration::from_secs(3), "the rest applied", || {
        reached(&lab, 30).iter().any(|x| x == "rs3").then_some(())
    });
    let (_, metrics) = http_get(&lab.director.netns, "/metrics").unwrap();
    assert!(metrics.contains("kubelvs_rejected_objects 1"), "{metrics}");

    // 20 restarts of the director's agent during a long-lived connection.
    let mut long = open(&lab);
    let rs = long.real_server().to_owned();
    for i in 0..20 {
        director.stop();
        director = Agent::start(
            &lab.director,
            &director_args(&lab, &file, &dir, &pin, TRAFFIC),
            &dir,
        );
        eventually(Duration::from_secs(20), "director ready again", || {
            http_get(&lab.director.netns, "/readyz").filter(|(s, _)| *s == 200)
        });
        let msg = format!("restart {i}");
        assert_eq!(
            long.echo(&msg).unwrap(),
            format!("{rs} {msg}"),
            "{}",
            director.log()
        );
    }
    assert!(!director.log().contains("panicked"), "{}", director.log());
    drop(director);
    let _ = std::fs::remove_dir_all(&pin);
    let _ = std::fs::remove_dir_all(&dir);
}
