//! The chart's Pods on a real node (tests/cluster/src/node.rs): the image built from
//! the Dockerfile, `helm install --wait`, and a LoadBalancer Service of class
//! `kubelvs.io/lvs` in front of a Deployment's Pods, reached by a client in a network
//! namespace of its own through kube-lvs's XDP director while kube-proxy runs too.
//!
//! The node's bridge carries both the Pods (10.244.0.0/24) and the client's network
//! (192.168.77.0/24, the VIPs' pool): NAT replies must come back through the director
//! (as LVS NAT requires), and on one bridge the Pods' replies reach the node, where the
//! XDP program runs in generic mode, before they leave for the client.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod client;

use client::{failures, Client, Traffic};
use kubelvs_measure::eventually;
use kubelvs_test_cluster::node::{HostState, Node, NodeNetwork, NodeOptions};
use kubelvs_test_cluster::{binaries, Cluster, ControlPlane, ControlPlaneOptions};

const BRIDGE: &str = "klvs-node0";
const NODE_IP: &str = "10.244.0.1";
const CLIENT_NETNS: &str = "klvs-client";
const CLIENT_IP: &str = "192.168.77.2";
const RELEASE_NS: &str = "kube-lvs";
const APP_NS: &str = "shop";

fn repo() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).to_owned()
}

/// The binaries the image carries: `KUBELVS_IMAGE_BINARIES` (scripts/test points it at
/// the ones its `cargo test --workspace` built and the other tests ran), else built now.
fn suite_binaries() -> PathBuf {
    if let Some(dir) = std::env::var_os("KUBELVS_IMAGE_BINARIES") {
        return PathBuf::from(dir);
    }
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--locked",
            "-p",
            "kubelvs-agent",
            "-p",
            "kubelvs-operator",
            "-p",
            "kubectl-lvs",
        ])
        .current_dir(repo())
        .status()
        .unwrap();
    assert!(status.success(), "cargo build of the image's binaries");
    // This test's executable is target/<profile>/deps/node-<hash>.
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_owned()
}

fn kubectl(cluster: &Cluster, args: &[&str]) -> String {
    cluster
        .kubectl_ok(args)
        .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
}

/// The XDP director's count of new flows to `vip`:80, from the agent's /metrics.
fn xdp_flows(vip: &str) -> f64 {
    let out = Command::new("curl")
        .args(["-sS", "-m", "3", &format!("http://{NODE_IP}:9641/metrics")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    kubelvs_measure::sample(
        &text,
        "kubelvs_virtual_service_connections_total{dataplane=\"xdp\",",
        &format!("service=\"{vip}:80/TCP\""),
    )
    .unwrap_or(0.0)
}

/// The id of the XDP program attached to the bridge in generic mode, if any.
fn xdp_prog_on_bridge() -> Option<String> {
    let out = Command::new("ip")
        .args(["-d", "link", "show", BRIDGE])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("prog/xdp id ")?;
    text[at + "prog/xdp id ".len()..]
        .split_whitespace()
        .next()
        .map(str::to_owned)
}

fn pods_ready(cluster: &Cluster, ns: &str, selector: &str) -> Vec<String> {
    let out = kubectl(
        cluster,
        &["get", "pods", "-n", ns, "-l", selector, "-o",
          "jsonpath={range .items[*]}{.metadata.name} {.metadata.deletionTimestamp} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}"],
    );
    out.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 2 && w[1] == "True").then(|| w[0].to_owned())
        })
        .collect()
}

#[test]
#[ignore = "root; runs containerd, kubelet and kube-proxy on this machine and builds images (scripts/test runs it)"]
fn the_chart_runs_on_a_node_and_serves_a_load_balancer_service_from_pods() {
    let before = HostState::read();
    // The chart's agent keeps its state in the host's /run/kube-lvs and pins under
    // /sys/fs/bpf/kubelvs: a machine that runs kube-lvs for real is not one to test on.
    for dir in ["/run/kube-lvs", "/sys/fs/bpf/kubelvs"] {
        assert!(
            !Path::new(dir).exists(),
            "{dir} exists: this machine runs kube-lvs; the node test would take it over"
        );
    }
    let t = Instant::now();
    let images_dir = std::env::temp_dir().join(format!("kubelvs-images-{}", std::process::id()));
    let built = Command::new(repo().join("tests/cluster/build-images.sh"))
        .arg(suite_binaries())
        .arg(binaries().unwrap())
        .arg(&images_dir)
        .status()
        .unwrap();
    assert!(built.success(), "tests/cluster/build-images.sh");
    let image_size = std::fs::metadata(images_dir.join("kube-lvs.tar"))
        .unwrap()
        .len();
    eprintln!(
        "images built in {:.1} s; kube-lvs image {:.1} MB (uncompressed layers)",
        t.elapsed().as_secs_f64(),
        image_size as f64 / 1e6
    );

    {
        let net =
            NodeNetwork::create(BRIDGE, &[&format!("{NODE_IP}/24"), "192.168.77.1/24"]).unwrap();
        let cp = ControlPlane::start(ControlPlaneOptions {
            bind_address: NODE_IP.parse().unwrap(),
            workloads: true,
            ..Default::default()
        })
        .unwrap();
        let images: Vec<PathBuf> = ["kube-lvs", "web", "pause"]
            .iter()
            .map(|n| images_dir.join(format!("{n}.tar")))
            .collect();
        let node = Node::start(
            &cp,
            NodeOptions {
                name: "node-0".into(),
                bridge: BRIDGE.into(),
                address: NODE_IP.parse().unwrap(),
                pod_subnet: "10.244.0.0/24".into(),
                labels: vec![],
            },
            &images,
        )
        .unwrap();
        eprintln!(
            "control plane ready in {:.1} s; node Ready {:.1} s after it",
            cp.ready_after().as_secs_f64(),
            node.ready_after().as_secs_f64()
        );
        let cluster = Cluster::of(cp).unwrap();
        let client = Client::create();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            exercise(&cluster, &node, &client);
        }));
        if result.is_err() {
            for log in ["kubelet", "containerd", "kube-proxy", "kube-scheduler"] {
                let _ = std::fs::copy(
                    node.dir().join(format!("{log}.log")),
                    std::env::temp_dir().join(format!("kubelvs-node-failed-{log}.log")),
                );
            }
            for (what, sel) in [
                ("agent", "app.kubernetes.io/component=agent"),
                ("operator", "app.kubernetes.io/component=operator"),
            ] {
                if let Ok(l) = cluster.kubectl_ok(&[
                    "logs",
                    "-n",
                    RELEASE_NS,
                    "-l",
                    sel,
                    "--tail=60",
                    "--prefix",
                ]) {
                    eprintln!("--- {what} logs:\n{l}");
                }
            }
        }
        if result.is_err() && std::env::var_os("KUBELVS_HOLD_FAILED_NODE").is_some() {
            eprintln!(
                "holding the failed node for 15 minutes: KUBECONFIG={}",
                cluster.kubeconfig().display()
            );
            std::thread::sleep(Duration::from_secs(900));
        }
        drop(client);
        drop(node);
        drop(cluster);
        drop(net);
        // The agent's state directory and pins (hostPaths the DaemonSet uses; neither
        // existed before): after a passing run the uninstall emptied them, after a
        // failed one they go here, so the next run starts clean.
        let _ = std::fs::remove_dir_all("/run/kube-lvs");
        let _ = std::fs::remove_dir_all("/sys/fs/bpf/kubelvs");
        let _ = std::fs::remove_dir_all(&images_dir);
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    }
    assert_eq!(
        before,
        HostState::read(),
        "the node left something on the host"
    );
}

fn exercise(cluster: &Cluster, node: &Node, client: &Client) {
    let chart = repo().join("charts/kube-lvs");
    let install = |verb: &str, extra: &[&str]| {
        let mut cmd = cluster.helm();
        cmd.args([verb, "kube-lvs"])
            .arg(&chart)
            .args([
                "-n",
                RELEASE_NS,
                "--create-namespace",
                "--wait",
                "--timeout",
                "180s",
            ])
            .args([
                "--set",
                "image.repository=docker.io/local/kube-lvs",
                "--set",
                "image.tag=test",
                "--set",
                "image.pullPolicy=Never",
                "--set",
                "agent.dataplane=xdp",
                "--set",
                &format!("agent.interface={BRIDGE}"),
                "--set",
                "agent.xdpMode=generic",
                "--set",
                "operator.serviceCIDRs={10.96.0.0/16}",
                "--set",
                "operator.podCIDRs={10.244.0.0/24}",
                "--set",
                "agent.extraArgs={--traffic-interval-seconds=1}",
            ])
            .args(extra);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "helm {verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let t = Instant::now();
    install("install", &[]);
    eprintln!("helm install --wait: {:.1} s", t.elapsed().as_secs_f64());

    // The operator: two replicas Ready, one of them holding the leader Lease.
    // helm's --wait counts a workload ready with `maxUnavailable` Pods not ready (for
    // the one-node DaemonSet, none at all): wait for the Pods themselves.
    let operators = eventually(Duration::from_secs(60), "two operator Pods Ready", || {
        let p = pods_ready(cluster, RELEASE_NS, "app.kubernetes.io/component=operator");
        (p.len() == 2).then_some(p)
    });
    let holder = kubectl(
        cluster,
        &[
            "get",
            "lease",
            "-n",
            RELEASE_NS,
            "kube-lvs-operator",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    );
    assert!(
        operators.contains(&holder),
        "leader {holder:?} is not one of {operators:?}"
    );
    // The agent: Ready (its probes pass), XDP attached to the node's bridge.
    let agents = eventually(Duration::from_secs(60), "the agent Pod Ready", || {
        let p = pods_ready(cluster, RELEASE_NS, "app.kubernetes.io/component=agent");
        (p.len() == 1).then_some(p)
    });
    let prog = xdp_prog_on_bridge().expect("the agent attached XDP to the bridge");
    let restarts = kubectl(
        cluster,
        &[
            "get",
            "pods",
            "-n",
            RELEASE_NS,
            "-o",
            "jsonpath={.items[*].status.containerStatuses[*].restartCount}",
        ],
    );
    assert!(
        restarts.split_whitespace().all(|r| r == "0"),
        "restarts: {restarts}"
    );

    // The backends and their Service.
    kubectl(cluster, &["create", "namespace", APP_NS]);
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: kubelvs.io/v1alpha1
kind: AddressPool
metadata: {name: lan}
spec: {addresses: [192.168.77.100-192.168.77.110]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
        - name: web
          image: docker.io/local/web:test
          imagePullPolicy: Never
          ports: [{containerPort: 8080}]
          readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
",
        )
        .unwrap();
    eventually(Duration::from_secs(60), "3 web Pods Ready", || {
        (pods_ready(cluster, APP_NS, "app=web").len() == 3).then_some(())
    });
    let created = Instant::now();
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {kubelvs.io/dataplane: xdp, kubelvs.io/scheduler: maglev}
spec:
  type: LoadBalancer
  loadBalancerClass: kubelvs.io/lvs
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
",
        )
        .unwrap();
    let vip = eventually(Duration::from_secs(30), "the Service's ingress", || {
        let ip = cluster
            .kubectl_ok(&[
                "get",
                "service",
                "-n",
                APP_NS,
                "web",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ])
            .ok()?;
        (!ip.is_empty()).then_some(ip)
    });
    let url = format!("http://{vip}/");
    let first = eventually(
        Duration::from_secs(30),
        "a first answer through the VIP",
        || client.get(&url).ok(),
    );
    eprintln!(
        "Service created -> first answer through the VIP {vip}: {:.2} s (from {first})",
        created.elapsed().as_secs_f64()
    );

    // EndpointSlices from the real controller.
    let managers = kubectl(
        cluster,
        &[
            "get",
            "endpointslices",
            "-n",
            APP_NS,
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "jsonpath={.items[*].metadata.labels.endpointslice\\.kubernetes\\.io/managed-by}",
        ],
    );
    assert!(
        managers.contains("endpointslice-controller.k8s.io"),
        "{managers}"
    );

    // Spread over the three Pods, through the XDP director: its count of new flows
    // grows by every request, and kube-proxy has no rule for the VIP (ipMode Proxy).
    let flows_before = xdp_flows(&vip);
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..30 {
        let pod = client.get(&url).expect("a request through the VIP");
        *seen.entry(pod).or_default() += 1;
    }
    let web_pods = pods_ready(cluster, APP_NS, "app=web");
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        {
            let mut p = web_pods.clone();
            p.sort();
            p
        },
        "answers: {seen:?}"
    );
    let flows = eventually(
        Duration::from_secs(10),
        "the XDP director's flow count",
        || {
            let n = xdp_flows(&vip);
            (n - flows_before >= 30.0).then_some(n)
        },
    );
    eprintln!("spread over the Pods: {seen:?}; XDP flows to the VIP {flows_before} -> {flows}");
    let ruleset = String::from_utf8_lossy(
        &Command::new("nft")
            .args(["list", "table", "ip", "kube-proxy"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        ruleset.contains("10.96."),
        "kube-proxy runs and has rules: {ruleset}"
    );
    assert!(
        !ruleset.contains(&vip),
        "kube-proxy has a rule for the VIP: {ruleset}"
    );

    // Scale to 1 and back under traffic: no request fails.
    let traffic = Traffic::start(node.dir(), "scale", &["loop", &vip]);
    kubectl(
        cluster,
        &["scale", "deployment", "-n", APP_NS, "web", "--replicas=1"],
    );
    eventually(Duration::from_secs(60), "one web Pod left", || {
        let all = kubectl(
            cluster,
            &["get", "pods", "-n", APP_NS, "-l", "app=web", "-o", "name"],
        );
        (all.lines().count() == 1).then_some(())
    });
    kubectl(
        cluster,
        &["scale", "deployment", "-n", APP_NS, "web", "--replicas=3"],
    );
    eventually(Duration::from_secs(60), "3 web Pods Ready again", || {
        (pods_ready(cluster, APP_NS, "app=web").len() == 3).then_some(())
    });
    // Until the new Pods answer too.
    let new_pods = pods_ready(cluster, APP_NS, "app=web");
    eventually(Duration::from_secs(30), "every Pod answering again", || {
        let lines = traffic.lines();
        let tail = &lines[lines.len().saturating_sub(60)..];
        new_pods
            .iter()
            .all(|p| tail.iter().any(|l| l == &format!("ok {p}")))
            .then_some(())
    });
    let lines = traffic.finish();
    assert!(
        failures(&lines).is_empty(),
        "{} of {} requests failed while scaling: {:?}",
        failures(&lines).len(),
        lines.len(),
        failures(&lines)
    );
    eprintln!(
        "scaled 3 -> 1 -> 3 under traffic: {} requests, none failed",
        lines.len()
    );

    // A deleted Pod's endpoint drains: no new request reaches it, none fails.
    let victim = new_pods[0].clone();
    let traffic = Traffic::start(node.dir(), "delete", &["loop", &vip]);
    kubectl(
        cluster,
        &["delete", "pod", "-n", APP_NS, &victim, "--wait=false"],
    );
    let deleted = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let mark = traffic.lines().len();
    eventually(Duration::from_secs(60), "a replacement Pod Ready", || {
        let ready = pods_ready(cluster, APP_NS, "app=web");
        (ready.len() == 3 && !ready.contains(&victim)).then_some(())
    });
    let lines = traffic.finish();
    assert!(
        failures(&lines).is_empty(),
        "requests failed while a Pod was deleted: {:?}",
        failures(&lines)
    );
    let late: Vec<&String> = lines[mark..]
        .iter()
        .filter(|l| **l == format!("ok {victim}"))
        .collect();
    assert!(
        late.is_empty(),
        "{} requests reached the deleted Pod a second after its deletion",
        late.len()
    );
    eprintln!(
        "deleted Pod drained: {} requests, none failed, none to {victim} {:.1} s after",
        lines.len(),
        deleted.elapsed().as_secs_f64()
    );

    // helm upgrade rolls the agent under traffic, then the agent Pod is deleted:
    // established connections survive both, and no request fails.
    let held = Traffic::start(node.dir(), "held", &["hold", &vip, "20"]);
    eventually(Duration::from_secs(20), "20 connections open", || {
        held.lines().iter().any(|l| l == "open 20").then_some(())
    });
    let traffic = Traffic::start(node.dir(), "upgrade", &["loop", &vip]);
    let old_agent = agents[0].clone();
    let t = Instant::now();
    install("upgrade", &["--set", "agent.leaseDurationMs=2400"]);
    let agents2 = eventually(
        Duration::from_secs(60),
        "the agent rolled and Ready",
        || {
            let p = pods_ready(cluster, RELEASE_NS, "app.kubernetes.io/component=agent");
            (p.len() == 1 && p[0] != old_agent).then_some(p)
        },
    );
    eprintln!(
        "helm upgrade rolled the agent in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    kubectl(cluster, &["delete", "pod", "-n", RELEASE_NS, &agents2[0]]);
    eventually(Duration::from_secs(60), "the agent back Ready", || {
        let a = pods_ready(cluster, RELEASE_NS, "app.kubernetes.io/component=agent");
        (a.len() == 1 && a[0] != agents2[0]).then_some(())
    });
    let prog_after = xdp_prog_on_bridge().expect("XDP attached after the agent's restarts");
    eprintln!("XDP program on the bridge: id {prog} before, {prog_after} after");
    let lines = traffic.finish();
    assert!(
        failures(&lines).is_empty(),
        "requests failed while the agent rolled: {:?}",
        failures(&lines)
    );
    let kept = held.finish();
    assert_eq!(
        kept.iter().filter(|l| l.starts_with("ok ")).count(),
        20,
        "held connections: {kept:?}"
    );
    eprintln!(
        "agent rolled and deleted: {} requests, none failed; 20 of 20 held connections answered",
        lines.len()
    );

    let out = cluster
        .helm()
        .args([
            "uninstall",
            "kube-lvs",
            "-n",
            RELEASE_NS,
            "--wait",
            "--timeout",
            "120s",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm uninstall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        Duration::from_secs(30),
        "the agent's XDP program and pins gone with the uninstall",
        || {
            let pins = std::fs::read_dir("/sys/fs/bpf/kubelvs").map_or(0, |d| d.count());
            (xdp_prog_on_bridge().is_none() && pins == 0).then_some(())
        },
    );
    kubectl(
        cluster,
        &[
            "delete",
            "namespace",
            APP_NS,
            "--wait=true",
            "--timeout=60s",
        ],
    );
}
