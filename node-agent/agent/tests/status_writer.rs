//! The agent's status writer against the real API server of the test suite: an object
//! whose status write the API server refuses (here, by an admission policy; in a
//! cluster, `request is too large` or a validation failure) is retried on its own
//! backoff and never holds up the others; an entry a previous run left on an object
//! the agent no longer serves is removed.

mod common;

use std::time::Duration;

use common::eventually;

use kubelvs_agent::cluster::{own_entries, status_writer, Desired};
use kubelvs_agent::status::apply_body;
use kubelvs_model::ObjectRef;
use kubelvs_test_cluster::shared;

#[test]
#[ignore = "needs the test control plane (Go toolchain)"]
fn an_object_the_api_server_refuses_does_not_hold_up_the_others() {
    let cluster = shared();
    cluster.install_crds().unwrap();
    let ns = cluster.namespace("status-writer");
    // "a-refused" sorts first: a writer that stopped at the first refusal would never
    // reach "b-ok".
    cluster
        .kubectl_stdin(
            &["apply", "-n", ns.name(), "-f", "-"],
            "apiVersion: kubelvs.io/v1alpha1
kind: VirtualService
metadata: {name: a-refused}
spec: {ports: [{port: 80}], forwarding: nat, realServerSelector: {}}
---
apiVersion: kubelvs.io/v1alpha1
kind: VirtualService
metadata: {name: b-ok}
spec: {ports: [{port: 80}], forwarding: nat, realServerSelector: {}}
---
apiVersion: kubelvs.io/v1alpha1
kind: VirtualService
metadata: {name: c-stale}
spec: {ports: [{port: 80}], forwarding: nat, realServerSelector: {}}
",
        )
        .unwrap();
    let policy = format!("refuse-status-{}", ns.name());
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &format!(
                "apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {policy}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {ns}}}}}
    resourceRules:
    - {{apiGroups: [kubelvs.io], apiVersions: ['*'], operations: [UPDATE], resources: [virtualservices/status]}}
  validations:
  - {{expression: \"object.metadata.name != 'a-refused'\", message: refused for the test}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {policy}}}
spec: {{policyName: {policy}, validationActions: [Deny]}}
",
                ns = ns.name()
            ),
        )
        .unwrap();
    let status_of = |name: &str| -> Option<serde_json::Value> {
        let vs: serde_json::Value = serde_json::from_str(
            &cluster
                .kubectl_ok(&["get", "lvs", name, "-n", ns.name(), "-o", "json"])
                .ok()?,
        )
        .ok()?;
        vs["status"]["directors"]
            .as_array()?
            .iter()
            .find(|d| d["node"] == "n1")
            .cloned()
    };
    // The policy takes effect once the API server has loaded it: until a write of
    // a-refused is refused, the test would prove nothing.
    eventually(Duration::from_secs(30), "the policy in force", || {
        cluster
            .apply_status_as_agent(
                "probe",
                ns.name(),
                "VirtualService",
                "a-refused",
                "{directors: [{node: probe, programmed: true}]}",
            )
            .is_err()
            .then_some(())
    });

    // What an earlier run of node n1's agent wrote on an object it no longer directs.
    cluster
        .apply_status_as_agent(
            "n1",
            ns.name(),
            "VirtualService",
            "c-stale",
            "{directors: [{node: n1, programmed: true}]}",
        )
        .unwrap();
    assert!(status_of("c-stale").is_some());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let config = rt
        .block_on(kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(cluster.kubeconfig()).unwrap(),
            &Default::default(),
        ))
        .unwrap();
    let client = {
        let _in = rt.enter();
        kube::Client::try_from(config).unwrap()
    };
    let mut desired = Desired::new();
    for name in ["a-refused", "b-ok"] {
        let obj = ObjectRef::new("VirtualService", ns.name(), name);
        let entry = serde_json::json!({"node": "n1", "programmed": true, "healthyRealServers": 0});
        desired.insert(
            ("VirtualService".to_owned(), obj.clone()),
            apply_body("VirtualService", &obj, "directors", Some(entry)),
        );
    }
    let found = rt.block_on(own_entries(&client, "n1"));
    assert!(found.iter().any(|(_, o)| o.name == "c-stale"), "{found:?}");
    let (tx, rx) = tokio::sync::watch::channel(Desired::new());
    let _writer = rt.spawn(status_writer(
        client,
        "kubelvs-agent/n1".into(),
        rx,
        Duration::from_millis(100),
        Duration::from_secs(30),
        found,
    ));
    tx.send_replace(desired);
    eventually(Duration::from_secs(10), "b-ok written", || {
        status_of("b-ok")
    });
    assert_eq!(status_of("a-refused"), None);

    // Admitted again: the refused object's own retry writes it.
    cluster
        .kubectl_ok(&["delete", "validatingadmissionpolicybinding", &policy])
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "a-refused written on its retry",
        || status_of("a-refused"),
    );
    let _ = cluster.kubectl_ok(&["delete", "validatingadmissionpolicy", &policy]);
    drop(tx);
}
