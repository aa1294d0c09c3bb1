//! The kubelvs.io API against a real API server: the CRDs installed with kubectl,
//! every example accepted, every invalid example rejected naming the field that
//! `validate()` names, printer columns and short names served, status list-maps
//! merged across field managers, ServiceAccount tokens limited to their RBAC, and
//! the controller-manager's garbage collector at work.
//!
//! Runs against a local control plane built from Go modules (or `KUBECONFIG`'s
//! cluster); `#[ignore]`d so a plain `cargo test` needs no Go. `scripts/test` runs it.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kubelvs_example_tests::{expected_field, repo_root, yaml_files};
use kubelvs_test_cluster::{shared, Cluster};
use serde::Deserialize;

/// The CRDs, applied once per test binary with the real kubectl and Established.
fn cluster_with_crds() -> &'static Cluster {
    static APPLIED: OnceLock<()> = OnceLock::new();
    let cluster = shared();
    APPLIED.get_or_init(|| cluster.install_crds().unwrap());
    cluster
}

/// Documents of a YAML file, with namespaced objects moved into `ns`.
fn in_namespace(text: &str, ns: &str) -> String {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .map(|mut v| {
            if v["kind"].as_str() != Some("AddressPool") {
                v["metadata"]["namespace"] = ns.into();
            }
            serde_yaml::to_string(&v).unwrap()
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

#[test]
#[ignore = "needs the test control plane (Go toolchain); scripts/test runs it"]
fn control_plane_runs_the_pinned_versions() {
    let cluster = shared();
    let v: serde_json::Value =
        serde_json::from_str(&cluster.kubectl_ok(&["version", "-o", "json"]).unwrap()).unwrap();
    let client = v["clientVersion"]["gitVersion"].as_str().unwrap();
    assert!(client.starts_with("v1.35."), "kubectl version: {v}");
    if let Some(cp) = cluster.local() {
        assert_eq!(v["serverVersion"]["gitVersion"].as_str(), Some(client));
        let mem: Vec<String> = cp
            .memory()
            .iter()
            .map(|(n, b)| format!("{n} {} MiB", b >> 20))
            .collect();
        eprintln!(
            "control plane: ready in {:.1} s; resident memory: {}",
            cp.ready_after().as_secs_f64(),
            mem.join(", ")
        );
        assert!(cp.memory().iter().all(|(_, b)| *b > 0), "a process is gone");
    }
    let helm = cluster
        .helm()
        .args(["version", "--short"])
        .output()
        .unwrap();
    let helm = String::from_utf8_lossy(&helm.stdout);
    assert!(helm.starts_with("v3."), "helm version: {helm}");
}

#[test]
#[ignore = "needs the test control plane (Go toolchain); scripts/test runs it"]
fn crds_are_served_with_short_names_category_and_printer_columns() {
    let cluster = cluster_with_crds();
    let ns = cluster.namespace("columns");
    let dr = std::fs::read_to_string(repo_root().join("examples/dr.yaml")).unwrap();
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], &in_namespace(&dr, ns.name()))
        .unwrap();

    // Category: `kubectl get kubelvs` lists every kind of ours.
    let all = cluster
        .kubectl_ok(&["get", "kubelvs", "-n", ns.name(), "-o", "name"])
        .unwrap();
    assert!(all.contains("virtualservice.kubelvs.io/web-dr"), "{all}");
    assert!(all.contains("realserver.kubelvs.io/web-dr-1"), "{all}");

    // Short names and printer columns, as README shows them.
    let wide = cluster
        .kubectl_ok(&["get", "lvs", "-n", ns.name(), "-o", "wide"])
        .unwrap();
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "VIP",
            "PORTS",
            "SCHEDULER",
            "FORWARDING",
            "HEALTHY",
            "READY",
            "ANNOUNCED",
            "BY",
            "AGE"
        ],
        "{wide}"
    );
    // No operator here: VIP (status.vip) and READY are blank. A printer column shows
    // only the first JSONPath result, so PORTS of a two-port service is its first port.
    let row = wide.lines().nth(1).unwrap();
    let at = |col: &str| {
        row[wide.find(col).unwrap()..]
            .split_whitespace()
            .next()
            .unwrap_or("")
    };
    assert_eq!(at("NAME"), "web-dr", "{wide}");
    assert_eq!(at("PORTS"), "80", "{wide}");
    assert_eq!(at("SCHEDULER"), "sh", "{wide}");
    assert_eq!(at("FORWARDING"), "dr", "{wide}");
    assert!(row[wide.find("VIP").unwrap()..wide.find("PORTS").unwrap()]
        .trim()
        .is_empty());
    for short in ["lvsvs", "lvsrs"] {
        cluster
            .kubectl_ok(&["get", short, "-n", ns.name()])
            .unwrap_or_else(|e| panic!("short name {short}: {e}"));
    }
    cluster.kubectl_ok(&["get", "lvspool"]).unwrap();
}

#[test]
#[ignore = "needs the test control plane (Go toolchain); scripts/test runs it"]
fn every_example_is_accepted_by_a_server_side_dry_run() {
    let cluster = cluster_with_crds();
    let ns = cluster.namespace("examples");
    let files = yaml_files(&repo_root().join("examples"));
    assert!(files.len() >= 5);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let out = cluster.kubectl_stdin(
            &["apply", "--dry-run=server", "--validate=strict", "-f", "-"],
            &in_namespace(&text, ns.name()),
        );
        assert!(
            out.is_ok(),
            "{} rejected: {}",
            f.display(),
            out.unwrap_err()
        );
    }
}

#[test]
#[ignore = "needs the test control plane (Go toolchain); scripts/test runs it"]
fn every_invalid_example_is_rejected_naming_the_field_validate_names() {
    let cluster = cluster_with_crds();
    let ns = cluster.namespace("invalid");
    let files = yaml_files(&repo_root().join("examples/invalid"));
    assert!(files.len() >= 40);
    let mut wrong = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        // tests/examples proves validate() names this same field.
        let field =
            expected_field(&text).unwrap_or_else(|| panic!("{}: no '# expect:' line", f.display()));
        match cluster.kubectl_stdin(
            &["apply", "--dry-run=server", "--validate=strict", "-f", "-"],
            &in_namespace(&text, ns.name()),
        ) {
            Ok(out) => wrong.push(format!("{}: accepted: {out}", f.display())),
            Err(e) if !names_field(&e.to_string(), field) => {
                wrong.push(format!("{}: expected {field}: {e}", f.display()))
            }
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Whether an API server error names `field` as the path of a cause (not merely
/// a path that starts with it: `spec.ports` must not match `spec.ports[0].port`).
fn names_field(message: &str, field: &str) -> bool {
    message.match_indices(field).any(|(i, _)| {
        let after = message[i + field.len()..].chars().next();
        let before = message[..i].chars().last();
        matches!(after, Some(':') | Some('"') | None)
            && !matches!(before, Some(c) if c.is_alphanumeric() || c == '.')
    })
}

#[test]
fn names_field_matches_whole_paths_only() {
    let m = r#"The VirtualService "x" is invalid: spec.ports[0].port: Invalid value: 0"#;
    assert!(names_field(m, "spec.ports[0].port"));
    assert!(!names_field(m, "spec.ports"));
    assert!(!names_field(m, "ports[0].port"));
    assert!(names_field(
        r#"strict decoding error: unknown field "spec.healthcheck""#,
        "spec.healthcheck"
    ));
}

/// Server-side apply of a VirtualService's status by one node's field manager.
fn apply_director_status(cluster: &Cluster, ns: &str, node: &str, healthy: u32) {
    cluster
        .apply_status_as_agent(
            node,
            ns,
            "VirtualService",
            "web-dr",
            &format!(
                "{{directors: [{{node: {node}, programmed: true, dataplane: ipvs, healthyRealServers: {healthy}}}]}}"
            ),
        )
        .unwrap_or_else(|e| panic!("status apply by {node}: {e}"));
}

fn directors(cluster: &Cluster, ns: &str) -> Vec<(String, u64)> {
    let v: serde_json::Value = serde_json::from_str(
        &cluster
            .kubectl_ok(&["get", "virtualservice", "web-dr", "-n", ns, "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    let mut d: Vec<(String, u64)> = v["status"]["directors"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e["node"].as_str().unwrap().to_owned(),
                e["healthyRealServers"].as_u64().unwrap(),
            )
        })
        .collect();
    d.sort();
    d
}

#[test]
#[ignore = "needs the test control plane (Go toolchain); scripts/test runs it"]
fn status_entries_of_two_field_managers_merge_by_node() {
    let cluster = cluster_with_crds();
    let ns = cluster.namespace("ssa");
    let dr = std::fs::read_to_string(repo_root().join("examples/dr.yaml")).unwrap();
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], &in_namespace(&dr, ns.name()))
        .unwrap();

    apply_director_status(cluster, ns.name(), "n1", 3);
    apply_director_status(cluster, ns.name(), "n2", 1);
    assert_eq!(
        directors(cluster, ns.name()),
        [("n1".into(), 3), ("n2".into(), 1)]
    );

    // n1 updates its entry: n2's is untouched.
    apply_director_status(cluster, ns.name(), "n1", 2);
    assert_eq!(
        directors(cluster, ns.name()),
        [("n1".into(), 2), ("n2".into(), 1)]
    );

    // n2 applies a status without its entry: only its own entry goes.
    cluster
        .kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--subresource=status",
                "--field-manager=kubelvs-agent/n2",
                "-f",
                "-",
            ],
            &format!(
                "apiVersion: kubelvs.io/v1alpha1\nkind: VirtualService\nmetadata: {{name: web-dr, namespace: {}}}\nstatus: {{}}\n",
                ns.name()
            ),
        )
        .unwrap();
    assert_eq!(directors(cluster, ns.name()), [("n1".into(), 2)]);

    // A status write does not touch spec, and a spec apply does not touch status.
    let v: serde_json::Value = serde_json::from_str(
        &cluster
            .kubectl_ok(&["get", "lvs", "web-dr", "-n", ns.name(), "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(v["spec"]["forwarding"], "dr");
    assert_eq!(
        v["metadata"]["generation"], 1,
        "status writes bumped generation"
    );
}

#[test]
#[ignore = "needs the test control plane (Go toolchain); scripts/test runs it"]
fn service_account_tokens_carry_only_their_rbac() {
    let cluster = cluster_with_crds();
    let ns = cluster.namespace("rbac");
    let kubeconfig = cluster
        .service_account_kubeconfig(ns.name(), "reader")
        .unwrap();
    let as_reader = |args: &[&str]| {
        cluster
            .kubectl()
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .unwrap()
    };
    let denied = as_reader(&["get", "virtualservices", "-n", ns.name()]);
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );

    cluster
        .kubectl_ok(&[
            "create",
            "role",
            "read-lvs",
            "-n",
            ns.name(),
            "--verb=get,list",
            "--resource=virtualservices.kubelvs.io",
        ])
        .unwrap();
    cluster
        .kubectl_ok(&[
            "create",
            "rolebinding",
            "read-lvs",
            "-n",
            ns.name(),
            "--role=read-lvs",
            &format!("--serviceaccount={}:reader", ns.name()),
        ])
        .unwrap();
    let allowed = as_reader(&["get", "virtualservices", "-n", ns.name()]);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    // Still no write.
    let write = as_reader(&[
        "create",
        "configmap",
        "x",
        "-n",
        ns.name(),
        "--from-literal=a=b",
    ]);
    assert!(!write.status.success());
}

#[test]
#[ignore = "needs the test control plane (Go toolchain); scripts/test runs it"]
fn garbage_collector_deletes_dependents_of_a_deleted_owner() {
    let cluster = shared();
    let ns = cluster.namespace("gc");
    cluster
        .kubectl_ok(&["create", "configmap", "owner", "-n", ns.name()])
        .unwrap();
    let uid = cluster
        .kubectl_ok(&[
            "get",
            "configmap",
            "owner",
            "-n",
            ns.name(),
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .unwrap();
    let dependent = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"dependent","namespace":"{}","ownerReferences":[{{"apiVersion":"v1","kind":"ConfigMap","name":"owner","uid":"{uid}"}}]}}}}"#,
        ns.name()
    );
    cluster
        .kubectl_stdin(&["create", "-f", "-"], &dependent)
        .unwrap();
    cluster
        .kubectl_ok(&["delete", "configmap", "owner", "-n", ns.name()])
        .unwrap();
    // The collector works from its own informers: poll.
    eventually(60, "garbage collection of the dependent", || {
        cluster
            .kubectl_ok(&[
                "get",
                "configmap",
                "dependent",
                "-n",
                ns.name(),
                "--ignore-not-found",
                "-o",
                "name",
            ])
            .unwrap()
            .trim()
            .is_empty()
    });
}

/// Polls `f` every 200 ms until it returns true, for at most `secs` seconds.
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not after {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs the test control plane (Go toolchain); scripts/test runs it"]
fn endpointslice_and_namespace_controllers_run() {
    let cluster = shared();
    let ns = cluster.namespace("kcm");
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {}}}\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80}}]\n",
                ns.name()
            ),
        )
        .unwrap();
    eventually(60, "EndpointSlice of Service web", || {
        cluster
            .kubectl_ok(&[
                "get",
                "endpointslices",
                "-n",
                ns.name(),
                "-l",
                "kubernetes.io/service-name=web",
                "-o",
                "jsonpath={.items[*].metadata.labels.endpointslice\\.kubernetes\\.io/managed-by}",
            ])
            .unwrap()
            .contains("endpointslice-controller.k8s.io")
    });

    let doomed = cluster.namespace("doomed");
    let name = doomed.name().to_owned();
    cluster
        .kubectl_ok(&["create", "configmap", "x", "-n", &name])
        .unwrap();
    drop(doomed);
    eventually(60, "namespace deletion", || {
        cluster
            .kubectl_ok(&[
                "get",
                "namespace",
                &name,
                "--ignore-not-found",
                "-o",
                "name",
            ])
            .unwrap()
            .trim()
            .is_empty()
    });
}
