//! Kubernetes Events for the transitions a person wants to see in `kubectl describe`:
//! a real server down or up (on the RealServer), a virtual service programmed or not
//! (on the VirtualService). Deciding them is pure ([`Notices::update`]); publishing
//! is a task that retries while the API server is unreachable, and gives an Event up
//! after a few refusals so that one bad Event never holds up the others.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kubelvs_crds::DirectorStatus;
use kubelvs_model::{NodePlan, ObjectKind, ObjectRef};
use tracing::warn;

use crate::health::{target_of, State, Target};

/// One Event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub object: ObjectRef,
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// What was last announced, to announce changes only.
#[derive(Debug, Default)]
pub struct Notices {
    unhealthy: BTreeSet<Target>,
    programmed: BTreeMap<ObjectRef, bool>,
}

impl Notices {
    /// The Events the change from the last call calls for.
    pub fn update(
        &mut self,
        node: &str,
        planned: &NodePlan,
        unhealthy: &BTreeSet<Target>,
        states: &BTreeMap<Target, State>,
        directors: &BTreeMap<ObjectRef, DirectorStatus>,
    ) -> Vec<Notice> {
        let mut out = Vec::new();
        let mut announced = BTreeSet::new();
        for s in &planned.services {
            let Some(check) = &s.health_check else {
                continue;
            };
            for r in &s.real_servers {
                let t = target_of(check, r.address, r.port);
                let (was, is) = (self.unhealthy.contains(&t), unhealthy.contains(&t));
                if was == is || !announced.insert((r.source.clone(), t.clone())) {
                    continue;
                }
                let message = states
                    .get(&t)
                    .map(|s| s.message.clone())
                    .unwrap_or_default();
                out.push(if is {
                    Notice {
                        object: r.source.clone(),
                        warning: true,
                        reason: "RealServerDown",
                        note: format!(
                            "director {node}: {t} failed its health check ({message}): quiesced"
                        ),
                    }
                } else {
                    Notice {
                        object: r.source.clone(),
                        warning: false,
                        reason: "RealServerUp",
                        note: format!("director {node}: {t} passes its health check again"),
                    }
                });
            }
        }
        for (vs, d) in directors {
            if self.programmed.get(vs) == Some(&d.programmed) {
                continue;
            }
            out.push(if d.programmed {
                Notice {
                    object: vs.clone(),
                    warning: false,
                    reason: "Programmed",
                    note: format!("director {node} programs it"),
                }
            } else {
                Notice {
                    object: vs.clone(),
                    warning: true,
                    reason: "NotProgrammed",
                    note: format!("director {node}: {}", d.message.clone().unwrap_or_default()),
                }
            });
        }
        self.unhealthy = unhealthy.clone();
        self.programmed = directors
            .iter()
            .map(|(k, d)| (k.clone(), d.programmed))
            .collect();
        out
    }
}

fn reference(o: &ObjectRef, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("kubelvs.io/v1alpha1".into()),
        kind: Some(o.kind.to_string()),
        name: Some(o.name.to_string()),
        namespace: (!o.namespace.is_empty()).then(|| o.namespace.to_string()),
        // `kubectl describe` lists the Events whose reference carries the object's uid.
        uid,
        ..ObjectReference::default()
    }
}

/// Why an Event did not go out.
enum NotPublished {
    /// The API server answered no (or the object is gone): try a few times, then drop.
    Refused(String),
    /// No answer: everything waits.
    Unreachable(String),
}

fn classify(e: kube::Error) -> NotPublished {
    match e {
        kube::Error::Api(s) => NotPublished::Refused(format!("{} {}", s.code, s.message)),
        e => NotPublished::Unreachable(e.to_string()),
    }
}

/// The uid of the object `n` is about, then the Event on it.
async fn publish(
    client: &kube::Client,
    recorder: &Recorder,
    n: &Notice,
) -> Result<(), NotPublished> {
    let meta = if n.object.kind == ObjectKind::VirtualService {
        kube::Api::<kubelvs_crds::VirtualService>::namespaced(client.clone(), &n.object.namespace)
            .get_metadata_opt(&n.object.name)
            .await
            .map(|m| m.map(|m| m.metadata))
    } else {
        kube::Api::<kubelvs_crds::RealServer>::namespaced(client.clone(), &n.object.namespace)
            .get_metadata_opt(&n.object.name)
            .await
            .map(|m| m.map(|m| m.metadata))
    };
    let Some(meta) = meta.map_err(classify)? else {
        return Err(NotPublished::Refused("the object is gone".into()));
    };
    let ev = Event {
        type_: if n.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: n.reason.into(),
        note: Some(n.note.clone()),
        action: "Reconcile".into(),
        secondary: None,
    };
    recorder
        .publish(&ev, &reference(&n.object, meta.uid))
        .await
        .map_err(classify)
}

/// Tries an API server refuses an Event before it is given up.
const REFUSALS: u32 = 3;

/// Publishes notices as they come, as `kube-lvs-agent` on `node`; keeps up to 1,000
/// unpublished ones while the API server is unreachable and retries them.
pub async fn publisher(
    client: kube::Client,
    node: String,
    mut notices: tokio::sync::mpsc::UnboundedReceiver<Notice>,
) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kube-lvs-agent".into(),
            instance: Some(node),
        },
    );
    let mut queue: VecDeque<Notice> = VecDeque::new();
    let mut refusals = 0;
    loop {
        if queue.is_empty() {
            match notices.recv().await {
                Some(n) => queue.push_back(n),
                None => return,
            }
        }
        while let Ok(n) = notices.try_recv() {
            if queue.len() == 1000 {
                queue.pop_front();
            }
            queue.push_back(n);
        }
        while let Some(n) = queue.front() {
            match publish(&client, &recorder, n).await {
                Ok(()) => {
                    queue.pop_front();
                    refusals = 0;
                }
                Err(NotPublished::Refused(e)) => {
                    refusals += 1;
                    if refusals >= REFUSALS {
                        warn!(object = %n.object, reason = n.reason, error = %e, "event refused {REFUSALS} times; dropped");
                        queue.pop_front();
                        refusals = 0;
                    } else {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                Err(NotPublished::Unreachable(e)) => {
                    warn!(object = %n.object, error = %e, "event not published; will retry");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubelvs_model::{
        DataplaneKind, Forwarding, HealthCheck, Probe, Protocol, RealServer, Scheduler,
        SchedulerFlags, Service, ServiceKey,
    };

    fn plan() -> NodePlan {
        NodePlan {
            node: "n1".into(),
            services: vec![Service {
                key: ServiceKey {
                    vip: "203.0.113.1".parse().unwrap(),
                    port: 80,
                    protocol: Protocol::Tcp,
                },
                scheduler: Scheduler::Maglev,
                scheduler_flags: SchedulerFlags::default(),
                forwarding: Forwarding::Nat,
                persistence: None,
                source_address: None,
                health_check: Some(HealthCheck {
                    probe: Probe::Tcp { port: None },
                    interval_ms: 1000,
                    timeout_ms: 1000,
                    rise: 1,
                    fall: 1,
                }),
                dataplane: DataplaneKind::Xdp,
                real_servers: vec![RealServer {
                    address: "192.0.2.11".parse().unwrap(),
                    port: 80,
                    weight: 1,
                    source: ObjectRef::new(ObjectKind::RealServer, "lab", "rs1"),
                }],
                source: ObjectRef::new(ObjectKind::VirtualService, "lab", "web"),
            }],
            ..NodePlan::default()
        }
    }

    #[test]
    fn transitions_are_announced_once() {
        let p = plan();
        let check = p.services[0].health_check.clone().unwrap();
        let t = target_of(&check, "192.0.2.11".parse().unwrap(), 80);
        let vs = ObjectRef::new(ObjectKind::VirtualService, "lab", "web");
        let programmed = |ok: bool| {
            BTreeMap::from([(
                vs.clone(),
                DirectorStatus {
                    node: "n1".into(),
                    programmed: ok,
                    message: (!ok).then(|| "map full".into()),
                    ..DirectorStatus::default()
                },
            )])
        };
        let mut n = Notices::default();
        let none = BTreeSet::new();
        let down = BTreeSet::from([t.clone()]);
        let first = n.update("n1", &p, &none, &BTreeMap::new(), &programmed(true));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].reason, "Programmed");
        assert!(n
            .update("n1", &p, &none, &BTreeMap::new(), &programmed(true))
            .is_empty());
        let d = n.update("n1", &p, &down, &BTreeMap::new(), &programmed(true));
        assert_eq!(
            (d.len(), d[0].reason, d[0].warning),
            (1, "RealServerDown", true)
        );
        assert_eq!(&*d[0].object.name, "rs1");
        assert!(n
            .update("n1", &p, &down, &BTreeMap::new(), &programmed(true))
            .is_empty());
        let u = n.update("n1", &p, &none, &BTreeMap::new(), &programmed(false));
        let reasons: Vec<_> = u.iter().map(|n| n.reason).collect();
        assert_eq!(reasons, ["RealServerUp", "NotProgrammed"]);
        assert!(u[1].note.contains("map full"));
    }
}
