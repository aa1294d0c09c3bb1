//! [`Planner`]: [`plan_node`](crate::plan_node) kept between plans, so that an edit of
//! a few objects re-plans only the VirtualServices they touch. At 10,000
//! VirtualServices x 10 RealServers a full plan takes about 100 ms; most edits
//! change one object.
//!
//! Every plan resolves all VirtualServices and decides their ports' conflicts again
//! (cheap, and what makes the answer independent of history). What is kept, per
//! VirtualService, is what its own planning gave: its services, the real-server VIPs
//! and problems it found, and the RealServers its selector picked. That is reused when
//! none of its inputs changed: the VirtualService itself, the ports it won, the
//! RealServers it picked, the RealServers that may now match it, this node, the
//! address pools and the node-address policy. Change is seen through [`Versions`]:
//! without them every plan is a full one.

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
    /// By position in the VirtualServices: what one with ports of its own gave.
    parts: Vec<Option<Part>>,
}

#[derive(Debug)]
struct Part {
    winning_ports: Vec<(usize, ServiceKey)>,
    /// Its services are in the plan: their keys here.
    keys: Vec<ServiceKey>,
    plan: VirtualServicePlan,
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
        let claims = claims(node, &objects);
        match self.changed_real_servers(node, &objects) {
            Some(changed) => self.update(node, &objects, &claims, &changed),
            None => self.full(node, &objects, &claims),
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

    fn full(&mut self, node: &NodeIdentity, objects: &Objects<'_>, claims: &Claims<'_>) {
        let index = RealServerIndex::new(objects.real_servers.iter().copied());
        let mut parts: Vec<Option<Part>> = Vec::new();
        parts.resize_with(objects.virtual_services.len(), || None);
        let mut services = Vec::new();
        for (r, won) in &claims.resolved {
            if won.is_empty() {
                continue;
            }
            let namespace = r.vs.metadata.namespace.as_deref().unwrap_or_default();
            let selected = index.select_positions(namespace, &r.vs.spec.real_server_selector);
            let mut plan = plan_virtual_service(node, objects, r, won, selected);
            let keys = plan.services.iter().map(|s| s.key).collect();
            services.append(&mut plan.services);
            parts[r.at] = Some(Part {
                winning_ports: won.clone(),
                keys,
                plan,
            });
        }
        services.sort_by_key(|s| s.key);
        let all: Vec<&VirtualServicePlan> = parts.iter().flatten().map(|p| &p.plan).collect();
        self.plan = finish(node, objects, claims, services, &all);
        self.memo = objects.versions.filter(|v| fits(v, objects)).map(|v| Memo {
            node: node.clone(),
            node_real_servers: objects.node_real_servers.cloned(),
            versions: v.clone(),
            parts,
        });
    }

    /// Re-plans the VirtualServices whose inputs changed; `changed`: the RealServers
    /// whose version changed, ascending.
    fn update(
        &mut self,
        node: &NodeIdentity,
        objects: &Objects<'_>,
        claims: &Claims<'_>,
        changed: &[u32],
    ) {
        let memo = self.memo.as_mut().expect("checked by changed_real_servers");
        let v = objects.versions.expect("checked by changed_real_servers");
        // By position: the VirtualService's entry in `claims.resolved`, if it won ports.
        let mut won_by: Vec<Option<usize>> = vec![None; objects.virtual_services.len()];
        for (i, (r, won)) in claims.resolved.iter().enumerate() {
            if !won.is_empty() {
                won_by[r.at] = Some(i);
            }
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
                (Some((r, won)), Some(part)) => {
                    let namespace = r.vs.metadata.namespace.as_deref().unwrap_or_default();
                    let selector = &r.vs.spec.real_server_selector;
                    !vs_changed
                        && part.winning_ports == *won
                        && !part
                            .plan
                            .selected
                            .iter()
                            .any(|at| changed.binary_search(at).is_ok())
                        && !changed.iter().any(|&c| {
                            let rs = objects.real_servers[c as usize];
                            &*rs.namespace == namespace
                                && matches(selector, &rs.labels).unwrap_or(false)
                        })
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
            let Some((r, won)) = now else {
                continue;
            };
            let namespace = r.vs.metadata.namespace.as_deref().unwrap_or_default();
            let selector = &r.vs.spec.real_server_selector;
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
            let mut plan = plan_virtual_service(node, objects, r, won, selected);
            let keys = plan.services.iter().map(|s| s.key).collect();
            added.append(&mut plan.services);
            memo.parts[at] = Some(Part {
                winning_ports: won.clone(),
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
        self.plan = finish(node, objects, claims, services, &all);
        memo.versions.clone_from(v);
    }
}
