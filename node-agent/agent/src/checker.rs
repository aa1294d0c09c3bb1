//! Runs the health probes: one tokio task per target on a shared runtime (not a
//! thread each), at most `concurrency` probes in flight, each target's first probe
//! at a jittered offset within its interval so probes spread out. Transitions wake
//! the agent's loop through `wake`. A new target starts from what was known of its
//! real server ([`crate::remembered`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use kubelvs_model::HealthCheck;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::health::{probe, State, Target, Transition};
use crate::metrics::{Metrics, RealServerLabels};
use crate::remembered::{self, DownStore, ProbeId};
use crate::Event;

#[derive(Debug)]
struct Shared {
    states: Mutex<BTreeMap<Target, State>>,
    limit: Semaphore,
    wake: Mutex<mpsc::Sender<Event>>,
    metrics: Arc<Metrics>,
    /// Where the down probes are kept across restarts, and what was last written.
    store: Option<(DownStore, Mutex<BTreeSet<ProbeId>>)>,
}

impl Shared {
    /// Writes the down probes when they changed since the last write.
    fn remember(&self) {
        let Some((store, written)) = &self.store else {
            return;
        };
        // Under the written lock: two savers never write an older view last.
        let mut written = written.lock().unwrap();
        let down = remembered::down(&self.states.lock().unwrap());
        if *written == down {
            return;
        }
        match store.save(&down) {
            Ok(()) => *written = down,
            Err(e) => warn!(error = %e, "cannot keep the health view for a restart"),
        }
    }
}

/// The probes of the current plan.
#[derive(Debug)]
pub struct Checker {
    rt: tokio::runtime::Handle,
    tasks: HashMap<Target, tokio::task::JoinHandle<()>>,
    shared: Arc<Shared>,
    /// Probes that were down when the agent last ran; used by the first plan.
    down_before_restart: BTreeSet<ProbeId>,
}

fn jitter(target: &Target, interval: Duration) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    target.hash(&mut h);
    let ms = interval.as_millis().max(1) as u64;
    Duration::from_millis(h.finish() % ms)
}

impl Checker {
    pub fn new(
        rt: tokio::runtime::Handle,
        wake: mpsc::Sender<Event>,
        metrics: Arc<Metrics>,
        concurrency: usize,
    ) -> Self {
        Self {
            rt,
            tasks: HashMap::new(),
            shared: Arc::new(Shared {
                states: Mutex::new(BTreeMap::new()),
                limit: Semaphore::new(concurrency.max(1)),
                wake: Mutex::new(wake),
                metrics,
                store: None,
            }),
            down_before_restart: BTreeSet::new(),
        }
    }

    /// Keeps the down probes in `store` and starts from those it holds (call before
    /// the first [`Checker::set_targets`]). A store that cannot be read is reported
    /// and started afresh: every real server healthy until proven otherwise.
    pub fn remembering(mut self, store: DownStore) -> Self {
        let known = store.load().unwrap_or_else(|e| {
            warn!(error = %e, "starting without the previous health view");
            BTreeSet::new()
        });
        if !known.is_empty() {
            info!(
                down = known.len(),
                "real servers down when the agent last ran start down"
            );
        }
        let shared = Arc::get_mut(&mut self.shared).expect("no probe runs yet");
        shared.store = Some((store, Mutex::new(known.clone())));
        self.down_before_restart = known;
        self
    }

    /// Probes exactly `targets` from now on: gone ones stop, new ones start from what
    /// is known of their real server ([`remembered::initial_state`]).
    pub fn set_targets(&mut self, targets: &BTreeMap<Target, HealthCheck>) {
        self.tasks.retain(|t, task| {
            let keep = targets.contains_key(t);
            if !keep {
                task.abort();
                // Its series goes with it (one with the same labels may come back below).
                self.shared.metrics.real_server_healthy.remove(&labels(t));
            }
            keep
        });
        let mut going = BTreeMap::new();
        {
            let mut states = self.shared.states.lock().unwrap();
            states.retain(|t, s| {
                let keep = targets.contains_key(t);
                if !keep {
                    going.insert(t.id(), s.clone());
                }
                keep
            });
        }
        for (t, check) in targets {
            if self.tasks.contains_key(t) {
                continue;
            }
            let shared = self.shared.clone();
            let (t2, check) = (t.clone(), check.clone());
            let state = remembered::initial_state(t, &going, &self.down_before_restart);
            shared
                .metrics
                .real_server_healthy
                .get_or_create(&labels(t))
                .set(i64::from(state.healthy));
            self.shared.states.lock().unwrap().insert(t.clone(), state);
            let task = self.rt.spawn(run(t2, check, shared));
            self.tasks.insert(t.clone(), task);
        }
        // What was down before the restart seeds the first plan only: a real server
        // that leaves the plan and comes back later starts afresh.
        self.down_before_restart.clear();
        self.shared.remember();
    }

    /// Targets currently failing their check.
    pub fn unhealthy(&self) -> BTreeSet<Target> {
        self.shared
            .states
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| !s.healthy)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// The state of every target, for status and tests.
    pub fn states(&self) -> BTreeMap<Target, State> {
        self.shared.states.lock().unwrap().clone()
    }
}

/// The series of a target: the probe is named by its kind and a short hash of what it
/// sends and expects, not by that text (a tenant's path or host, up to 2 KB).
fn labels(t: &Target) -> RealServerLabels {
    let kind = t.check.probe.split([' ', '[']).next().unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.check.probe.hash(&mut h);
    RealServerLabels {
        real_server: t.socket().to_string(),
        probe: format!("{kind}-{:06x}", h.finish() & 0xff_ffff),
    }
}

async fn run(target: Target, check: HealthCheck, shared: Arc<Shared>) {
    let interval = Duration::from_millis(u64::from(check.interval_ms.max(1)));
    tokio::time::sleep(jitter(&target, interval)).await;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = {
            let _permit = shared.limit.acquire().await;
            probe(target.socket(), &check).await
        };
        let (ok, message) = match result {
            Ok(m) => (true, m),
            Err(m) => (false, m),
        };
        let (transition, first) = {
            let mut states = shared.states.lock().unwrap();
            let Some(state) = states.get_mut(&target) else {
                return;
            };
            let first = state.last_probe.is_none();
            let t = state.observe(ok, message.clone(), check.rise, check.fall, Instant::now());
            (t, first)
        };
        if first && transition.is_none() {
            // The first result: status has something to say now.
            let _ = shared.wake.lock().unwrap().send(Event::Health);
        }
        if let Some(t) = transition {
            shared.metrics.health_transitions.inc();
            let gauge = shared
                .metrics
                .real_server_healthy
                .get_or_create(&labels(&target));
            match t {
                Transition::Down => {
                    gauge.set(0);
                    warn!(real_server = %target.socket(), probe = %target.check.probe, reason = %message, "real server down: quiescing (weight 0)");
                }
                Transition::Up => {
                    gauge.set(1);
                    info!(real_server = %target.socket(), probe = %target.check.probe, "real server up: restoring its weight");
                }
            }
            shared.remember();
            let _ = shared.wake.lock().unwrap().send(Event::Health);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::CheckKey;

    #[test]
    fn a_probe_is_labelled_by_kind_and_hash_never_by_its_text() {
        let target = |probe: &str| Target {
            address: "192.0.2.11".parse().unwrap(),
            port: 80,
            check: CheckKey {
                probe: probe.into(),
                interval_ms: 1000,
                timeout_ms: 1000,
                rise: 1,
                fall: 1,
            },
        };
        let long = format!("http GET /{} -> 200", "x".repeat(1000));
        let l = labels(&target(&long));
        assert!(
            l.probe.starts_with("http-") && l.probe.len() == 11,
            "{}",
            l.probe
        );
        assert_ne!(l.probe, labels(&target("http GET /other -> 200")).probe);
        assert_eq!(labels(&target("tcp")).probe.split('-').next(), Some("tcp"));
        assert!(labels(&target("udp [dead]")).probe.starts_with("udp-"));
    }
}
