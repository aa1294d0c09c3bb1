//! `kube-lvs-operator` at scale against the real API server of the test suite: N
//! VirtualServices (no VIP, so each needs one from a /16 pool) x M RealServers each,
//! created before the operator starts. Reports the time until every VirtualService
//! shows its VIP and conditions (reconcile throughput), the operator's memory and
//! idle CPU afterwards, and the time from a LoadBalancer Service created to its
//! `status.loadBalancer.ingress`, with all of that loaded; then the operator's CPU
//! while a director writes its entry on every VirtualService, as an agent's start does.
//!
//! Needs Go (the control plane is built from source, as in `scripts/test`).
//! `cargo bench -p kubelvs-operator --bench operator_scale` (options: N M).
//! `KUBELVS_OPERATOR_WRAPPER="heaptrack -o /tmp/operator"` runs the operator under a
//! profiler.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kubelvs_crds::{RealServer, VirtualService};
use kubelvs_test_cluster::bulk::create_all;
use kubelvs_test_cluster::{spawn_tied, Cluster, ControlPlane, ControlPlaneOptions};

const NS: &str = "scale";

/// How many VirtualServices show a VIP, an Accepted condition and the finalizer.
async fn settled(api: &Api<VirtualService>) -> usize {
    let mut n = 0;
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(2000);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let Ok(page) = api.list(&lp).await else {
            return n;
        };
        n += page
            .items
            .iter()
            .filter(|v| {
                v.metadata
                    .finalizers
                    .as_ref()
                    .is_some_and(|f| !f.is_empty())
                    && v.status.as_ref().is_some_and(|s| {
                        s.vip.is_some() && s.conditions.iter().any(|c| c.type_ == "Accepted")
                    })
            })
            .count();
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return n;
        }
    }
}

/// Writes director `d1`'s entry on vs0..vsN as its agent does at its start:
/// programmed, every real server healthy. Returns how long the writes took.
async fn report_directors(api: &Api<VirtualService>, n: usize) -> Duration {
    let started = Instant::now();
    let failed = futures::stream::iter(0..n)
        .map(|i| {
            let body = serde_json::json!({
                "apiVersion": "kubelvs.io/v1alpha1",
                "kind": "VirtualService",
                "metadata": {"name": format!("vs{i}")},
                "status": {"directors": [{
                    "node": "d1",
                    "programmed": true,
                    "dataplane": "xdp",
                    "healthyRealServers": 10,
                }]},
            });
            let api = api.clone();
            async move {
                api.patch_status(
                    &format!("vs{i}"),
                    &PatchParams::apply("kubelvs-agent/d1").force(),
                    &Patch::Apply(body),
                )
                .await
                .is_err()
            }
        })
        .buffer_unordered(32)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    assert_eq!(failed, 0, "{failed} of {n} status writes failed");
    started.elapsed()
}

/// The operator's counters (reconciles, writes), as `name{labels} value` lines.
fn counters() -> Vec<(String, f64)> {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect("127.0.0.1:19090") else {
        return Vec::new();
    };
    let _ = write!(c, "GET /metrics HTTP/1.1\r\n\r\n");
    let mut text = String::new();
    let _ = c.read_to_string(&mut text);
    text.lines()
        .filter(|l| l.contains("_total{"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn delta(before: &[(String, f64)], after: &[(String, f64)]) -> String {
    let changed: Vec<String> = after
        .iter()
        .filter_map(|(k, v)| {
            let was = before.iter().find(|(b, _)| b == k).map_or(0.0, |(_, b)| *b);
            (*v != was).then(|| format!("{k} +{}", v - was))
        })
        .collect();
    if changed.is_empty() {
        "no reconcile or write".into()
    } else {
        changed.join(", ")
    }
}

fn main() {
    let (n, m) = kubelvs_measure::bench_size((10_000, 10));

    let cp = ControlPlane::start(ControlPlaneOptions::default()).expect("control plane");
    let cluster = Cluster::of(cp).expect("cluster");
    cluster.install_crds().unwrap();
    cluster.kubectl_ok(&["create", "namespace", NS]).unwrap();
    cluster
        .kubectl_ok(&["create", "namespace", "kube-lvs"])
        .unwrap();
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: kubelvs.io/v1alpha1\nkind: AddressPool\nmetadata: {name: scale}\nspec: {addresses: [10.0.0.0/16]}\n",
        )
        .unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(kubelvs_test_cluster::bulk::client(cluster.kubeconfig()));
    let vs_api: Api<VirtualService> = Api::namespaced(client.clone(), NS);
    let rs_api: Api<RealServer> = Api::namespaced(client.clone(), NS);
    let virtual_services: Vec<VirtualService> = (0..n)
        .map(|i| {
            serde_yaml::from_str(&format!(
                "apiVersion: kubelvs.io/v1alpha1\nkind: VirtualService\nmetadata: {{name: vs{i}}}\nspec: {{ports: [{{port: 80}}], forwarding: nat, realServerSelector: {{matchLabels: {{vs: vs{i}}}}}}}\n"
            ))
            .unwrap()
        })
        .collect();
    let real_servers: Vec<RealServer> = (0..n * m)
        .map(|j| {
            serde_yaml::from_str(&format!(
                "apiVersion: kubelvs.io/v1alpha1\nkind: RealServer\nmetadata: {{name: rs{j}, labels: {{vs: vs{}}}}}\nspec: {{address: 10.1.{}.{}}}\n",
                j / m,
                j / 250 % 250,
                1 + j % 250
            ))
            .unwrap()
        })
        .collect();
    let t_vs = rt.block_on(create_all(vs_api.clone(), virtual_services));
    let t_rs = rt.block_on(create_all(rs_api, real_servers));
    println!(
        "created {n} VirtualServices in {:.1} s, {} RealServers in {:.1} s",
        t_vs.as_secs_f64(),
        n * m,
        t_rs.as_secs_f64()
    );

    let log = std::env::temp_dir().join("kube-lvs-operator.scale.log");
    // `KUBELVS_OPERATOR_WRAPPER="heaptrack -o /tmp/operator"` runs it under a profiler.
    let wrapper = std::env::var("KUBELVS_OPERATOR_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut cmd = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(env!("CARGO_BIN_EXE_kube-lvs-operator"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_kube-lvs-operator")),
    };
    cmd.env("KUBECONFIG", cluster.kubeconfig())
        .args([
            "--metrics-address",
            "127.0.0.1:19090",
            "--identity",
            "scale",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let started = Instant::now();
    let mut child = spawn_tied(cmd).unwrap();
    let pid = child.id();
    let mut last = 0;
    loop {
        let done = rt.block_on(settled(&vs_api));
        if done != last {
            last = done;
        }
        if done == n {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "{done} of {n} settled after 30 min; log in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let took = started.elapsed();
    println!(
        "operator start -> {n} VirtualServices with VIP, conditions and finalizer: {:.1} s ({:.0} per second)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(5));
    let before = counters();
    let cpu = kubelvs_measure::cpu_seconds(pid);
    let idle = Duration::from_secs(20);
    std::thread::sleep(idle);
    println!(
        "operator idle CPU over {:?}: {:.1}% of one core; RSS {} MiB, peak {} MiB",
        idle,
        (kubelvs_measure::cpu_seconds(pid) - cpu) / idle.as_secs_f64() * 100.0,
        kubelvs_measure::rss_kib(pid) / 1024,
        kubelvs_measure::status_kib(pid, "VmHWM") / 1024
    );
    println!("while idle: {}", delta(&before, &counters()));

    // Time from a Service created to its load balancer address, with all that loaded.
    let svc_api: Api<Service> = Api::namespaced(client, NS);
    let mut samples = Vec::new();
    for i in 0..10 {
        let svc: Service = serde_yaml::from_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: lb{i}}}\nspec: {{type: LoadBalancer, loadBalancerClass: kubelvs.io/lvs, ports: [{{port: 80}}]}}\n"
        ))
        .unwrap();
        let t = Instant::now();
        rt.block_on(svc_api.create(&PostParams::default(), &svc))
            .unwrap();
        loop {
            let s = rt.block_on(svc_api.get(&format!("lb{i}"))).unwrap();
            let has = s
                .status
                .and_then(|s| s.load_balancer)
                .and_then(|l| l.ingress)
                .is_some_and(|i| !i.is_empty());
            if has {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "no ingress for lb{i}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        samples.push(t.elapsed());
        eprintln!("lb{i}: {:.2} s", t.elapsed().as_secs_f64());
    }
    samples.sort();
    println!(
        "Service created -> status.loadBalancer.ingress with {n} VirtualServices loaded: median {:.2} s, max {:.2} s (10 Services)",
        samples[samples.len() / 2].as_secs_f64(),
        samples[samples.len() - 1].as_secs_f64()
    );
    // A director starts: its entry on every VirtualService (the roll-up changes). Its
    // Node exists: the operator removes the entries of nodes that do not.
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &kubelvs_test_cluster::node_object("d1", "192.0.2.250".parse().unwrap(), true),
        )
        .unwrap();
    let before = counters();
    let mut stable = before.clone();
    let cpu = kubelvs_measure::cpu_seconds(pid);
    let started = Instant::now();
    let t = rt.block_on(report_directors(&vs_api, n));
    println!(
        "director entries written on {n} VirtualServices in {:.1} s",
        t.as_secs_f64()
    );
    loop {
        std::thread::sleep(Duration::from_secs(3));
        let now = counters();
        if now == stable {
            break;
        }
        stable = now;
    }
    let window = started.elapsed().as_secs_f64();
    println!(
        "operator CPU from a director's start until its roll-ups are written ({window:.1} s): {:.1}% of one core; {}",
        (kubelvs_measure::cpu_seconds(pid) - cpu) / window * 100.0,
        delta(&before, &stable)
    );

    let mem: Vec<String> = cluster
        .local()
        .map(|cp| cp.memory())
        .unwrap_or_default()
        .into_iter()
        .map(|(c, bytes)| format!("{c} {} MiB", bytes >> 20))
        .collect();
    println!("control plane: {}", mem.join(", "));
    let _ = child.kill();
    let _ = child.wait();
}
