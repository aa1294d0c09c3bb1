//! The agent's status writer. Against the real API server of the test suite: an object
//! whose status write the API server refuses (here, by an admission policy; in a
//! cluster, `request is too large` or a validation failure) is retried on its own
//! backoff and never holds up the others; an entry a previous run left on an object
//! the agent no longer serves is removed. Against a fake API server that records the
//! order of writes: a transition goes out ahead of a wave of new entries, and a
//! restart writes only what changed.

mod common;

use std::time::Duration;

use common::eventually;

use kubelvs_agent::cluster::{own_entries, status_writer, Desired};
use kubelvs_agent::status::apply_body;
use kubelvs_model::{ObjectKind, ObjectRef};
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
        let obj = ObjectRef::new(ObjectKind::VirtualService, ns.name(), name);
        let entry = serde_json::json!({"node": "n1", "programmed": true, "healthyRealServers": 0});
        desired.insert(obj.clone(), apply_body(&obj, Some(entry), None));
    }
    let found = rt.block_on(own_entries(&client, "n1"));
    let stale = ObjectRef::new(ObjectKind::VirtualService, ns.name(), "c-stale");
    assert_eq!(
        found[&stale]["status"]["directors"][0]["node"], "n1",
        "{found:?}"
    );
    let (tx, _writer) = start_writer(&rt, client, found);
    tx.send_replace(Some(std::sync::Arc::new(desired)));
    eventually(Duration::from_secs(10), "b-ok written", || {
        status_of("b-ok")
    });
    assert_eq!(status_of("a-refused"), None);
    eventually(
        Duration::from_secs(10),
        "c-stale's old entry removed",
        || status_of("c-stale").is_none().then_some(()),
    );

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

/// Node n1's status writer on `rt`, starting from `found`: the sender publishes plans.
fn start_writer(
    rt: &tokio::runtime::Runtime,
    client: kube::Client,
    found: Desired,
) -> (
    tokio::sync::watch::Sender<Option<std::sync::Arc<Desired>>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let writer = rt.spawn(status_writer(
        client,
        "kubelvs-agent/n1".into(),
        rx,
        Duration::from_millis(10),
        found,
    ));
    (tx, writer)
}

/// A fake API server: answers every status apply as applied after `latency` and
/// records, in order, the object and the entries it set.
#[derive(Clone, Default)]
struct FakeApi {
    writes: std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
}

impl FakeApi {
    /// A client of this fake, made on `rt` (kube's client spawns on the runtime).
    fn client_on(&self, rt: &tokio::runtime::Runtime, latency: Duration) -> kube::Client {
        let _in = rt.enter();
        self.client(latency)
    }

    fn client(&self, latency: Duration) -> kube::Client {
        use http_body_util::BodyExt;
        let writes = self.writes.clone();
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let writes = writes.clone();
            async move {
                assert_eq!(req.method(), http::Method::PATCH, "{}", req.uri());
                let body = req.into_body().collect().await?.to_bytes();
                tokio::time::sleep(latency).await;
                let mut object: serde_json::Value = serde_json::from_slice(&body)?;
                let name = object["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                writes
                    .lock()
                    .unwrap()
                    .push((name, object["status"].clone()));
                object["spec"] = if object["kind"] == "VirtualService" {
                    serde_json::json!({"ports": [{"port": 80}], "forwarding": "nat", "realServerSelector": {}})
                } else {
                    serde_json::json!({"address": "192.0.2.1"})
                };
                let answer = bytes::Bytes::from(serde_json::to_vec(&object)?);
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http::Response::new(
                    http_body_util::Full::new(answer),
                ))
            }
        });
        kube::Client::new(service, "default")
    }

    fn written(&self) -> Vec<(String, serde_json::Value)> {
        self.writes.lock().unwrap().clone()
    }
}

/// Node n1's observation of rs-0..rs-N, healthy but for `down`.
fn observations(n: usize, down: &[usize]) -> Desired {
    (0..n)
        .map(|i| {
            let obj = ObjectRef::new(ObjectKind::RealServer, "lab", &format!("rs-{i}"));
            let entry = serde_json::json!({"node": "n1", "healthy": !down.contains(&i)});
            let body = apply_body(&obj, Some(entry), None);
            (obj, body)
        })
        .collect()
}

#[test]
fn a_transition_goes_out_ahead_of_a_wave_of_new_entries_and_a_restart_writes_only_changes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = FakeApi::default();
    let client = api.client_on(&rt, Duration::from_millis(2));
    let (tx, writer) = start_writer(&rt, client, Desired::new());
    // A start: 2,000 new entries, about 4 s of writes.
    const N: usize = 2_000;
    tx.send_replace(Some(std::sync::Arc::new(observations(N, &[]))));
    eventually(Duration::from_secs(10), "the wave under way", || {
        (api.written().len() >= 100).then_some(())
    });
    // rs-0 went down: its entry was written at the start of the wave.
    let published = std::time::Instant::now();
    tx.send_replace(Some(std::sync::Arc::new(observations(N, &[0]))));
    let (at, took) = eventually(Duration::from_secs(5), "rs-0's transition written", || {
        api.written()
            .iter()
            .position(|(name, status)| {
                name == "rs-0" && status["observations"][0]["healthy"] == false
            })
            .map(|at| (at, published.elapsed()))
    });
    assert!(
        at < N,
        "written after the whole wave ({at} writes before it)"
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    eventually(Duration::from_secs(20), "the wave written", || {
        (api.written().len() > N).then_some(())
    });
    let mut per_object = std::collections::BTreeMap::<String, usize>::new();
    for (name, _) in api.written() {
        *per_object.entry(name).or_default() += 1;
    }
    assert_eq!(per_object.len(), N);
    assert_eq!(per_object["rs-0"], 2, "once new, once down");
    assert!(
        per_object.values().all(|n| *n <= 2),
        "written twice: {per_object:?}"
    );
    writer.abort();
    drop(tx);

    // A restart: the API server holds the entries above, and one of a RealServer this
    // node no longer checks. The new run writes only what differs.
    let mut found = observations(N, &[0]);
    let gone = ObjectRef::new(ObjectKind::RealServer, "lab", "rs-gone");
    found.insert(
        gone.clone(),
        apply_body(
            &gone,
            Some(serde_json::json!({"node": "n1", "healthy": true})),
            None,
        ),
    );
    let api = FakeApi::default();
    let client = api.client_on(&rt, Duration::ZERO);
    let (tx, _writer) = start_writer(&rt, client, found);
    tx.send_replace(Some(std::sync::Arc::new(observations(N, &[0]))));
    eventually(Duration::from_secs(5), "the old entry removed", || {
        (!api.written().is_empty()).then_some(())
    });
    // rs-0 is back up.
    tx.send_replace(Some(std::sync::Arc::new(observations(N, &[]))));
    eventually(Duration::from_secs(5), "rs-0's transition written", || {
        (api.written().len() >= 2).then_some(())
    });
    let written = api.written();
    assert_eq!(written[0].0, "rs-gone");
    assert_eq!(written[0].1["observations"], serde_json::json!([]));
    assert_eq!(written[1].0, "rs-0");
    assert_eq!(written[1].1["observations"][0]["healthy"], true);
    // A further plan with nothing new is not written either.
    tx.send_replace(Some(std::sync::Arc::new(observations(N, &[]))));
    let marker = ObjectRef::new(ObjectKind::RealServer, "lab", "rs-new");
    let mut with_new = observations(N, &[]);
    with_new.insert(
        marker.clone(),
        apply_body(
            &marker,
            Some(serde_json::json!({"node": "n1", "healthy": true})),
            None,
        ),
    );
    tx.send_replace(Some(std::sync::Arc::new(with_new)));
    eventually(Duration::from_secs(5), "rs-new written", || {
        api.written()
            .iter()
            .any(|(n, _)| n == "rs-new")
            .then_some(())
    });
    assert_eq!(api.written().len(), 3, "{:?}", api.written());
}

#[test]
fn a_first_plan_that_wants_nothing_still_removes_what_a_previous_run_left() {
    // The node lost its director label while its agent was down: its entries go.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = FakeApi::default();
    let client = api.client_on(&rt, Duration::ZERO);
    let found = observations(3, &[0, 1, 2]);
    let (tx, _writer) = start_writer(&rt, client, found);
    tx.send_replace(Some(std::sync::Arc::new(Desired::new())));
    eventually(Duration::from_secs(5), "the three entries removed", || {
        (api.written().len() == 3).then_some(())
    });
    assert!(api
        .written()
        .iter()
        .all(|(_, status)| status["observations"] == serde_json::json!([])));
}
