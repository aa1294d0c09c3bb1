//! The operator against the API server: watches, the allocation pass, Events, and
//! the Service controller (`service_controller`), all started once this replica leads. Decisions are in
//! [`crate::pass`] and [`crate::service`]; this module reads and writes.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, Resource};
use kubelvs_crds::{AddressPool, RealServerRecord, VirtualService};
use tokio::sync::{mpsc, Notify};
use tracing::{info, warn};

use crate::allocate::{AddressSpace, NamespaceLabels, Reserved, VsKey};
use crate::metrics::{Metrics, PoolLabels};
use crate::pass::{self, Ledger, Notice, FINALIZER};

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "kubelvs-operator";

/// The watched objects, shared by the allocation pass and the Service controller.
#[derive(Clone)]
pub struct Stores {
    pub(crate) virtual_services: Store<DeserializeGuard<VirtualService>>,
    /// In their compact form: there are ten times as many as VirtualServices.
    real_servers: kubelvs_watch::records::WatchedRealServers,
    address_pools: Store<DeserializeGuard<AddressPool>>,
    namespaces: Store<Namespace>,
    /// Their addresses are never VIPs.
    nodes: Store<Node>,
    /// The agents' liveness Leases, when followed: a dead director is not named as
    /// announcing a VIP.
    directors: Option<kubelvs_watch::liveness::Directors>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

/// A watch whose every change of what a pass reads wakes the allocation pass.
fn reflect<K>(api: Api<K>, unread: fn(&mut K), wake: Arc<Notify>) -> Store<K>
where
    K: Resource<DynamicType = ()> + kubelvs_watch::Alike + Clone + serde::de::DeserializeOwned,
    K: std::fmt::Debug + Send + Sync + 'static,
{
    kubelvs_watch::reflect(api, watcher::Config::default(), unread, move || {
        wake.notify_one();
        true
    })
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
                left_out(
                    kind,
                    e.metadata.namespace.as_deref().unwrap_or_default(),
                    e.metadata.name.as_deref().unwrap_or_default(),
                    &e.error,
                    metrics,
                );
                false
            }
        })
        .collect()
}

/// Counts and logs an object that does not parse.
fn left_out(
    kind: &str,
    namespace: &str,
    name: &str,
    error: &dyn std::fmt::Display,
    metrics: &Metrics,
) {
    metrics.error("malformed");
    warn!(
        object = format!("{kind} {namespace}/{name}"),
        error = %error,
        "object does not parse; left out"
    );
}

/// Borrows the parsed objects of [`usable`]'s result.
fn parsed<K>(objects: &[Arc<DeserializeGuard<K>>]) -> Vec<&K> {
    objects.iter().filter_map(|o| o.0.as_ref().ok()).collect()
}

impl Stores {
    /// Starts the watches and waits until each has listed once: allocating from a
    /// partial view could hand out an address another object holds.
    pub async fn start(
        client: &Client,
        wake: Arc<Notify>,
        agent_leases: Option<AgentLeases>,
    ) -> anyhow::Result<Self> {
        let directors = match agent_leases {
            Some(l) => {
                let wake = wake.clone();
                Some(
                    kubelvs_watch::liveness::follow(
                        client.clone(),
                        &l.namespace,
                        l.duration,
                        move || wake.notify_one(),
                    )
                    .await,
                )
            }
            None => None,
        };
        let s = Self {
            // The roll-up reads the directors' entries: all of a VirtualService.
            virtual_services: reflect(Api::all(client.clone()), |_| {}, wake.clone()),
            // Selection reads a RealServer's spec and labels, never its status.
            real_servers: {
                let wake = wake.clone();
                kubelvs_watch::records::WatchedRealServers::start(client.clone(), move || {
                    wake.notify_one();
                    true
                })
            },
            address_pools: reflect(Api::all(client.clone()), |_| {}, wake.clone()),
            namespaces: reflect(Api::all(client.clone()), |_| {}, wake.clone()),
            nodes: reflect(
                Api::all(client.clone()),
                kubelvs_watch::node_but_addresses,
                wake,
            ),
            directors,
        };
        tokio::time::timeout(Duration::from_secs(60), async {
            s.virtual_services.wait_until_ready().await?;
            s.real_servers.listed().await?;
            s.address_pools.wait_until_ready().await?;
            s.namespaces.wait_until_ready().await?;
            s.nodes.wait_until_ready().await?;
            anyhow::Ok(())
        })
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the watches of VirtualServices, RealServers, AddressPools, Namespaces and Nodes did not list within 60 s (may this account list them?)"
            )
        })??;
        Ok(s)
    }

    /// What no VIP may be: the nodes' addresses as the store has them, and `ranges`.
    fn reserved(&self, ranges: &[ipnet::IpNet]) -> Reserved {
        Reserved {
            node_addresses: self
                .nodes
                .state()
                .iter()
                .flat_map(|n| kubelvs_watch::node_addresses(n).collect::<Vec<_>>())
                .collect(),
            cluster_ranges: ranges.to_vec(),
        }
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
            Api::<kubelvs_crds::RealServer>::all(client.clone())
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
        if let Err(e) = recorder.publish(&ev, &n.object).await {
            warn!(object = ?n.object.name, error = %e, "event not published");
        }
    }
}

pub(crate) fn announce(events: &mpsc::Sender<Notice>, n: Notice) {
    info!(
        kind = n.object.kind.as_deref().unwrap_or_default(),
        object = format!(
            "{}/{}",
            n.object.namespace.as_deref().unwrap_or_default(),
            n.object.name.as_deref().unwrap_or_default()
        ),
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
    cluster_ranges: Vec<ipnet::IpNet>,
) {
    let mut ledger = Ledger::new();
    let mut validations = pass::Validations::new();
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    loop {
        wake.notified().await;
        tokio::time::sleep(debounce).await;
        let started = Instant::now();
        let vs_objects = usable(&stores.virtual_services, "VirtualService", &metrics);
        let rs_records = {
            let records = stores.real_servers.lock();
            for u in records.unparsed() {
                left_out("RealServer", &u.namespace, &u.name, &u.error, &metrics);
            }
            records.snapshot().0
        };
        let parsed_vs = parsed(&vs_objects);
        // Entries of nodes that are gone: removed, and not rolled up meanwhile.
        let nodes: BTreeSet<String> = stores
            .nodes
            .state()
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let mut stale: Vec<(VsKey, Vec<(usize, String)>)> = Vec::new();
        let views: Vec<std::borrow::Cow<VirtualService>> = parsed_vs
            .iter()
            .map(|vs| {
                let entries = crate::rollup::stale_directors(vs, &nodes);
                if entries.is_empty() {
                    return std::borrow::Cow::Borrowed(*vs);
                }
                stale.push((
                    (
                        vs.metadata.namespace.clone().unwrap_or_default(),
                        vs.metadata.name.clone().unwrap_or_default(),
                    ),
                    entries,
                ));
                let mut pruned = (*vs).clone();
                if let Some(s) = pruned.status.as_mut() {
                    s.directors.retain(|d| nodes.contains(&d.node));
                }
                std::borrow::Cow::Owned(pruned)
            })
            .collect();
        let virtual_services: Vec<&VirtualService> = views.iter().map(|v| &**v).collect();
        let real_servers: Vec<&RealServerRecord> = rs_records.iter().map(|r| &**r).collect();
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
        let mut w = pass::plan(
            &virtual_services,
            &real_servers,
            AddressSpace {
                pools: &pools,
                namespaces: &stores.namespace_labels(),
                reserved: &stores.reserved(&cluster_ranges),
            },
            &ledger,
            &mut validations,
            &now,
            &stores
                .directors
                .as_ref()
                .map(|d| d.expired())
                .unwrap_or_default(),
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
        // Each status moves into its write: a first pass at 10,000 VirtualServices
        // writes every one, and a copy of each added to the operator's peak.
        for (key, status) in std::mem::take(&mut w.statuses) {
            let api = Api::<VirtualService>::namespaced(client.clone(), &key.0);
            let (apply, metrics) = (apply.clone(), metrics.clone());
            writes.push(Box::pin(async move {
                let body = status.apply_body(&key.0, &key.1);
                let r = api
                    .patch_status(&key.1, &apply, &Patch::Apply(&body))
                    .await
                    .map(|_| metrics.write("VirtualService", "status"));
                (Some(key), r)
            }));
        }
        for (name, body) in std::mem::take(&mut w.pool_statuses) {
            let api = Api::<AddressPool>::all(client.clone());
            let (apply, metrics) = (apply.clone(), metrics.clone());
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
        for (key, entries) in &stale {
            let api = Api::<VirtualService>::namespaced(client.clone(), &key.0);
            let patch = crate::rollup::remove_entries_patch("directors", entries);
            let (name, metrics) = (key.1.clone(), metrics.clone());
            writes.push(Box::pin(async move {
                let patch = Patch::Json::<()>(serde_json::from_value(patch).expect("a JSON patch"));
                let r = api
                    .patch_status(&name, &PatchParams::default(), &patch)
                    .await
                    .map(|_| metrics.write("VirtualService", "stale-entries"));
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

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where the agents keep their liveness Leases, and how long one lasts.
#[derive(Debug, Clone)]
pub struct AgentLeases {
    pub namespace: String,
    pub duration: Duration,
}

/// Runs both controllers until one stops. The allocation pass and the Event publisher
/// run as tasks of their own (a long pass must not hold up the Lease renewal, which
/// shares the caller's task), aborted when the returned future is dropped: the caller
/// stops every write by dropping it, before it gives the Lease up or once it may no
/// longer lead.
pub async fn run_controllers(
    client: Client,
    identity: String,
    metrics: Arc<Metrics>,
    agent_leases: Option<AgentLeases>,
    debounce: Duration,
    cluster_ranges: Vec<ipnet::IpNet>,
) -> anyhow::Result<()> {
    let wake = Arc::new(Notify::new());
    let stores = Stores::start(&client, wake.clone(), agent_leases).await?;
    info!("watches listed; reconciling");
    let (events_tx, events_rx) = mpsc::channel(1024);
    wake.notify_one();
    let mut events = AbortOnDrop(tokio::spawn(publish_events(
        client.clone(),
        identity,
        events_rx,
    )));
    let mut allocation = AbortOnDrop(tokio::spawn(allocation_loop(
        client.clone(),
        stores.clone(),
        wake,
        metrics.clone(),
        events_tx.clone(),
        debounce,
        cluster_ranges,
    )));
    let services = crate::service_controller::run(client, stores, metrics.clone(), events_tx);
    let stopped = tokio::select! {
        _ = &mut allocation.0 => "the allocation loop",
        _ = &mut events.0 => "the Event publisher",
        () = services => "the Service controller",
    };
    metrics.observed.set_ready(false);
    anyhow::bail!("{stopped} stopped")
}
