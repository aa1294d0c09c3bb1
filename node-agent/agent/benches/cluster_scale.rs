//! `kube-lvs-agent` at scale in a cluster: N VirtualServices x M RealServers in the
//! test control plane's API server (its VIPs granted as the operator would), one
//! director with XDP in a network namespace of its own (the API server listens there
//! too). Reports the time to the first complete apply, resident memory, CPU while
//! idle, and the time from an API change to the maps: `EDITS` patches of a
//! RealServer's weight, each timed from the patch being sent to the agent's log line
//! for the apply that wrote it.
//!
//! Needs root and Go (the control plane is built from source, as in `scripts/test`).
//! `cargo bench -p kubelvs-agent --bench cluster_scale` (options: N M).

mod scale;

use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kubelvs_crds::{RealServer, VirtualService};
use kubelvs_test_cluster::bulk::{client, create_all, real_servers, virtual_services};
use kubelvs_test_cluster::{Cluster, ControlPlane, ControlPlaneOptions};
use scale::{agent, director_netns, wait_programmed, xdp_args, Edits, DIRECTOR_ADDR, EDITS};

const NS: &str = "scale";
const PORTS_PER_VIP: usize = 50;

fn vip(i: usize) -> String {
    format!("203.0.113.{}", 1 + i / PORTS_PER_VIP)
}

fn main() {
    let (n, m) = kubelvs_measure::bench_size((10_000, 10));
    let ns = director_netns("klclus");
    let cp = ControlPlane::start(ControlPlaneOptions {
        bind_address: DIRECTOR_ADDR.parse().unwrap(),
        netns: Some(ns.name().to_owned()),
        ..Default::default()
    })
    .expect("control plane");
    let cluster = Cluster::of(cp).expect("cluster");
    cluster.install_crds().unwrap();
    cluster.kubectl_ok(&["create", "namespace", NS]).unwrap();
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &kubelvs_test_cluster::node_object("director", DIRECTOR_ADDR.parse().unwrap(), true),
        )
        .unwrap();
    // The API server is reachable only inside the namespace: the client's runtime
    // threads start there, and every request is made from there.
    let rt = ns.run(|| tokio::runtime::Runtime::new().unwrap()).unwrap();
    let kubeconfig = cluster.kubeconfig().to_owned();
    let client = ns.run(|| rt.block_on(client(&kubeconfig))).unwrap();
    let vs: Vec<VirtualService> = virtual_services(n, |i| {
        serde_json::json!({
            "ports": [{"port": 1000 + i % PORTS_PER_VIP, "targetPort": 8080}],
            "scheduler": "maglev",
            "forwarding": "nat",
            "dataplane": "xdp",
        })
    });
    let rs: Vec<RealServer> =
        real_servers(n, m, |i, j| format!("198.51.100.{}", 1 + (i * m + j) % 250));
    let vs_api: Api<VirtualService> = Api::namespaced(client.clone(), NS);
    let rs_api: Api<RealServer> = Api::namespaced(client.clone(), NS);
    let took = ns
        .run(|| rt.block_on(create_all(vs_api.clone(), vs)))
        .unwrap();
    println!("{n} VirtualServices created in {:.0} s", took.as_secs_f64());
    let took = ns
        .run(|| rt.block_on(create_all(rs_api.clone(), rs)))
        .unwrap();
    println!(
        "{} RealServers created in {:.0} s",
        n * m,
        took.as_secs_f64()
    );
    // Each VIP granted as the operator grants it: status.vip for generation 1.
    let granted = Instant::now();
    let operator = PatchParams::apply("kubelvs-operator").force();
    let grants = || {
        futures::stream::iter(0..n)
            .map(|i| {
                let (api, operator) = (vs_api.clone(), operator.clone());
                async move {
                    let body = serde_json::json!({
                        "apiVersion": "kubelvs.io/v1alpha1",
                        "kind": "VirtualService",
                        "metadata": {"name": format!("vs{i}")},
                        "status": {"vip": vip(i), "observedGeneration": 1},
                    });
                    api.patch_status(&format!("vs{i}"), &operator, &Patch::Apply(body))
                        .await
                        .is_err()
                }
            })
            .buffer_unordered(64)
            .filter(|failed| std::future::ready(*failed))
            .count()
    };
    let failed = ns.run(|| rt.block_on(grants())).unwrap();
    assert_eq!(failed, 0, "{failed} grants failed");
    println!(
        "{n} VIPs granted in {:.0} s",
        granted.elapsed().as_secs_f64()
    );

    let dir = std::env::temp_dir().join(format!("kubelvs-cluster-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pin = format!("/sys/fs/bpf/klclus{}", std::process::id());
    let kubeconfig = cluster.kubeconfig().display().to_string();
    let started = Instant::now();
    let (agent, applies) = agent(
        &ns,
        &xdp_args(n, &dir, &pin),
        &[("KUBECONFIG", kubeconfig.as_str())],
    );
    let pid = agent.pid();
    let first = wait_programmed(&ns, n, started);
    println!("first complete apply after {:.1} s", first.as_secs_f64());
    // Past the first status wave (one entry per VirtualService) before measuring.
    std::thread::sleep(Duration::from_secs(60));
    let cpu0 = kubelvs_measure::cpu_seconds(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    let idle = (kubelvs_measure::cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64();
    let rss = kubelvs_measure::rss_kib(pid);
    let mut edits = Edits::default();
    // The bench's own client has been idle for 90 s, past its connection pool's idle
    // timeout: its first request would time a new TLS connection, which is not part
    // of an API change reaching the kernel.
    ns.run(|| rt.block_on(rs_api.get("rs0-0")))
        .unwrap()
        .expect("get");
    for k in 0..EDITS {
        std::thread::sleep(Duration::from_millis(300));
        applies.drain();
        let patch = Patch::Merge(serde_json::json!({"spec": {"weight": 2 + k % 2}}));
        let sent = Instant::now();
        ns.run(|| rt.block_on(rs_api.patch("rs0-0", &PatchParams::default(), &patch)))
            .unwrap()
            .expect("patch");
        edits.push(sent, applies.next());
    }
    println!(
        "cluster scale: {n} VirtualServices x {m} RealServers, one XDP director:\n  first complete apply {:.1} s after start\n  resident memory {} MiB\n  idle CPU {:.1}% of one CPU\n  a RealServer's weight patched -> maps written, {}",
        first.as_secs_f64(),
        rss / 1024,
        idle * 100.0,
        edits.report(),
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&pin);
    let _ = std::fs::remove_dir_all(&dir);
}
