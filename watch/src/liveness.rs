//! Which directors are alive: each director's agent renews a Lease of its own,
//! `kubelvs-agent-<node>` (label [`LEASE_LABEL`]) in the agents' namespace, every
//! quarter of the duration; whoever follows them (every agent, to choose each VIP's
//! announcer; the operator, to say in status who announces) counts a node alive while
//! it saw its Lease change within the duration on its own clock, so clocks need not
//! agree. One Lease per director, not per VIP: the writes do not grow with the VIPs.
//!
//! An agent that cannot renew its own Lease (its API server is unreachable or refuses
//! it) stops believing what it sees: it keeps the live set it had rather than take
//! every VIP over from directors whose renewals it can no longer see. A director cut
//! off alone is taken over by the others once its Lease expires, while it keeps
//! announcing what it had: two announcers for a while (with Maglev on every director,
//! a flow keeps its real server whichever director it reaches), never none.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client};
use tracing::warn;

/// The label on every agent's Lease.
pub const LEASE_LABEL: &str = "kubelvs.io/agent-lease";
/// The prefix of an agent's Lease name; the node's name follows.
pub const LEASE_PREFIX: &str = "kubelvs-agent-";

/// Pure: what was seen of the Leases, and when, on the follower's own clock.
#[derive(Debug, Clone)]
pub struct Liveness {
    duration: Duration,
    /// Node -> (its Lease's resourceVersion, which every renewal changes, and when it
    /// was seen to change).
    seen: BTreeMap<String, (String, Instant)>,
    /// When the follower's own Lease was last renewed (agents that renew one).
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
        for (node, version) in leases {
            let at = match self.seen.remove(node) {
                Some((v, at)) if v == version => at,
                _ => now,
            };
            seen.insert(node.to_owned(), (version.to_owned(), at));
        }
        self.seen = seen;
    }

    /// The follower's own Lease was renewed.
    pub fn renewed(&mut self, now: Instant) {
        self.own_renewed = Some(now);
    }

    /// The live nodes at `now`; frozen while the follower's own renewals fail (see the
    /// module's comment).
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

    /// The nodes with a Lease that is not live at `now` (nodes without a Lease are in
    /// neither set: their agents keep none).
    pub fn expired(&mut self, now: Instant) -> BTreeSet<String> {
        let live = self.live(now).clone();
        self.seen
            .keys()
            .filter(|n| !live.contains(*n))
            .cloned()
            .collect()
    }
}

/// The directors' liveness as a follower sees it, kept up to date by [`follow`].
#[derive(Debug, Clone)]
pub struct Directors {
    liveness: Arc<Mutex<Liveness>>,
    live: Arc<Mutex<BTreeSet<String>>>,
    expired: Arc<Mutex<BTreeSet<String>>>,
}

impl Directors {
    /// The live directors.
    pub fn live(&self) -> BTreeSet<String> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The directors whose Lease expired.
    pub fn expired(&self) -> BTreeSet<String> {
        self.expired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The follower's own Lease was renewed just now.
    pub fn renewed(&self) {
        self.liveness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .renewed(Instant::now());
    }
}

/// Follows the agents' Leases in `namespace`: returns once they were listed (or after
/// four durations without an answer) with the live set computed, and from then on
/// looks at them ten times per `duration`, calling `changed` whenever the live set
/// changes.
pub async fn follow(
    client: Client,
    namespace: &str,
    duration: Duration,
    changed: impl Fn() + Send + 'static,
) -> Directors {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let (store, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(api, watcher::Config::default().labels(LEASE_LABEL)),
    )
    .default_backoff()
    .touched_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(r) = stream.next().await {
            if let Err(e) = r {
                warn!(error = %e, "watch of the agents' Leases");
            }
        }
    });
    let _ = tokio::time::timeout(duration * 4, store.wait_until_ready()).await;
    let directors = Directors {
        liveness: Arc::new(Mutex::new(Liveness::new(duration))),
        live: Arc::default(),
        expired: Arc::default(),
    };
    let look = {
        let d = directors.clone();
        move || -> bool {
            let leases = store.state();
            let mut l = d.liveness.lock().unwrap_or_else(|p| p.into_inner());
            l.observe(
                leases.iter().filter_map(|l| {
                    Some((
                        l.spec.as_ref()?.holder_identity.as_deref()?,
                        l.metadata.resource_version.as_deref()?,
                    ))
                }),
                Instant::now(),
            );
            let at = Instant::now();
            let now = l.live(at).clone();
            *d.expired.lock().unwrap_or_else(|p| p.into_inner()) = l.expired(at);
            let mut shared = d.live.lock().unwrap_or_else(|p| p.into_inner());
            let moved = *shared != now;
            *shared = now;
            moved
        }
    };
    look();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(duration / 10);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if look() {
                changed();
            }
        }
    });
    directors
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
    fn a_follower_that_cannot_renew_keeps_the_live_set_it_had() {
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
    fn a_follower_that_renews_nothing_judges_by_what_it_sees() {
        // The operator: no Lease of its own, never frozen.
        let t0 = Instant::now();
        let mut l = Liveness::new(D);
        l.observe([("a", "1")], t0);
        assert_eq!(l.live(t0).len(), 1);
        l.observe([("a", "1")], t0 + D);
        assert!(l.live(t0 + D).is_empty());
        assert_eq!(l.expired(t0 + D).into_iter().collect::<Vec<_>>(), ["a"]);
    }
}
