//! The Helm chart with the real helm of the test suite: `helm lint`; `helm template`
//! with the default values and with the XDP dataplane, every rendered object accepted
//! by the real API server (server-side dry run, strict field validation) and its
//! security settings as documented; `values.schema.json` refusing a bad value; and
//! `helm install`, after which impersonation shows the RBAC is least privilege.

use std::sync::OnceLock;

use kubelvs_example_tests::repo_root;
use kubelvs_test_cluster::{shared, Cluster};
use serde::Deserialize;

fn cluster_with_crds() -> &'static Cluster {
    static APPLIED: OnceLock<()> = OnceLock::new();
    let cluster = shared();
    APPLIED.get_or_init(|| cluster.install_crds().unwrap());
    cluster
}

/// `helm template` of the chart with `set` values; the rendered objects.
fn render(
    cluster: &Cluster,
    namespace: &str,
    set: &[&str],
) -> Result<Vec<serde_yaml::Value>, String> {
    let mut helm = cluster.helm();
    helm.args(["template", "kube-lvs"])
        .arg(repo_root().join("charts/kube-lvs"))
        .args(["--namespace", namespace]);
    for s in set {
        helm.args(["--set", s]);
    }
    let out = helm.output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_yaml::Deserializer::from_slice(&out.stdout)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect())
}

fn find<'a>(objects: &'a [serde_yaml::Value], kind: &str) -> &'a serde_yaml::Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn strings(v: &serde_yaml::Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "needs the test control plane (Go toolchain); scripts/test runs it"]
fn helm_lint_passes_and_the_schema_refuses_bad_values() {
    let cluster = shared();
    let lint = cluster
        .helm()
        .args(["lint", "--strict"])
        .arg(repo_root().join("charts/kube-lvs"))
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "{}",
        String::from_utf8_lossy(&lint.stdout)
    );
    for (set, says) in [
        ("agent.dataplane=dpdk", "/agent/dataplane"),
        ("operator.replicas=0", "/operator/replicas"),
        ("agent.extraArgs[0]=oops", "/agent/extraArgs/0"),
        ("nonsense=1", "nonsense"),
    ] {
        let err = render(cluster, "kube-lvs", &[set]).unwrap_err();
        assert!(err.contains(says), "{set}: {err}");
    }
}

#[test]
#[ignore = "needs the test control plane (Go toolchain); scripts/test runs it"]
fn every_rendered_object_is_accepted_by_the_api_server_with_strict_validation() {
    let cluster = cluster_with_crds();
    let ns = cluster.namespace("chart");
    for set in [
        &[][..],
        &[
            "agent.dataplane=xdp",
            "agent.interface=eth0",
            "agent.tolerations[0].operator=Exists",
        ][..],
        &["serviceMonitor.enabled=true"][..],
    ] {
        let objects = render(cluster, ns.name(), set).unwrap();
        let mut checked = 0;
        for o in &objects {
            // No prometheus-operator here: its CRD is not installed. Its shape is
            // checked below instead.
            if o["kind"] == "ServiceMonitor" {
                continue;
            }
            let yaml = serde_yaml::to_string(o).unwrap();
            cluster
                .kubectl_stdin(
                    &["apply", "--dry-run=server", "--validate=strict", "-f", "-"],
                    &yaml,
                )
                .unwrap_or_else(|e| {
                    panic!(
                        "{set:?}: {} {}: {e}",
                        o["kind"].as_str().unwrap(),
                        o["metadata"]["name"].as_str().unwrap()
                    )
                });
            checked += 1;
        }
        assert!(checked >= 10, "{set:?}: {checked} objects");
    }
    // The ServiceMonitor selects the metrics Services by their labels and port name.
    let objects = render(cluster, ns.name(), &["serviceMonitor.enabled=true"]).unwrap();
    let monitor = find(&objects, "ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let services: Vec<&serde_yaml::Value> =
        objects.iter().filter(|o| o["kind"] == "Service").collect();
    assert_eq!(services.len(), 2, "the operator's and the agents' metrics");
    for svc in services {
        for (k, v) in monitor["spec"]["selector"]["matchLabels"]
            .as_mapping()
            .unwrap()
        {
            assert_eq!(&svc["metadata"]["labels"][k], v);
        }
        assert_eq!(
            svc["spec"]["ports"][0]["name"],
            monitor["spec"]["endpoints"][0]["port"]
        );
    }
}

#[test]
#[ignore = "needs the test control plane (Go toolchain); scripts/test runs it"]
fn rendered_workloads_carry_the_documented_security_settings() {
    let cluster = shared();
    let default = render(cluster, "kube-lvs", &[]).unwrap();
    let xdp = render(
        cluster,
        "kube-lvs",
        &[
            "agent.dataplane=xdp",
            "agent.nodeSelector.kubelvs\\.io/role=director",
            "agent.tolerations[0].key=node-role.kubernetes.io/control-plane",
            "agent.tolerations[0].operator=Exists",
        ],
    )
    .unwrap();

    // The operator: two replicas with leader election, non-root, read-only, no capability.
    let op = find(&default, "Deployment");
    assert_eq!(op["spec"]["replicas"], 2);
    let pod = &op["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert!(strings(&c["args"])
        .iter()
        .any(|a| a.starts_with("--lease-namespace=")));
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        strings(&c["securityContext"]["capabilities"]["drop"]),
        ["ALL"]
    );
    assert!(c["securityContext"]["capabilities"]["add"].is_null());
    assert!(pod["hostNetwork"].is_null());

    // The agent: host network; NET_ADMIN and NET_RAW, plus BPF, PERFMON and bpffs with XDP.
    for (objects, caps, bpffs) in [
        (&default, vec!["NET_ADMIN", "NET_RAW"], false),
        (&xdp, vec!["NET_ADMIN", "NET_RAW", "BPF", "PERFMON"], true),
    ] {
        let ds = find(objects, "DaemonSet");
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(pod["hostNetwork"], true);
        let c = &pod["containers"][0];
        let sc = &c["securityContext"];
        assert!(sc["privileged"].is_null() || sc["privileged"] == false);
        assert_eq!(sc["runAsUser"], 0, "root's uid, capabilities limited");
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
        assert_eq!(strings(&sc["capabilities"]["add"]), caps);
        let mounts: Vec<String> = c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            mounts.contains(&"/sys/fs/bpf".to_owned()),
            bpffs,
            "{mounts:?}"
        );
        assert!(mounts.contains(&"/host/proc/sys/net".to_owned()));
        assert!(strings(&c["args"]).contains(&"--proc-sys=/host/proc/sys".to_owned()));
        // Metrics on the node's address: on 0.0.0.0 they would answer on every VIP.
        assert!(
            strings(&c["args"]).contains(&"--metrics-address=$(NODE_IP):9641".to_owned()),
            "{:?}",
            c["args"]
        );
        let env = c["env"].as_sequence().unwrap();
        assert!(env.iter().any(|e| e["name"] == "NODE_IP"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"));
    }
    let pod = &find(&xdp, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(pod["nodeSelector"]["kubelvs.io/role"], "director");
    assert_eq!(
        pod["tolerations"][0]["key"],
        "node-role.kubernetes.io/control-plane"
    );
    assert!(find(&default, "DaemonSet")["spec"]["template"]["spec"]["nodeSelector"].is_null());
}

#[test]
#[ignore = "needs the test control plane (Go toolchain); scripts/test runs it"]
fn helm_installs_the_chart_and_its_rbac_is_least_privilege() {
    let cluster = cluster_with_crds();
    let chart = repo_root().join("charts/kube-lvs");
    let ns = cluster.namespace("helm");
    let install = cluster
        .helm()
        .args(["install", "kube-lvs"])
        .arg(&chart)
        .args([
            "--namespace",
            ns.name(),
            "--set",
            "agent.serviceAccount.name=agent",
            "--set",
            "operator.serviceAccount.name=operator",
        ])
        .output()
        .unwrap();
    assert!(
        install.status.success(),
        "{}{}",
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );
    // The workloads exist (no kubelet here: their Pods never run).
    cluster
        .kubectl_ok(&[
            "get",
            "deployment/kube-lvs-operator",
            "daemonset/kube-lvs-agent",
            "-n",
            ns.name(),
        ])
        .unwrap();
    let notes = String::from_utf8_lossy(&install.stdout);
    assert!(
        notes.contains("kind: AddressPool"),
        "NOTES tell what to do next: {notes}"
    );
    let agent = format!("system:serviceaccount:{}:agent", ns.name());
    let operator = format!("system:serviceaccount:{}:operator", ns.name());
    // `resource/subresource` asks about the subresource, as `who`, in `namespace`.
    let can_as = |who: &str, verb: &str, resource: &str, namespace: &str| {
        let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
        let mut c = cluster.kubectl();
        c.args([
            "auth", "can-i", verb, resource, "--as", who, "-n", namespace,
        ]);
        if !sub.is_empty() {
            c.arg(format!("--subresource={sub}"));
        }
        c.output().unwrap().stdout.starts_with(b"yes")
    };
    let can = |verb: &str, resource: &str| can_as(&agent, verb, resource, "default");
    assert!(can("patch", "virtualservices.kubelvs.io/status"));
    assert!(can("patch", "realservers.kubelvs.io/status"));
    assert!(can("watch", "virtualservices.kubelvs.io"));
    assert!(can("list", "nodes"));
    assert!(
        can("watch", "namespaces"),
        "where node real servers are allowed"
    );
    assert!(
        !can("patch", "namespaces"),
        "the leave is an administrator's"
    );
    assert!(can("create", "events.events.k8s.io"));
    assert!(!can("patch", "virtualservices.kubelvs.io"), "spec writes");
    assert!(!can("update", "realservers.kubelvs.io"), "spec writes");
    assert!(!can("patch", "services/status"), "CVE-2020-8554");
    assert!(!can("create", "virtualservices.kubelvs.io"));
    // BGP passwords: Secrets of its own namespace only, read only.
    assert!(can_as(&agent, "watch", "secrets", ns.name()));
    assert!(!can("get", "secrets"), "another namespace's Secrets");
    assert!(!can_as(&agent, "update", "secrets", ns.name()));
    // Its node's liveness Lease in its own namespace (the admission policy holds it to
    // that one); the operator follows them.
    assert!(can_as(
        &agent,
        "patch",
        "leases.coordination.k8s.io",
        ns.name()
    ));
    assert!(can_as(
        &operator,
        "watch",
        "leases.coordination.k8s.io",
        ns.name()
    ));
    // Only the operator writes Service status; it holds its Lease in its own namespace.
    let op = |verb: &str, resource: &str| can_as(&operator, verb, resource, "default");
    assert!(op("patch", "services/status"));
    assert!(op("create", "realservers.kubelvs.io"));
    assert!(op("delete", "virtualservices.kubelvs.io"));
    assert!(op("patch", "virtualservices.kubelvs.io/status"));
    assert!(op("patch", "addresspools.kubelvs.io/status"));
    assert!(op("watch", "endpointslices.discovery.k8s.io"));
    assert!(!op("patch", "services"), "Service specs are the user's");
    assert!(
        !op("patch", "addresspools.kubelvs.io"),
        "pools are the user's"
    );
    assert!(
        !op("patch", "realservers.kubelvs.io/status"),
        "health is the agents'"
    );
    assert!(can_as(
        &operator,
        "update",
        "leases.coordination.k8s.io",
        ns.name()
    ));
    assert!(!op("update", "leases.coordination.k8s.io"));
    // In its own namespace the agent reads the uninstall marker and no other ConfigMap.
    let configmap = |name: &str| {
        cluster
            .kubectl()
            .args(["auth", "can-i", "watch", &format!("configmaps/{name}")])
            .args(["--as", &agent, "-n", ns.name()])
            .output()
            .unwrap()
            .stdout
            .starts_with(b"yes")
    };
    assert!(configmap("kube-lvs-uninstalling"));
    assert!(!configmap("kube-root-ca.crt"));
    // Not there until an uninstall begins; then its pre-delete hook creates it
    // before anything is deleted, and it stays for agents still stopping.
    let marker = ["get", "configmap", "kube-lvs-uninstalling", "-n", ns.name()];
    assert!(cluster.kubectl_ok(&marker).is_err());
    let uninstall = cluster
        .helm()
        .args(["uninstall", "kube-lvs", "--namespace", ns.name()])
        .output()
        .unwrap();
    assert!(
        uninstall.status.success(),
        "{}",
        String::from_utf8_lossy(&uninstall.stderr)
    );
    cluster.kubectl_ok(&marker).unwrap();
    assert!(cluster
        .kubectl_ok(&["get", "daemonset/kube-lvs-agent", "-n", ns.name()])
        .is_err());
}

/// What an agent with `kubeconfig`'s token writes; the API server's refusal as text.
fn apply_status_with(
    cluster: &Cluster,
    kubeconfig: &std::path::Path,
    node: &str,
    namespace: &str,
    kind: &str,
    name: &str,
    status: &str,
) -> Result<(), String> {
    cluster
        .apply_status_as_agent_with(Some(kubeconfig), node, namespace, kind, name, status)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The chart's admission policy against the real API server: an agent, with a token
/// bound to its Pod on a Node as a DaemonSet's Pod gets, writes its own node's entries
/// and Lease and nothing else; a token bound to no node writes nothing.
#[test]
#[ignore = "needs the test control plane (Go toolchain)"]
fn an_agents_token_writes_only_its_own_nodes_entries() {
    let cluster = cluster_with_crds();
    let system = cluster.namespace("lvs-sys");
    let tenant = cluster.namespace("lvs-tenant");
    // The release is named after its namespace: its cluster-scoped objects are its own.
    let release = system.name();
    cluster
        .apply_chart_templates(
            release,
            system.name(),
            &[
                "templates/agent-rbac.yaml",
                "templates/agent-admission.yaml",
            ],
            &[],
        )
        .unwrap();
    let (n1, n2) = (format!("{release}-n1"), format!("{release}-n2"));
    cluster
        .kubectl_stdin(
            &["apply", "-n", tenant.name(), "-f", "-"],
            "apiVersion: kubelvs.io/v1alpha1
kind: VirtualService
metadata: {name: web}
spec: {ports: [{port: 80}], forwarding: nat, realServerSelector: {}}
---
apiVersion: kubelvs.io/v1alpha1
kind: RealServer
metadata: {name: rs1}
spec: {address: 198.51.100.11}
",
        )
        .unwrap();
    // What the operator and another node wrote before (as the administrator).
    cluster
        .apply_status_as_agent(
            &n2,
            tenant.name(),
            "VirtualService",
            "web",
            &format!("{{vip: 203.0.113.10, directors: [{{node: {n2}, programmed: true}}]}}"),
        )
        .unwrap();
    let agent_n1 = cluster
        .pod_bound_kubeconfig(system.name(), "kube-lvs-agent", "agent-n1", &n1)
        .unwrap();
    let as_n1 = |node: &str, kind: &str, name: &str, status: &str| {
        apply_status_with(cluster, &agent_n1, node, tenant.name(), kind, name, status)
    };

    // Its own entries: allowed.
    as_n1(
        &n1,
        "VirtualService",
        "web",
        &format!("{{directors: [{{node: {n1}, programmed: true}}]}}"),
    )
    .unwrap();
    as_n1(
        &n1,
        "RealServer",
        "rs1",
        &format!("{{observations: [{{node: {n1}, healthy: true}}]}}"),
    )
    .unwrap();
    // Another node's entry, the VIP every planner programs: refused, each named.
    let e = as_n1(
        &n2,
        "VirtualService",
        "web",
        &format!("{{directors: [{{node: {n2}, programmed: false}}]}}"),
    )
    .unwrap_err();
    assert!(
        e.contains("may write only its own entry of status.directors"),
        "{e}"
    );
    let e = as_n1(
        &n2,
        "RealServer",
        "rs1",
        &format!("{{observations: [{{node: {n2}, healthy: false}}]}}"),
    )
    .unwrap_err();
    assert!(e.contains("status.observations"), "{e}");
    let e = as_n1(&n1, "VirtualService", "web", "{vip: 203.0.113.66}").unwrap_err();
    assert!(e.contains("status.vip"), "{e}");
    let vs: serde_json::Value = serde_json::from_str(
        &cluster
            .kubectl_ok(&["get", "lvs", "web", "-n", tenant.name(), "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(vs["status"]["vip"], "203.0.113.10", "{vs}");
    let directors = vs["status"]["directors"].as_array().unwrap();
    assert!(
        directors
            .iter()
            .any(|d| d["node"] == n2.as_str() && d["programmed"] == true),
        "{vs}"
    );
    assert!(directors.iter().any(|d| d["node"] == n1.as_str()), "{vs}");

    // Its own node's liveness Lease: allowed. Another node's, one it names another
    // holder in, and the operator's leader Lease: refused.
    let lease = |name: &str, holder: &str| {
        cluster
            .apply_lease_as_agent(&agent_n1, &n1, system.name(), name, holder)
            .map_err(|e| e.to_string())
    };
    lease(&format!("kubelvs-agent-{n1}"), &n1).unwrap();
    for (name, holder) in [
        (format!("kubelvs-agent-{n2}"), n2.clone()),
        (format!("kubelvs-agent-{n1}"), n2.clone()),
        ("kube-lvs-operator".to_owned(), n1.clone()),
    ] {
        let e = lease(&name, &holder).unwrap_err();
        assert!(
            e.contains("may write only the Lease"),
            "{name} {holder}: {e}"
        );
    }

    // A token bound to no Pod (so to no node) writes nothing.
    let unbound = cluster
        .service_account_kubeconfig(system.name(), "kube-lvs-agent")
        .unwrap();
    let e = apply_status_with(
        cluster,
        &unbound,
        &n1,
        tenant.name(),
        "VirtualService",
        "web",
        &format!("{{directors: [{{node: {n1}, programmed: false}}]}}"),
    )
    .unwrap_err();
    assert!(e.contains("bound to a Pod on a Node"), "{e}");
    let _ = cluster.kubectl_ok(&["delete", "node", &n1]);
}
