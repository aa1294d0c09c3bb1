//! The agents' status writes at scale, against the real API server of the test suite:
//! N VirtualServices x M RealServers and D directors, each running the agent's own
//! status writer (`cluster::status_writer`) on the entries `status::desired` builds for
//! a node where every port is programmed and every real server passes its check.
//! Writes are counted by the API server (`apiserver_request_total`), not by us.
//!
//! - a start of the D directors: writes and time;
//! - steady state: each director publishes its unchanged entries every second for 60 s,
//!   as every apply does: status writes per second;
//! - a restart of one director, its entries read back with `own_entries`: writes;
//! - health transitions while a new director works through its wave of entries: the
//!   time until each is visible in the API server;
//! - the API server's and etcd's memory and CPU, idle, with all of that stored.
//!
//! Needs Go (the control plane is built from source, as in `scripts/test`).
//! `cargo bench -p kubelvs-agent --bench status_budget` (options: N M D).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::Api;
use kubelvs_agent::cluster::{own_entries, status_writer, Desired};
use kubelvs_agent::status::{desired, field_manager};
use kubelvs_crds::{DirectorStatus, HealthObservation, RealServer, VirtualService};
use kubelvs_model::{ObjectKind, ObjectRef};
use kubelvs_test_cluster::bulk::{client, create_all, real_servers, virtual_services};
use kubelvs_test_cluster::{Cluster, ControlPlane, ControlPlaneOptions};

const NS: &str = "budget";

/// Status writes of kubelvs.io objects the API server has answered, all codes.
fn status_writes(cluster: &Cluster) -> f64 {
    cluster
        .requests_total(|l| {
            l.contains("group=\"kubelvs.io\"")
                && l.contains("subresource=\"status\"")
                && (l.contains("verb=\"APPLY\"") || l.contains("verb=\"PATCH\""))
        })
        .expect("API server metrics")
}

/// Node `node`'s entries: programmed on every VirtualService with `m` healthy real
/// servers, but `healthy_less` one fewer on vs0; observations of the real servers in
/// `down` (named `rsI-J`).
/// Every object's uid, by (kind, name), as an agent's watches know them.
type Uids = std::collections::HashMap<(ObjectKind, String), String>;

fn entries(
    uids: &Uids,
    node: &str,
    n: usize,
    m: usize,
    healthy_less: bool,
    down: &[&str],
) -> Option<Arc<Desired>> {
    let directors: BTreeMap<ObjectRef, DirectorStatus> = (0..n)
        .map(|i| {
            let healthy = if i == 0 && healthy_less { m - 1 } else { m };
            (
                ObjectRef::new(ObjectKind::VirtualService, NS, &format!("vs{i}")),
                DirectorStatus {
                    node: node.to_owned(),
                    programmed: true,
                    dataplane: Some(kubelvs_crds::Dataplane::Xdp),
                    healthy_real_servers: healthy as u32,
                    announcing: false,
                    message: None,
                },
            )
        })
        .collect();
    let observations: BTreeMap<ObjectRef, HealthObservation> = down
        .iter()
        .map(|rs| {
            (
                ObjectRef::new(ObjectKind::RealServer, NS, rs),
                HealthObservation {
                    node: node.to_owned(),
                    healthy: false,
                    last_transition_time: None,
                    message: Some("connection refused".into()),
                },
            )
        })
        .collect();
    Some(Arc::new(desired(&directors, &observations, |o| {
        uids.get(&(o.kind, o.name.to_string())).cloned()
    })))
}

/// Waits until the API server has answered `expected` more status writes than
/// `before`, or `limit` passes; returns the writes counted and the time taken.
fn wait_for_writes(
    cluster: &Cluster,
    before: f64,
    expected: f64,
    limit: Duration,
) -> (f64, Duration) {
    let started = Instant::now();
    loop {
        let n = status_writes(cluster) - before;
        if n >= expected || started.elapsed() > limit {
            return (n, started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Director `node`'s status writer, the agent's own, starting from `found`.
fn start(
    rt: &tokio::runtime::Runtime,
    client: &kube::Client,
    node: &str,
    found: Desired,
) -> (
    tokio::sync::watch::Sender<Option<Arc<Desired>>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let writer = rt.spawn(status_writer(
        client.clone(),
        field_manager(node),
        rx,
        Duration::from_millis(200),
        found,
    ));
    (tx, writer)
}

fn main() {
    let [n, m, d] = kubelvs_measure::bench_args([10_000, 10, 3]);
    println!("status budget: {n} VirtualServices x {m} RealServers, {d} directors");

    let cp = ControlPlane::start(ControlPlaneOptions::default()).expect("control plane");
    let cluster = Cluster::of(cp).expect("cluster");
    cluster.install_crds().unwrap();
    cluster.kubectl_ok(&["create", "namespace", NS]).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(client(cluster.kubeconfig()));

    let vs: Vec<VirtualService> = virtual_services(
        n,
        |_| serde_json::json!({"ports": [{"port": 80}], "forwarding": "nat", "healthCheck": {"type": "tcp"}}),
    );
    let rs: Vec<RealServer> = real_servers(n, m, |i, j| {
        format!("10.{}.{}.{}", i / 250, i % 250, 10 + j)
    });
    let t = rt.block_on(create_all(Api::namespaced(client.clone(), NS), vs));
    let t2 = rt.block_on(create_all(Api::namespaced(client.clone(), NS), rs));
    println!(
        "created {n} VirtualServices in {:.1} s and {} RealServers in {:.1} s",
        t.as_secs_f64(),
        n * m,
        t2.as_secs_f64()
    );

    let mut uids = Uids::new();
    let lp = kube::api::ListParams::default();
    for v in rt
        .block_on(Api::<VirtualService>::namespaced(client.clone(), NS).list(&lp))
        .unwrap()
    {
        uids.insert(
            (
                ObjectKind::VirtualService,
                v.metadata.name.unwrap_or_default(),
            ),
            v.metadata.uid.unwrap_or_default(),
        );
    }
    for r in rt
        .block_on(Api::<RealServer>::namespaced(client.clone(), NS).list(&lp))
        .unwrap()
    {
        uids.insert(
            (ObjectKind::RealServer, r.metadata.name.unwrap_or_default()),
            r.metadata.uid.unwrap_or_default(),
        );
    }

    // A start: every director writes its entries.
    let before = status_writes(&cluster);
    let mut directors = Vec::new();
    for k in 0..d {
        let node = format!("d{k}");
        let (tx, writer) = start(&rt, &client, &node, Desired::new());
        tx.send_replace(entries(&uids, &node, n, m, false, &[]));
        directors.push((node, tx, writer));
    }
    let (writes, took) =
        wait_for_writes(&cluster, before, (d * n) as f64, Duration::from_secs(3600));
    println!(
        "start of {d} directors: {writes} status writes in {:.1} s ({:.0} per second)",
        took.as_secs_f64(),
        writes / took.as_secs_f64()
    );

    // Steady state: nothing changes; every apply publishes the same entries again.
    let before = status_writes(&cluster);
    let window = Duration::from_secs(60);
    let started = Instant::now();
    while started.elapsed() < window {
        for (node, tx, _) in &directors {
            tx.send_replace(entries(&uids, node, n, m, false, &[]));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let steady = status_writes(&cluster) - before;
    println!(
        "steady state, {d} directors publishing every second for {} s: {steady} status writes ({:.2} per second)",
        window.as_secs(),
        steady / window.as_secs_f64()
    );

    // A restart of d0: its entries read back, the same plan published.
    let (node, _, writer) = directors.remove(0);
    writer.abort();
    let listed = Instant::now();
    let found = rt.block_on(own_entries(&client, &node));
    let listed = listed.elapsed();
    let before = status_writes(&cluster);
    let (tx, writer) = start(&rt, &client, &node, found);
    tx.send_replace(entries(&uids, &node, n, m, false, &[]));
    std::thread::sleep(Duration::from_secs(10));
    println!(
        "restart of one director: its {n} entries read back in {:.1} s, then {} status writes in 10 s",
        listed.as_secs_f64(),
        status_writes(&cluster) - before
    );
    directors.insert(0, (node, tx, writer));

    // Transitions during a wave: a new director starts (n new entries), and 3 s in one
    // of its real servers goes down and one VirtualService (written at the start of its
    // wave) loses a healthy real server.
    let node = "d-new".to_owned();
    let (tx, writer) = start(&rt, &client, &node, Desired::new());
    let before = status_writes(&cluster);
    tx.send_replace(entries(&uids, &node, n, m, false, &[]));
    std::thread::sleep(Duration::from_secs(3));
    let victim = format!("rs{}-0", n / 2);
    let changed = Instant::now();
    let backlog_at_change = n as f64 - (status_writes(&cluster) - before);
    tx.send_replace(entries(&uids, &node, n, m, true, &[&victim]));
    let vs_api: Api<VirtualService> = Api::namespaced(client.clone(), NS);
    let rs_api: Api<RealServer> = Api::namespaced(client.clone(), NS);
    let (mut down_seen, mut vs_seen) = (None, None);
    while (down_seen.is_none() || vs_seen.is_none()) && changed.elapsed() < Duration::from_secs(120)
    {
        if down_seen.is_none() {
            let r = rt.block_on(rs_api.get_status(&victim)).unwrap();
            if r.status
                .iter()
                .flat_map(|s| &s.observations)
                .any(|o| o.node == node && !o.healthy)
            {
                down_seen = Some(changed.elapsed());
            }
        }
        if vs_seen.is_none() {
            let v = rt.block_on(vs_api.get_status("vs0")).unwrap();
            let healthy = v
                .status
                .iter()
                .flat_map(|s| &s.directors)
                .find(|e| e.node == node)
                .map(|e| e.healthy_real_servers);
            if healthy == Some(m as u32 - 1) {
                vs_seen = Some(changed.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let left = n as f64 - (status_writes(&cluster) - before);
    println!(
        "transitions while a new director writes its {n} entries ({backlog_at_change:.0} to go when they happened, {left:.0} still to go when both were visible): real server down visible after {:.2} s, a VirtualService's healthy count after {:.2} s",
        down_seen.map_or(f64::NAN, |t| t.as_secs_f64()),
        vs_seen.map_or(f64::NAN, |t| t.as_secs_f64()),
    );
    writer.abort();
    for (_, _, w) in &directors {
        w.abort();
    }

    // Idle, with all of it stored.
    std::thread::sleep(Duration::from_secs(20));
    let cp = cluster.local().unwrap();
    let pids: Vec<(&str, u32)> = ["kube-apiserver", "etcd"]
        .into_iter()
        .filter_map(|c| Some((c, cp.pid(c)?)))
        .collect();
    let cpu: Vec<f64> = pids
        .iter()
        .map(|(_, p)| kubelvs_measure::cpu_seconds(*p))
        .collect();
    let idle = Duration::from_secs(30);
    std::thread::sleep(idle);
    for ((c, pid), before) in pids.iter().zip(cpu) {
        println!(
            "{c} idle: {:.1}% of one CPU over {} s, {} MiB resident",
            (kubelvs_measure::cpu_seconds(*pid) - before) / idle.as_secs_f64() * 100.0,
            idle.as_secs(),
            kubelvs_measure::rss_kib(*pid) >> 10
        );
    }
    let sample = cluster
        .kubectl_ok(&["get", "lvs", "vs1", "-n", NS, "-o", "json"])
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&sample).unwrap();
    println!(
        "a VirtualService's status with {} director entries: {} bytes",
        status["status"]["directors"]
            .as_array()
            .map_or(0, |a| a.len()),
        status["status"].to_string().len()
    );
}
