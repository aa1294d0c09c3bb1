//! A cluster's RealServers as the agent's planner and the operator's pass take them,
//! kept from their watch's events. There are ten times as many RealServers as
//! VirtualServices: they are held in their compact form (not the API type; a store of
//! 100,000 API objects is about 130 MB), each at a place it keeps while it is only
//! modified (the agent's planner memo is by place), with its version, so that a
//! snapshot for a plan is a copy of two lists rather than a walk over a store.

use std::sync::{Arc, Mutex, MutexGuard};

use kube::core::DeserializeGuard;
use kube::runtime::watcher;
use kube::{Api, Client};
use kubelvs_crds::{RealServer, RealServerRecord};

/// Every RealServer of a cluster as records, kept by a watch ([`Self::start`]).
#[derive(Debug, Clone)]
pub struct WatchedRealServers {
    records: Arc<Mutex<RealServerRecords>>,
    listed: tokio::sync::watch::Receiver<bool>,
}

impl WatchedRealServers {
    /// Starts the watch (in the current runtime). `changed` is called at each change
    /// of what a plan reads (never for a director's status entry) and when a list
    /// lands; it stops the watch by returning false.
    pub fn start(client: Client, mut changed: impl FnMut() -> bool + Send + 'static) -> Self {
        let records: Arc<Mutex<RealServerRecords>> = Arc::default();
        let (listed_tx, listed) = tokio::sync::watch::channel(false);
        let kept = records.clone();
        crate::follow(
            Api::<DeserializeGuard<RealServer>>::all(client),
            watcher::Config::default(),
            crate::no_status,
            move |event| {
                let mut records = kept.lock().unwrap_or_else(|p| p.into_inner());
                let change = records.apply(event);
                listed_tx.send_if_modified(|l| {
                    let now = records.listed();
                    std::mem::replace(l, now) != now
                });
                drop(records);
                !change || changed()
            },
        );
        Self { records, listed }
    }

    /// The records as they are now.
    pub fn lock(&self) -> MutexGuard<'_, RealServerRecords> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns once the watch has listed (before that, the records are not the
    /// cluster's); an error if the watch stopped.
    pub async fn listed(&self) -> Result<(), tokio::sync::watch::error::RecvError> {
        self.listed.clone().wait_for(|l| *l).await.map(|_| ())
    }
}

/// The version the planner compares: the API server changes the resourceVersion at
/// every write, and the uid tells a re-created object from the one it replaced.
pub fn version(uid: Option<&str>, resource_version: Option<&str>) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x6b75_6265_6c76_7303)
        .hash_one((uid, resource_version))
}

/// A RealServer that does not parse, and why (its uid: Events on it name it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unparsed {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub error: String,
}

impl Unparsed {
    fn is(&self, namespace: &str, name: &str) -> bool {
        (self.namespace.as_str(), self.name.as_str()) == (namespace, name)
    }
}

/// The RealServers a watch has given, by place.
#[derive(Debug, Default)]
pub struct RealServerRecords {
    list: Vec<Arc<RealServerRecord>>,
    versions: Vec<u64>,
    /// Places in `list`, found by the hash of (namespace, name) and compared by the
    /// record's own strings (no second copy of every name).
    places: hashbrown::HashTable<usize>,
    unparsed: Vec<Unparsed>,
    /// During a relist: what it listed so far, already compact (a relist of 100,000
    /// API objects held whole would cost what the records save).
    relisting: Option<Vec<Watched>>,
    listed: bool,
}

fn key_hash(namespace: &str, name: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x6b75_6265_6c76_7304).hash_one((namespace, name))
}

fn names(o: &DeserializeGuard<RealServer>) -> (&str, &str) {
    let m = match &o.0 {
        Ok(rs) => &rs.metadata,
        Err(e) => &e.metadata,
    };
    (
        m.namespace.as_deref().unwrap_or(""),
        m.name.as_deref().unwrap_or(""),
    )
}

/// A watched RealServer as it is kept: its record and version, or why it does not
/// parse.
#[derive(Debug)]
enum Watched {
    Parsed(RealServerRecord, u64),
    Unparsed(Unparsed),
}

impl Watched {
    fn of(o: DeserializeGuard<RealServer>) -> Self {
        match o.0 {
            Ok(rs) => {
                let version = version(
                    rs.metadata.uid.as_deref(),
                    rs.metadata.resource_version.as_deref(),
                );
                Self::Parsed(rs.into(), version)
            }
            Err(e) => Self::Unparsed(Unparsed {
                namespace: e.metadata.namespace.unwrap_or_default(),
                name: e.metadata.name.unwrap_or_default(),
                uid: e.metadata.uid,
                error: e.error.to_string(),
            }),
        }
    }

    fn names(&self) -> (&str, &str) {
        match self {
            Self::Parsed(r, _) => (&r.namespace, &r.name),
            Self::Unparsed(u) => (&u.namespace, &u.name),
        }
    }
}

impl RealServerRecords {
    /// Takes one event of the watch; says whether what the planner reads changed (a
    /// modification that changes nothing of it keeps the record and its version).
    pub fn apply(&mut self, event: watcher::Event<DeserializeGuard<RealServer>>) -> bool {
        match event {
            watcher::Event::Apply(o) => self.put(Watched::of(o)),
            watcher::Event::Delete(o) => {
                let (namespace, name) = names(&o);
                self.delete(namespace, name)
            }
            watcher::Event::Init => {
                self.relisting = Some(Vec::new());
                false
            }
            watcher::Event::InitApply(o) => {
                self.relisting
                    .get_or_insert_with(Vec::new)
                    .push(Watched::of(o));
                false
            }
            watcher::Event::InitDone => {
                // The relist is applied as modifications, so what kept its place keeps
                // it; then what it did not list goes.
                let listed = self.relisting.take().unwrap_or_default();
                let mut seen = hashbrown::HashSet::<(String, String)>::new();
                let mut changed = !self.listed;
                for o in listed {
                    let (namespace, name) = o.names();
                    seen.insert((namespace.to_owned(), name.to_owned()));
                    changed |= self.put(o);
                }
                let gone: Vec<(String, String)> = self
                    .list
                    .iter()
                    .map(|r| (r.namespace.to_string(), r.name.to_string()))
                    .chain(
                        self.unparsed
                            .iter()
                            .map(|u| (u.namespace.clone(), u.name.clone())),
                    )
                    .filter(|k| !seen.contains(k))
                    .collect();
                for (namespace, name) in gone {
                    changed |= self.delete(&namespace, &name);
                }
                self.listed = true;
                changed
            }
        }
    }

    fn delete(&mut self, namespace: &str, name: &str) -> bool {
        let was = self.unparsed.len();
        self.unparsed.retain(|u| !u.is(namespace, name));
        self.remove(namespace, name) || was != self.unparsed.len()
    }

    /// Whether a list has completed (before it, the records are not the cluster's).
    pub fn listed(&self) -> bool {
        self.listed
    }

    fn find(&self, namespace: &str, name: &str) -> Option<usize> {
        self.find_hashed(key_hash(namespace, name), namespace, name)
    }

    fn find_hashed(&self, hash: u64, namespace: &str, name: &str) -> Option<usize> {
        self.places
            .find(hash, |&at| {
                let r = &self.list[at];
                &*r.namespace == namespace && &*r.name == name
            })
            .copied()
    }

    fn put(&mut self, o: Watched) -> bool {
        let (record, version) = match o {
            Watched::Parsed(record, version) => (record, version),
            Watched::Unparsed(now) => {
                let removed = self.remove(&now.namespace, &now.name);
                let was = self
                    .unparsed
                    .iter_mut()
                    .find(|u| u.is(&now.namespace, &now.name));
                // The same object with the same error: nothing new to report.
                return match was {
                    Some(u) if *u == now => removed,
                    Some(u) => {
                        *u = now;
                        true
                    }
                    None => {
                        self.unparsed.push(now);
                        true
                    }
                };
            }
        };
        self.unparsed
            .retain(|u| !u.is(&record.namespace, &record.name));
        let hash = key_hash(&record.namespace, &record.name);
        match self.find_hashed(hash, &record.namespace, &record.name) {
            Some(at) if *self.list[at] == record => false,
            Some(at) => {
                self.list[at] = Arc::new(record);
                self.versions[at] = version;
                true
            }
            None => {
                let at = self.list.len();
                self.list.push(Arc::new(record));
                self.versions.push(version);
                let list = &self.list;
                self.places
                    .insert_unique(hash, at, |&i| key_hash(&list[i].namespace, &list[i].name));
                true
            }
        }
    }

    /// Removes a record; the last one takes its place.
    fn remove(&mut self, namespace: &str, name: &str) -> bool {
        let hash = key_hash(namespace, name);
        let Some(at) = self.find_hashed(hash, namespace, name) else {
            return false;
        };
        if let Ok(entry) = self.places.find_entry(hash, |&i| i == at) {
            entry.remove();
        }
        let last = self.list.len() - 1;
        if at != last {
            let moved = &self.list[last];
            let hash = key_hash(&moved.namespace, &moved.name);
            if let Some(place) = self.places.find_mut(hash, |&i| i == last) {
                *place = at;
            }
        }
        self.list.swap_remove(at);
        self.versions.swap_remove(at);
        true
    }

    /// The records and their versions, in place order.
    pub fn snapshot(&self) -> (Vec<Arc<RealServerRecord>>, Vec<u64>) {
        (self.list.clone(), self.versions.clone())
    }

    /// The RealServers that do not parse.
    pub fn unparsed(&self) -> &[Unparsed] {
        &self.unparsed
    }

    /// The uid of a RealServer, parsed or not.
    pub fn uid(&self, namespace: &str, name: &str) -> Option<String> {
        match self.find(namespace, name) {
            Some(at) => self.list[at].uid.as_deref().map(str::to_owned),
            None => self
                .unparsed
                .iter()
                .find(|u| u.is(namespace, name))?
                .uid
                .clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(name: &str, version: &str, weight: u32, status: bool) -> DeserializeGuard<RealServer> {
        let status = if status {
            "status: {observations: [{node: d1, healthy: true}]}\n"
        } else {
            ""
        };
        serde_yaml::from_str(&format!(
            "apiVersion: kubelvs.io/v1alpha1\nkind: RealServer\nmetadata: {{name: {name}, namespace: lab, uid: u-{name}, resourceVersion: '{version}', labels: {{app: web}}}}\nspec: {{address: 192.0.2.11, weight: {weight}}}\n{status}"
        ))
        .unwrap()
    }

    fn bad(name: &str) -> DeserializeGuard<RealServer> {
        serde_yaml::from_str(&format!(
            "apiVersion: kubelvs.io/v1alpha1\nkind: RealServer\nmetadata: {{name: {name}, namespace: lab, uid: u-{name}}}\nspec: {{address: 7}}\n"
        ))
        .unwrap()
    }

    fn names_in_order(r: &RealServerRecords) -> Vec<String> {
        r.snapshot().0.iter().map(|r| r.name.to_string()).collect()
    }

    fn listed(
        events: Vec<DeserializeGuard<RealServer>>,
    ) -> Vec<watcher::Event<DeserializeGuard<RealServer>>> {
        std::iter::once(watcher::Event::Init)
            .chain(events.into_iter().map(watcher::Event::InitApply))
            .chain([watcher::Event::InitDone])
            .collect()
    }

    #[test]
    fn a_modification_keeps_the_place_and_one_that_changes_nothing_read_keeps_the_version() {
        let mut r = RealServerRecords::default();
        for ev in listed(vec![
            rs("a", "1", 1, false),
            rs("b", "1", 1, false),
            rs("c", "1", 1, false),
        ]) {
            r.apply(ev);
        }
        assert!(r.listed());
        assert_eq!(names_in_order(&r), ["a", "b", "c"]);
        let (_, v0) = r.snapshot();
        assert!(r.apply(watcher::Event::Apply(rs("b", "2", 5, false))));
        let (list, v1) = r.snapshot();
        assert_eq!(names_in_order(&r), ["a", "b", "c"]);
        assert_eq!(list[1].spec.weight, 5);
        assert_ne!(v0[1], v1[1]);
        assert_eq!((v0[0], v0[2]), (v1[0], v1[2]));
        // A director's status entry: nothing the planner reads.
        assert!(!r.apply(watcher::Event::Apply(rs("b", "3", 5, true))));
        assert_eq!(r.snapshot().1, v1);
        assert_eq!(r.uid("lab", "b").as_deref(), Some("u-b"));
    }

    #[test]
    fn a_deletion_moves_the_last_into_the_place_and_finds_stay_right() {
        let mut r = RealServerRecords::default();
        for name in ["a", "b", "c", "d"] {
            assert!(r.apply(watcher::Event::Apply(rs(name, "1", 1, false))));
        }
        assert!(r.apply(watcher::Event::Delete(rs("b", "1", 1, false))));
        assert_eq!(names_in_order(&r), ["a", "d", "c"]);
        assert!(
            !r.apply(watcher::Event::Delete(rs("b", "1", 1, false))),
            "already gone"
        );
        // The moved one is found at its new place.
        assert!(r.apply(watcher::Event::Apply(rs("d", "2", 7, false))));
        assert_eq!(r.snapshot().0[1].spec.weight, 7);
        assert_eq!(names_in_order(&r), ["a", "d", "c"]);
        for name in ["a", "d", "c"] {
            assert!(r.apply(watcher::Event::Delete(rs(name, "1", 1, false))));
        }
        assert!(r.snapshot().0.is_empty());
    }

    #[test]
    fn an_object_that_does_not_parse_is_reported_until_it_is_fixed_or_deleted() {
        let mut r = RealServerRecords::default();
        r.apply(watcher::Event::Apply(rs("a", "1", 1, false)));
        assert!(r.apply(watcher::Event::Apply(bad("a"))));
        assert!(
            !r.apply(watcher::Event::Apply(bad("a"))),
            "the same error again wakes nothing"
        );
        assert!(r.snapshot().0.is_empty(), "the old form is not planned on");
        assert_eq!(r.unparsed().len(), 1);
        assert_eq!(r.unparsed()[0].name, "a");
        assert_eq!(r.uid("lab", "a").as_deref(), Some("u-a"), "Events name it");
        assert!(r.apply(watcher::Event::Apply(rs("a", "2", 1, false))));
        assert!(r.unparsed().is_empty());
        r.apply(watcher::Event::Apply(bad("b")));
        assert!(r.apply(watcher::Event::Delete(bad("b"))));
        assert!(r.unparsed().is_empty());
    }

    #[test]
    fn a_relist_keeps_places_removes_what_it_did_not_list_and_wakes_only_on_a_change() {
        let mut r = RealServerRecords::default();
        let first = listed(vec![
            rs("a", "1", 1, false),
            rs("b", "1", 1, false),
            rs("c", "1", 1, false),
        ]);
        let changed: Vec<bool> = first.into_iter().map(|ev| r.apply(ev)).collect();
        assert_eq!(
            changed,
            [false, false, false, false, true],
            "the first list lands at InitDone"
        );
        let same = listed(vec![
            rs("c", "1", 1, false),
            rs("a", "1", 1, false),
            rs("b", "1", 1, false),
        ]);
        let woke: Vec<bool> = same.into_iter().map(|ev| r.apply(ev)).collect();
        assert!(
            !woke.contains(&true),
            "a relist that changes nothing wakes nothing"
        );
        assert_eq!(names_in_order(&r), ["a", "b", "c"]);
        let fewer = listed(vec![
            rs("c", "1", 1, false),
            rs("a", "2", 4, false),
            bad("x"),
        ]);
        assert!(fewer.into_iter().map(|ev| r.apply(ev)).last().unwrap());
        assert_eq!(names_in_order(&r), ["a", "c"]);
        assert_eq!(r.snapshot().0[0].spec.weight, 4);
        assert_eq!(r.unparsed().len(), 1);
        let again = listed(vec![
            rs("c", "1", 1, false),
            rs("a", "2", 4, false),
            bad("x"),
        ]);
        let woke: Vec<bool> = again.into_iter().map(|ev| r.apply(ev)).collect();
        assert!(
            !woke.contains(&true),
            "an unchanged object that does not parse"
        );
    }
}
