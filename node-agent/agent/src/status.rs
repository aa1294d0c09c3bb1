//! Pure: what this node reports in Kubernetes status. Each agent owns one entry per
//! object, keyed by its node name, written with server-side apply under the field
//! manager `kubelvs-agent/<node>`:
//!
//! - `VirtualService.status.directors[node]` for every VirtualService it directs:
//!   programmed (every port on its dataplane), the dataplane, how many real servers
//!   pass their health check, and the first reason a port is not programmed;
//!   and the traffic through it per port and real server;
//! - `RealServer.status.observations[node]` for every RealServer it health-checks:
//!   healthy, last probe, last transition, the probe's message.
//!
//! Probe times and traffic counters change all the time: they alone never make a
//! write due (`without_samples`); they go out with the next other change or refresh.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kubelvs_crds::{
    DirectorStatus, HealthObservation, PortTraffic, RealServerTraffic, TrafficCounters,
};
use kubelvs_model::{
    DataplaneKind, DataplaneReport, NodePlan, ObjectRef, Outcome, ServiceKey, Traffic,
    TrafficReport,
};

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
    // Indexed once: looking each service up in every report was quadratic per apply.
    let outcomes: std::collections::HashMap<(&str, &kubelvs_model::ServiceKey), &Outcome> = reports
        .iter()
        .flat_map(|r| {
            r.services
                .iter()
                .map(move |s| ((r.dataplane.as_str(), &s.key), &s.outcome))
        })
        .collect();
    // A real server the dataplane cannot reach yet (a DR one without a MAC) gets no
    // connections: it is not healthy, whatever its check says.
    let unresolved: std::collections::HashSet<(&kubelvs_model::ServiceKey, std::net::SocketAddr)> =
        reports
            .iter()
            .flat_map(|r| &r.real_servers)
            .filter(|n| matches!(n.state, kubelvs_model::RealServerState::Unresolved(_)))
            .map(|n| (&n.service, n.real_server))
            .collect();
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
                traffic: Vec::new(),
                traffic_time: None,
            });
        let outcome = outcomes.get(&(s.dataplane.name(), &s.key)).copied();
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
                .is_none_or(|c| !unhealthy.contains(&target_of(c, r.address, r.port)))
                && !unresolved.contains(&(&s.key, std::net::SocketAddr::new(r.address, r.port)));
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

fn time(at: SystemTime) -> Time {
    Time(k8s_openapi::jiff::Timestamp::try_from(at).unwrap_or_default())
}

fn wall(t: Instant, now: Instant, wall_now: SystemTime) -> Time {
    time(
        wall_now
            .checked_sub(now.saturating_duration_since(t))
            .unwrap_or(wall_now),
    )
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

fn counters(t: &Traffic) -> TrafficCounters {
    TrafficCounters {
        connections: t.connections,
        packets: t.packets,
        bytes: t.bytes,
    }
}

/// The traffic of every VirtualService of `plan`, per port and real server, from the
/// dataplanes' latest counters (`reports`: dataplane name and its report). A port its
/// dataplane does not count is left out.
pub fn traffic(
    plan: &NodePlan,
    reports: &[(&str, TrafficReport)],
) -> BTreeMap<ObjectRef, Vec<PortTraffic>> {
    // Indexed once: a plan of 10,000 services x 10 real servers is looked up 110,000
    // times per read. The first entry of a key wins, as a scan in report order would.
    let mut services: HashMap<(&str, ServiceKey), &Traffic> = HashMap::new();
    let mut real_servers: HashMap<(&str, Option<ServiceKey>, SocketAddr), &Traffic> =
        HashMap::new();
    for (dataplane, report) in reports {
        for (key, t) in &report.services {
            services.entry((*dataplane, *key)).or_insert(t);
        }
        for (key, addr, t) in &report.real_servers {
            real_servers.entry((*dataplane, *key, *addr)).or_insert(t);
        }
    }
    let mut out: BTreeMap<ObjectRef, Vec<PortTraffic>> = BTreeMap::new();
    for s in &plan.services {
        let dataplane = s.dataplane.name();
        let Some(total) = services.get(&(dataplane, s.key)) else {
            continue;
        };
        let real_servers = s
            .real_servers
            .iter()
            .filter_map(|r| {
                let addr = SocketAddr::new(r.address, r.port);
                // Per service (IPVS), or per address:port across services (XDP).
                let t = real_servers
                    .get(&(dataplane, Some(s.key), addr))
                    .or_else(|| real_servers.get(&(dataplane, None, addr)))?;
                Some(RealServerTraffic {
                    address: addr.to_string(),
                    counters: counters(t),
                })
            })
            .collect();
        out.entry(s.source.clone()).or_default().push(PortTraffic {
            service: s.key.to_string(),
            counters: counters(total),
            real_servers,
        });
    }
    out
}

/// What this node wants in status: every key is (kind, object) and every value the
/// server-side apply body of this node's entry.
pub fn desired(
    directors: &BTreeMap<ObjectRef, DirectorStatus>,
    observations: &BTreeMap<ObjectRef, HealthObservation>,
    traffic: &BTreeMap<ObjectRef, Vec<PortTraffic>>,
    traffic_time: Option<SystemTime>,
) -> BTreeMap<(String, ObjectRef), serde_json::Value> {
    let traffic_time = traffic_time.map(time);
    let mut out = BTreeMap::new();
    for (vs, entry) in directors {
        let mut entry = entry.clone();
        if let Some(t) = traffic.get(vs) {
            entry.traffic = t.clone();
            entry.traffic_time = traffic_time.clone();
        }
        let body = apply_body(
            "VirtualService",
            vs,
            "directors",
            serde_json::to_value(entry).ok(),
        );
        out.insert(("VirtualService".into(), vs.clone()), body);
    }
    for (rs, obs) in observations {
        let body = apply_body(
            "RealServer",
            rs,
            "observations",
            serde_json::to_value(obs).ok(),
        );
        out.insert(("RealServer".into(), rs.clone()), body);
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

/// A body without its samples (probe times, traffic counters), to decide whether a
/// write is due.
pub fn without_samples(mut body: serde_json::Value) -> serde_json::Value {
    for (list, fields) in [
        ("observations", &["lastProbeTime"][..]),
        ("directors", &["traffic", "trafficTime"][..]),
    ] {
        if let Some(entries) = body["status"][list].as_array_mut() {
            for e in entries {
                if let Some(m) = e.as_object_mut() {
                    for f in fields {
                        m.remove(*f);
                    }
                }
            }
        }
    }
    body
}

/// Whether a write is due, and how urgent it is. Ordered: a change goes out before
/// any refresh, so a health transition is not queued behind a backlog of counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Due {
    /// A new entry, or a change beyond samples (programmed, health, a transition).
    Change,
    /// Samples only (probe times, traffic), once `refresh` has passed.
    Refresh,
    No,
}

/// Whether `body` must be written, given what was last written and how long ago:
/// a new entry or a change beyond samples at once; changed samples only once `refresh`
/// has passed; an unchanged body never.
pub fn write_due(
    last: Option<(&serde_json::Value, std::time::Duration)>,
    body: &serde_json::Value,
    refresh: std::time::Duration,
) -> Due {
    match last {
        None => Due::Change,
        Some((w, _)) if without_samples(w.clone()) != without_samples(body.clone()) => Due::Change,
        Some((w, age)) if w != body && age >= refresh => Due::Refresh,
        Some(_) => Due::No,
    }
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
    fn an_unresolved_real_server_is_not_healthy() {
        // DR without a MAC for 192.0.2.12: no connection reaches it, on either port.
        let p = plan();
        let mut report = DataplaneReport::new("xdp");
        for s in &p.services {
            report.services.push(ServiceOutcome {
                key: s.key,
                source: s.source.clone(),
                outcome: Outcome::Programmed,
            });
            report.real_servers.push(kubelvs_model::RealServerNote {
                service: s.key,
                real_server: std::net::SocketAddr::new("192.0.2.12".parse().unwrap(), s.key.port),
                state: kubelvs_model::RealServerState::Unresolved("no neighbour entry".into()),
            });
        }
        let d = directors("n1", &p, &[report], &BTreeSet::new());
        let web = &d[&ObjectRef::new("VirtualService", "lab", "web")];
        assert!(web.programmed);
        assert_eq!(web.healthy_real_servers, 1, "{web:?}");
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
            without_samples(b)["status"]["observations"][0],
            serde_json::json!({"node": "n1", "healthy": true})
        );
    }

    fn counted(connections: u64) -> Traffic {
        Traffic {
            connections,
            packets: 2 * connections,
            bytes: 100 * connections,
        }
    }

    #[test]
    fn traffic_per_port_and_real_server_from_the_dataplane_that_runs_it() {
        let p = plan();
        let (k80, k443) = (p.services[0].key, p.services[1].key);
        let rs = |a: &str, port: u16| std::net::SocketAddr::new(a.parse().unwrap(), port);
        let xdp = TrafficReport {
            services: vec![(k80, counted(30))],
            real_servers: vec![
                // The XDP director counts per address:port across services.
                (None, rs("192.0.2.11", 80), counted(10)),
                (None, rs("192.0.2.12", 80), counted(20)),
                (None, rs("192.0.2.12", 443), counted(7)),
            ],
        };
        let ipvs = TrafficReport {
            services: vec![(k443, counted(99))],
            ..TrafficReport::default()
        };
        let t = traffic(&p, &[("ipvs", ipvs), ("xdp", xdp)]);
        let web = &t[&ObjectRef::new("VirtualService", "lab", "web")];
        assert_eq!(
            web.len(),
            1,
            "443 is not counted by xdp, its dataplane: {web:?}"
        );
        assert_eq!(web[0].service, "203.0.113.1:80/TCP");
        assert_eq!(web[0].counters.connections, 30);
        assert_eq!(web[0].counters.packets, 60);
        let per_rs: Vec<(&str, u64)> = web[0]
            .real_servers
            .iter()
            .map(|r| (r.address.as_str(), r.counters.connections))
            .collect();
        assert_eq!(per_rs, [("192.0.2.11:80", 10), ("192.0.2.12:80", 20)]);
        assert!(traffic(&p, &[]).is_empty());
    }

    #[test]
    fn desired_puts_traffic_in_the_director_entry_and_samples_never_make_a_write_due_alone() {
        let p = plan();
        let d = directors("n1", &p, &[], &BTreeSet::new());
        let web = ObjectRef::new("VirtualService", "lab", "web");
        let traffic_of = |c: u64| {
            [(
                web.clone(),
                vec![PortTraffic {
                    service: "203.0.113.1:80/TCP".into(),
                    counters: counters(&counted(c)),
                    real_servers: vec![],
                }],
            )]
            .into()
        };
        let at = SystemTime::UNIX_EPOCH;
        let key = ("VirtualService".to_owned(), web.clone());
        let one = &desired(&d, &BTreeMap::new(), &traffic_of(1), Some(at))[&key];
        let entry = &one["status"]["directors"][0];
        assert_eq!(entry["node"], "n1");
        assert_eq!(entry["traffic"][0]["connections"], 1);
        assert_eq!(entry["traffic"][0]["service"], "203.0.113.1:80/TCP");
        assert!(entry["trafficTime"].is_string());
        let two = &desired(&d, &BTreeMap::new(), &traffic_of(2), Some(at))[&key];

        let refresh = std::time::Duration::from_secs(30);
        let young = std::time::Duration::from_secs(1);
        let old = std::time::Duration::from_secs(31);
        assert_eq!(write_due(None, one, refresh), Due::Change, "a new entry");
        assert_eq!(
            write_due(Some((one, old)), one, refresh),
            Due::No,
            "unchanged"
        );
        assert_eq!(
            write_due(Some((one, young)), two, refresh),
            Due::No,
            "counters only, too soon"
        );
        assert_eq!(
            write_due(Some((one, old)), two, refresh),
            Due::Refresh,
            "counters at the refresh"
        );
        let mut failed = d.clone();
        failed.get_mut(&web).unwrap().healthy_real_servers += 1;
        let three = &desired(&failed, &BTreeMap::new(), &traffic_of(1), Some(at))[&key];
        assert_eq!(
            write_due(Some((one, young)), three, refresh),
            Due::Change,
            "a real change at once"
        );
        assert!(Due::Change < Due::Refresh, "changes go out first");
    }
}
