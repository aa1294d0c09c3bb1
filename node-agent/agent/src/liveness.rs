//! Which directors are alive, for choosing each VIP's announcer
//! (`kubelvs_planner::announce`). A director's agent renews a Lease of its own,
//! `kubelvs-agent-<node>` in the agents' namespace, every `duration / 4`; every agent
//! watches those Leases and counts a node alive while it saw its renew time change
//! within `duration` on its own clock (so clocks need not agree). One Lease per
//! director, not per VIP: the writes do not grow with the VIPs.
//!
//! An agent that cannot renew its own Lease (the API server is unreachable or
//! refuses it) stops believing what it sees: it keeps the live set it had rather than
//! taking every VIP over from directors whose renewals it can no longer see. A
//! director cut off alone is taken over by the others once its Lease expires, while
//! it keeps announcing what it had: two announcers for a while (with Maglev on
//! every director, a flow keeps its real server whichever director it reaches),
//! never none.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Client;
use tracing::warn;

use crate::Event;

/// The label on every agent's Lease.
pub const LEASE_LABEL: &str = "kubelvs.io/agent-lease";
/// The prefix of an agent's Lease name; the node's name follows.
pub const LEASE_PREFIX: &str = "kubelvs-agent-";

/// Pure: what this agent saw of the Leases, and when, on its own clock.
#[derive(Debug, Clone)]
pub struct Liveness {
    duration: Duration,
    /// Node -> (its Lease's resourceVersion, which every renewal changes, and when
    /// this agent saw it change).
    seen: BTreeMap<String, (String, Instant)>,
    /// When this agent's own Lease was last renewed.
    own_renewed: Option<Instant>,
    live: BTreeSet<String>,
}

impl Liveness {
    pub fn new(duration: Duration) -> Self {
        Self {
            duration,
            seen: BTreeMap::new(),
            own_renewed: None,
            live: BTreeSet::new(),
        }
    }

    /// Takes the Leases as the watch has them: `(node, resourceVersion)`. A Lease first
    /// seen counts as renewed now; a Lease that is gone, as expired.
    pub fn observe<'a>(
        &mut self,
        leases: impl IntoIterator<Item = (&'a str, &'a str)>,
        now: Instant,
    ) {
        let mut seen = BTreeMap::new();
        for (node, renewed) in leases {
            let at = match self.seen.remove(node) {
                Some((r, at)) if r == renewed => at,
                _ => now,
            };
            seen.insert(node.to_owned(), (renewed.to_owned(), at));
        }
        self.seen = seen;
    }

    /// This agent's own Lease was renewed.
    pub fn renewed(&mut self, now: Instant) {
        self.own_renewed = Some(now);
    }

    /// The live nodes at `now`. Frozen while this agent's own renewals fail: see the
    /// module's comment.
    pub fn live(&mut self, now: Instant) -> &BTreeSet<String> {
        let cut_off = self
            .own_renewed
            .is_some_and(|t| now.saturating_duration_since(t) >= self.duration);
        if !cut_off {
            self.live = self
                .seen
                .iter()
                .filter(|(_, (_, at))| now.saturating_duration_since(*at) < self.duration)
                .map(|(n, _)| n.clone())
                .collect();
        }
        &self.live
    }
}

/// The live set as the agent's loop reads it: `None` until the Leases were listed once.
pub type Live = Arc<Mutex<Option<BTreeSet<String>>>>;

/// How the Leases are kept.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub node: String,
    /// A node whose renewal this agent has not seen for this long is dead.
    pub duration: Duration,
}

/// The Lease `node`'s agent writes (server-side apply), renewed `now`.
pub fn lease_body(
    node: &str,
    duration: Duration,
    now: k8s_openapi::jiff::Timestamp,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": format!("{LEASE_PREFIX}{node}"),
            "labels": { LEASE_LABEL: "" },
        },
        "spec": {
            "holderIdentity": node,
            // Whole seconds only in the API; observers use their own --lease-duration.
            "leaseDurationSeconds": duration.as_secs_f64().ceil().max(1.0) as i32,
            "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now),
        },
    })
}

/// Renews this node's Lease while it directs (`directing`), watches every agent's,
/// and publishes the live set into `live`, waking the loop when it changes. Returns
/// once the Leases were listed and the live set published once.
pub async fn start(
    client: Client,
    settings: LeaseSettings,
    directing: Arc<AtomicBool>,
    live: Live,
    wake: mpsc::Sender<Event>,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let (store, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(api.clone(), watcher::Config::default().labels(LEASE_LABEL)),
    )
    .default_backoff()
    .touched_objects();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(r) = futures::StreamExt::next(&mut stream).await {
            if let Err(e) = r {
                warn!(error = %e, "watch of the agents' Leases");
            }
        }
    });
    let _ = tokio::time::timeout(settings.duration * 4, store.wait_until_ready()).await;
    let name = format!("{LEASE_PREFIX}{}", settings.node);
    let params = PatchParams::apply(&crate::status::field_manager(&settings.node)).force();
    // Renewed every quarter of the duration; the others' Leases are looked at ten
    // times per duration, so a death is seen at most a tenth late.
    let every = settings.duration / 4;
    let mut liveness = Liveness::new(settings.duration);
    let mut tick = tokio::time::interval(settings.duration / 10);
    let mut next_renewal = tokio::time::Instant::now();
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let publish = move |liveness: &mut Liveness| {
        let now = liveness.live(Instant::now()).clone();
        let mut shared = live.lock().unwrap_or_else(|p| p.into_inner());
        if shared.as_ref() != Some(&now) {
            *shared = Some(now);
            let _ = wake.send(Event::Reload);
        }
    };
    let observe = move |liveness: &mut Liveness| {
        let leases = store.state();
        liveness.observe(
            leases.iter().filter_map(|l| {
                let spec = l.spec.as_ref()?;
                Some((
                    spec.holder_identity.as_deref()?,
                    l.metadata.resource_version.as_deref()?,
                ))
            }),
            Instant::now(),
        );
    };
    observe(&mut liveness);
    publish(&mut liveness);
    tokio::spawn(async move {
        loop {
            tick.tick().await;
            if directing.load(Ordering::Relaxed) && tokio::time::Instant::now() >= next_renewal {
                next_renewal = tokio::time::Instant::now() + every;
                let body = lease_body(
                    &settings.node,
                    settings.duration,
                    k8s_openapi::jiff::Timestamp::now(),
                );
                // Bounded: a hung call must not stall the view of the others.
                match tokio::time::timeout(
                    every * 2,
                    api.patch(&name, &params, &Patch::Apply(body)),
                )
                .await
                {
                    Ok(Ok(_)) => liveness.renewed(Instant::now()),
                    Ok(Err(e)) => warn!(lease = %name, error = %e, "Lease not renewed"),
                    Err(_) => warn!(lease = %name, "Lease not renewed: no answer in time"),
                }
            }
            observe(&mut liveness);
            publish(&mut liveness);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(2);

    #[test]
    fn a_node_is_alive_while_its_renewals_are_seen_within_the_duration() {
        let t0 = Instant::now();
        let mut l = Liveness::new(D);
        l.observe([("a", "1"), ("b", "1")], t0);
        l.renewed(t0);
        assert_eq!(l.live(t0).len(), 2);
        // a renews, b does not.
        let t1 = t0 + Duration::from_millis(1500);
        l.observe([("a", "2"), ("b", "1")], t1);
        l.renewed(t1);
        assert_eq!(l.live(t1).len(), 2);
        let t2 = t0 + D;
        l.observe([("a", "2"), ("b", "1")], t2);
        assert_eq!(l.live(t2).iter().collect::<Vec<_>>(), ["a"]);
        // A Lease that is gone is dead at once.
        l.observe([], t2);
        assert!(l.live(t2).is_empty());
    }

    #[test]
    fn an_agent_that_cannot_renew_keeps_the_live_set_it_had() {
        let t0 = Instant::now();
        let mut l = Liveness::new(D);
        l.observe([("a", "1"), ("me", "1")], t0);
        l.renewed(t0);
        assert_eq!(l.live(t0).len(), 2);
        // The API server is gone: nobody's renewals are seen, its own fail too.
        let later = t0 + D * 5;
        l.observe([("a", "1"), ("me", "1")], later);
        assert_eq!(l.live(later).len(), 2, "frozen, not everyone expired");
        // Back: its renewal succeeds, and what it sees counts again.
        l.renewed(later);
        assert_eq!(l.live(later).len(), 0);
    }

    #[test]
    fn the_lease_names_its_node_and_rounds_its_duration_up() {
        let b = lease_body(
            "n1",
            Duration::from_millis(800),
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        );
        assert_eq!(b["metadata"]["name"], "kubelvs-agent-n1");
        assert_eq!(b["spec"]["holderIdentity"], "n1");
        assert_eq!(b["spec"]["leaseDurationSeconds"], 1);
        assert!(b["metadata"]["labels"].get(LEASE_LABEL).is_some());
    }
}
