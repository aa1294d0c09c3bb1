//! `kube-lvs-agent` in cluster mode against the real control plane of the test suite:
//! the control plane on a host of the lab, one agent per lab host running with a
//! ServiceAccount token bound to the chart's agent RBAC (rendered by the real helm),
//! objects created with kubectl. Real traffic through the VIP; each node's entries
//! in `kubectl get` status; a spec write with the agent's token is forbidden; the API
//! server frozen for 30 s: traffic flows throughout, a health change is still acted
//! on, and status catches up once it is back. Then the uninstall: the chart's
//! pre-delete marker appears, and each agent, stopped, removes what kube-lvs owns on
//! its node.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use kubelvs_test_cluster::Cluster;
use kubelvs_xdp_lab::bpf::Attached;
use kubelvs_xdp_lab::server::TcpServer;
use kubelvs_xdp_lab::topology::{Host, Lab};
use kubelvs_xdp_lab::LabConfig;

fn node_object(host: &Host, director: bool) -> String {
    kubelvs_test_cluster::node_object(&host.role, host.addr.into(), director)
}

/// The chart's uninstall marker (release `kube-lvs` in namespace `kube-lvs`).
const MARKER: &str = "kube-lvs/kube-lvs-uninstalling";

fn cluster_agent_args(host: &Host, dir: &Path, director: bool) -> Vec<String> {
    let mut args = cluster_dataplane_args(host, dir, director);
    args.extend(["--uninstall-marker".to_owned(), MARKER.to_owned()]);
    args
}

fn cluster_dataplane_args(host: &Host, dir: &Path, director: bool) -> Vec<String> {
    if director {
        let pin = format!("/sys/fs/bpf/{}", dir.file_name().unwrap().to_string_lossy());
        agent_args(
            host,
            dir,
            &[
                "--dataplane",
                "xdp",
                "--xdp-pin-dir",
                &pin,
                "--traffic-interval-seconds",
                "1",
            ],
        )
    } else {
        agent_args(host, dir, &["--dataplane", "none"])
    }
}

fn json(cluster: &Cluster, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&cluster.kubectl_ok(args).unwrap()).unwrap()
}

/// `node`'s entry in the VirtualService's status.directors.
fn director_entry(cluster: &Cluster, node: &str) -> Option<serde_json::Value> {
    let vs = json(cluster, &["get", "lvs", "web", "-n", "lab", "-o", "json"]);
    vs["status"]["directors"]
        .as_array()?
        .iter()
        .find(|e| e["node"] == node)
        .cloned()
}

/// The Event of `reason` about object `name` in namespace lab, if published.
fn published_event(cluster: &Cluster, reason: &str, name: &str) -> Option<serde_json::Value> {
    let list = json(
        cluster,
        &["get", "events.events.k8s.io", "-n", "lab", "-o", "json"],
    );
    list["items"]
        .as_array()?
        .iter()
        .find(|e| e["reason"] == reason && e["regarding"]["name"] == name)
        .cloned()
}

/// `node`'s observation in a RealServer's status.
fn observation(cluster: &Cluster, rs: &str, node: &str) -> Option<serde_json::Value> {
    let o = json(cluster, &["get", "lvsrs", rs, "-n", "lab", "-o", "json"]);
    o["status"]["observations"]
        .as_array()?
        .iter()
        .find(|e| e["node"] == node)
        .cloned()
}

#[test]
#[ignore = "privileged: netns + XDP; needs the test control plane (Go toolchain)"]
fn cluster_mode_agents_program_traffic_and_report_status() {
    let lab = Lab::build(LabConfig {
        vip_on_real_servers: false,
        ..LabConfig::default()
    })
    .unwrap();
    let _pass = Attached::attach(&lab.bridge, &lab.director.bridge_port, "xdp_pass").unwrap();
    let LabCluster {
        cluster,
        api: _api,
        dir,
    } = LabCluster::start(&lab, "agentc");

    cluster
        .kubectl_stdin(&["apply", "-f", "-"], &node_object(&lab.director, true))
        .unwrap();
    for rs in &lab.real_servers {
        cluster
            .kubectl_stdin(&["apply", "-f", "-"], &node_object(rs, false))
            .unwrap();
    }
    // Another tenant's VirtualService, older than the lab's, on an address nobody
    // granted it; its one RealServer is rs1.
    cluster
        .kubectl_ok(&["create", "namespace", "thief"])
        .unwrap();
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &format!(
                "apiVersion: kubelvs.io/v1alpha1
kind: VirtualService
metadata: {{name: thief, namespace: thief}}
spec:
  vip: 203.0.113.99
  ports: [{{port: {PORT}}}]
  forwarding: dr
  dataplane: xdp
  scheduler: maglev
  realServerSelector: {{matchLabels: {{app: thief}}}}
  directors: {{nodeSelector: {{matchLabels: {{node-role.kubelvs.io/director: \"\"}}}}}}
---
apiVersion: kubelvs.io/v1alpha1
kind: RealServer
metadata: {{name: loot, namespace: thief, labels: {{app: thief}}}}
spec: {{address: {}, nodeName: rs1}}
",
                lab.real_servers[0].addr
            ),
        )
        .unwrap();
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &lab_objects(&lab, "dr", PORT, true, &[0, 1, 2]),
        )
        .unwrap();
    // In a cluster agents program only the operator's grant, never spec.vip as written.
    cluster
        .grant_vip_as_operator("lab", "web", &lab.vip.to_string())
        .unwrap();

    let _app: Vec<TcpServer> = lab.start_servers(PORT).unwrap();
    let mut health: Vec<Option<TcpServer>> = lab
        .real_servers
        .iter()
        .map(|rs| Some(TcpServer::start(&rs.netns, HEALTH_PORT, &rs.role).unwrap()))
        .collect();
    // Each agent's token is bound to its Pod on its Node, as a DaemonSet's Pod gets:
    // the chart's admission policy lets it write that node's entries only.
    let kubeconfig = |host: &Host| cluster.agent_kubeconfig(&host.role).unwrap();
    let mut rs_agents: Vec<Agent> = lab
        .real_servers
        .iter()
        .map(|rs| {
            let kc = kubeconfig(rs);
            let env = [("KUBECONFIG", kc.as_path())];
            Agent::start_with_env(rs, &cluster_agent_args(rs, &dir, false), &dir, &env)
        })
        .collect();
    let director_kubeconfig = kubeconfig(&lab.director);
    let director = Agent::start_with_env(
        &lab.director,
        &cluster_agent_args(&lab.director, &dir, true),
        &dir,
        &[("KUBECONFIG", director_kubeconfig.as_path())],
    );
    eventually(Duration::from_secs(60), "director agent ready", || {
        http_get(&lab.director.netns, "/readyz").filter(|(s, _)| *s == 200)
    });

    // Traffic through the VIP reaches every real server, in DR.
    eventually(Duration::from_secs(15), "every real server answers", || {
        let r = reached(&lab, 30);
        ["rs1", "rs2", "rs3"]
            .iter()
            .all(|rs| r.iter().any(|x| x == rs))
            .then_some(())
    });

    // Each node's status entries, written by its own agent.
    let entry = eventually(Duration::from_secs(15), "director status", || {
        director_entry(&cluster, "director").filter(|e| e["healthyRealServers"] == 3)
    });
    assert_eq!(entry["programmed"], true, "{entry}");
    assert_eq!(entry["dataplane"], "xdp", "{entry}");
    // Status holds state: with traffic flowing and probes passing every second, no
    // object is written; the counters are in the director's metrics.
    let versions = || -> Vec<serde_json::Value> {
        let mut v = vec![json(
            &cluster,
            &["get", "lvs", "web", "-n", "lab", "-o", "json"],
        )];
        for rs in &lab.real_servers {
            v.push(json(
                &cluster,
                &["get", "lvsrs", &rs.role, "-n", "lab", "-o", "json"],
            ));
        }
        v.iter()
            .map(|o| o["metadata"]["resourceVersion"].clone())
            .collect()
    };
    // First settled: the operator's roll-up of what the agents wrote.
    let mut before = versions();
    eventually(Duration::from_secs(15), "status settled", || {
        std::thread::sleep(Duration::from_secs(1));
        let now = versions();
        (now == before).then_some(()).or_else(|| {
            before = now;
            None
        })
    });
    let started = std::time::Instant::now();
    let mut reached_all = Vec::new();
    while started.elapsed() < Duration::from_secs(4) {
        reached_all.extend(reached(&lab, 10));
    }
    assert_eq!(versions(), before, "status written while nothing changed");
    // Real servers passing since their first probe (four seconds of probes every
    // second by now): nothing to report. An observation appears once one goes down,
    // below.
    for rs in &lab.real_servers {
        assert_eq!(observation(&cluster, &rs.role, "director"), None);
    }
    let entry = director_entry(&cluster, "director").unwrap();
    assert!(entry.get("traffic").is_none(), "{entry}");
    let service = format!("{}:{PORT}/TCP", lab.vip);
    let counted = eventually(Duration::from_secs(10), "traffic in /metrics", || {
        metric(
            &lab.director,
            &format!(
                "kubelvs_virtual_service_connections_total{{dataplane=\"xdp\",service=\"{service}\"}}"
            ),
        )
        .filter(|c| *c as usize >= reached_all.len())
    });
    eprintln!("{counted} connections counted in the director's /metrics");
    let wide = cluster
        .kubectl_ok(&["get", "lvs", "-n", "lab", "-o", "wide"])
        .unwrap();
    eprintln!("{wide}");

    // The older tenant points its spec.vip at the lab's VIP. Nothing granted it that
    // address (the operator would refuse it: VipTaken), so no agent programs it: for
    // 3 s of connections, every real server of the lab still answers, never only rs1.
    cluster
        .kubectl_ok(&[
            "patch",
            "lvs",
            "thief",
            "-n",
            "thief",
            "--type",
            "merge",
            "-p",
            &format!(r#"{{"spec":{{"vip":"{}"}}}}"#, lab.vip),
        ])
        .unwrap();
    let patched = std::time::Instant::now();
    while patched.elapsed() < Duration::from_secs(3) {
        let r = reached(&lab, 30);
        assert!(
            ["rs2", "rs3"].iter().all(|rs| r.iter().any(|x| x == rs)),
            "the lab's VIP was taken by another tenant's spec.vip: {r:?}"
        );
    }

    // The agent's token may write status, not spec.
    let spec_write = cluster
        .kubectl()
        .arg("--kubeconfig")
        .arg(&director_kubeconfig)
        .args([
            "patch",
            "lvs",
            "web",
            "-n",
            "lab",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"scheduler":"sh"}}"#,
        ])
        .output()
        .unwrap();
    assert!(!spec_write.status.success());
    assert!(
        String::from_utf8_lossy(&spec_write.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&spec_write.stderr)
    );

    // The API server frozen for 30 s: traffic flows, health is still acted on.
    let cp = cluster.local().unwrap();
    let mut conn = open(&lab);
    let victim = conn.real_server().to_owned();
    let vi = lab
        .real_servers
        .iter()
        .position(|h| h.role == victim)
        .unwrap();
    cp.pause("kube-apiserver");
    let frozen = std::time::Instant::now();
    health[vi] = None;
    eventually(
        Duration::from_secs(10),
        "quiesced without the API server",
        || (!reached(&lab, 12).contains(&victim)).then_some(()),
    );
    while frozen.elapsed() < Duration::from_secs(30) {
        assert_eq!(conn.echo("frozen").unwrap(), format!("{victim} frozen"));
        let r = reached(&lab, 3);
        assert!(r.iter().all(|x| !x.starts_with("error")), "{r:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    cp.resume("kube-apiserver");
    let o = eventually(Duration::from_secs(30), "status caught up", || {
        observation(&cluster, &victim, "director").filter(|o| o["healthy"] == false)
    });
    assert!(o["lastTransitionTime"].is_string(), "{o}");
    eventually(Duration::from_secs(15), "healthy count caught up", || {
        director_entry(&cluster, "director").filter(|e| e["healthyRealServers"] == 2)
    });
    // The transition as an Event on the RealServer, published once the API is back.
    let event = eventually(Duration::from_secs(30), "RealServerDown event", || {
        published_event(&cluster, "RealServerDown", &victim)
    });
    assert_eq!(event["reportingController"], "kube-lvs-agent", "{event}");
    // With the object's uid, so `kubectl describe` lists it.
    let rs_uid = json(
        &cluster,
        &["get", "lvsrs", &victim, "-n", "lab", "-o", "json"],
    )["metadata"]["uid"]
        .clone();
    assert_eq!(event["regarding"]["uid"], rs_uid, "{event}");
    let described = cluster
        .kubectl_ok(&["describe", "lvsrs", &victim, "-n", "lab"])
        .unwrap();
    assert!(described.contains("RealServerDown"), "{described}");
    assert!(
        event["note"]
            .as_str()
            .unwrap_or("")
            .contains("director director"),
        "{event}"
    );

    // A RealServer the agent cannot parse, as after a CRD downgrade: the schema is
    // loosened, a bad object stored, the schema restored (stored objects are not
    // re-validated). It is reported on that object and in the log; the rest applies.
    cluster
        .kubectl_ok(&[
            "patch",
            "crd",
            "realservers.kubelvs.io",
            "--type",
            "json",
            "-p",
            r#"[{"op":"replace","path":"/spec/versions/0/schema/openAPIV3Schema/properties/spec","value":{"type":"object","x-kubernetes-preserve-unknown-fields":true}}]"#,
        ])
        .unwrap();
    eventually(
        Duration::from_secs(15),
        "the loosened schema served",
        || {
            cluster
            .kubectl_stdin(
                &["apply", "-f", "-"],
                "apiVersion: kubelvs.io/v1alpha1\nkind: RealServer\nmetadata: {name: broken, namespace: lab, labels: {app: web}}\nspec: {address: 192.0.2.99, weight: heavy}\n",
            )
            .ok()
        },
    );
    cluster.install_crds().unwrap();
    let malformed = eventually(Duration::from_secs(30), "Malformed event", || {
        published_event(&cluster, "Malformed", "broken")
    });
    assert_eq!(malformed["type"], "Warning", "{malformed}");
    assert!(
        malformed["note"]
            .as_str()
            .unwrap_or("")
            .contains("RealServer lab/broken"),
        "{malformed}"
    );
    assert!(
        director.log().contains("object rejected"),
        "{}",
        director.log()
    );
    let still = reached(&lab, 12);
    assert!(still.iter().all(|r| !r.starts_with("error")), "{still:?}");

    assert!(!director.log().contains("panicked"), "{}", director.log());

    // helm uninstall: its pre-delete hook creates the marker before anything is
    // deleted; every agent sees it, and stopping (as the DaemonSet's deletion stops
    // it) removes what kube-lvs owns on its node.
    let logged = [director.log().len()]
        .into_iter()
        .chain(rs_agents.iter().map(|a| a.log().len()))
        .collect::<Vec<_>>();
    cluster
        .apply_chart_templates(
            "kube-lvs",
            "kube-lvs",
            &["templates/uninstall-marker.yaml"],
            &[],
        )
        .unwrap();
    for (agent, from) in std::iter::once(&director).chain(&rs_agents).zip(&logged) {
        eventually(Duration::from_secs(10), "the uninstall seen", || {
            agent.log()[*from..]
                .contains("uninstall begun")
                .then_some(())
        });
    }
    let mut director = director;
    director.stop();
    rs_agents.iter_mut().for_each(Agent::stop);
    let log = director.log()[logged[0]..].to_owned();
    assert!(log.contains("kube-lvs left nothing"), "{log}");
    let vip = format!(" {}/32 ", lab.vip);
    let on_if = lab
        .director
        .netns
        .ip(&["-o", "addr", "show", "dev", &lab.director.ifname])
        .unwrap();
    assert!(!on_if.contains(&vip), "{on_if}");
    // (The pins here are in the agent's own bpffs, gone with it in any case: the XDP
    // side of the cleanup is proven with host pins in tests/restarts_xdp.rs.)
    assert!(log.contains("pins removed"), "{log}");
    for (rs, agent) in lab.real_servers.iter().zip(&rs_agents) {
        let lo = rs.netns.ip(&["-o", "addr", "show", "dev", "lo"]).unwrap();
        assert!(!lo.contains(&vip), "{}: {lo}", rs.role);
        assert_eq!(
            rs.netns.sysctl_get("net.ipv4.conf.all.arp_ignore").unwrap(),
            "0",
            "{}",
            rs.role
        );
        assert!(
            agent.log().contains("kube-lvs left nothing"),
            "{}",
            agent.log()
        );
    }
    drop(director);
    let _ = std::fs::remove_dir_all(&dir);
}
