//! Standalone mode's source of objects: a multi-document YAML file of kubelvs.io
//! VirtualServices, RealServers and AddressPools, checked with the same rules an API
//! server applies, and v1 Secrets (BGP passwords). A malformed object is rejected
//! alone; the others are used.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use kube::core::DeserializeGuard;
use kubelvs_crds::validate::Object;
use kubelvs_crds::{AddressPool, RealServerRecord, VirtualService};

/// An object as it is kept between reloads, by the parse cache or a watch's store
/// (which holds objects that did not parse too): shared, never copied, since at
/// 100,000 objects a copy per holder is hundreds of megabytes.
pub type Held<K> = Arc<DeserializeGuard<K>>;

/// The objects the planner takes (only those that parsed are ever put here).
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub virtual_services: Vec<Held<VirtualService>>,
    /// RealServers in their compact form: there are ten times as many as anything else.
    pub real_servers: Vec<Arc<RealServerRecord>>,
    pub address_pools: Vec<Held<AddressPool>>,
    /// In a cluster: the nodes' addresses and where RealServers may name them.
    pub node_real_servers: kubelvs_planner::NodeRealServers,
    /// In a cluster with Leases: the live directors, each VIP's announcer among them.
    pub announcers: Option<kubelvs_planner::announce::Announcers>,
    /// Secrets BGP passwords are read from: the agents' namespace's in a cluster, the
    /// file's standalone.
    pub secrets: crate::bgp::Secrets,
    /// Each object's version (its document's hash; in a cluster, of its
    /// resourceVersion), so the planner re-plans only what an edit changed.
    pub versions: Option<kubelvs_planner::Versions>,
}

fn parsed<K>(held: &[Held<K>]) -> impl Iterator<Item = &K> {
    held.iter().filter_map(|o| o.0.as_ref().ok())
}

impl Objects {
    pub fn planner(&self) -> kubelvs_planner::Objects<'_> {
        let objects = kubelvs_planner::Objects::of(
            parsed(&self.virtual_services),
            self.real_servers.iter().map(|r| &**r),
            parsed(&self.address_pools),
        )
        .with_node_real_servers(&self.node_real_servers);
        let objects = match &self.announcers {
            Some(a) => objects.with_announcers(a),
            None => objects,
        };
        // The planner uses them only where they match the lists, one per object.
        match &self.versions {
            Some(v) => objects.with_versions(v),
            None => objects,
        }
    }
}

/// A document or object that was not used, and why (naming the object and field); in
/// cluster mode, the object, for an Event on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected(pub String, pub Option<kubelvs_model::ObjectRef>);

/// Parses and validates every document of `text`.
pub fn parse(text: &str) -> (Objects, Vec<Rejected>) {
    Cache::default().parse(text)
}

/// What a parse gave: the rejected documents, or (`Err`) nothing passed, with what the
/// text gave (no object, maybe Secrets, the rejections).
type Outcome = Result<Vec<Rejected>, Box<(Objects, Vec<Rejected>)>>;

/// What one document gave: an object that passed validation, or why not.
type Parsed = Result<Shared, String>;

/// A validated object, shared between the cache and the [`Objects`] of a parse.
#[derive(Debug, Clone)]
enum Shared {
    VirtualService(Held<VirtualService>),
    RealServer(Arc<RealServerRecord>),
    AddressPool(Held<AddressPool>),
    /// A Secret (BGP passwords): its name and its keys' values.
    Secret(Arc<(String, std::collections::BTreeMap<String, String>)>),
}

/// A Secret's keys and their values as text (`data` decoded, `stringData` over it);
/// values that are not UTF-8 are left out.
pub fn secret_values(
    secret: &k8s_openapi::api::core::v1::Secret,
) -> std::collections::BTreeMap<String, String> {
    let mut out: std::collections::BTreeMap<String, String> = secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect();
    out.extend(secret.string_data.clone().unwrap_or_default());
    out
}

/// A `kind: Secret` document (apiVersion v1): only BGP passwords are read from one.
fn parse_secret(doc: &str) -> Option<Parsed> {
    let is_secret = doc.lines().any(|l| l.trim_end() == "kind: Secret")
        && doc.lines().any(|l| l.trim_end() == "apiVersion: v1");
    if !is_secret {
        return None;
    }
    Some(
        serde_yaml::from_str::<k8s_openapi::api::core::v1::Secret>(doc)
            .map_err(|e| format!("Secret: {e}"))
            .and_then(|s| {
                let name = s
                    .metadata
                    .name
                    .clone()
                    .ok_or("Secret: metadata.name is missing")?;
                Ok(Shared::Secret(Arc::new((name, secret_values(&s)))))
            }),
    )
}

/// [`parse`] that remembers each document's result by its text, so a reload after
/// an edit parses and validates only the documents that changed (validation is the
/// expensive part: a 100,000-object file takes tens of seconds in full), and, when
/// every document kept its place and kind, changes only their objects in what it
/// gave last time (at 100,000 objects even rebuilding the lists is tens of
/// milliseconds, as long as the rest of an edit's apply).
#[derive(Debug, Default)]
pub struct Cache {
    /// Every document of the last parse, in file order, with what it gave.
    docs: Vec<(DocKey, Parsed)>,
    /// Where the lists it last gave are (address and length of each), so that only
    /// those are changed in place.
    given: Option<[(usize, usize); 3]>,
}

impl Objects {
    fn lists(&self) -> [(usize, usize); 3] {
        [
            (
                self.virtual_services.as_ptr() as usize,
                self.virtual_services.len(),
            ),
            (self.real_servers.as_ptr() as usize, self.real_servers.len()),
            (
                self.address_pools.as_ptr() as usize,
                self.address_pools.len(),
            ),
        ]
    }
}

/// A document's identity: two independent 64-bit hashes of its text. Keeping the
/// text itself cost as much memory as the file (18 MB at 100,000 objects); two
/// documents that differ but agree on both are a chance of about one in 2^128 per
/// pair. foldhash: the file is hashed whole at every reload, and SipHash took 20 ms
/// of it at 18 MB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct DocKey(u64, u64);

impl DocKey {
    fn of(doc: &str) -> Self {
        use std::hash::BuildHasher;
        let hash = |seed: u64| foldhash::quality::FixedState::with_seed(seed).hash_one(doc);
        Self(hash(0x6b75_6265_6c76_7301), hash(0x6b75_6265_6c76_7302))
    }
}

/// Calls `each` with every document of the YAML stream `input`, split at `---`
/// lines; documents of nothing but blank lines and comments are left out. Reads in
/// chunks: a large file is never held whole (at 100,000 objects, 18 MB of fresh
/// memory at every reload cost more in page faults than the reading itself).
fn each_document(mut input: impl std::io::Read, mut each: impl FnMut(&str)) -> std::io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let mut emit = |doc: &[u8]| -> std::io::Result<()> {
        let doc = std::str::from_utf8(doc)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if doc
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        {
            each(doc);
        }
        Ok(())
    };
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
    loop {
        // The current document starts at 0: read more after what it has so far.
        if buf.capacity() - buf.len() < CHUNK / 2 {
            buf.reserve(CHUNK);
        }
        let len = buf.len();
        buf.resize(buf.capacity(), 0);
        let n = loop {
            match input.read(&mut buf[len..]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                read => break read?,
            }
        };
        buf.truncate(len + n);
        let end_of_input = n == 0;
        let mut start = 0;
        let separators =
            memchr::memmem::find_iter(&buf, b"---").filter(|&at| at == 0 || buf[at - 1] == b'\n');
        for at in separators {
            if at < start {
                continue;
            }
            // The line must be whole to tell `---x` from `---`.
            let line_end = match memchr::memchr(b'\n', &buf[at..]) {
                Some(e) => at + e,
                None if end_of_input => buf.len(),
                None => break,
            };
            let line = String::from_utf8_lossy(&buf[at..line_end]);
            let line = line.trim_end();
            if line == "---" || line.starts_with("--- ") {
                emit(&buf[start..at])?;
                start = (line_end + 1).min(buf.len());
            }
        }
        if end_of_input {
            return emit(&buf[start..]);
        }
        buf.drain(..start);
    }
}

/// The documents of `text` (see [`each_document`]).
#[cfg(test)]
fn documents(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    each_document(text.as_bytes(), |d| out.push(d.to_owned())).expect("text is UTF-8");
    out
}

/// Which list of [`Objects`] a document's result goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    VirtualService,
    RealServer,
    AddressPool,
    Secret,
    Rejected,
}

fn kind(parsed: &Parsed) -> Kind {
    match parsed {
        Ok(Shared::VirtualService(_)) => Kind::VirtualService,
        Ok(Shared::RealServer(_)) => Kind::RealServer,
        Ok(Shared::AddressPool(_)) => Kind::AddressPool,
        Ok(Shared::Secret(_)) => Kind::Secret,
        Err(_) => Kind::Rejected,
    }
}

fn parse_one(doc: &str) -> Parsed {
    if let Some(secret) = parse_secret(doc) {
        return secret;
    }
    let mut parsed = Object::from_yaml_documents(doc);
    let obj = match parsed.pop() {
        Some(Ok(o)) if parsed.is_empty() => o,
        Some(Err(e)) => return Err(e.to_string()),
        _ => return Err("not one YAML document".into()),
    };
    obj.validate().map_err(|e| e.to_string())?;
    Ok(match obj {
        Object::VirtualService(o) => Shared::VirtualService(Arc::new(DeserializeGuard(Ok(o)))),
        Object::RealServer(o) => Shared::RealServer(Arc::new(o.into())),
        Object::AddressPool(o) => Shared::AddressPool(Arc::new(DeserializeGuard(Ok(o)))),
    })
}

impl Cache {
    pub fn parse(&mut self, text: &str) -> (Objects, Vec<Rejected>) {
        let mut objects = Objects::default();
        match self.parse_onto(text.as_bytes(), &mut objects) {
            Ok(Ok(rejected)) => (objects, rejected),
            Ok(Err(nothing)) => *nothing,
            Err(e) => (Objects::default(), vec![Rejected(e.to_string(), None)]),
        }
    }

    /// Parses `text` and makes `objects` (what this cache gave last time, or anything
    /// else) what it holds. `Err`: no object passed, and `objects` is left as it was
    /// (the error holds what the text gave).
    fn parse_onto(
        &mut self,
        input: impl std::io::Read,
        objects: &mut Objects,
    ) -> std::io::Result<Outcome> {
        // Each document's key; the text only of those not where they were.
        let mut keys: Vec<DocKey> = Vec::with_capacity(self.docs.len());
        let mut texts: HashMap<usize, String> = HashMap::new();
        each_document(input, |doc| {
            let key = DocKey::of(doc);
            let i = keys.len();
            if self.docs.get(i).is_none_or(|(was, _)| *was != key) {
                texts.insert(i, doc.to_owned());
            }
            keys.push(key);
        })?;
        Ok(self.update(&keys, &texts, objects))
    }

    /// [`Cache::parse_onto`] once the documents are read: `keys` of all, `texts` of
    /// those not where they were last time.
    fn update(
        &mut self,
        keys: &[DocKey],
        texts: &HashMap<usize, String>,
        objects: &mut Objects,
    ) -> Outcome {
        let mut fresh: HashMap<DocKey, Parsed> = HashMap::new();
        if keys.len() == self.docs.len() && self.given == Some(objects.lists()) {
            let changed: Vec<usize> = (0..keys.len())
                .filter(|&i| keys[i] != self.docs[i].0)
                .collect();
            for &i in &changed {
                fresh
                    .entry(keys[i])
                    .or_insert_with(|| parse_one(&texts[&i]));
            }
            if objects.any() && self.patch(objects, &changed, keys, &fresh) {
                return Ok(self.rejected());
            }
        }
        // Documents moved, came or went: match them by their text.
        let mut old: HashMap<DocKey, Parsed> = std::mem::take(&mut self.docs).into_iter().collect();
        self.docs = keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let parsed = match old.get(key).or_else(|| fresh.get(key)) {
                    Some(kept) => kept.clone(),
                    None => {
                        // Not where it was, so its text was kept.
                        let p = parse_one(&texts[&i]);
                        fresh.insert(*key, p.clone());
                        p
                    }
                };
                (*key, parsed)
            })
            .collect();
        old.clear();
        let mut built = Objects::default();
        let mut versions = kubelvs_planner::Versions::default();
        for (key, parsed) in &self.docs {
            match parsed {
                Ok(Shared::VirtualService(o)) => {
                    built.virtual_services.push(o.clone());
                    versions.virtual_services.push(key.0);
                }
                Ok(Shared::RealServer(o)) => {
                    built.real_servers.push(o.clone());
                    versions.real_servers.push(key.0);
                }
                Ok(Shared::AddressPool(o)) => {
                    built.address_pools.push(o.clone());
                    versions.address_pools.push(key.0);
                }
                Ok(Shared::Secret(secret)) => {
                    built.secrets.insert(secret.0.clone(), secret.1.clone());
                }
                Err(_) => {}
            }
        }
        // Kept until the next reload: no room for more.
        for list in [
            &mut versions.virtual_services,
            &mut versions.real_servers,
            &mut versions.address_pools,
        ] {
            list.shrink_to_fit();
        }
        built.virtual_services.shrink_to_fit();
        built.real_servers.shrink_to_fit();
        built.address_pools.shrink_to_fit();
        built.versions = Some(versions);
        let rejected = self.rejected();
        if !built.any() {
            return Err(Box::new((built, rejected)));
        }
        *objects = built;
        self.given = Some(objects.lists());
        Ok(rejected)
    }

    /// Puts the new results of the `changed` documents (by position) in place in
    /// `objects`, if each kept its kind (not a Secret) and `objects` is what this
    /// cache gave last time; says whether it did.
    fn patch(
        &mut self,
        objects: &mut Objects,
        changed: &[usize],
        keys: &[DocKey],
        fresh: &HashMap<DocKey, Parsed>,
    ) -> bool {
        let same_kinds = changed.iter().all(|&i| {
            let was = kind(&self.docs[i].1);
            was == kind(&fresh[&keys[i]]) && was != Kind::Secret
        });
        if !same_kinds {
            return false;
        }
        // Each changed document's place in its list: the documents of its kind before it.
        let mut places = Vec::with_capacity(changed.len());
        let mut before = [0usize; 5];
        let mut next = changed.iter().peekable();
        for (i, (_, parsed)) in self.docs.iter().enumerate() {
            let k = kind(parsed);
            if next.peek() == Some(&&i) {
                places.push(before[k as usize]);
                next.next();
            }
            before[k as usize] += 1;
        }
        let lists = objects.lists().map(|(_, len)| len);
        let versioned = objects.versions.as_ref().map(|v| {
            [
                v.virtual_services.len(),
                v.real_servers.len(),
                v.address_pools.len(),
            ]
        });
        if lists != [before[0], before[1], before[2]] || versioned != Some(lists) {
            return false;
        }
        fn holds<K>(list: &[Arc<K>], at: usize, was: &Arc<K>) -> bool {
            list.get(at).is_some_and(|o| Arc::ptr_eq(o, was))
        }
        // Every slot first (all or nothing), then the writes.
        for (&i, &at) in changed.iter().zip(&places) {
            let ours = match &self.docs[i].1 {
                Ok(Shared::VirtualService(was)) => holds(&objects.virtual_services, at, was),
                Ok(Shared::RealServer(was)) => holds(&objects.real_servers, at, was),
                Ok(Shared::AddressPool(was)) => holds(&objects.address_pools, at, was),
                Ok(Shared::Secret(_)) => false,
                Err(_) => true,
            };
            if !ours {
                return false;
            }
        }
        let Some(versions) = objects.versions.as_mut() else {
            return false;
        };
        for (&i, &at) in changed.iter().zip(&places) {
            let now = fresh[&keys[i]].clone();
            let version = keys[i].0;
            match &now {
                Ok(Shared::VirtualService(o)) => {
                    objects.virtual_services[at] = o.clone();
                    versions.virtual_services[at] = version;
                }
                Ok(Shared::RealServer(o)) => {
                    objects.real_servers[at] = o.clone();
                    versions.real_servers[at] = version;
                }
                Ok(Shared::AddressPool(o)) => {
                    objects.address_pools[at] = o.clone();
                    versions.address_pools[at] = version;
                }
                Ok(Shared::Secret(_)) | Err(_) => {}
            }
            self.docs[i] = (keys[i], now);
        }
        true
    }

    /// The rejected documents of the last parse, numbered from 1.
    fn rejected(&self) -> Vec<Rejected> {
        self.docs
            .iter()
            .enumerate()
            .filter_map(|(i, (_, parsed))| {
                let e = parsed.as_ref().err()?;
                Some(Rejected(
                    format!(
                        "document {}: {}",
                        i + 1,
                        e.trim_start_matches("document 1: ")
                    ),
                    None,
                ))
            })
            .collect()
    }

    /// Reads the file at `path` and makes `objects` what it holds, refusing a file
    /// with nothing to apply (see [`LoadError::Nothing`]; `objects` is then left as
    /// it was).
    pub fn load(&mut self, path: &Path, objects: &mut Objects) -> Result<Vec<Rejected>, LoadError> {
        let file = std::fs::File::open(path).map_err(LoadError::Read)?;
        match self.parse_onto(file, objects).map_err(LoadError::Read)? {
            Ok(rejected) => Ok(rejected),
            // Read again for this: it is rare, and the file is small.
            Err(_) if std::fs::read_to_string(path).is_ok_and(|t| is_deliberately_empty(&t)) => {
                *objects = Objects::default();
                self.given = None;
                Ok(Vec::new())
            }
            Err(nothing) => Err(LoadError::Nothing {
                first_rejected: nothing.1.into_iter().next().map(|r| r.0),
            }),
        }
    }
}

/// Why a configuration file was not applied. The agent keeps programming what it had.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    /// No object passed: an empty file (truncated by `>` before a rewrite), or a file
    /// cut short in its first object. Applying it would remove every VIP, so it takes
    /// a deliberate file to do that.
    #[error(
        "no object to apply{}; keeping the current plan (to remove everything on purpose, \
         the file must be an empty List: `apiVersion: v1`, `kind: List`, `items: []`)",
        first_rejected.as_ref().map_or(String::new(), |r| format!(" ({r})"))
    )]
    Nothing { first_rejected: Option<String> },
}

impl Objects {
    /// Whether any object passed validation.
    pub fn any(&self) -> bool {
        !(self.virtual_services.is_empty()
            && self.real_servers.is_empty()
            && self.address_pools.is_empty())
    }
}

/// Whether `text` is exactly one document, a Kubernetes `List` (`apiVersion: v1`) with
/// no items: what `kubectl get ... -o yaml` prints for nothing, and the one way to ask
/// for an empty configuration.
fn is_deliberately_empty(text: &str) -> bool {
    let mut docs = Vec::new();
    if each_document(text.as_bytes(), |d| docs.push(d.to_owned())).is_err() {
        return false;
    }
    let [doc] = &docs[..] else {
        return false;
    };
    let Ok(serde_yaml::Value::Mapping(m)) = serde_yaml::from_str::<serde_yaml::Value>(doc) else {
        return false;
    };
    let field = |k: &str| m.get(k);
    let empty_items = match field("items") {
        Some(serde_yaml::Value::Sequence(items)) => items.is_empty(),
        Some(serde_yaml::Value::Null) | None => true,
        _ => false,
    };
    field("apiVersion").and_then(|v| v.as_str()) == Some("v1")
        && field("kind").and_then(|v| v.as_str()) == Some("List")
        && empty_items
        && m.keys().all(|k| {
            matches!(
                k.as_str(),
                Some("apiVersion" | "kind" | "items" | "metadata")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_object_is_rejected_alone_naming_its_field() {
        let text = r#"
apiVersion: kubelvs.io/v1alpha1
kind: RealServer
metadata: {name: good, namespace: lab}
spec: {address: 192.0.2.11}
---
apiVersion: kubelvs.io/v1alpha1
kind: RealServer
metadata: {name: bad, namespace: lab}
spec: {address: not-an-address}
---
apiVersion: kubelvs.io/v1alpha1
kind: RealServer
metadata: {name: typo, namespace: lab}
spec: {address: 192.0.2.12, wieght: 3}
---
apiVersion: kubelvs.io/v1alpha1
kind: RealServer
metadata: {name: spaced, namespace: lab, labels: {app: "web shop"}}
spec: {address: 192.0.2.13}
"#;
        let (objects, rejected) = parse(text);
        assert_eq!(objects.real_servers.len(), 1);
        assert!(rejected[0].0.starts_with("document 2:"), "{rejected:?}");
        assert_eq!(rejected.len(), 3, "{rejected:?}");
        assert!(rejected[0].0.contains("spec.address"), "{rejected:?}");
        assert!(rejected[1].0.contains("wieght"), "{rejected:?}");
        assert!(
            rejected[2]
                .0
                .contains("metadata.labels.app: value \"web shop\""),
            "{rejected:?}"
        );
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    const RS: &str = "apiVersion: kubelvs.io/v1alpha1\nkind: RealServer\nmetadata: {name: NAME, namespace: lab}\nspec: {address: ADDR}\n";

    fn rs(name: &str, addr: &str) -> String {
        RS.replace("NAME", name).replace("ADDR", addr)
    }

    #[test]
    fn a_reload_reuses_unchanged_documents_and_sees_changed_ones() {
        let mut c = Cache::default();
        let text = format!("{}---\n{}", rs("a", "192.0.2.1"), rs("b", "192.0.2.2"));
        let (o, r) = c.parse(&text);
        assert_eq!((o.real_servers.len(), r.len()), (2, 0));
        let edited = format!("{}---\n{}", rs("a", "192.0.2.1"), rs("b", "bad"));
        let (o, r) = c.parse(&edited);
        assert_eq!(o.real_servers.len(), 1);
        assert!(
            r[0].0.starts_with("document 2:") && r[0].0.contains("spec.address"),
            "{r:?}"
        );
        assert_eq!(c.docs.len(), 2, "only the current documents are kept");
        // Same result as a parse from scratch.
        let (o2, r2) = parse(&edited);
        assert_eq!((o2.real_servers.len(), r2), (1, r));
    }

    /// What a parse gave, as comparable text: each list's names and addresses, the
    /// rejections.
    fn summary(o: &Objects, r: &[Rejected]) -> String {
        let rs: Vec<String> = o
            .real_servers
            .iter()
            .map(|rs| format!("{}={}", rs.name, rs.spec.address))
            .collect();
        let vs = parsed(&o.virtual_services).count();
        format!("vs {vs} rs {rs:?} secrets {:?} rejected {r:?}", o.secrets)
    }

    #[test]
    fn an_edit_in_place_changes_only_its_object_and_gives_what_a_fresh_parse_gives() {
        let docs = |addrs: &[&str]| -> String {
            addrs
                .iter()
                .enumerate()
                .map(|(i, a)| rs(&format!("rs{i}"), a))
                .collect::<Vec<_>>()
                .join("---\n")
        };
        let mut c = Cache::default();
        let mut o = Objects::default();
        let start = docs(&["192.0.2.1", "192.0.2.2", "bad", "192.0.2.4"]);
        let r = c.parse_onto(start.as_bytes(), &mut o).unwrap().unwrap();
        assert_eq!(summary(&o, &r), {
            let (f, fr) = parse(&start);
            summary(&f, &fr)
        });
        let before = o.real_servers.clone();
        let steps = [
            // In place: one address, then a rejected document fixed and another broken
            // (same places, same kinds: rejected stays rejected).
            (docs(&["192.0.2.1", "192.0.2.9", "bad", "192.0.2.4"]), true),
            (
                docs(&["192.0.2.1", "192.0.2.9", "worse", "192.0.2.4"]),
                true,
            ),
            // Kind changes, documents added and removed: rebuilt.
            (docs(&["192.0.2.1", "bad", "worse", "192.0.2.4"]), false),
            (
                docs(&["192.0.2.1", "bad", "192.0.2.3", "192.0.2.4", "192.0.2.5"]),
                false,
            ),
            (docs(&["192.0.2.5", "192.0.2.1"]), false),
            // The same document twice (parsed once), then one of them edited.
            (
                format!(
                    "{}---\n{}---\n{}",
                    rs("x", "192.0.2.1"),
                    rs("x", "192.0.2.1"),
                    rs("y", "bad")
                ),
                false,
            ),
            (
                format!(
                    "{}---\n{}---\n{}",
                    rs("x", "192.0.2.1"),
                    rs("x", "192.0.2.7"),
                    rs("y", "bad")
                ),
                true,
            ),
        ];
        for (i, (text, in_place)) in steps.iter().enumerate() {
            let lists = o.lists();
            let r = c.parse_onto(text.as_bytes(), &mut o).unwrap().unwrap();
            let (f, fr) = parse(text);
            assert_eq!(summary(&o, &r), summary(&f, &fr), "step {i}");
            assert_eq!(o.lists() == lists, *in_place, "step {i}");
            if i == 0 {
                // The untouched objects are the same ones, not copies.
                for j in [0, 2] {
                    assert!(Arc::ptr_eq(&o.real_servers[j], &before[j]), "{j}");
                }
                assert!(!Arc::ptr_eq(&o.real_servers[1], &before[1]));
            }
        }
        // Objects it did not give are rebuilt, not patched.
        let mut other = parse(&steps[0].0).0;
        let lists = other.lists();
        let r = c
            .parse_onto(steps[6].0.as_bytes(), &mut other)
            .unwrap()
            .unwrap();
        let (f, fr) = parse(&steps[6].0);
        assert_eq!(summary(&other, &r), summary(&f, &fr));
        assert_ne!(other.lists(), lists);
    }

    fn load(text: &str) -> Result<(Objects, Vec<Rejected>), LoadError> {
        let dir = std::env::temp_dir().join(format!("kubelvs-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!(
            "{:x}.yaml",
            text.len() * 31 + text.bytes().map(usize::from).sum::<usize>()
        ));
        std::fs::write(&file, text).unwrap();
        let mut objects = Objects::default();
        let r = Cache::default().load(&file, &mut objects);
        let _ = std::fs::remove_file(&file);
        r.map(|r| (objects, r))
    }

    #[test]
    fn a_file_with_nothing_to_apply_is_refused_naming_the_way_to_empty_it() {
        for text in ["", "\n\n", "# generated\n---\n", "---\n---\n"] {
            let e = load(text).unwrap_err();
            assert!(
                matches!(
                    e,
                    LoadError::Nothing {
                        first_rejected: None
                    }
                ),
                "{text:?}: {e}"
            );
            assert!(e.to_string().contains("kind: List"), "{e}");
        }
        // Cut short inside its first object: refused, saying what was wrong.
        let cut = &rs("a", "192.0.2.1")[..60];
        let e = load(cut).unwrap_err();
        assert!(e.to_string().contains("document 1"), "{e}");
        // Missing file: a read error, not "nothing".
        let e = Cache::default()
            .load(
                Path::new("/nonexistent/kubelvs.yaml"),
                &mut Objects::default(),
            )
            .unwrap_err();
        assert!(matches!(e, LoadError::Read(_)), "{e}");
    }

    #[test]
    fn an_empty_list_is_the_deliberate_empty_configuration() {
        for text in [
            "apiVersion: v1\nkind: List\nitems: []\n",
            "# nothing on purpose\n---\napiVersion: v1\nkind: List\nmetadata: {}\nitems:\n",
            "{apiVersion: v1, kind: List}\n",
        ] {
            let (o, r) = load(text).unwrap();
            assert!(!o.any() && r.is_empty(), "{text:?}");
        }
        // A List with items, of another version, or next to other documents is not.
        for text in [
            "apiVersion: v1\nkind: List\nitems: [{a: 1}]\n",
            "apiVersion: v2\nkind: List\nitems: []\n",
            "apiVersion: v1\nkind: List\nitems: []\nspec: {}\n",
        ] {
            assert!(!is_deliberately_empty(text), "{text:?}");
            assert!(load(text).is_err(), "{text:?}");
        }
        let with_object = format!(
            "apiVersion: v1\nkind: List\nitems: []\n---\n{}",
            rs("a", "192.0.2.1")
        );
        assert!(!is_deliberately_empty(&with_object));
        let (o, r) = load(&with_object).unwrap();
        assert_eq!((o.real_servers.len(), r.len()), (1, 1), "{r:?}");
    }

    #[test]
    fn documents_split_at_separator_lines_only() {
        let text = "# header\n---\na: 1\n---\n--- \nb: '---'\n";
        assert_eq!(documents(text), vec!["a: 1\n", "b: '---'\n"]);
    }

    /// Hands out `n` bytes per read.
    struct Trickle<'a>(&'a [u8], usize);

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(out.len()).min(self.0.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn documents_read_in_pieces_are_the_documents_of_the_whole() {
        let text =
            "---\na: 1\n---\r\n# only a comment\n---\nb: '---x'\n----\n---  # trailing\nc: é\n---";
        let whole = documents(text);
        assert_eq!(whole, vec!["a: 1\n", "b: '---x'\n----\n", "c: é\n"]);
        for n in [1, 2, 3, 5, 7, 64] {
            let mut pieces = Vec::new();
            each_document(Trickle(text.as_bytes(), n), |d| pieces.push(d.to_owned())).unwrap();
            assert_eq!(pieces, whole, "{n} bytes per read");
        }
        // A document over several chunks.
        let big = format!("a: '{}'\n---\nb: 2\n", "x".repeat(3 << 20));
        assert_eq!(documents(&big).len(), 2);
        // Not UTF-8: an error, as reading the file as text was.
        let e = each_document(&b"a: \xff\n"[..], |_| {}).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    #[test]
    fn a_secret_in_the_file_gives_its_keys_from_data_and_string_data() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: bgp}\ndata: {tor1: czNjcmV0}\nstringData: {tor2: plain}\n";
        let (o, r) = parse(text);
        assert!(r.is_empty(), "{r:?}");
        assert_eq!(o.secrets["bgp"]["tor1"], "s3cret");
        assert_eq!(o.secrets["bgp"]["tor2"], "plain");
        let (_, r) = parse("apiVersion: v1\nkind: Secret\nmetadata: {}\n");
        assert!(r[0].0.contains("metadata.name"), "{r:?}");
    }
}
