//! Pure: what this node reports in Kubernetes status. Each agent owns one entry per
//! object, keyed by its node name, written with server-side apply under the field
//! manager `kubelvs-agent/<node>`:
//!
//! - `VirtualService.status.directors[node]` for every VirtualService it directs:
//!   programmed (every port on its dataplane), the dataplane, how many real servers
//!   pass their health check, and the first reason a port is not programmed;
//! - `RealServer.status.observations[node]` for every RealServer it health-checks:
//!   healthy, last probe, last transition, the probe's message.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Instant, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kubelvs_crds::{DirectorStatus, HealthObservation};
use kubelvs_model::{DataplaneKind, DataplaneReport, NodePlan, ObjectRef, Outcome};

use crate::health::{target_of, State, Target};

/// The field manager of `node`'s agent.
pub fn field_manager(node: &str) -> String {
    format!("kubelvs-agent/{node}")
}

/// This node's director entry for every VirtualService of `plan`.
pub fn directors(
    node: &str,
    plan: &NodePlan,
    reports: &[DataplaneReport],
    unhealthy: &BTreeSet<Target>,
) -> BTreeMap<ObjectRef, DirectorStatus> {
    let mut out: BTreeMap<ObjectRef, DirectorStatus> = BTreeMap::new();
    let mut healthy: BTreeMap<ObjectRef, BTreeSet<ObjectRef>> = BTreeMap::new();
    for s in &plan.services {
        let entry = out
            .entry(s.source.clone())
            .or_insert_with(|| DirectorStatus {
                node: node.to_owned(),
                programmed: true,
                dataplane: Some(match s.dataplane {
                    DataplaneKind::Ipvs => kubelvs_crds::Dataplane::Ipvs,
                    DataplaneKind::Xdp => kubelvs_crds::Dataplane::Xdp,
                }),
                healthy_real_servers: 0,
                message: None,
            });
        let outcome = reports
            .iter()
            .filter(|r| r.dataplane == s.dataplane.name())
            .find_map(|r| r.service(&s.key));
        match outcome {
            Some(Outcome::Programmed) => {}
            Some(o) => {
                entry.programmed = false;
                if entry.message.is_none() {
                    let reason = o.reason().map(|r| r.to_string()).unwrap_or_default();
                    entry.message = Some(format!("{} {}: {reason}", s.key, o.name()));
                }
            }
            None => {
                entry.programmed = false;
                entry.message.get_or_insert_with(|| {
                    format!(
                        "{}: no {} dataplane on this node",
                        s.key,
                        s.dataplane.name()
                    )
                });
            }
        }
        let set = healthy.entry(s.source.clone()).or_default();
        for r in &s.real_servers {
            let ok = s
                .health_check
                .as_ref()
                .is_none_or(|c| !unhealthy.contains(&target_of(c, r.address, r.port)));
            if ok {
                set.insert(r.source.clone());
            }
        }
    }
    for (vs, entry) in &mut out {
        entry.healthy_real_servers = healthy.get(vs).map_or(0, |s| s.len() as u32);
    }
    out
}

fn wall(t: Instant, now: Instant, wall_now: SystemTime) -> Time {
    let at = wall_now
        .checked_sub(now.saturating_duration_since(t))
        .unwrap_or(wall_now);
    Time(k8s_openapi::jiff::Timestamp::try_from(at).unwrap_or_default())
}

/// This node's observation of every RealServer it health-checks.
pub fn observations(
    node: &str,
    plan: &NodePlan,
    states: &BTreeMap<Target, State>,
    now: Instant,
    wall_now: SystemTime,
) -> BTreeMap<ObjectRef, HealthObservation> {
    let mut out = BTreeMap::new();
    for s in &plan.services {
        let Some(check) = &s.health_check else {
            continue;
        };
        for r in &s.real_servers {
            let Some(state) = states.get(&target_of(check, r.address, r.port)) else {
                continue;
            };
            out.entry(r.source.clone())
                .or_insert_with(|| HealthObservation {
                    node: node.to_owned(),
                    healthy: state.healthy,
                    last_probe_time: state.last_probe.map(|t| wall(t, now, wall_now)),
                    last_transition_time: state.last_transition.map(|t| wall(t, now, wall_now)),
                    message: Some(state.message.clone()),
                });
        }
    }
    out
}

/// The server-side apply body that sets this node's entry (`entry` None: removes it).
pub fn apply_body(
    kind: &str,
    object: &ObjectRef,
    list: &str,
    entry: Option<serde_json::Value>,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kubelvs.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": object.name, "namespace": object.namespace},
        "status": {list: entry.into_iter().collect::<Vec<_>>()},
    })
}

/// A body without what changes on every probe, to decide whether a write is due.
pub fn without_probe_time(mut body: serde_json::Value) -> serde_json::Value {
    if let Some(list) = body["status"]["observations"].as_array_mut() {
        for e in list {
            if let Some(m) = e.as_object_mut() {
                m.remove("lastProbeTime");
            }
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubelvs_model::{
        Forwarding, HealthCheck, Probe, Protocol, RealServer, Reason, Scheduler, SchedulerFlags,
        Service, ServiceKey, ServiceOutcome,
    };

    fn plan() -> NodePlan {
        let check = HealthCheck {
            probe: Probe::Tcp { port: None },
            interval_ms: 1000,
            timeout_ms: 1000,
            rise: 1,
            fall: 2,
        };
        let svc = |port: u16| Service {
            key: ServiceKey {
                vip: "203.0.113.1".parse().unwrap(),
                port,
                protocol: Protocol::Tcp,
            },
            scheduler: Scheduler::Maglev,
            scheduler_flags: SchedulerFlags::default(),
            forwarding: Forwarding::Dr,
            persistence: None,
            source_address: None,
            health_check: Some(check.clone()),
            dataplane: DataplaneKind::Xdp,
            real_servers: ["192.0.2.11", "192.0.2.12"]
                .iter()
                .map(|a| RealServer {
                    address: a.parse().unwrap(),
                    port,
                    weight: 1,
                    source: ObjectRef::new("RealServer", "lab", a),
                })
                .collect(),
            source: ObjectRef::new("VirtualService", "lab", "web"),
        };
        NodePlan {
            node: "n1".into(),
            services: vec![svc(80), svc(443)],
            ..NodePlan::default()
        }
    }

    #[test]
    fn a_director_entry_per_virtual_service_with_its_outcome_and_health() {
        let p = plan();
        let mut report = DataplaneReport::new("xdp");
        report.services.push(ServiceOutcome {
            key: p.services[0].key,
            source: p.services[0].source.clone(),
            outcome: Outcome::Programmed,
        });
        report.services.push(ServiceOutcome {
            key: p.services[1].key,
            source: p.services[1].source.clone(),
            outcome: Outcome::Failed(Reason::new(&p.services[1].source, "", "map full")),
        });
        let check = p.services[0].health_check.clone().unwrap();
        let down: BTreeSet<Target> = [
            target_of(&check, "192.0.2.12".parse().unwrap(), 80),
            target_of(&check, "192.0.2.12".parse().unwrap(), 443),
        ]
        .into();
        let d = directors("n1", &p, &[report], &down);
        let web = &d[&ObjectRef::new("VirtualService", "lab", "web")];
        assert!(!web.programmed);
        assert!(web.message.as_ref().unwrap().contains("map full"));
        assert_eq!(web.healthy_real_servers, 1);
        assert_eq!(web.dataplane, Some(kubelvs_crds::Dataplane::Xdp));

        let none = directors("n1", &p, &[], &BTreeSet::new());
        let web = &none[&ObjectRef::new("VirtualService", "lab", "web")];
        assert!(web.message.as_ref().unwrap().contains("no xdp dataplane"));
    }

    #[test]
    fn apply_bodies_name_only_this_nodes_entry() {
        let o = ObjectRef::new("RealServer", "lab", "rs1");
        let b = apply_body("RealServer", &o, "observations", None);
        assert_eq!(b["status"]["observations"], serde_json::json!([]));
        let b = apply_body(
            "RealServer",
            &o,
            "observations",
            Some(serde_json::json!({"node": "n1", "healthy": true, "lastProbeTime": "x"})),
        );
        assert_eq!(
            without_probe_time(b)["status"]["observations"][0],
            serde_json::json!({"node": "n1", "healthy": true})
        );
    }
}
