//! The watches of the kube-lvs binaries. Every director writes its own entries into
//! the status of the objects it serves, and the operator its roll-ups; a cache of whole
//! objects would wake every agent for each of those writes, and each wake is a plan
//! over every object. So a watch here caches only what its owner reads (the owner says
//! what it does not) and wakes it only when that changed.

#![forbid(unsafe_code)]

pub mod liveness;
pub mod records;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use kubelvs_crds::{RealServer, VirtualService, VirtualServiceStatus};
use tracing::warn;

/// Objects a watch can tell apart: alike when equal but for the resourceVersion.
pub trait Alike {
    fn alike(&self, other: &Self) -> bool;
}

/// `a == b` but for the resourceVersion.
fn equal_but_version<K: Resource + Clone + PartialEq>(a: &K, b: &K) -> bool {
    if a.meta().resource_version == b.meta().resource_version {
        return a == b;
    }
    let mut b = b.clone();
    b.meta_mut().resource_version = a.meta().resource_version.clone();
    *a == b
}

/// An object that does not parse is never alike: it is reported on every change.
impl<K: Resource + Clone + PartialEq> Alike for DeserializeGuard<K> {
    fn alike(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Ok(a), Ok(b)) => equal_but_version(a, b),
            _ => false,
        }
    }
}

impl Alike for VirtualService {
    fn alike(&self, other: &Self) -> bool {
        equal_but_version(self, other)
    }
}

impl Alike for RealServer {
    fn alike(&self, other: &Self) -> bool {
        equal_but_version(self, other)
    }
}

/// An object as a watch holds it: the object itself, or a [`DeserializeGuard`] of it
/// (which holds objects that did not parse too), so one `unread` serves both.
pub trait Parsed<T> {
    fn parsed_mut(&mut self) -> Option<&mut T>;
}

impl<T> Parsed<T> for DeserializeGuard<T> {
    fn parsed_mut(&mut self) -> Option<&mut T> {
        self.0.as_mut().ok()
    }
}

impl Parsed<VirtualService> for VirtualService {
    fn parsed_mut(&mut self) -> Option<&mut VirtualService> {
        Some(self)
    }
}

impl Parsed<RealServer> for RealServer {
    fn parsed_mut(&mut self) -> Option<&mut RealServer> {
        Some(self)
    }
}

/// Clears a VirtualService's status but its VIP and the generation it was written for
/// (together, the operator's grant): what the agents write there (their entries) and
/// the operator's conditions.
pub fn status_but_vip<V: Parsed<VirtualService>>(vs: &mut V) {
    if let Some(status) = vs.parsed_mut().and_then(|vs| vs.status.as_mut()) {
        *status = VirtualServiceStatus {
            vip: status.vip.take(),
            // The grant is status.vip of a status written for the current generation.
            observed_generation: status.observed_generation,
            ..Default::default()
        };
    }
}

/// Clears a Node's status but its addresses: its labels and addresses are all either
/// binary reads, and the kubelet rewrites the rest (conditions, heartbeats) all the time.
pub fn node_but_addresses(node: &mut Node) {
    if let Some(status) = &mut node.status {
        *status = k8s_openapi::api::core::v1::NodeStatus {
            addresses: status.addresses.take(),
            ..Default::default()
        };
    }
}

/// The InternalIP and ExternalIP addresses of a Node.
pub fn node_addresses(node: &Node) -> impl Iterator<Item = std::net::IpAddr> + '_ {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
}

/// Clears a RealServer's status: the directors' health observations.
pub fn no_status<R: Parsed<RealServer>>(rs: &mut R) {
    if let Some(rs) = rs.parsed_mut() {
        rs.status = None;
    }
}

impl Alike for Namespace {
    fn alike(&self, other: &Self) -> bool {
        equal_but_version(self, other)
    }
}

impl Alike for Node {
    fn alike(&self, other: &Self) -> bool {
        equal_but_version(self, other)
    }
}

impl Alike for k8s_openapi::api::core::v1::Secret {
    fn alike(&self, other: &Self) -> bool {
        equal_but_version(self, other)
    }
}

/// Starts a watch of `api` into a store and returns the store. `unread` clears what
/// the owner never reads (managedFields are always cleared), before caching and before
/// comparing; `changed` is called for every change of the rest (and when a relist
/// lands) and stops the watch by returning false. An update that changes nothing of
/// the rest leaves the stored object as it was, resourceVersion included.
pub fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    unread: fn(&mut K),
    mut changed: impl FnMut() -> bool + Send + 'static,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Alike + Clone + serde::de::DeserializeOwned,
    K: std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, mut writer) = reflector::store();
    let store = reader.clone();
    follow(api, config, unread, move |ev| {
        let wake = is_change(&store, &ev);
        store_unless_alike(&mut writer, &ev, !wake);
        !wake || changed()
    });
    reader
}

/// Starts a watch of `api` and hands each of its events to `each` (objects without
/// their managedFields and what `unread` clears), for an owner that keeps its own
/// form of the objects; `each` stops the watch by returning false. Failures are
/// retried with backoff; a relist comes as `Init`, `InitApply`s and `InitDone`.
pub fn follow<K>(
    api: Api<K>,
    config: watcher::Config,
    unread: fn(&mut K),
    mut each: impl FnMut(watcher::Event<K>) -> bool + Send + 'static,
) where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned,
    K: std::fmt::Debug + Send + Sync + 'static,
{
    let stream = events(api, config, unread);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => {
                    if !each(ev) {
                        return;
                    }
                }
                Err(e) => warn!(error = %e, "watch failed; retrying with backoff"),
            }
        }
    });
}

/// The objects of a watch that changed in what their owner reads (after `unread`,
/// as [`Alike`] tells), and the deleted ones: what should trigger a controller's
/// reconcile of their owner, without the status writes that change nothing of it.
/// The store holds the watched objects as of the last one the stream gave.
pub fn changes<K>(
    api: Api<K>,
    config: watcher::Config,
    unread: fn(&mut K),
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send,
)
where
    K: Resource<DynamicType = ()> + Alike + Clone + serde::de::DeserializeOwned,
    K: std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, mut writer) = reflector::store();
    let store = reader.clone();
    let stream = events(api, config, unread).filter_map(move |ev| {
        std::future::ready(match ev {
            Ok(ev) => sift(&store, &mut writer, ev).map(Ok),
            Err(e) => Some(Err(e)),
        })
    });
    (reader, stream)
}

/// The events of a watch of `api`, retried with backoff, each object without its
/// managedFields and what `unread` clears.
fn events<K>(
    api: Api<K>,
    config: watcher::Config,
    unread: fn(&mut K),
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned,
    K: std::fmt::Debug + Send + 'static,
{
    watcher(api, config).default_backoff().modify(move |o| {
        o.meta_mut().managed_fields = None;
        unread(o);
    })
}

/// The object of `ev` if it is new or changed against `store`, or deleted; `ev` goes
/// into the store through `writer` ([`store_unless_alike`]).
fn sift<K>(
    store: &Store<K>,
    writer: &mut reflector::store::Writer<K>,
    ev: watcher::Event<K>,
) -> Option<K>
where
    K: Resource<DynamicType = ()> + Alike + Clone,
{
    let out = match &ev {
        watcher::Event::Apply(o) | watcher::Event::InitApply(o) => store
            .get(&ObjectRef::from_obj(o))
            .is_none_or(|old| !old.alike(o))
            .then(|| o.clone()),
        watcher::Event::Delete(o) => Some(o.clone()),
        watcher::Event::Init | watcher::Event::InitDone => None,
    };
    store_unless_alike(writer, &ev, out.is_none());
    out
}

/// Puts `ev` into the store through `writer`, unless it is an update of an object
/// alike the stored one (another director's status entry, say): that is not stored
/// again, so the stored one keeps its resourceVersion, which then changes only with
/// what readers read (the agent plans by it).
fn store_unless_alike<K>(
    writer: &mut reflector::store::Writer<K>,
    ev: &watcher::Event<K>,
    alike: bool,
) where
    K: Resource<DynamicType = ()> + Clone,
{
    if !(alike && matches!(ev, watcher::Event::Apply(_))) {
        writer.apply_watcher_event(ev);
    }
}

/// Whether `ev` changes what `store` holds (as far as [`Alike`] tells).
fn is_change<K>(store: &Store<K>, ev: &watcher::Event<K>) -> bool
where
    K: Resource<DynamicType = ()> + Alike + Clone,
{
    match ev {
        watcher::Event::Apply(o) => store
            .get(&ObjectRef::from_obj(o))
            .is_none_or(|old| !old.alike(o)),
        // A relist lands in the store at InitDone, which is a change.
        watcher::Event::Init | watcher::Event::InitApply(_) => false,
        watcher::Event::Delete(_) | watcher::Event::InitDone => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(version: &str, label: &str, healthy: bool) -> DeserializeGuard<RealServer> {
        serde_yaml::from_str(&format!(
            "apiVersion: kubelvs.io/v1alpha1\nkind: RealServer\nmetadata: {{name: rs1, namespace: lab, resourceVersion: '{version}', labels: {{app: {label}}}}}\nspec: {{address: 192.0.2.11}}\nstatus: {{observations: [{{node: d1, healthy: {healthy}}}]}}\n"
        ))
        .unwrap()
    }

    #[test]
    fn alike_is_equal_but_for_the_resource_version() {
        let a = rs("1", "web", true);
        assert!(a.0.is_ok());
        assert!(a.alike(&rs("2", "web", true)));
        assert!(!a.alike(&rs("2", "db", true)));
        assert!(!a.alike(&rs("1", "web", false)));
    }

    #[test]
    fn an_object_that_does_not_parse_is_never_alike() {
        let bad: DeserializeGuard<RealServer> = serde_yaml::from_str(
            "apiVersion: kubelvs.io/v1alpha1\nkind: RealServer\nmetadata: {name: rs1, namespace: lab}\nspec: {address: 7}\n",
        )
        .unwrap();
        assert!(bad.0.is_err());
        assert!(!bad.alike(&bad.clone()));
    }

    #[test]
    fn an_event_is_a_change_unless_the_store_holds_the_object_alike() {
        let (store, mut writer) = reflector::store::<DeserializeGuard<RealServer>>();
        let first = watcher::Event::Apply(rs("1", "web", true));
        assert!(is_change(&store, &first), "not in the store yet");
        writer.apply_watcher_event(&first);
        assert!(!is_change(
            &store,
            &watcher::Event::Apply(rs("2", "web", true))
        ));
        assert!(is_change(
            &store,
            &watcher::Event::Apply(rs("2", "web", false))
        ));
        assert!(!is_change(
            &store,
            &watcher::Event::InitApply(rs("3", "db", true))
        ));
        assert!(is_change(&store, &watcher::Event::InitDone));
        assert!(is_change(
            &store,
            &watcher::Event::Delete(rs("3", "web", true))
        ));
    }

    #[test]
    fn an_owned_object_triggers_its_owner_when_what_it_reads_changes_or_it_goes() {
        let owned = |version: &str, address: &str, healthy: bool| {
            let mut r: RealServer = serde_yaml::from_str(&format!(
                "apiVersion: kubelvs.io/v1alpha1\nkind: RealServer\nmetadata: {{name: rs1, namespace: lab, resourceVersion: '{version}'}}\nspec: {{address: {address}}}\nstatus: {{observations: [{{node: d1, healthy: {healthy}}}]}}\n"
            ))
            .unwrap();
            no_status(&mut r);
            r
        };
        let (store, mut writer) = reflector::store();
        let mut step = |ev| sift(&store, &mut writer, ev);
        assert!(step(watcher::Event::Init).is_none());
        let first = watcher::Event::InitApply(owned("1", "192.0.2.11", true));
        assert!(step(first).is_some(), "new");
        assert!(step(watcher::Event::InitDone).is_none());
        let address = |store: &Store<RealServer>| {
            let held = store.state();
            held.iter()
                .map(|r| r.spec.address.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(address(&store), ["192.0.2.11"], "the store holds it");
        let observed = watcher::Event::Apply(owned("2", "192.0.2.11", false));
        assert!(step(observed).is_none(), "a director's observation only");
        let edited = watcher::Event::Apply(owned("3", "192.0.2.12", false));
        assert!(step(edited).is_some(), "spec edited");
        assert_eq!(address(&store), ["192.0.2.12"]);
        assert!(step(watcher::Event::Init).is_none());
        let relisted = watcher::Event::InitApply(owned("4", "192.0.2.12", true));
        assert!(step(relisted).is_none(), "relisted as it was");
        assert!(step(watcher::Event::InitDone).is_none());
        assert_eq!(address(&store), ["192.0.2.12"], "kept by the relist");
        let gone = watcher::Event::Delete(owned("5", "192.0.2.12", true));
        assert!(step(gone).is_some(), "deleted");
        assert!(store.state().is_empty());
    }

    #[test]
    fn of_a_virtual_service_status_only_the_grant_is_kept() {
        let mut vs: VirtualService = serde_yaml::from_str(
            "apiVersion: kubelvs.io/v1alpha1\nkind: VirtualService\nmetadata: {name: web, namespace: lab}\nspec: {ports: [{port: 80}], forwarding: dr, realServerSelector: {}}\nstatus: {vip: 203.0.113.1, observedGeneration: 4, directors: [{node: d1, programmed: true}]}\n",
        )
        .unwrap();
        status_but_vip(&mut vs);
        let status = vs.status.unwrap();
        assert_eq!(status.vip.as_deref(), Some("203.0.113.1"));
        assert_eq!(
            status,
            VirtualServiceStatus {
                vip: status.vip.clone(),
                observed_generation: Some(4),
                ..Default::default()
            }
        );
    }
}
