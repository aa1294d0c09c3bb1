//! `kubectl lvs` through the real kubectl (plugin discovery on PATH) against the real
//! API server of the test suite: the table shows what the objects and the agents'
//! status entries say; `--stats` sums the agents' own /metrics (their registry and
//! server, run here), read directly or through the API server's proxy to agent pods.

use std::path::Path;

use kubelvs_test_cluster::{node_object, shared};

/// `kubectl lvs ARGS` as the user of `kubeconfig`: (stdout, stderr); it must succeed.
fn kubectl_lvs_as(kubeconfig: &Path, args: &[&str]) -> (String, String) {
    let cluster = shared();
    let plugin_dir = Path::new(env!("CARGO_BIN_EXE_kubectl-lvs"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // kubectl takes no flag before a plugin's name: KUBECONFIG says which cluster.
    let out = std::process::Command::new(cluster.tool("kubectl"))
        .arg("lvs")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kubectl_lvs(args: &[&str]) -> String {
    kubectl_lvs_as(shared().kubeconfig(), args).0
}

/// An agent's /metrics as the agent serves it (its registry and server), with
/// `connections` counted on 203.0.113.77:80/TCP and its real server 198.51.100.1:80.
fn agent_metrics(
    rt: &tokio::runtime::Runtime,
    listen: std::net::IpAddr,
    connections: u64,
) -> std::net::SocketAddr {
    use kubelvs_agent::metrics::{BackendLabels, Metrics, ServiceLabels, Shown};
    let metrics = Metrics::new();
    let counted = kubelvs_model::Traffic {
        connections,
        packets: 2 * connections,
        bytes: 100 * connections,
    };
    let service = kubelvs_model::ServiceKey {
        vip: "203.0.113.77".parse().unwrap(),
        port: 80,
        protocol: kubelvs_model::Protocol::Tcp,
    };
    metrics.virtual_service.observe(
        ServiceLabels {
            dataplane: "ipvs",
            service: Shown(service),
        },
        counted,
    );
    metrics.real_server.observe(
        BackendLabels {
            dataplane: "ipvs",
            service: Shown(Some(service)),
            real_server: Shown("198.51.100.1:80".parse().unwrap()),
        },
        counted,
    );
    metrics.observed.set_ready(true);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind((listen, 0)))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(kubelvs_observe::serve(listener, metrics.observed.clone()));
    addr
}

/// A veth pair with one address on this host (root; not every kernel has the dummy
/// driver): a pod IP the API server may proxy to (it refuses loopback). Removed when
/// dropped.
struct HostAddress(&'static str, std::net::IpAddr);

impl HostAddress {
    fn add(link: &'static str, address: &str) -> Self {
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap()
        };
        let _ = ip(&["link", "del", link]);
        let peer = format!("{link}p");
        assert!(ip(&["link", "add", link, "type", "veth", "peer", "name", &peer]).success());
        assert!(ip(&["addr", "add", &format!("{address}/32"), "dev", link]).success());
        assert!(ip(&["link", "set", &peer, "up"]).success());
        assert!(ip(&["link", "set", link, "up"]).success());
        Self(link, address.parse().unwrap())
    }
}

impl Drop for HostAddress {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", self.0])
            .status();
    }
}

#[test]
#[ignore = "needs the test control plane (Go toolchain); scripts/test runs it"]
fn kubectl_lvs_prints_the_clusters_lvs_table_with_each_directors_view() {
    let cluster = shared();
    cluster.install_crds().unwrap();
    let ns = cluster.namespace("lvs");
    cluster
        .kubectl_stdin(
            &["apply", "-n", ns.name(), "-f", "-"],
            "apiVersion: kubelvs.io/v1alpha1
kind: VirtualService
metadata: {name: web}
spec:
  vip: 203.0.113.77
  ports: [{port: 80}]
  scheduler: sh
  forwarding: dr
  directors: {nodeSelector: {matchLabels: {role: lb}}}
  realServerSelector: {matchLabels: {app: web}}
---
apiVersion: kubelvs.io/v1alpha1
kind: RealServer
metadata: {name: web-1, labels: {app: web}}
spec: {address: 198.51.100.1, weight: 5}
---
apiVersion: kubelvs.io/v1alpha1
kind: RealServer
metadata: {name: web-2, labels: {app: web}}
spec: {address: 198.51.100.2, drain: true}
",
        )
        .unwrap();
    // What an agent on a node reports (its own field manager, status only).
    let report_as = |node: &str, kind: &str, name: &str, status: &str| {
        cluster
            .apply_status_as_agent(node, ns.name(), kind, name, status)
            .unwrap();
    };
    let report = |kind: &str, name: &str, status: &str| report_as("lb1", kind, name, status);
    report(
        "VirtualService",
        "web",
        "{directors: [{node: lb1, programmed: true, dataplane: ipvs, healthyRealServers: 1}]}",
    );
    report(
        "RealServer",
        "web-1",
        "{observations: [{node: lb1, healthy: true}]}",
    );
    report(
        "RealServer",
        "web-2",
        "{observations: [{node: lb1, healthy: false, message: connection refused}]}",
    );

    let text = kubectl_lvs(&["-n", ns.name()]);
    assert!(
        text.contains(&format!(
            "TCP  203.0.113.77:80 sh   [{}/web ipvs, Route, lb1:programmed]",
            ns.name()
        )),
        "{text}"
    );
    assert!(
        text.contains("  -> 198.51.100.1:80              Route   5      lb1:up"),
        "{text}"
    );
    assert!(
        text.contains("  -> 198.51.100.2:80              Route   0 (draining) lb1:down"),
        "{text}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&kubectl_lvs(&["-n", ns.name(), "-o", "json"])).unwrap();
    assert_eq!(json[0]["address"], "203.0.113.77:80");
    assert_eq!(json[0]["directors"]["lb1"]["programmed"], true);
    assert_eq!(
        json[0]["realServers"][1]["health"]["lb1"]["message"],
        "connection refused"
    );
    let yaml = kubectl_lvs(&["-n", ns.name(), "-o", "yaml"]);
    assert!(yaml.contains("scheduler: sh"), "{yaml}");

    // Traffic is not status: two agents' /metrics, summed as ipvsadm --stats would show
    // the cluster's one table. First read directly (agents outside pods).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let host = HostAddress::add("kubelvs-stat0", "198.18.255.1");
    let (lb1, lb2) = (
        agent_metrics(&rt, host.1, 30),
        agent_metrics(&rt, host.1, 12),
    );
    let expect = |stats: &str| {
        assert!(
            stats.contains("TCP  203.0.113.77:80                      42         84         4200"),
            "{stats}"
        );
        assert!(
            stats.contains("  -> 198.51.100.1:80                      42         84         4200"),
            "{stats}"
        );
        assert!(
            stats.contains("  -> 198.51.100.2:80                       -          -            -"),
            "{stats}"
        );
    };
    let direct = kubectl_lvs(&[
        "-n",
        ns.name(),
        "--stats",
        "--agent",
        &format!("http://{lb1}"),
        "--agent",
        &format!("http://{lb2}/metrics"),
    ]);
    expect(&direct);

    // Then as the chart runs them: agent pods, read through the API server's proxy.
    // No kubelet runs them: the pods' status is written here, pointing at the servers.
    let agents = cluster.namespace("lvs-agents");
    for (node, addr) in [("stats-lb1", lb1), ("stats-lb2", lb2)] {
        cluster
            .kubectl_stdin(&["apply", "-f", "-"], &node_object(node, host.1, true))
            .unwrap();
        cluster
            .kubectl_stdin(
                &["apply", "-n", agents.name(), "-f", "-"],
                &format!(
                    "apiVersion: v1
kind: Pod
metadata:
  name: agent-{node}
  labels: {{app.kubernetes.io/name: kube-lvs, app.kubernetes.io/component: agent}}
spec:
  nodeName: {node}
  containers:
  - name: agent
    image: docker.io/local/kube-lvs:test
    ports: [{{name: metrics, containerPort: {port}}}]
",
                    port = addr.port()
                ),
            )
            .unwrap();
        cluster
            .kubectl_ok(&[
                "patch",
                "pod",
                &format!("agent-{node}"),
                "-n",
                agents.name(),
                "--subresource=status",
                "--type=merge",
                "-p",
                &format!(
                    "{{\"status\":{{\"phase\":\"Running\",\"podIP\":\"{ip}\",\"podIPs\":[{{\"ip\":\"{ip}\"}}]}}}}",
                    ip = host.1
                ),
            ])
            .unwrap();
    }
    let (proxied, warnings) = kubectl_lvs_as(
        cluster.kubeconfig(),
        &[
            "-n",
            ns.name(),
            "--stats",
            "--agents-namespace",
            agents.name(),
        ],
    );
    expect(&proxied);
    assert!(warnings.is_empty(), "{warnings}");
    let json: serde_json::Value = serde_json::from_str(&kubectl_lvs(&[
        "-n",
        ns.name(),
        "--stats",
        "--agents-namespace",
        agents.name(),
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(json[0]["traffic"]["connections"], 42);
    assert_eq!(json[0]["realServers"][0]["traffic"]["bytes"], 4200);

    // RBAC decides who sees traffic: a user who may read the table but not the
    // agents' pods/proxy gets the table, no counters, and the reason.
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &format!(
                "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: lvs-table-reader}}
rules:
- {{apiGroups: [kubelvs.io], resources: [virtualservices, realservers], verbs: [get, list]}}
- {{apiGroups: [''], resources: [pods], verbs: [list]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: lvs-table-reader-{ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: lvs-table-reader}}
subjects: [{{kind: ServiceAccount, name: reader, namespace: {ns}}}]
",
                ns = ns.name()
            ),
        )
        .unwrap();
    let reader = cluster
        .service_account_kubeconfig(ns.name(), "reader")
        .unwrap();
    let (table, warnings) = kubectl_lvs_as(
        &reader,
        &[
            "-n",
            ns.name(),
            "--stats",
            "--agents-namespace",
            agents.name(),
        ],
    );
    assert!(
        table.contains("TCP  203.0.113.77:80                       -          -            -"),
        "{table}"
    );
    assert!(
        warnings.contains(&format!("agent pod {}/agent-stats-lb1", agents.name()))
            && warnings.contains("pods/proxy"),
        "{warnings}"
    );
    for node in ["stats-lb1", "stats-lb2"] {
        let _ = cluster.kubectl_ok(&["delete", "node", node, "--wait=false"]);
    }
    let _ = cluster.kubectl_ok(&[
        "delete",
        "clusterrolebinding",
        &format!("lvs-table-reader-{}", ns.name()),
    ]);
}
