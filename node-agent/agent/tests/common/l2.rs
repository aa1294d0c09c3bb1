//! The L2 failover lab (tests/failover_l2.rs, benches/l2_failover.rs), against the
//! real control plane: two XDP directors of one VIP on the lab's segment, their
//! agents in cluster mode renewing their Leases. Exactly one answers ARP for the VIP
//! (the owner every agent computes alike, shown in its status entry; no operator runs
//! here, `status.announcedBy` is the demo's); the other carries it silently. The
//! owner's link is cut and its agent killed: the other director sees its Lease expire,
//! takes the VIP over and announces it, the client's new connections flow again, and
//! the connections opened through the dead director keep their real servers (Maglev
//! on both directors; DR replies go straight to the client).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;
use kubelvs_planner::announce::owner;
use kubelvs_test_cluster::Cluster;
use kubelvs_xdp_lab::bpf::Attached;
use kubelvs_xdp_lab::topology::{Host, Lab, HOST_IFNAME};
use kubelvs_xdp_lab::{arp, LabConfig};

const DIRECTOR2_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
const CONNECTIONS: usize = 30;

fn agent_flags(host: &Host, dir: &Path, director: bool, lease_ms: u64, vips: usize) -> Vec<String> {
    let lease = [
        "--lease-namespace",
        "kube-lvs",
        "--lease-duration-ms",
        &lease_ms.to_string(),
    ];
    if director {
        let pin = format!(
            "/sys/fs/bpf/{}-{}",
            dir.file_name().unwrap().to_string_lossy(),
            host.role
        );
        let mut flags = vec!["--dataplane", "xdp", "--xdp-pin-dir", &pin];
        flags.extend(lease);
        // Room for every VIP, with small rings (a prime) so that a thousand fit.
        let max_vips = (vips + 1).max(64).to_string();
        if vips > 0 {
            flags.extend(["--xdp-max-vips", &max_vips, "--xdp-ring-size", "1021"]);
        }
        agent_args(host, dir, &flags)
    } else {
        agent_args(host, dir, &["--dataplane", "none"])
    }
}

fn json(cluster: &Cluster, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&cluster.kubectl_ok(args).unwrap()).unwrap()
}

/// The nodes whose status entry on the lab's VirtualService says they announce.
fn announcing(cluster: &Cluster) -> Vec<String> {
    let vs = json(cluster, &["get", "lvs", "web", "-n", "lab", "-o", "json"]);
    vs["status"]["directors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["announcing"] == true)
        .filter_map(|e| e["node"].as_str().map(str::to_owned))
        .collect()
}

/// Who answers the client's ARP request for the VIP.
fn who_has_vip(lab: &Lab) -> Vec<[u8; 6]> {
    let c = &lab.client;
    let (ifindex, mac, addr, vip) = (c.ifindex, c.mac, c.addr, lab.vip);
    c.netns
        .run(move || arp::who_has(ifindex, mac, addr, vip, Duration::from_millis(300)))
        .unwrap()
        .unwrap()
}

/// How the owner goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Death {
    /// Its link cut, then its agent killed.
    Killed,
    /// Its announce interface loses carrier; the agent lives on and still reaches
    /// the API server over a link of its own. Carrier comes back afterwards.
    CarrierLost,
}

/// What a failover measured.
#[derive(Debug, Clone, Copy)]
pub struct Failover {
    /// From the owner's death to the client's neighbour entry for the VIP naming the
    /// new owner (learnt from its announcement, unasked).
    pub takeover: Duration,
    /// From the owner's death to a new connection through the VIP.
    pub new_connection: Duration,
    /// Connections opened through the dead owner that no longer answer.
    pub lost: usize,
    pub connections: usize,
    /// Writes of Leases per second, all agents together, while both directors live
    /// (measured over `LEASE_WINDOW` when asked for).
    pub lease_writes_per_second: Option<f64>,
    /// [`Death::CarrierLost`]: from carrier back to the client's neighbour entry
    /// naming the first owner again.
    pub failback: Option<Duration>,
}

/// A link of its own from each director to the API server's host (10.255.I.0/30),
/// routed for the API server's address only: the directors reach the control plane
/// whatever happens to their announce interface.
fn api_links(api: &Host, directors: &[&Host]) {
    for (i, d) in directors.iter().enumerate() {
        let (api_if, api_addr, dir_addr) = (
            format!("to-{}", i + 1),
            format!("10.255.{}.1", i + 1),
            format!("10.255.{}.2", i + 1),
        );
        kubelvs_xdp_lab::cmd::run(
            "ip",
            &[
                "link",
                "add",
                &api_if,
                "netns",
                api.netns.name(),
                "type",
                "veth",
                "peer",
                "name",
                "api",
                "netns",
                d.netns.name(),
            ],
        )
        .unwrap();
        api.netns
            .ip(&["addr", "add", &format!("{api_addr}/30"), "dev", &api_if])
            .unwrap();
        api.netns.ip(&["link", "set", &api_if, "up"]).unwrap();
        d.netns
            .ip(&["addr", "add", &format!("{dir_addr}/30"), "dev", "api"])
            .unwrap();
        d.netns.ip(&["link", "set", "api", "up"]).unwrap();
        d.netns
            .ip(&[
                "route",
                "add",
                &format!("{API_ADDR}/32"),
                "via",
                &api_addr,
                "dev",
                "api",
            ])
            .unwrap();
    }
}

/// How long Lease writes are counted, when they are.
pub const LEASE_WINDOW: Duration = Duration::from_secs(10);

/// Lease writes the API server answered (the agents write by server-side apply).
fn lease_writes(cluster: &Cluster) -> f64 {
    cluster
        .requests_total(|l| {
            l.contains("resource=\"leases\"")
                && ["APPLY", "PATCH", "UPDATE", "CREATE"]
                    .iter()
                    .any(|v| l.contains(&format!("verb=\"{v}\"")))
        })
        .unwrap()
}

/// Builds the lab, checks the announcer, makes it go (`death`) and measures the
/// takeover, with the agents' `--lease-duration-ms` at `lease_ms`; with
/// `count_leases`, counts the Lease writes for `LEASE_WINDOW` first.
pub fn failover(lease_ms: u64, count_leases: bool, death: Death) -> Failover {
    failover_with(lease_ms, count_leases, death, 0)
}

/// `n` more VirtualServices of the lab's real servers, each on a VIP of its own in
/// 198.18.0.0/15, granted as the operator would (from the API server's host: the
/// control plane is reachable only inside the lab).
fn more_vips(cluster: &Cluster, api_host: &Host, n: usize) {
    if n == 0 {
        return;
    }
    let vip = |i: usize| format!("198.18.{}.{}", i / 250, i % 250 + 1);
    let docs: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "apiVersion: kubelvs.io/v1alpha1
kind: VirtualService
metadata: {{name: web-{i}, namespace: lab}}
spec:
  vip: {}
  ports: [{{port: {PORT}}}]
  scheduler: maglev
  forwarding: dr
  dataplane: xdp
  realServerSelector: {{matchLabels: {{app: web}}}}
  directors: {{nodeSelector: {{matchLabels: {{node-role.kubelvs.io/director: \"\"}}}}}}
",
                vip(i)
            )
        })
        .collect();
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], &docs.join("---\n"))
        .unwrap();
    let kubeconfig = cluster.kubeconfig().to_path_buf();
    let grant = move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use futures::StreamExt;
            let client = kubelvs_test_cluster::bulk::client(&kubeconfig).await;
            let api: kube::Api<kubelvs_crds::VirtualService> = kube::Api::namespaced(client, "lab");
            let params = kube::api::PatchParams::apply("kubelvs-operator").force();
            let granted: Vec<bool> = futures::stream::iter(0..n)
                .map(|i| {
                    let (api, params) = (api.clone(), params.clone());
                    let body = serde_json::json!({
                        "apiVersion": "kubelvs.io/v1alpha1",
                        "kind": "VirtualService",
                        "metadata": {"name": format!("web-{i}")},
                        "status": {"vip": vip(i), "observedGeneration": 1},
                    });
                    async move {
                        api.patch_status(
                            &format!("web-{i}"),
                            &params,
                            &kube::api::Patch::Apply(body),
                        )
                        .await
                        .is_ok()
                    }
                })
                .buffer_unordered(32)
                .collect()
                .await;
            assert!(granted.iter().all(|g| *g), "every grant written");
        })
    };
    api_host.netns.run(grant).unwrap();
}

/// [`failover`] with `extra_vips` more VirtualServices, each on a VIP of its own (the
/// Lease writes do not depend on them).
pub fn failover_with(
    lease_ms: u64,
    count_leases: bool,
    death: Death,
    extra_vips: usize,
) -> Failover {
    let lab = Lab::build(LabConfig {
        vip_on_real_servers: false,
        ..LabConfig::default()
    })
    .unwrap();
    let director2 = lab.add_host("director2", DIRECTOR2_ADDR, 0x03).unwrap();
    let directors = [&lab.director, &director2];
    // Generic XDP on a veth needs a program on the peer for XDP_TX to leave.
    let _pass: Vec<Attached> = directors
        .iter()
        .map(|d| Attached::attach(&lab.bridge, &d.bridge_port, "xdp_pass").unwrap())
        .collect();
    // Frames to a MAC the bridge no longer knows (the dead director's) are not
    // flooded to the other director, whose XDP program would take them as its own:
    // only the takeover's announcement may move the client's traffic.
    for d in directors {
        lab.bridge
            .exec(
                "bridge",
                &["link", "set", "dev", &d.bridge_port, "flood", "off"],
            )
            .unwrap();
    }
    // The client reaches the VIP on its segment: it learns the VIP's MAC by ARP.
    let vip = lab.vip.to_string();
    lab.client
        .netns
        .ip(&["route", "replace", &format!("{vip}/32"), "dev", HOST_IFNAME])
        .unwrap();

    let LabCluster { cluster, api, dir } = LabCluster::start(&lab, "l2");
    if death == Death::CarrierLost {
        api_links(&api, &directors);
    }
    for d in directors {
        cluster
            .kubectl_stdin(
                &["apply", "-f", "-"],
                &kubelvs_test_cluster::node_object(&d.role, d.addr.into(), true),
            )
            .unwrap();
    }
    for rs in &lab.real_servers {
        cluster
            .kubectl_stdin(
                &["apply", "-f", "-"],
                &kubelvs_test_cluster::node_object(&rs.role, rs.addr.into(), false),
            )
            .unwrap();
    }
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &lab_objects(&lab, "dr", PORT, false, &[0, 1, 2]),
        )
        .unwrap();
    cluster.grant_vip_as_operator("lab", "web", &vip).unwrap();
    more_vips(&cluster, &api, extra_vips);
    let _app = lab.start_servers(PORT).unwrap();

    let start = |host: &Host, director: bool| {
        let kc = cluster.agent_kubeconfig(&host.role).unwrap();
        Agent::start_with_env(
            host,
            &agent_flags(host, &dir, director, lease_ms, extra_vips),
            &dir,
            &[("KUBECONFIG", kc.as_path())],
        )
    };
    let _rs_agents: Vec<Agent> = lab.real_servers.iter().map(|rs| start(rs, false)).collect();
    let mut agents: Vec<Agent> = directors.iter().map(|d| start(d, true)).collect();

    // Every agent computes the same owner; status shows it; only it answers ARP.
    let expected = owner(lab.vip.into(), ["director", "director2"]).unwrap();
    let (owner_i, other_i) = if expected == "director" {
        (0, 1)
    } else {
        (1, 0)
    };
    let (owner_host, other_host) = (directors[owner_i], directors[other_i]);
    eventually(
        Duration::from_secs(60),
        "the owner alone answers ARP",
        || (who_has_vip(&lab) == [owner_host.mac]).then_some(()),
    );
    eventually(
        Duration::from_secs(15),
        "status names the announcer",
        || (announcing(&cluster) == [expected]).then_some(()),
    );
    let leases = eventually(Duration::from_secs(30), "every director's Lease", || {
        let leases = cluster
            .kubectl_ok(&["get", "leases", "-n", "kube-lvs", "-o", "name"])
            .ok()?;
        directors
            .iter()
            .all(|d| leases.contains(&format!("kubelvs-agent-{}", d.role)))
            .then_some(leases)
    });
    for rs in &lab.real_servers {
        assert!(
            !leases.contains(&rs.role),
            "only directors renew Leases: {leases}"
        );
    }

    let lease_writes_per_second = count_leases.then(|| {
        let before = lease_writes(&cluster);
        std::thread::sleep(LEASE_WINDOW);
        (lease_writes(&cluster) - before) / LEASE_WINDOW.as_secs_f64()
    });

    // Long-lived connections through the owner, spread over the real servers.
    let mut conns = hold(&lab, CONNECTIONS);
    let on: std::collections::BTreeSet<String> =
        conns.iter().map(|c| c.real_server().to_owned()).collect();
    assert!(on.len() > 1, "connections on {on:?}");

    match death {
        // The owner dies: its link cut, then its agent killed.
        Death::Killed => {
            owner_host
                .netns
                .ip(&["link", "set", HOST_IFNAME, "down"])
                .unwrap();
        }
        // Its switch port goes down: no carrier on its interface.
        Death::CarrierLost => {
            lab.bridge
                .ip(&["link", "set", &owner_host.bridge_port, "down"])
                .unwrap();
        }
    }
    // Timed from the link going: reaping a killed agent can take a while (its XDP
    // maps freed with it), and the others do not wait for that.
    let died = Instant::now();
    if death == Death::Killed {
        agents[owner_i].kill();
    }
    let new_mac = kubelvs_xdp_lab::topology::format_mac(other_host.mac);
    let takeover = eventually(
        Duration::from_secs(20),
        "the client learns the new owner",
        || {
            let n = lab.client.netns.ip(&["neigh", "show", &vip]).unwrap();
            n.contains(&new_mac).then(|| died.elapsed())
        },
    );
    let new_connection = eventually(
        Duration::from_secs(20),
        "a new connection through the VIP",
        || {
            let r = reached_at_once(&lab, 1);
            (!r[0].starts_with("error")).then(|| died.elapsed())
        },
    );
    eventually(
        Duration::from_secs(10),
        "the new owner alone answers ARP",
        || (who_has_vip(&lab) == [other_host.mac]).then_some(()),
    );
    // The new owner says so in status (the dead director's entry stays as its agent
    // left it: nothing of that node runs to change it).
    eventually(
        Duration::from_secs(15),
        "status names the new announcer",
        || {
            announcing(&cluster)
                .contains(&other_host.role)
                .then_some(())
        },
    );

    // Carrier back: the first owner is live again and takes its VIP back.
    let failback = (death == Death::CarrierLost).then(|| {
        assert!(agents[owner_i].running(), "the owner's agent lived on");
        lab.bridge
            .ip(&["link", "set", &owner_host.bridge_port, "up"])
            .unwrap();
        let back = Instant::now();
        let owner_mac = kubelvs_xdp_lab::topology::format_mac(owner_host.mac);
        eventually(
            Duration::from_secs(20),
            "the client learns the first owner again",
            || {
                let n = lab.client.netns.ip(&["neigh", "show", &vip]).unwrap();
                n.contains(&owner_mac).then(|| back.elapsed())
            },
        )
    });

    // Every connection opened through the first owner is still served, by the same
    // real server.
    let lost = lost(&mut conns);
    drop(agents);
    let _ = std::fs::remove_dir_all(&dir);
    Failover {
        takeover,
        new_connection,
        lost,
        connections: CONNECTIONS,
        lease_writes_per_second,
        failback,
    }
}
