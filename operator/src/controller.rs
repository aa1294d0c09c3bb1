//! The operator against the API server: watches, the allocation pass, the Service
//! controller, Events, all started once this replica leads. Decisions are in
//! [`crate::pass`] and [`crate::service`]; this module reads and writes.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use kubelvs_crds::{AddressPool, RealServer, VirtualService};
use tokio::sync::{mpsc, Notify};
use tracing::{info, warn};

use crate::allocate::{NamespaceLabels, VsKey};
use crate::metrics::{Metrics, PoolLabels};
use crate::pass::{self, Ledger, Notice, FINALIZER};
use crate::service::{self, ACCEPTED_CONDITION, SERVICE_NAME_LABEL};

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "kubelvs-operator";

/// The watched objects, shared by the allocation pass and the Service controller.
#[derive(Clone)]
pub struct Stores {
    virtual_services: Store<DeserializeGuard<VirtualService>>,
    real_servers: Store<DeserializeGuard<RealServer>>,
    address_pools: Store<DeserializeGuard<AddressPool>>,
    namespaces: Store<Namespace>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

/// A reflector whose every change wakes the allocation pass.
fn reflect<K>(api: Api<K>, wake: Arc<Notify>) -> Store<K>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    // managedFields are most of an object with several status writers, and unused here.
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o| o.meta_mut().managed_fields = None)
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => wake.notify_one(),
                Err(e) => warn!(error = %e, "watch failed; retrying with backoff"),
            }
        }
    });
    reader
}

/// The objects of `store` that parse (shared, not copied); the others are counted
/// and logged, and left out.
fn usable<K: Clone + Resource<DynamicType = ()>>(
    store: &Store<DeserializeGuard<K>>,
    kind: &str,
    metrics: &Metrics,
) -> Vec<Arc<DeserializeGuard<K>>> {
    store
        .state()
        .into_iter()
        .filter(|o| match &o.0 {
            Ok(_) => true,
            Err(e) => {
                metrics.error("malformed");
                warn!(
                    object = format!(
                        "{kind} {}/{}",
                        e.metadata.namespace.clone().unwrap_or_default(),
                        e.metadata.name.clone().unwrap_or_default()
                    ),
                    error = %e.error,
                    "object does not parse; left out"
                );
                false
            }
        })
        .collect()
}

/// Borrows the parsed objects of [`usable`]'s result.
fn parsed<K>(objects: &[Arc<DeserializeGuard<K>>]) -> Vec<&K> {
    objects.iter().filter_map(|o| o.0.as_ref().ok()).collect()
}

impl Stores {
    /// Starts the watches and waits until each has listed once: allocating from a
    /// partial view could hand out an address another object holds.
    pub async fn start(client: &Client, wake: Arc<Notify>) -> anyhow::Result<Self> {
        let s = Self {
            virtual_services: reflect(Api::all(client.clone()), wake.clone()),
            real_servers: reflect(Api::all(client.clone()), wake.clone()),
            address_pools: reflect(Api::all(client.clone()), wake.clone()),
            namespaces: reflect(Api::all(client.clone()), wake),
        };
        tokio::time::timeout(Duration::from_secs(60), async {
            s.virtual_services.wait_until_ready().await?;
            s.real_servers.wait_until_ready().await?;
            s.address_pools.wait_until_ready().await?;
            s.namespaces.wait_until_ready().await
        })
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the watches of VirtualServices, RealServers, AddressPools and Namespaces did not list within 60 s (may this account list them?)"
            )
        })??;
        Ok(s)
    }

    fn namespace_labels(&self) -> NamespaceLabels {
        self.namespaces
            .state()
            .iter()
            .map(|n| {
                (
                    n.metadata.name.clone().unwrap_or_default(),
                    n.metadata.labels.clone().unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// Fails with a message a person can act on when the CRDs are missing.
pub async fn check_crds(client: &Client) -> anyhow::Result<()> {
    for (kind, result) in [
        (
            "virtualservices",
            Api::<VirtualService>::all(client.clone())
                .list_metadata(&ListParams::default().limit(1))
                .await
                .map(|_| ()),
        ),
        (
            "realservers",
            Api::<RealServer>::all(client.clone())
                .list_metadata(&ListParams::default().limit(1))
                .await
                .map(|_| ()),
        ),
        (
            "addresspools",
            Api::<AddressPool>::all(client.clone())
                .list_metadata(&ListParams::default().limit(1))
                .await
                .map(|_| ()),
        ),
    ] {
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => anyhow::bail!(
                "the CRD {kind}.kubelvs.io is not installed: install the chart (helm install kube-lvs charts/kube-lvs) or kubectl apply -f charts/kube-lvs/crds/"
            ),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("listing {kind}.kubelvs.io"))),
        }
    }
    Ok(())
}

fn reference(n: &Notice) -> ObjectReference {
    let api_version = match n.kind {
        "Service" => "v1",
        _ => "kubelvs.io/v1alpha1",
    };
    ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(n.kind.into()),
        name: Some(n.name.clone()),
        namespace: n.namespace.clone(),
        uid: n.uid.clone(),
        ..ObjectReference::default()
    }
}

/// Publishes Events one at a time. Events are best effort: when the queue is full
/// (an initial allocation of thousands of VIPs), the excess is dropped, not the
/// status writes that carry the same facts.
async fn publish_events(client: Client, identity: String, mut rx: mpsc::Receiver<Notice>) {
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "kube-lvs-operator".into(),
            instance: Some(identity),
        },
    );
    while let Some(n) = rx.recv().await {
        let ev = Event {
            type_: if n.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: n.reason.clone(),
            note: Some(n.note.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &reference(&n)).await {
            warn!(object = %n.name, error = %e, "event not published");
        }
    }
}

fn announce(events: &mpsc::Sender<Notice>, n: Notice) {
    info!(
        kind = n.kind,
        object = format!("{}/{}", n.namespace.clone().unwrap_or_default(), n.name),
        reason = %n.reason,
        "{}",
        n.note
    );
    let _ = events.try_send(n);
}

type Write = Pin<Box<dyn Future<Output = (Option<VsKey>, Result<(), kube::Error>)> + Send>>;

/// The field manager that adds the finalizer: its own, so the apply (of that one
/// list entry) never drops fields the operator's main manager owns.
const FINALIZER_MANAGER: &str = "kubelvs-operator/finalizer";

/// Adds or removes [`FINALIZER`] without a resourceVersion precondition, so the
/// status writes of the same pass do not make it fail: adding is a server-side apply
/// of that one set entry; removing tests that the entry is still where it was seen.
fn finalizer_write(
    vs: &VirtualService,
    add: bool,
) -> Option<(PatchParams, Patch<serde_json::Value>)> {
    if add {
        return Some((
            PatchParams::apply(FINALIZER_MANAGER).force(),
            Patch::Apply(serde_json::json!({
                "apiVersion": "kubelvs.io/v1alpha1",
                "kind": "VirtualService",
                "metadata": {
                    "name": vs.metadata.name,
                    "namespace": vs.metadata.namespace,
                    "finalizers": [FINALIZER],
                },
            })),
        ));
    }
    let i = vs
        .metadata
        .finalizers
        .iter()
        .flatten()
        .position(|f| f == FINALIZER)?;
    let path = format!("/metadata/finalizers/{i}");
    Some((
        PatchParams::default(),
        Patch::Json(
            serde_json::from_value(serde_json::json!([
                {"op": "test", "path": path, "value": FINALIZER},
                {"op": "remove", "path": path},
            ]))
            .expect("a JSON patch"),
        ),
    ))
}

/// The VirtualService and AddressPool controller: one pass per burst of changes.
async fn allocation_loop(
    client: Client,
    stores: Stores,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    events: mpsc::Sender<Notice>,
    debounce: Duration,
) {
    let mut ledger = Ledger::new();
    let mut validations = pass::Validations::new();
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    loop {
        wake.notified().await;
        tokio::time::sleep(debounce).await;
        let started = Instant::now();
        let vs_objects = usable(&stores.virtual_services, "VirtualService", &metrics);
        let rs_objects = usable(&stores.real_servers, "RealServer", &metrics);
        let virtual_services = parsed(&vs_objects);
        let real_servers = parsed(&rs_objects);
        let pools: Vec<AddressPool> =
            parsed(&usable(&stores.address_pools, "AddressPool", &metrics))
                .into_iter()
                .cloned()
                .collect();
        let now = Time(
            k8s_openapi::jiff::Timestamp::from_second(
                k8s_openapi::jiff::Timestamp::now().as_second(),
            )
            .unwrap_or_default(),
        );
        let w = pass::plan(
            &virtual_services,
            &real_servers,
            &pools,
            &stores.namespace_labels(),
            &ledger,
            &mut validations,
            &now,
        );
        let by_key: BTreeMap<VsKey, &VirtualService> = virtual_services
            .iter()
            .copied()
            .map(|v| {
                (
                    (
                        v.metadata.namespace.clone().unwrap_or_default(),
                        v.metadata.name.clone().unwrap_or_default(),
                    ),
                    v,
                )
            })
            .collect();

        let mut writes: Vec<Write> = Vec::new();
        for (key, body) in &w.statuses {
            let api = Api::<VirtualService>::namespaced(client.clone(), &key.0);
            let (key, body, apply, metrics) =
                (key.clone(), body.clone(), apply.clone(), metrics.clone());
            writes.push(Box::pin(async move {
                let r = api
                    .patch_status(&key.1, &apply, &Patch::Apply(&body))
                    .await
                    .map(|_| metrics.write("VirtualService", "status"));
                (Some(key), r)
            }));
        }
        for (name, body) in &w.pool_statuses {
            let api = Api::<AddressPool>::all(client.clone());
            let (name, body, apply, metrics) =
                (name.clone(), body.clone(), apply.clone(), metrics.clone());
            writes.push(Box::pin(async move {
                let r = api
                    .patch_status(&name, &apply, &Patch::Apply(&body))
                    .await
                    .map(|_| metrics.write("AddressPool", "status"));
                (None, r)
            }));
        }
        for (key, add) in w
            .add_finalizer
            .iter()
            .map(|k| (k, true))
            .chain(w.remove_finalizer.iter().map(|k| (k, false)))
        {
            let Some((params, patch)) = by_key.get(key).and_then(|vs| finalizer_write(vs, add))
            else {
                continue;
            };
            let api = Api::<VirtualService>::namespaced(client.clone(), &key.0);
            let (name, metrics) = (key.1.clone(), metrics.clone());
            writes.push(Box::pin(async move {
                let r = api
                    .patch(&name, &params, &patch)
                    .await
                    .map(|_| metrics.write("VirtualService", "finalizer"));
                (None, r)
            }));
        }
        let results: Vec<(Option<VsKey>, Result<(), kube::Error>)> = futures::stream::iter(writes)
            .buffer_unordered(32)
            .collect()
            .await;
        let mut failed: BTreeSet<VsKey> = BTreeSet::new();
        let mut retry = false;
        for (key, r) in results {
            match r {
                Ok(()) => {}
                // Gone, or changed since read: the watch brings the news, the next pass acts.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 422 => {
                    metrics.error("conflict");
                    retry = true;
                    failed.extend(key);
                }
                Err(e) => {
                    metrics.error("api");
                    warn!(error = %e, "write failed; will retry");
                    retry = true;
                    failed.extend(key);
                }
            }
        }
        // A VIP counts as decided once its status write landed (or needed none).
        let mut next = w.vips.clone();
        for k in &failed {
            match ledger.get(k) {
                Some(v) => next.insert(k.clone(), v.clone()),
                None => next.remove(k),
            };
        }
        ledger = next;
        for n in w.notices {
            announce(&events, n);
        }
        for (pool, (total, allocated)) in &w.pool_usage {
            for (state, v) in [
                ("allocated", *allocated),
                ("available", total.saturating_sub(*allocated)),
            ] {
                metrics
                    .pool_addresses
                    .get_or_create(&PoolLabels {
                        pool: pool.clone(),
                        state: state.into(),
                    })
                    .set(v as i64);
            }
        }
        metrics.reconciled("virtualservice", !retry, started.elapsed().as_secs_f64());
        if retry {
            tokio::time::sleep(Duration::from_secs(1)).await;
            wake.notify_one();
        }
    }
}

/// Deletes `name`; already gone is fine.
async fn delete<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies each object of `want` that `have` does not already show, and deletes the
/// objects of `have` that `want` no longer has.
async fn sync_owned<K, S: PartialEq>(
    api: &Api<K>,
    want: &[K],
    have: &[K],
    spec: impl Fn(&K) -> &S,
    metrics: &Metrics,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let kind = K::kind(&());
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    for w in want {
        let name = w.meta().name.clone().unwrap_or_default();
        let current = have.iter().find(|h| h.meta().name.as_ref() == Some(&name));
        if current.is_some_and(|c| in_step(c.meta(), spec(c), w.meta(), spec(w))) {
            continue;
        }
        api.patch(&name, &apply, &Patch::Apply(w)).await?;
        metrics.write(&kind, "apply");
    }
    for h in have {
        let name = h.meta().name.clone().unwrap_or_default();
        if !want.iter().any(|w| w.meta().name.as_ref() == Some(&name)) {
            delete(api, &name).await?;
            metrics.write(&kind, "delete");
        }
    }
    Ok(())
}

/// What a reconcile of one Service can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Service {object}: {source}")]
    Api {
        object: String,
        #[source]
        source: kube::Error,
    },
}

struct ServiceContext {
    client: Client,
    stores: Stores,
    metrics: Arc<Metrics>,
    events: mpsc::Sender<Notice>,
}

/// The objects of `store` a Service owns (copies of those only).
fn owned_by<K: Clone + Resource<DynamicType = ()>>(
    store: &Store<DeserializeGuard<K>>,
    svc: &Service,
) -> Vec<K> {
    let uid = svc.metadata.uid.as_deref();
    store
        .state()
        .iter()
        .filter_map(|o| o.0.as_ref().ok())
        .filter(|o| o.meta().namespace == svc.metadata.namespace)
        .filter(|o| {
            o.meta()
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.kind == "Service" && Some(r.uid.as_str()) == uid)
        })
        .cloned()
        .collect()
}

/// Whether `have` already is what `want` asks (spec, our labels and annotations, owner).
fn in_step<S: PartialEq>(
    have: &kube::api::ObjectMeta,
    have_spec: &S,
    want: &kube::api::ObjectMeta,
    want_spec: &S,
) -> bool {
    let contains = |a: &Option<BTreeMap<String, String>>, b: &Option<BTreeMap<String, String>>| {
        b.iter()
            .flatten()
            .all(|(k, v)| a.as_ref().and_then(|a| a.get(k)) == Some(v))
    };
    have_spec == want_spec
        && contains(&have.labels, &want.labels)
        && contains(&have.annotations, &want.annotations)
        && have.owner_references == want.owner_references
}

fn service_condition(svc: &Service, ok: bool, reason: &str, message: String) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = svc
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == ACCEPTED_CONDITION && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| {
            Time(
                k8s_openapi::jiff::Timestamp::from_second(
                    k8s_openapi::jiff::Timestamp::now().as_second(),
                )
                .unwrap_or_default(),
            )
        });
    Condition {
        type_: ACCEPTED_CONDITION.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: svc.metadata.generation,
        last_transition_time: since,
    }
}

async fn reconcile_service(
    svc: Arc<Service>,
    ctx: Arc<ServiceContext>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = reconcile_service_inner(&svc, &ctx).await;
    ctx.metrics
        .reconciled("service", result.is_ok(), started.elapsed().as_secs_f64());
    result
}

async fn reconcile_service_inner(
    svc: &Service,
    ctx: &ServiceContext,
) -> Result<Action, ReconcileError> {
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let object = format!("{namespace}/{name}");
    let err = |source| ReconcileError::Api {
        object: object.clone(),
        source,
    };
    let owned_vs = owned_by(&ctx.stores.virtual_services, svc);
    let owned_rs = owned_by(&ctx.stores.real_servers, svc);
    let vs_api = Api::<VirtualService>::namespaced(ctx.client.clone(), &namespace);
    let rs_api = Api::<RealServer>::namespaced(ctx.client.clone(), &namespace);

    if !service::is_ours(svc) || svc.metadata.deletion_timestamp.is_some() {
        // Not (or no longer) ours: remove what we made for it, touch nothing else.
        sync_owned(&vs_api, &[], &owned_vs, |v| &v.spec, &ctx.metrics)
            .await
            .map_err(err)?;
        sync_owned(&rs_api, &[], &owned_rs, |r| &r.spec, &ctx.metrics)
            .await
            .map_err(err)?;
        return Ok(Action::await_change());
    }

    let slices = Api::<EndpointSlice>::namespaced(ctx.client.clone(), &namespace)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
        .await
        .map_err(err)?
        .items;
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let condition = match service::translate(svc, &slices) {
        Err(problems) => {
            ctx.metrics.error("invalid");
            let message = problems.join("; ");
            let shown = svc
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == ACCEPTED_CONDITION && c.message == message);
            if !shown {
                announce(
                    &ctx.events,
                    Notice {
                        kind: "Service",
                        namespace: Some(namespace.clone()),
                        name: name.clone(),
                        uid: svc.metadata.uid.clone(),
                        warning: true,
                        reason: "InvalidConfiguration".into(),
                        note: format!("{message} (what serves it now is left as it is)"),
                    },
                );
            }
            service_condition(svc, false, "InvalidConfiguration", message)
        }
        Ok(t) => {
            let metrics = &ctx.metrics;
            sync_owned(
                &vs_api,
                &t.virtual_services,
                &owned_vs,
                |v| &v.spec,
                metrics,
            )
            .await
            .map_err(err)?;
            sync_owned(&rs_api, &t.real_servers, &owned_rs, |r| &r.spec, metrics)
                .await
                .map_err(err)?;
            let wanted_vs: Vec<String> = t
                .virtual_services
                .iter()
                .filter_map(|v| v.metadata.name.clone())
                .collect();
            service_condition(
                svc,
                true,
                "Translated",
                format!(
                    "served by VirtualService(s) {} with {} RealServer(s)",
                    wanted_vs.join(", "),
                    t.real_servers.len()
                ),
            )
        }
    };

    // The VIPs as the allocation pass wrote them on the owned VirtualServices.
    let ingress = service::ingress(svc, &owned_vs);
    let status = svc.status.clone().unwrap_or_default();
    let shown_ingress = status
        .load_balancer
        .as_ref()
        .and_then(|l| l.ingress.clone())
        .unwrap_or_default();
    let shown_condition = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == ACCEPTED_CONDITION);
    if shown_ingress != ingress || shown_condition != Some(&condition) {
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "status": {
                "loadBalancer": {"ingress": ingress},
                "conditions": [condition],
            },
        });
        Api::<Service>::namespaced(ctx.client.clone(), &namespace)
            .patch_status(&name, &apply, &Patch::Apply(&body))
            .await
            .map_err(err)?;
        ctx.metrics.write("Service", "status");
        if shown_ingress != ingress && !ingress.is_empty() {
            let ips: Vec<String> = ingress.iter().filter_map(|i| i.ip.clone()).collect();
            announce(
                &ctx.events,
                Notice {
                    kind: "Service",
                    namespace: Some(namespace.clone()),
                    name: name.clone(),
                    uid: svc.metadata.uid.clone(),
                    warning: false,
                    reason: "LoadBalancerAssigned".into(),
                    note: format!("load balancer address {}", ips.join(", ")),
                },
            );
        }
    }
    // The allocation pass writes the VIPs; the owned-object watch may wake us before
    // the shared store shows them, so look again until every family has its address.
    let families = svc
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.as_ref())
        .map_or(1, Vec::len);
    if ingress.len() < families {
        Ok(Action::requeue(Duration::from_millis(200)))
    } else {
        Ok(Action::requeue(Duration::from_secs(300)))
    }
}

fn service_error_policy(svc: Arc<Service>, e: &ReconcileError, ctx: Arc<ServiceContext>) -> Action {
    ctx.metrics.error("api");
    warn!(
        service = format!(
            "{}/{}",
            svc.metadata.namespace.clone().unwrap_or_default(),
            svc.metadata.name.clone().unwrap_or_default()
        ),
        error = %e,
        "reconcile failed; retrying in 5 s"
    );
    Action::requeue(Duration::from_secs(5))
}

/// Runs both controllers until the process ends (the caller stops leading by exiting).
pub async fn run_controllers(
    client: Client,
    identity: String,
    metrics: Arc<Metrics>,
    debounce: Duration,
) -> anyhow::Result<()> {
    let wake = Arc::new(Notify::new());
    let stores = Stores::start(&client, wake.clone()).await?;
    info!("watches listed; reconciling");
    let (events_tx, events_rx) = mpsc::channel(1024);
    tokio::spawn(publish_events(client.clone(), identity, events_rx));
    wake.notify_one();
    tokio::spawn(allocation_loop(
        client.clone(),
        stores.clone(),
        wake,
        metrics.clone(),
        events_tx.clone(),
        debounce,
    ));
    let ctx = Arc::new(ServiceContext {
        client: client.clone(),
        stores,
        metrics: metrics.clone(),
        events: events_tx,
    });
    let owned = watcher::Config::default().labels(SERVICE_NAME_LABEL);
    Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<VirtualService>::all(client.clone()), owned.clone())
    .owns(Api::<RealServer>::all(client.clone()), owned)
    .watches(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels("kubernetes.io/service-name"),
        |slice| {
            let svc = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name").cloned());
            svc.zip(slice.metadata.namespace.clone())
                .map(|(name, ns)| ObjectRef::<Service>::new(&name).within(&ns))
        },
    )
    .run(reconcile_service, service_error_policy, ctx)
    .for_each(|_| futures::future::ready(()))
    .await;
    metrics.ready.store(false, Ordering::Relaxed);
    anyhow::bail!("the Service controller stopped")
}
