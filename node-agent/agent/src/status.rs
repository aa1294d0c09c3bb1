//! Pure: what this node reports in Kubernetes status. Each agent owns one entry per
//! object, keyed by its node name, written with server-side apply under the field
//! manager `kubelvs-agent/<node>`:
//!
//! - `VirtualService.status.directors[node]` for every VirtualService it directs:
//!   programmed (every port on its dataplane), the dataplane, how many real servers
//!   it sends connections to, and the first reason a port is not programmed;
//! - `RealServer.status.observations[node]` for every RealServer it health-checks and
//!   found down at least once: healthy, when that last changed, and the result that
//!   decided it (no entry: passing since this agent first probed it).
//!
//! Only state: an entry changes when something a user acts on changes, so an idle
//! cluster costs no writes. Probe times and traffic counters are metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kubelvs_crds::{DirectorStatus, HealthObservation};
use kubelvs_model::{DataplaneKind, DataplaneReport, NodePlan, ObjectKind, ObjectRef, Outcome};

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
    // Borrowed, and foldhash: at 100,000 real servers a copy of each name, or SipHash
    // of it, per apply costs more than the rest of the roll-up.
    // Each VirtualService's healthy RealServers, counted once each (one RealServer
    // serves every port of a VirtualService): gathered, then sorted and deduplicated,
    // which at ten per VirtualService is cheaper than a set of names.
    let mut healthy: foldhash::HashMap<&ObjectRef, Vec<&ObjectRef>> = foldhash::HashMap::default();
    // Indexed once: looking each service up in every report was quadratic per apply.
    let outcomes: foldhash::HashMap<(&str, &kubelvs_model::ServiceKey), &Outcome> = reports
        .iter()
        .flat_map(|r| {
            r.services
                .iter()
                .map(move |s| ((r.dataplane.as_str(), &s.key), &s.outcome))
        })
        .collect();
    // A real server the dataplane cannot reach yet (a DR one without a MAC) gets no
    // connections: it is not healthy, whatever its check says.
    let unresolved: foldhash::HashSet<(&kubelvs_model::ServiceKey, std::net::SocketAddr)> = reports
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
                announcing: !plan.unannounced_vips.contains(&s.key.vip),
                message: None,
            });
        let outcome = outcomes.get(&(s.dataplane.name(), &s.key)).copied();
        match outcome {
            Some(Outcome::Programmed) => {}
            Some(o) => {
                entry.programmed = false;
                if entry.message.is_none() {
                    let reason = o.reason().map(|r| r.to_string()).unwrap_or_default();
                    entry.message = Some(bounded(format!("{} {}: {reason}", s.key, o.name())));
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
        let set = healthy.entry(&s.source).or_default();
        for r in &s.real_servers {
            let ok = s
                .health_check
                .as_ref()
                .is_none_or(|c| !unhealthy.contains(&target_of(c, r.address, r.port)))
                && !unresolved.contains(&(&s.key, std::net::SocketAddr::new(r.address, r.port)));
            if ok {
                set.push(&r.source);
            }
        }
    }
    for (vs, entry) in &mut out {
        entry.healthy_real_servers = healthy.get_mut(vs).map_or(0, |s| {
            s.sort_unstable();
            s.dedup();
            s.len() as u32
        });
    }
    // By BGP a director announces what it can serve (`crate::bgp::servable`).
    let by_bgp: BTreeSet<std::net::IpAddr> = plan
        .bgp_sessions
        .iter()
        .flat_map(|s| s.vips.iter().copied())
        .collect();
    for s in plan.services.iter().filter(|s| by_bgp.contains(&s.key.vip)) {
        if let Some(entry) = out.get_mut(&s.source) {
            entry.announcing = entry.programmed && entry.healthy_real_servers > 0;
        }
    }
    out
}

fn time(at: SystemTime) -> Time {
    Time(k8s_openapi::jiff::Timestamp::try_from(at).unwrap_or_default())
}

/// The longest message status carries (the CRDs allow 512 characters).
const MESSAGE_CHARS: usize = 256;

/// `message` cut to `MESSAGE_CHARS`: a reason can quote what a user wrote, and an
/// entry must stay small whatever it says.
fn bounded(message: String) -> String {
    match message.char_indices().nth(MESSAGE_CHARS) {
        Some((at, _)) => format!("{}...", &message[..at]),
        None => message,
    }
}

/// This node's observation of every RealServer it health-checks. `at_start`: the
/// observations the API server held when the agent started, which stand until this
/// run's probes say otherwise (a restart rewrites nothing it still agrees with).
pub fn observations(
    node: &str,
    plan: &NodePlan,
    states: &BTreeMap<Target, State>,
    at_start: &BTreeMap<ObjectRef, HealthObservation>,
) -> BTreeMap<ObjectRef, HealthObservation> {
    let mut out: BTreeMap<ObjectRef, HealthObservation> = BTreeMap::new();
    for s in &plan.services {
        let Some(check) = &s.health_check else {
            continue;
        };
        for r in &s.real_servers {
            let Some(state) = states.get(&target_of(check, r.address, r.port)) else {
                continue;
            };
            let Some(o) = observation(node, state, at_start.get(&r.source)) else {
                continue;
            };
            // A real server checked by several services: down on one is down.
            match out.get(&r.source) {
                Some(kept) if !kept.healthy => {}
                _ => {
                    out.insert(r.source.clone(), o);
                }
            }
        }
    }
    out
}

/// What to report of one probe's `state`, given what the API server held at start.
fn observation(
    node: &str,
    state: &State,
    at_start: Option<&HealthObservation>,
) -> Option<HealthObservation> {
    let current = || HealthObservation {
        node: node.to_owned(),
        healthy: state.healthy,
        last_transition_time: state.last_transition.map(time),
        message: Some(bounded(state.message.clone())),
    };
    if state.last_transition.is_some() {
        return Some(current());
    }
    match at_start {
        // Not probed yet this run, or probed and still agreeing: as it was.
        Some(was) if state.last_probe.is_none() || was.healthy == state.healthy => {
            Some(was.clone())
        }
        Some(_) => Some(current()),
        // A real server healthy since this agent first probed it has nothing to
        // report: an entry says it is down, or since when it is up again. So a start
        // of a healthy cluster writes no observation at all.
        None if state.healthy => None,
        None => Some(current()),
    }
}

/// What this node wants in status: every key is an object and every value the
/// server-side apply body of this node's entry on it.
///
/// `uid` names each object's uid as the watches see it: the body carries it, so the
/// API server refuses the write if the object was replaced meanwhile, and a replaced
/// object (same name, new uid, empty status) gets its entry again.
pub fn desired(
    directors: &BTreeMap<ObjectRef, DirectorStatus>,
    observations: &BTreeMap<ObjectRef, HealthObservation>,
    uid: impl Fn(&ObjectRef) -> Option<String>,
) -> BTreeMap<ObjectRef, serde_json::Value> {
    let mut out = BTreeMap::new();
    let mut put = |object: &ObjectRef, entry: Option<serde_json::Value>| {
        let body = apply_body(object, entry, uid(object));
        out.insert(object.clone(), body);
    };
    for (vs, entry) in directors {
        put(vs, serde_json::to_value(entry).ok());
    }
    for (rs, obs) in observations {
        put(rs, serde_json::to_value(obs).ok());
    }
    out
}

/// What this node last put in status, so that a change that leaves every entry (and
/// the uid of every object it is for) as it was builds no apply body: at 10,000
/// VirtualServices building and comparing them all took about 55 ms per change.
#[derive(Debug, Default)]
pub struct Published {
    last: Option<Entries>,
}

/// A node's entries, and a hash of the uids of the objects they are for.
#[derive(Debug)]
struct Entries {
    directors: BTreeMap<ObjectRef, DirectorStatus>,
    observations: BTreeMap<ObjectRef, HealthObservation>,
    uids: u64,
}

impl Published {
    /// [`desired`], when the entries or their objects' uids changed since the last
    /// time it was given.
    pub fn changed(
        &mut self,
        directors: &BTreeMap<ObjectRef, DirectorStatus>,
        observations: &BTreeMap<ObjectRef, HealthObservation>,
        uid: impl Fn(&ObjectRef) -> Option<String>,
    ) -> Option<BTreeMap<ObjectRef, serde_json::Value>> {
        use std::hash::BuildHasher;
        let hasher = foldhash::fast::FixedState::with_seed(0x6b75_6265_6c76_7307);
        let uids = directors
            .keys()
            .chain(observations.keys())
            .fold(0u64, |acc, o| {
                acc.rotate_left(5) ^ hasher.hash_one((o, uid(o)))
            });
        let same = self.last.as_ref().is_some_and(|e| {
            e.uids == uids && e.directors == *directors && e.observations == *observations
        });
        if same {
            return None;
        }
        let out = desired(directors, observations, uid);
        self.last = Some(Entries {
            directors: directors.clone(),
            observations: observations.clone(),
            uids,
        });
        Some(out)
    }
}

/// The server-side apply body that sets this node's entry on `object` (`entry`
/// None: removes it), with the object's uid when known.
pub fn apply_body(
    object: &ObjectRef,
    entry: Option<serde_json::Value>,
    uid: Option<String>,
) -> serde_json::Value {
    // The list of the object's status that holds the agents' entries.
    let list = if object.kind == ObjectKind::VirtualService {
        "directors"
    } else {
        "observations"
    };
    let mut body = serde_json::json!({
        "apiVersion": "kubelvs.io/v1alpha1",
        "kind": object.kind.as_str(),
        "metadata": {"name": object.name, "namespace": object.namespace},
        "status": {list: entry.into_iter().collect::<Vec<_>>()},
    });
    if let Some(uid) = uid {
        body["metadata"]["uid"] = serde_json::Value::String(uid);
    }
    body
}

/// Whether a write is due, and how urgent it is. Ordered: what a user must see soon
/// (a change of an entry already written, a removal, a new entry that reports a
/// fault) goes out before new entries that say all is well, so a health transition is
/// not queued behind the wave of a start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Due {
    Urgent,
    Routine,
    No,
}

/// Whether `body` must be written, given what was last written.
pub fn write_due(last: Option<&serde_json::Value>, body: &serde_json::Value) -> Due {
    match last {
        None if reports_fault(body) => Due::Urgent,
        None => Due::Routine,
        Some(w) if w != body => Due::Urgent,
        Some(_) => Due::No,
    }
}

/// Whether an apply body's entry says something is wrong: not programmed, not healthy.
fn reports_fault(body: &serde_json::Value) -> bool {
    body["status"]
        .as_object()
        .into_iter()
        .flat_map(|s| s.values())
        .filter_map(|list| list.as_array())
        .flatten()
        .any(|e| e["programmed"] == false || e["healthy"] == false)
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
                    source: ObjectRef::new(ObjectKind::RealServer, "lab", a),
                })
                .collect(),
            source: ObjectRef::new(ObjectKind::VirtualService, "lab", "web"),
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
        let web = &d[&ObjectRef::new(ObjectKind::VirtualService, "lab", "web")];
        assert!(!web.programmed);
        assert!(web.message.as_ref().unwrap().contains("map full"));
        assert_eq!(web.healthy_real_servers, 1);
        assert_eq!(web.dataplane, Some(kubelvs_crds::Dataplane::Xdp));

        let none = directors("n1", &p, &[], &BTreeSet::new());
        let web = &none[&ObjectRef::new(ObjectKind::VirtualService, "lab", "web")];
        assert!(web.message.as_ref().unwrap().contains("no xdp dataplane"));
    }

    /// The XDP dataplane's report of `p` with every service programmed.
    fn programmed(p: &NodePlan) -> DataplaneReport {
        let mut report = DataplaneReport::new("xdp");
        for s in &p.services {
            report.services.push(ServiceOutcome {
                key: s.key,
                source: s.source.clone(),
                outcome: Outcome::Programmed,
            });
        }
        report
    }

    #[test]
    fn an_unresolved_real_server_is_not_healthy() {
        // DR without a MAC for 192.0.2.12: no connection reaches it, on either port.
        let p = plan();
        let mut report = programmed(&p);
        for s in &p.services {
            report.real_servers.push(kubelvs_model::RealServerNote {
                service: s.key,
                real_server: std::net::SocketAddr::new("192.0.2.12".parse().unwrap(), s.key.port),
                state: kubelvs_model::RealServerState::Unresolved("no neighbour entry".into()),
            });
        }
        let d = directors("n1", &p, &[report], &BTreeSet::new());
        let web = &d[&ObjectRef::new(ObjectKind::VirtualService, "lab", "web")];
        assert!(web.programmed);
        assert_eq!(web.healthy_real_servers, 1, "{web:?}");
    }

    #[test]
    fn the_entry_says_whether_this_director_announces() {
        let web = ObjectRef::new(ObjectKind::VirtualService, "lab", "web");
        let mut p = plan();
        let announcing = |p: &NodePlan, down: &BTreeSet<Target>| {
            directors("n1", p, &[programmed(p)], down)[&web].announcing
        };
        assert!(
            announcing(&p, &BTreeSet::new()),
            "standalone / owner: it answers ARP"
        );
        p.unannounced_vips.insert("203.0.113.1".parse().unwrap());
        assert!(
            !announcing(&p, &BTreeSet::new()),
            "another director owns it"
        );
        // By BGP: while it can serve the VIP.
        p.bgp_sessions.push(kubelvs_model::BgpSession {
            local_asn: 64512,
            peer: "192.0.2.250".parse().unwrap(),
            peer_asn: 64500,
            port: 179,
            hold_time_seconds: 9,
            bfd: true,
            password_secret: None,
            vips: ["203.0.113.1".parse().unwrap()].into(),
        });
        assert!(announcing(&p, &BTreeSet::new()));
        let check = p.services[0].health_check.clone().unwrap();
        let all_down: BTreeSet<Target> = p
            .services
            .iter()
            .flat_map(|s| {
                s.real_servers
                    .iter()
                    .map(|r| target_of(&check, r.address, r.port))
            })
            .collect();
        assert!(
            !announcing(&p, &all_down),
            "no usable real server: withdrawn"
        );
    }

    #[test]
    fn apply_bodies_name_only_this_nodes_entry() {
        let o = ObjectRef::new(ObjectKind::RealServer, "lab", "rs1");
        let b = apply_body(&o, None, None);
        assert_eq!(b["status"]["observations"], serde_json::json!([]));
        assert_eq!(b["metadata"]["name"], "rs1");
        assert_eq!(b["kind"], "RealServer");
        let o = ObjectRef::new(ObjectKind::VirtualService, "lab", "web");
        let b = apply_body(
            &o,
            Some(serde_json::json!({"node": "n1", "programmed": true})),
            Some("u-1".into()),
        );
        assert_eq!(b["status"]["directors"][0]["node"], "n1");
        assert_eq!(b["metadata"]["uid"], "u-1");
    }

    fn probed(states: &mut BTreeMap<Target, State>, p: &NodePlan, results: &[(&str, bool)]) {
        let check = p.services[0].health_check.clone().unwrap();
        for (addr, ok) in results {
            for port in [80, 443] {
                let t = target_of(&check, addr.parse().unwrap(), port);
                let msg = if *ok {
                    "connected"
                } else {
                    "connection refused"
                };
                states.entry(t).or_default().observe(
                    *ok,
                    format!("{msg} at {:?}", std::time::Instant::now()),
                    check.rise,
                    check.fall,
                    std::time::Instant::now(),
                );
            }
        }
    }

    #[test]
    fn bodies_are_built_again_only_when_an_entry_or_a_uid_changed() {
        let p = plan();
        let reports = [programmed(&p)];
        let unhealthy = BTreeSet::new();
        let mut entries = directors("n1", &p, &reports, &unhealthy);
        let none = BTreeMap::new();
        let mut published = Published::default();
        let first = published.changed(&entries, &none, |_| Some("u1".into()));
        assert_eq!(
            first,
            Some(desired(&entries, &none, |_| Some("u1".into()))),
            "the first time: what desired gives"
        );
        assert_eq!(
            published.changed(&entries, &none, |_| Some("u1".into())),
            None
        );
        // The object was replaced: same entry, a new uid to write it for.
        let replaced = published.changed(&entries, &none, |_| Some("u2".into()));
        assert_eq!(
            replaced,
            Some(desired(&entries, &none, |_| Some("u2".into())))
        );
        assert_eq!(
            published.changed(&entries, &none, |_| Some("u2".into())),
            None
        );
        let entry = entries.values_mut().next().expect("one VirtualService");
        entry.programmed = false;
        assert_eq!(
            published.changed(&entries, &none, |_| Some("u2".into())),
            Some(desired(&entries, &none, |_| Some("u2".into())))
        );
    }

    #[test]
    fn status_holds_state_so_probes_that_change_nothing_make_no_write() {
        let p = plan();
        let mut states = BTreeMap::new();
        probed(
            &mut states,
            &p,
            &[("192.0.2.11", true), ("192.0.2.12", true)],
        );
        let unhealthy = BTreeSet::new();
        let reports = [programmed(&p)];
        let body = |states: &BTreeMap<Target, State>| {
            desired(
                &directors("n1", &p, &reports, &unhealthy),
                &observations("n1", &p, states, &BTreeMap::new()),
                |_| None,
            )
        };
        let first = body(&states);
        let rs = ObjectRef::new(ObjectKind::RealServer, "lab", "192.0.2.12");
        assert!(
            !first.contains_key(&rs),
            "healthy since the first probe: nothing to report"
        );
        let vs = ObjectRef::new(ObjectKind::VirtualService, "lab", "web");
        assert_eq!(write_due(None, &first[&vs]), Due::Routine, "all is well");

        // More passing probes, and one failure short of `fall`: the same state.
        probed(
            &mut states,
            &p,
            &[("192.0.2.11", true), ("192.0.2.12", true)],
        );
        probed(&mut states, &p, &[("192.0.2.12", false)]);
        let again = body(&states);
        assert_eq!(again, first);
        // The second failure is a transition: an entry that says so, urgent.
        probed(&mut states, &p, &[("192.0.2.12", false)]);
        let down = body(&states);
        let entry = &down[&rs]["status"]["observations"][0];
        assert_eq!(entry["healthy"], false);
        assert!(entry.get("lastProbeTime").is_none(), "{entry}");
        assert!(entry["lastTransitionTime"].is_string());
        assert!(entry["message"]
            .as_str()
            .unwrap()
            .starts_with("connection refused"));
        assert_eq!(write_due(None, &down[&rs]), Due::Urgent, "a new fault");
        // Back up: the entry stays, saying since when.
        probed(&mut states, &p, &[("192.0.2.12", true)]);
        let up = body(&states);
        assert_eq!(up[&rs]["status"]["observations"][0]["healthy"], true);
        assert_eq!(write_due(Some(&down[&rs]), &up[&rs]), Due::Urgent);
        assert_eq!(write_due(Some(&up[&rs]), &up[&rs]), Due::No);
        assert!(
            Due::Urgent < Due::Routine,
            "faults and changes go out first"
        );
    }

    #[test]
    fn a_restart_keeps_the_observations_it_found_until_its_probes_disagree() {
        let p = plan();
        let rs = ObjectRef::new(ObjectKind::RealServer, "lab", "192.0.2.12");
        let was_down = HealthObservation {
            node: "n1".into(),
            healthy: false,
            last_transition_time: Some(time(SystemTime::UNIX_EPOCH)),
            message: Some("connection refused".into()),
        };
        let at_start: BTreeMap<ObjectRef, HealthObservation> =
            [(rs.clone(), was_down.clone())].into();
        let mut states = BTreeMap::new();
        let check = p.services[0].health_check.clone().unwrap();
        for port in [80, 443] {
            for a in ["192.0.2.11", "192.0.2.12"] {
                states.insert(
                    target_of(&check, a.parse().unwrap(), port),
                    State::default(),
                );
            }
        }
        // Not probed yet: as the API server holds it (no write).
        let o = observations("n1", &p, &states, &at_start);
        assert_eq!(o.get(&rs), Some(&was_down));
        // Probed down (no transition: it starts down when it was down before): the same.
        for port in [80, 443] {
            let t = target_of(&check, "192.0.2.12".parse().unwrap(), port);
            let s = states.get_mut(&t).unwrap();
            s.healthy = false;
            s.observe(false, "timed out".into(), 1, 2, std::time::Instant::now());
        }
        assert_eq!(
            observations("n1", &p, &states, &at_start).get(&rs),
            Some(&was_down)
        );
        // Probed up (a transition in this run): the new state.
        for port in [80, 443] {
            let t = target_of(&check, "192.0.2.12".parse().unwrap(), port);
            states.get_mut(&t).unwrap().observe(
                true,
                "connected".into(),
                1,
                2,
                std::time::Instant::now(),
            );
        }
        let o = observations("n1", &p, &states, &at_start);
        assert!(o[&rs].healthy);
        assert_ne!(o[&rs].last_transition_time, was_down.last_transition_time);
    }

    #[test]
    fn an_entry_stays_small_however_many_real_servers_and_whatever_a_reason_says() {
        // 5,000 real servers on two ports, three directors' entries on one object.
        let mut p = plan();
        for s in &mut p.services {
            let template = s.real_servers[0].clone();
            s.real_servers = (0..5_000u32)
                .map(|i| RealServer {
                    address: std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
                    source: ObjectRef::new(ObjectKind::RealServer, "lab", &format!("rs-{i}")),
                    ..template.clone()
                })
                .collect();
        }
        let mut report = DataplaneReport::new("xdp");
        for s in &p.services {
            report.services.push(ServiceOutcome {
                key: s.key,
                source: s.source.clone(),
                outcome: Outcome::Failed(Reason::new(&s.source, "", "x".repeat(10_000))),
            });
        }
        let web = ObjectRef::new(ObjectKind::VirtualService, "lab", "web");
        let entries: Vec<serde_json::Value> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| {
                let d = directors(n, &p, std::slice::from_ref(&report), &BTreeSet::new());
                assert_eq!(d[&web].healthy_real_servers, 5_000);
                serde_json::to_value(&d[&web]).unwrap()
            })
            .collect();
        let status = serde_json::json!({"directors": entries});
        let size = serde_json::to_string(&status).unwrap().len();
        assert!(size < 1_500, "{size} bytes: {status}");
        let message = entries[0]["message"].as_str().unwrap();
        assert!(message.chars().count() <= MESSAGE_CHARS + 3, "{message}");
    }
}
