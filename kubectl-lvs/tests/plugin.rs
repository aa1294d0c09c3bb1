//! `kubectl lvs` through the real kubectl (plugin discovery on PATH) against the real
//! API server of the test suite: the table shows what the objects and the agents'
//! status entries say.

use std::path::Path;

use kubelvs_test_cluster::shared;

fn kubectl_lvs(args: &[&str]) -> String {
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
        .env("KUBECONFIG", cluster.kubeconfig())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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

    // Traffic from two directors' entries, summed as ipvsadm --stats would show the
    // cluster's one table.
    let traffic = |node: &str, c: u64| {
        format!(
            "{{directors: [{{node: {node}, programmed: true, healthyRealServers: 1, \
             traffic: [{{service: 203.0.113.77:80/TCP, connections: {c}, packets: {}, bytes: {}, \
             realServers: [{{address: '198.51.100.1:80', connections: {c}, packets: {}, bytes: {}}}]}}]}}]}}",
            2 * c,
            100 * c,
            2 * c,
            100 * c
        )
    };
    report_as("lb1", "VirtualService", "web", &traffic("lb1", 30));
    report_as("lb2", "VirtualService", "web", &traffic("lb2", 12));
    let stats = kubectl_lvs(&["-n", ns.name(), "--stats"]);
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
}
