//! The watches of the kube-lvs binaries. Agents rewrite their status entries (traffic
//! counters, probe times) on every object they direct each status refresh; a cache of
//! whole objects would wake every operator and agent for each of those writes, and
//! each wake is a pass or a plan over every object. So a watch here caches only what
//! its owner reads (the owner says what it does not) and wakes it only when that
//! changed.

#![forbid(unsafe_code)]

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
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

/// Starts a watch of `api` into a store and returns the store. `unread` clears what
/// the owner never reads (managedFields are always cleared), before caching and before
/// comparing; `changed` is called for every change of the rest (and when a relist
/// lands) and stops the watch by returning false.
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
    let stream = watcher(api, config).default_backoff().modify(move |o| {
        o.meta_mut().managed_fields = None;
        unread(o);
    });
    let store = reader.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    warn!(error = %e, "watch failed; retrying with backoff");
                    continue;
                }
            };
            let wake = is_change(&store, &ev);
            writer.apply_watcher_event(&ev);
            if wake && !changed() {
                return;
            }
        }
    });
    reader
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
        watcher::Event::InitApply(_) => false,
        watcher::Event::Delete(_) | watcher::Event::Init | watcher::Event::InitDone => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubelvs_crds::RealServer;

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
}
