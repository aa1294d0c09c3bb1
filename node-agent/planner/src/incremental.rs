//! [`Planner`]: [`plan_node`](crate::plan_node) kept between plans, so that an edit of
//! a few objects re-plans only the VirtualServices they touch. At 10,000
//! VirtualServices x 10 RealServers a full plan takes about 100 ms; most edits
//! change one object.
//!
//! The VirtualServices' VIPs and the ports' conflicts (the claims) depend on the
//! VirtualServices alone: they are decided over all of them again whenever one
//! changed, and kept otherwise (resolving touches every VirtualService, 12 ms at
//! 10,000 in a cluster). What is kept, per VirtualService, is what its own planning
//! gave: its services, the real-server VIPs and problems it found, and the
//! RealServers its selector picked. That is reused when none of its inputs changed:
//! the VirtualService itself, the ports it won, the RealServers it picked, the
//! RealServers that now match it (found through an index of selectors, not by
//! matching every VirtualService), this node, the address pools and the node-address
//! policy. Change is seen through [`Versions`]: without them every plan is a full one.

use std::collections::HashSet;

use kubelvs_crds::selector::{matches, select_among, RealServerIndex};
use kubelvs_model::{NodePlan, ServiceKey};

use crate::{
    claims, finish, plan_virtual_service, Claims, NodeIdentity, NodeRealServers, Objects,
    VirtualServicePlan,
};

/// Each object's version, parallel to the lists of [`Objects`]: a number that changes
/// whenever the object does (a hash of its text, say). Two objects at the same place
/// with the same version must be the same.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Versions {
    pub virtual_services: Vec<u64>,
    pub real_servers: Vec<u64>,
    pub address_pools: Vec<u64>,
}

/// Whether `v` has one version per object of `objects` (a plan is kept only then).
fn fits(v: &Versions, objects: &Objects<'_>) -> bool {
    v.virtual_services.len() == objects.virtual_services.len()
        && v.real_servers.len() == objects.real_servers.len()
        && v.address_pools.len() == objects.address_pools.len()
}

/// More changed RealServers than this and the plan is made whole: checking each one
/// against every VirtualService costs more than the index.
const MOST_CHANGED: usize = 256;

/// [`plan_node`](crate::plan_node) that keeps what it planned, to re-plan only what
/// changed next time. The plan it gives is always the one `plan_node` gives for the
/// same inputs.
#[derive(Debug, Default)]
pub struct Planner {
    plan: NodePlan,
    memo: Option<Memo>,
}

/// What the last plan was made from, and what each VirtualService gave.
#[derive(Debug)]
struct Memo {
    node: NodeIdentity,
    node_real_servers: Option<NodeRealServers>,
    versions: Versions,
    /// Depend on the VirtualServices alone: kept while none changed.
    claims: Claims,
    /// By position in the VirtualServices: what one with ports of its own gave.
    parts: Vec<Option<Part>>,
    selectors: SelectorIndex,
}

#[derive(Debug)]
struct Part {
    winning_ports: Vec<(usize, ServiceKey)>,
    /// Its services are in the plan: their keys here.
    keys: Vec<ServiceKey>,
    plan: VirtualServicePlan,
}

/// The VirtualServices a RealServer may match, found from its namespace and labels
/// without looking at every VirtualService: each is filed under one label its
/// selector requires (any one: a RealServer without it cannot match), or under its
/// namespace when it requires none. Keys are hashes; a collision only adds a
/// candidate, which is then matched for real.
#[derive(Debug, Default)]
struct SelectorIndex {
    filed: foldhash::HashMap<u64, Vec<u32>>,
    /// Each VirtualService's key in `filed`.
    key_of: Vec<Option<u64>>,
}

fn namespace_key(namespace: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x6b75_6265_6c76_7305).hash_one(namespace)
}

fn label_key(namespace: &str, key: &str, value: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x6b75_6265_6c76_7306).hash_one((namespace, key, value))
}

impl SelectorIndex {
    fn new(objects: &Objects<'_>) -> Self {
        let mut index = Self {
            filed: Default::default(),
            key_of: vec![None; objects.virtual_services.len()],
        };
        for at in 0..objects.virtual_services.len() {
            index.file(objects, at);
        }
        index
    }

    /// Files (again) the VirtualService at `at`.
    fn file(&mut self, objects: &Objects<'_>, at: usize) {
        if let Some(old) = self.key_of[at].take() {
            if let Some(list) = self.filed.get_mut(&old) {
                list.retain(|&i| i as usize != at);
            }
        }
        let vs = objects.virtual_services[at];
        let namespace = vs.metadata.namespace.as_deref().unwrap_or_default();
        let key = match vs
            .spec
            .real_server_selector
            .match_labels
            .iter()
            .flatten()
            .next()
        {
            Some((k, v)) => label_key(namespace, k, v),
            None => namespace_key(namespace),
        };
        self.filed.entry(key).or_default().push(at as u32);
        self.key_of[at] = Some(key);
    }

    /// The VirtualServices (positions) that select the RealServer at `rs`.
    fn selecting(&self, objects: &Objects<'_>, rs: u32, out: &mut HashSet<usize>) {
        use kubelvs_crds::selector::Labels;
        let rs = objects.real_servers[rs as usize];
        let keys = std::iter::once(namespace_key(&rs.namespace)).chain(
            rs.labels
                .pairs()
                .map(|(k, v)| label_key(&rs.namespace, k, v)),
        );
        for key in keys {
            for &at in self.filed.get(&key).into_iter().flatten() {
                let vs = objects.virtual_services[at as usize];
                if vs.metadata.namespace.as_deref().unwrap_or_default() == &*rs.namespace
                    && matches(&vs.spec.real_server_selector, &rs.labels).unwrap_or(false)
                {
                    out.insert(at as usize);
                }
            }
        }
    }
}

impl Planner {
    /// The last plan made.
    pub fn current(&self) -> &NodePlan {
        &self.plan
    }

    pub fn into_plan(self) -> NodePlan {
        self.plan
    }

    /// Plans `node` from `objects`, re-planning only what changed since the last plan
    /// when `objects` carries [`Versions`].
    pub fn plan(&mut self, node: &NodeIdentity, objects: Objects<'_>) -> &NodePlan {
        let kept = self
            .memo
            .as_mut()
            .filter(|m| {
                m.node.vip_source == node.vip_source
                    && objects.versions.is_some_and(|v| {
                        fits(v, &objects) && v.virtual_services == m.versions.virtual_services
                    })
            })
            .map(|m| std::mem::take(&mut m.claims));
        let claims = kept.unwrap_or_else(|| claims(node, &objects));
        match self.changed_real_servers(node, &objects) {
            Some(changed) => self.update(node, &objects, claims, &changed),
            None => self.full(node, &objects, claims),
        }
        &self.plan
    }

    /// The RealServers (positions) whose version changed, when the last plan can be
    /// built on: same node, same policy, same places for every object.
    fn changed_real_servers(&self, node: &NodeIdentity, objects: &Objects<'_>) -> Option<Vec<u32>> {
        let memo = self.memo.as_ref()?;
        let v = objects.versions?;
        let same_places = fits(v, objects)
            && v.virtual_services.len() == memo.versions.virtual_services.len()
            && v.real_servers.len() == memo.versions.real_servers.len()
            && v.address_pools == memo.versions.address_pools;
        if !same_places
            || memo.node != *node
            || memo.node_real_servers.as_ref() != objects.node_real_servers
        {
            return None;
        }
        let changed: Vec<u32> = v
            .real_servers
            .iter()
            .zip(&memo.versions.real_servers)
            .enumerate()
            .filter(|(_, (now, was))| now != was)
            .map(|(at, _)| at as u32)
            .collect();
        (changed.len() <= MOST_CHANGED).then_some(changed)
    }

    fn full(&mut self, node: &NodeIdentity, objects: &Objects<'_>, claims: Claims) {
        let index = RealServerIndex::new(objects.real_servers.iter().copied());
        let mut parts: Vec<Option<Part>> = Vec::new();
        parts.resize_with(objects.virtual_services.len(), || None);
        let mut services = Vec::new();
        for c in &claims.resolved {
            if c.won.is_empty() {
                continue;
            }
            let vs = objects.virtual_services[c.at];
            let namespace = vs.metadata.namespace.as_deref().unwrap_or_default();
            let selected = index.select_positions(namespace, &vs.spec.real_server_selector);
            let mut plan = plan_virtual_service(node, objects, c, selected);
            let keys = plan.services.iter().map(|s| s.key).collect();
            // Taken, not appended from: the part is kept, and an emptied vector keeps
            // its capacity (four services' worth per VirtualService).
            services.append(&mut std::mem::take(&mut plan.services));
            parts[c.at] = Some(Part {
                winning_ports: c.won.clone(),
                keys,
                plan,
            });
        }
        services.sort_by_key(|s| s.key);
        services.shrink_to_fit();
        let all: Vec<&VirtualServicePlan> = parts.iter().flatten().map(|p| &p.plan).collect();
        self.plan = finish(node, objects, &claims, services, &all);
        self.memo = objects.versions.filter(|v| fits(v, objects)).map(|v| Memo {
            node: node.clone(),
            node_real_servers: objects.node_real_servers.cloned(),
            versions: v.clone(),
            claims,
            parts,
            selectors: SelectorIndex::new(objects),
        });
    }

    /// Re-plans the VirtualServices whose inputs changed; `changed`: the RealServers
    /// whose version changed, ascending.
    fn update(
        &mut self,
        node: &NodeIdentity,
        objects: &Objects<'_>,
        claims: Claims,
        changed: &[u32],
    ) {
        let memo = self.memo.as_mut().expect("checked by changed_real_servers");
        let v = objects.versions.expect("checked by changed_real_servers");
        // By position: the VirtualService's entry in `claims.resolved`, if it won ports.
        let mut won_by: Vec<Option<usize>> = vec![None; objects.virtual_services.len()];
        for (i, c) in claims.resolved.iter().enumerate() {
            if !c.won.is_empty() {
                won_by[c.at] = Some(i);
            }
        }
        // VirtualServices whose selector is changed are re-planned whatever they
        // select; file them under their selector as it is now.
        for at in 0..objects.virtual_services.len() {
            if v.virtual_services[at] != memo.versions.virtual_services[at] {
                memo.selectors.file(objects, at);
            }
        }
        // The VirtualServices a changed RealServer now matches.
        let mut selecting = HashSet::new();
        for &c in changed {
            memo.selectors.selecting(objects, c, &mut selecting);
        }
        let mut index: Option<RealServerIndex<'_, kubelvs_crds::RealServerRecord>> = None;
        let mut removed: HashSet<ServiceKey> = HashSet::new();
        let mut added = Vec::new();
        for (at, won) in won_by.iter().enumerate() {
            let now = won.map(|i| &claims.resolved[i]);
            let was = memo.parts[at].as_ref();
            let vs_changed = v.virtual_services[at] != memo.versions.virtual_services[at];
            let clean = match (now, was) {
                (None, None) => true,
                (Some(c), Some(part)) => {
                    !vs_changed
                        && part.winning_ports == c.won
                        && !part
                            .plan
                            .selected
                            .iter()
                            .any(|at| changed.binary_search(at).is_ok())
                        && !selecting.contains(&at)
                }
                _ => false,
            };
            if clean {
                continue;
            }
            let was = memo.parts[at].take();
            if let Some(part) = &was {
                removed.extend(part.keys.iter().copied());
            }
            let Some(c) = now else {
                continue;
            };
            let vs = objects.virtual_services[at];
            let namespace = vs.metadata.namespace.as_deref().unwrap_or_default();
            let selector = &vs.spec.real_server_selector;
            // Unchanged selector: it picks among what it picked and what changed.
            let selected = match &was {
                Some(part) if !vs_changed => {
                    let mut candidates: Vec<u32> =
                        part.plan.selected.iter().chain(changed).copied().collect();
                    candidates.sort_unstable();
                    candidates.dedup();
                    select_among(&objects.real_servers, candidates, namespace, selector)
                }
                _ => index
                    .get_or_insert_with(|| {
                        RealServerIndex::new(objects.real_servers.iter().copied())
                    })
                    .select_positions(namespace, selector),
            };
            let mut plan = plan_virtual_service(node, objects, c, selected);
            let keys = plan.services.iter().map(|s| s.key).collect();
            added.append(&mut std::mem::take(&mut plan.services));
            memo.parts[at] = Some(Part {
                winning_ports: c.won.clone(),
                keys,
                plan,
            });
        }
        let mut services = std::mem::take(&mut self.plan.services);
        if !removed.is_empty() {
            services.retain(|s| !removed.contains(&s.key));
        }
        if !added.is_empty() {
            services.append(&mut added);
            services.sort_by_key(|s| s.key);
        }
        let all: Vec<&VirtualServicePlan> = memo.parts.iter().flatten().map(|p| &p.plan).collect();
        self.plan = finish(node, objects, &claims, services, &all);
        memo.versions.clone_from(v);
        memo.claims = claims;
    }
}
