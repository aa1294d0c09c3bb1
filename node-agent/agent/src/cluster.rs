//! Cluster mode: the objects come from watches, status goes back with server-side
//! apply. Watches are guarded (`DeserializeGuard`): an object that does not parse is
//! reported (log and `kubelvs_rejected_objects`) and the others are used. The first
//! plan waits until every watch has listed, so a restarted agent never applies an
//! empty plan over the kernel state it adopted.

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, Resource};
use kubelvs_crds::{AddressPool, RealServer, VirtualService};
use kubelvs_model::{ObjectKind, ObjectRef};
use kubelvs_planner::NodeIdentity;
use kubelvs_watch::Alike;
use tracing::{info, warn};

use crate::source::{Held, Objects, Rejected};
use crate::Event;

/// The watched objects.
#[derive(Clone)]
pub struct ClusterSource {
    virtual_services: Store<DeserializeGuard<VirtualService>>,
    /// RealServers in their compact form, kept by place from their watch's events.
    real_servers: kubelvs_watch::records::WatchedRealServers,
    address_pools: Store<DeserializeGuard<AddressPool>>,
    /// Every Node (labels and addresses): this node's identity, and the addresses no
    /// RealServer may name without an administrator's leave.
    nodes: Store<Node>,
    /// Namespaces' labels: where that leave is given.
    namespaces: Store<Namespace>,
    node_name: String,
    /// This node as last seen: a Node object that goes (deleted and re-registered, a
    /// relist under way) must not make the agent forget its labels and withdraw every
    /// VIP a directors selector gave it.
    last_seen: Arc<std::sync::Mutex<Option<NodeIdentity>>>,
    /// The live directors (with `--lease-namespace`; `None` otherwise).
    live: Option<kubelvs_watch::liveness::Directors>,
    /// Whether this node directs anything: only then does it renew its Lease.
    directing: Arc<std::sync::atomic::AtomicBool>,
    /// Whether its announce interface has carrier: only then may it announce.
    eligible: Arc<std::sync::atomic::AtomicBool>,
    /// The agents' namespace's Secrets (BGP passwords), with `--lease-namespace`.
    secrets: Option<Store<k8s_openapi::api::core::v1::Secret>>,
}

impl std::fmt::Debug for ClusterSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSource")
            .field("node", &self.node_name)
            .finish_non_exhaustive()
    }
}

/// A watch whose every change of what the planner reads wakes a reload.
fn watch<K>(
    rt: &tokio::runtime::Handle,
    api: Api<K>,
    config: watcher::Config,
    unread: fn(&mut K),
    wake: mpsc::Sender<Event>,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Alike + Clone + serde::de::DeserializeOwned,
    K: std::fmt::Debug + Send + Sync + 'static,
{
    let _in_runtime = rt.enter();
    // An object's change is whole: no reason to wait for quiet (what arrives while
    // an apply runs is taken together by the next).
    kubelvs_watch::reflect(api, config, unread, move || {
        wake.send(Event::Complete).is_ok()
    })
}

impl ClusterSource {
    /// Starts the watches and waits until each has listed once.
    pub fn start(
        rt: &tokio::runtime::Handle,
        client: Client,
        node_name: &str,
        leases: Option<crate::liveness::LeaseSettings>,
        wake: mpsc::Sender<Event>,
    ) -> anyhow::Result<Self> {
        let directing: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let eligible = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let secrets = leases.as_ref().map(|l| {
            watch(
                rt,
                Api::namespaced(client.clone(), &l.namespace),
                watcher::Config::default(),
                |s: &mut k8s_openapi::api::core::v1::Secret| s.metadata.annotations = None,
                wake.clone(),
            )
        });
        let live = leases.map(|settings| {
            rt.block_on(crate::liveness::start(
                client.clone(),
                settings,
                directing.clone(),
                eligible.clone(),
                wake.clone(),
            ))
        });
        let real_servers = {
            let _in_runtime = rt.enter();
            let wake = wake.clone();
            kubelvs_watch::records::WatchedRealServers::start(client.clone(), move || {
                wake.send(Event::Complete).is_ok()
            })
        };
        let s = Self {
            virtual_services: watch(
                rt,
                Api::all(client.clone()),
                watcher::Config::default(),
                // The planner reads the VIP of the status; the directors' entries (this
                // agent's own included: it reports from its own state) wake nothing.
                kubelvs_watch::status_but_vip,
                wake.clone(),
            ),
            real_servers,
            address_pools: watch(
                rt,
                Api::all(client.clone()),
                watcher::Config::default(),
                |_| {},
                wake.clone(),
            ),
            nodes: watch(
                rt,
                Api::all(client.clone()),
                watcher::Config::default(),
                |n: &mut Node| {
                    kubelvs_watch::node_but_addresses(n);
                    // Labels and addresses are all the planner reads of a Node.
                    n.spec = None;
                    n.metadata.annotations = None;
                },
                wake.clone(),
            ),
            namespaces: watch(
                rt,
                Api::all(client),
                watcher::Config::default(),
                |ns: &mut Namespace| {
                    ns.spec = None;
                    ns.status = None;
                    ns.metadata.annotations = None;
                },
                wake,
            ),
            node_name: node_name.to_owned(),
            last_seen: Arc::default(),
            live,
            directing,
            eligible,
            secrets,
        };
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), async {
                s.virtual_services.wait_until_ready().await?;
                s.real_servers
                    .listed()
                    .await
                    .map_err(|_| anyhow::anyhow!("the RealServers' watch stopped"))?;
                s.address_pools.wait_until_ready().await?;
                s.namespaces.wait_until_ready().await?;
                if let Some(secrets) = &s.secrets {
                    secrets.wait_until_ready().await?;
                }
                s.nodes.wait_until_ready().await?;
                anyhow::Ok(())
            })
            .await
        })
        .map_err(|_| {
            anyhow::anyhow!(
                "the watches of VirtualServices, RealServers, AddressPools, Nodes and \
                 Namespaces did not list within 60 s (are the kubelvs.io CRDs installed, and \
                 may this account list them?)"
            )
        })??;
        info!(node = node_name, "watches listed");
        Ok(s)
    }

    /// The objects as the watches have them, and those that did not parse.
    pub fn snapshot(&self) -> (Objects, Vec<Rejected>) {
        let mut objects = Objects::default();
        let mut rejected = Vec::new();
        // Each object's version for the planner: its resourceVersion (with its uid),
        // which the API server changes at every write.
        fn version<K: Resource>(o: &K) -> Option<u64> {
            let m = o.meta();
            let rv = m.resource_version.as_deref()?;
            Some(kubelvs_watch::records::version(m.uid.as_deref(), Some(rv)))
        }
        fn take<K: Clone + Resource<DynamicType = ()>>(
            store: &Store<DeserializeGuard<K>>,
            kind: ObjectKind,
            out: &mut Vec<Held<K>>,
            versions: &mut Option<Vec<u64>>,
            rejected: &mut Vec<Rejected>,
        ) {
            for o in store.state() {
                match &o.0 {
                    Ok(object) => {
                        if let Some(v) = versions {
                            match version(object) {
                                Some(n) => v.push(n),
                                None => *versions = None,
                            }
                        }
                        out.push(o)
                    }
                    Err(e) => {
                        let namespace = e.metadata.namespace.clone().unwrap_or_default();
                        let name = e.metadata.name.clone().unwrap_or_default();
                        rejected.push(Rejected(
                            format!("{kind} {namespace}/{name}: {}", e.error),
                            Some(ObjectRef::new(kind, &namespace, &name)),
                        ))
                    }
                }
            }
        }
        let [mut vs, mut pools] = [(); 2].map(|()| Some(Vec::new()));
        take(
            &self.virtual_services,
            ObjectKind::VirtualService,
            &mut objects.virtual_services,
            &mut vs,
            &mut rejected,
        );
        let rs = {
            let records = self.real_servers.lock();
            for u in records.unparsed() {
                rejected.push(Rejected(
                    format!("RealServer {}/{}: {}", u.namespace, u.name, u.error),
                    Some(ObjectRef::new(
                        ObjectKind::RealServer,
                        &u.namespace,
                        &u.name,
                    )),
                ));
            }
            let (list, versions) = records.snapshot();
            objects.real_servers = list;
            Some(versions)
        };
        take(
            &self.address_pools,
            ObjectKind::AddressPool,
            &mut objects.address_pools,
            &mut pools,
            &mut rejected,
        );
        if let (Some(virtual_services), Some(real_servers), Some(address_pools)) = (vs, rs, pools) {
            objects.versions = Some(kubelvs_planner::Versions {
                virtual_services,
                real_servers,
                address_pools,
            });
        }
        objects.node_real_servers = self.node_real_servers();
        objects.announcers = self.announcers();
        objects.secrets = self
            .secrets
            .iter()
            .flat_map(|store| store.state())
            .filter_map(|s| Some((s.metadata.name.clone()?, crate::source::secret_values(&s))))
            .collect();
        (objects, rejected)
    }

    /// Whether this node directs anything (its Lease is renewed only then).
    pub fn set_directing(&self, directing: bool) {
        self.directing
            .store(directing, std::sync::atomic::Ordering::Relaxed);
    }

    /// The live directors with their Nodes' labels (a node without a Node object
    /// cannot be matched by any selector and is left out).
    fn announcers(&self) -> Option<kubelvs_planner::announce::Announcers> {
        let names = self.live.as_ref()?.live();
        let live = self
            .nodes
            .state()
            .iter()
            .filter_map(|n| {
                let name = n.metadata.name.as_ref()?;
                names
                    .contains(name)
                    .then(|| (name.clone(), n.metadata.labels.clone().unwrap_or_default()))
            })
            .collect();
        Some(kubelvs_planner::announce::Announcers {
            live,
            ineligible_self: !self.eligible.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Every Node's addresses, and the namespaces an administrator labelled to allow
    /// RealServers at them.
    fn node_real_servers(&self) -> kubelvs_planner::NodeRealServers {
        let mut policy = kubelvs_planner::NodeRealServers::default();
        for n in self.nodes.state() {
            let name = n.metadata.name.clone().unwrap_or_default();
            for a in kubelvs_watch::node_addresses(&n) {
                policy.addresses.insert(a, name.clone());
            }
        }
        for ns in self.namespaces.state() {
            let allowed = ns
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(kubelvs_planner::NODE_REAL_SERVERS_LABEL));
            if allowed.map(String::as_str) == Some("allowed") {
                policy
                    .allowed
                    .insert(ns.metadata.name.clone().unwrap_or_default());
            }
        }
        policy
    }

    /// This node as its Node object says (labels, addresses), over `fallback`.
    /// The uid of a VirtualService or RealServer as the watches hold it.
    pub fn uid_of(&self, object: &ObjectRef) -> Option<String> {
        fn uid<K: Clone + Resource<DynamicType = ()>>(
            store: &Store<DeserializeGuard<K>>,
            object: &ObjectRef,
        ) -> Option<String> {
            let key =
                kube::runtime::reflector::ObjectRef::new(&object.name).within(&object.namespace);
            let held = store.get(&key)?;
            match &held.0 {
                Ok(o) => o.meta().uid.clone(),
                Err(e) => e.metadata.uid.clone(),
            }
        }
        match object.kind {
            ObjectKind::VirtualService => uid(&self.virtual_services, object),
            ObjectKind::RealServer => self
                .real_servers
                .lock()
                .uid(&object.namespace, &object.name),
            ObjectKind::AddressPool => None,
        }
    }

    pub fn node(&self, fallback: &NodeIdentity) -> NodeIdentity {
        let mut last_seen = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        let node = self
            .nodes
            .state()
            .into_iter()
            .find(|n| n.metadata.name.as_deref() == Some(self.node_name.as_str()));
        identity(node.as_deref(), fallback, &mut last_seen)
    }
}

/// This node's identity from its Node object: its labels and addresses over
/// `fallback` (the flags). Without the object, the identity last seen (kept in
/// `last_seen`), else `fallback`. In a cluster a VIP is the operator's grant, never
/// a tenant's spec.vip as written.
fn identity(
    node: Option<&Node>,
    fallback: &NodeIdentity,
    last_seen: &mut Option<NodeIdentity>,
) -> NodeIdentity {
    let Some(n) = node else {
        return last_seen.clone().unwrap_or_else(|| NodeIdentity {
            vip_source: kubelvs_planner::VipSource::Granted,
            ..fallback.clone()
        });
    };
    let mut id = fallback.clone();
    id.vip_source = kubelvs_planner::VipSource::Granted;
    id.labels = n.metadata.labels.clone().unwrap_or_default();
    let addrs: Vec<std::net::IpAddr> = kubelvs_watch::node_addresses(n).collect();
    if !addrs.is_empty() {
        id.addresses = addrs;
    }
    *last_seen = Some(id.clone());
    id
}

/// The status this node wants, per object: the apply body of its own entry.
pub type Desired = BTreeMap<ObjectRef, serde_json::Value>;

/// Writes this node's status entries: only those that changed, urgent ones first (see
/// [`crate::status::Due`]), at most one batch per `min_gap`. An object the
/// API server refuses (too large, refused by admission, invalid) is retried on its
/// own backoff and never holds up the others; an unreachable API server holds up
/// everything, retried with backoff. The dataplane never waits for it. `found` is
/// what the API server held of this node's entries when the agent started (see
/// [`own_entries`]): what is the same is not written again, and entries the first
/// plan does not want are removed.
pub async fn status_writer(
    client: Client,
    manager: String,
    mut desired: tokio::sync::watch::Receiver<Option<Arc<Desired>>>,
    min_gap: Duration,
    found: Desired,
) {
    use crate::status::{apply_body, write_due, Due};
    let params = PatchParams::apply(&manager).force();
    let mut written = found;
    // Nothing is decided before the first plan (`None` until then): what a previous
    // run left is only removed once this run knows what it wants, even if it wants
    // nothing.
    if desired.wait_for(Option::is_some).await.is_err() {
        return;
    }
    let mut refused: BTreeMap<ObjectRef, (tokio::time::Instant, Duration)> = BTreeMap::new();
    let mut backoff = Duration::from_millis(500);
    loop {
        let Some(want) = desired.borrow_and_update().clone() else {
            continue;
        };
        let now = tokio::time::Instant::now();
        let mut due: Vec<(Due, ObjectRef, serde_json::Value)> = want
            .iter()
            .filter_map(|(key, body)| match write_due(written.get(key), body) {
                Due::No => None,
                d => Some((d, key.clone(), body.clone())),
            })
            .collect();
        // Entries of objects this node no longer serves are removed.
        for key in written.keys().filter(|k| !want.contains_key(*k)) {
            let body = apply_body(key, None, None);
            due.push((Due::Urgent, key.clone(), body));
        }
        due.sort_by_key(|(d, _, _)| *d);
        let due_keys: std::collections::HashSet<&ObjectRef> =
            due.iter().map(|(_, k, _)| k).collect();
        refused.retain(|k, _| due_keys.contains(k));
        due.retain(|(_, k, _)| refused.get(k).is_none_or(|(at, _)| *at <= now));
        let mut unreachable = false;
        for (urgency, key, body) in due {
            // A newer plan may hold transitions: they go before the rest of a wave of
            // new entries (a start, a thousand services created).
            if urgency == Due::Routine && desired.has_changed().unwrap_or(false) {
                break;
            }
            let result = if key.kind == ObjectKind::VirtualService {
                Api::<VirtualService>::namespaced(client.clone(), &key.namespace)
                    .patch_status(&key.name, &params, &Patch::Apply(&body))
                    .await
                    .map(|_| ())
            } else {
                Api::<RealServer>::namespaced(client.clone(), &key.namespace)
                    .patch_status(&key.name, &params, &Patch::Apply(&body))
                    .await
                    .map(|_| ())
            };
            match result {
                Ok(()) => {
                    refused.remove(&key);
                    if want.contains_key(&key) {
                        written.insert(key, body);
                    } else {
                        written.remove(&key);
                    }
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    // The object is gone, and its status with it.
                    refused.remove(&key);
                    written.remove(&key);
                }
                Err(kube::Error::Api(e)) if e.code == 429 || e.code >= 500 => {
                    // The API server is overloaded or failing: everything waits.
                    warn!(object = %key, code = e.code, error = %e.message, "status write failed; will retry");
                    unreachable = true;
                    break;
                }
                Err(kube::Error::Api(e)) => {
                    // This object only: the API server answers, and refuses it.
                    let next = refused
                        .get(&key)
                        .map_or(Duration::from_secs(1), |(_, b)| (*b * 2).min(MAX_BACKOFF));
                    warn!(object = %key, code = e.code, error = %e.message, retry_in_s = next.as_secs(), "status write refused; the other objects go on");
                    refused.insert(key, (tokio::time::Instant::now() + next, next));
                }
                Err(e) => {
                    warn!(object = %key, error = %e, "status write failed; will retry");
                    unreachable = true;
                    break;
                }
            }
        }
        if unreachable {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
            continue;
        }
        backoff = Duration::from_millis(500);
        tokio::time::sleep(min_gap).await;
        // Sleep until the plan changes or a refused object's retry is due.
        let retry = refused
            .values()
            .map(|(at, _)| at.saturating_duration_since(tokio::time::Instant::now()))
            .min();
        match retry {
            Some(wait) => {
                if let Ok(Err(_)) = tokio::time::timeout(wait, desired.changed()).await {
                    return;
                }
            }
            None => {
                if desired.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The RealServer observations among `found` (what [`own_entries`] read), as they were.
pub fn observations_at_start(
    found: &Desired,
) -> BTreeMap<ObjectRef, kubelvs_crds::HealthObservation> {
    found
        .iter()
        .filter(|(object, _)| object.kind == ObjectKind::RealServer)
        .filter_map(|(object, body)| {
            let entry = body["status"]["observations"].get(0)?.clone();
            Some((object.clone(), serde_json::from_value(entry).ok()?))
        })
        .collect()
}

/// What the API server holds of `node`'s own status entries, as the apply bodies
/// that would write them (a previous run's; an upgrade's fields this version does not
/// know are left out, so they go with the next write).
pub async fn own_entries(client: &Client, node: &str) -> Desired {
    let mut out = holding_entry::<VirtualService>(client, ObjectKind::VirtualService, |v| {
        let entry = v
            .status
            .as_ref()?
            .directors
            .iter()
            .find(|d| d.node == node)?;
        serde_json::to_value(entry).ok()
    })
    .await;
    out.extend(
        holding_entry::<RealServer>(client, ObjectKind::RealServer, |r| {
            let entry = r
                .status
                .as_ref()?
                .observations
                .iter()
                .find(|o| o.node == node)?;
            serde_json::to_value(entry).ok()
        })
        .await,
    );
    out
}

/// The objects of `kind` that hold an entry (`entry`), with it as an apply body. An
/// object that does not parse is left out; it does not hide the others.
async fn holding_entry<K>(
    client: &Client,
    kind: ObjectKind,
    entry: impl Fn(&K) -> Option<serde_json::Value>,
) -> Desired
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match Api::<DeserializeGuard<K>>::all(client.clone())
        .list(&kube::api::ListParams::default())
        .await
    {
        Ok(list) => list
            .items
            .iter()
            .filter_map(|o| o.0.as_ref().ok())
            .filter_map(|o| {
                let object = object_ref(o, kind);
                let body =
                    crate::status::apply_body(&object, Some(entry(o)?), o.meta().uid.clone());
                Some((object, body))
            })
            .collect(),
        Err(e) => {
            warn!(error = %e, "listing {kind}s for this node's old entries");
            Desired::new()
        }
    }
}

fn object_ref<K: Resource>(o: &K, kind: ObjectKind) -> ObjectRef {
    ObjectRef::new(
        kind,
        o.meta().namespace.as_deref().unwrap_or_default(),
        o.meta().name.as_deref().unwrap_or_default(),
    )
}

/// The longest an object the API server refused waits for its next try.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Shared handle to publish the desired status.
pub type StatusSender = Arc<tokio::sync::watch::Sender<Option<Arc<Desired>>>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_object_that_goes_leaves_its_labels_in_place() {
        let fallback = NodeIdentity {
            name: "d1".into(),
            ..Default::default()
        };
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "d1", "labels": {"node-role.kubelvs.io/director": ""}},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]},
        }))
        .unwrap();
        let mut last = None;
        // Never seen: the flags, as a cluster identity.
        let id = identity(None, &fallback, &mut last);
        assert!(id.labels.is_empty());
        assert_eq!(id.vip_source, kubelvs_planner::VipSource::Granted);
        let seen = identity(Some(&node), &fallback, &mut last);
        assert!(seen.labels.contains_key("node-role.kubelvs.io/director"));
        assert_eq!(
            seen.addresses,
            vec!["192.0.2.1".parse::<std::net::IpAddr>().unwrap()]
        );
        // Deleted (or relisting): the last identity, not the flags.
        assert_eq!(identity(None, &fallback, &mut last), seen);
    }

    fn vs(version: &str, vip: &str, programmed: bool) -> DeserializeGuard<VirtualService> {
        let mut v: DeserializeGuard<VirtualService> = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubelvs.io/v1alpha1",
            "kind": "VirtualService",
            "metadata": {"name": "web", "namespace": "lab", "resourceVersion": version},
            "spec": {"ports": [{"port": 80}], "forwarding": "dr", "realServerSelector": {}},
            "status": {
                "vip": vip,
                "directors": [{"node": "d1", "programmed": programmed, "healthyRealServers": 1}],
            },
        }))
        .unwrap();
        kubelvs_watch::status_but_vip(&mut v);
        v
    }

    #[test]
    fn status_writes_wake_no_reload_but_an_allocated_vip_does() {
        let before = vs("1", "203.0.113.1", true);
        let Ok(v) = &before.0 else {
            panic!("{before:?}")
        };
        let status = v.status.as_ref().unwrap();
        assert_eq!(status.vip.as_deref(), Some("203.0.113.1"));
        assert!(status.directors.is_empty(), "{status:?}");
        assert!(before.alike(&vs("2", "203.0.113.1", false)));
        assert!(!before.alike(&vs("2", "203.0.113.2", true)));
    }

    #[test]
    fn a_node_is_read_for_its_labels_and_addresses_only() {
        let node = |version: &str, heartbeat: &str, address: &str| {
            let mut n: Node = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "d1", "resourceVersion": version, "labels": {"role": "director"}},
                "status": {
                    "addresses": [{"type": "InternalIP", "address": address}],
                    "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}],
                },
            }))
            .unwrap();
            kubelvs_watch::node_but_addresses(&mut n);
            n
        };
        let before = node("1", "2026-12-02T10:00:00Z", "192.0.2.1");
        assert!(before.alike(&node("2", "2026-12-02T10:00:10Z", "192.0.2.1")));
        assert!(!before.alike(&node("2", "2026-12-02T10:00:10Z", "192.0.2.9")));
    }
}

/// The chart's uninstall marker: a ConfigMap its `pre-delete` hook creates before
/// helm deletes anything. Followed from the agent's start, so that the SIGTERM of the
/// uninstall (which may come after helm has deleted the agent's RBAC) needs no API
/// call to tell an uninstall from a rollout: an uninstall began when a marker exists
/// that was not there, with that uid, when the agent started (one left by an earlier
/// uninstall of a reinstalled release is not).
#[derive(Debug, Clone, Default)]
pub struct UninstallMarker {
    state: Arc<std::sync::Mutex<MarkerState>>,
}

#[derive(Debug, Default)]
struct MarkerState {
    /// The marker's uid when the first listing finished (`Some(None)`: none).
    at_start: Option<Option<String>>,
    /// Its uid now, as of the listing under way or the last event.
    now: Option<String>,
}

impl MarkerState {
    fn uninstalling(&self) -> bool {
        matches!(&self.at_start, Some(start) if self.now.is_some() && self.now != *start)
    }

    fn observe(&mut self, ev: watcher::Event<k8s_openapi::api::core::v1::ConfigMap>) {
        match ev {
            watcher::Event::Init | watcher::Event::Delete(_) => self.now = None,
            watcher::Event::InitApply(cm) | watcher::Event::Apply(cm) => {
                self.now = cm.metadata.uid;
            }
            watcher::Event::InitDone => {
                if self.at_start.is_none() {
                    self.at_start = Some(self.now.clone());
                }
            }
        }
    }
}

impl UninstallMarker {
    /// Follows the ConfigMap `name` in `namespace` on `rt`.
    pub fn follow(
        rt: &tokio::runtime::Handle,
        client: Client,
        namespace: &str,
        name: &str,
    ) -> Self {
        use futures::StreamExt;
        let marker = Self::default();
        let state = marker.state.clone();
        let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let what = format!("{namespace}/{name}");
        rt.spawn(async move {
            let mut events = std::pin::pin!(
                kube::runtime::WatchStreamExt::default_backoff(watcher(api, config))
            );
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(ev) => {
                        let mut s = state.lock().unwrap();
                        s.observe(ev);
                        if s.uninstalling() {
                            info!(marker = %what, "uninstall begun: kube-lvs will be removed from this node when the agent stops");
                        }
                    }
                    Err(e) => warn!(marker = %what, error = %e, "watching the uninstall marker"),
                }
            }
        });
        marker
    }

    /// Whether an uninstall began since the agent started.
    pub fn uninstalling(&self) -> bool {
        self.state.lock().unwrap().uninstalling()
    }
}

#[cfg(test)]
mod marker_tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(uid: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.uid = Some(uid.into());
        c
    }

    fn listed(s: &mut MarkerState, uid: Option<&str>) {
        s.observe(watcher::Event::Init);
        if let Some(u) = uid {
            s.observe(watcher::Event::InitApply(cm(u)));
        }
        s.observe(watcher::Event::InitDone);
    }

    #[test]
    fn an_uninstall_is_a_marker_the_agent_did_not_start_with() {
        let mut s = MarkerState::default();
        assert!(!s.uninstalling(), "nothing listed yet");
        listed(&mut s, None);
        assert!(!s.uninstalling());
        s.observe(watcher::Event::Apply(cm("u1")));
        assert!(s.uninstalling());
        // A relist sees the same marker: still uninstalling.
        listed(&mut s, Some("u1"));
        assert!(s.uninstalling());
    }

    #[test]
    fn a_marker_left_by_an_earlier_uninstall_is_not_one_until_recreated() {
        let mut s = MarkerState::default();
        listed(&mut s, Some("old"));
        assert!(!s.uninstalling(), "a reinstalled release's rollout");
        // The hook's before-hook-creation policy deletes and recreates it.
        s.observe(watcher::Event::Delete(cm("old")));
        assert!(!s.uninstalling());
        s.observe(watcher::Event::Apply(cm("new")));
        assert!(s.uninstalling());
    }
}
