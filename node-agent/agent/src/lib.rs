//! `kube-lvs-agent`: computes this node's plan, programs it through the dataplanes,
//! health-checks real servers, serves metrics. This crate holds the agent's loop
//! and its parts; `main.rs` parses flags and builds the dataplanes.
//!
//! One code path: the objects come from a YAML file in standalone mode (the
//! keepalived use case) and, in a cluster, from watches; both feed the same pure
//! planner and the same `Vec<Box<dyn Dataplane>>`.

pub mod bgp;
pub mod checker;
pub mod cleanup;
pub mod cluster;
pub mod events;
pub mod file_watch;
pub mod health;
pub mod liveness;
pub mod metrics;
pub mod node;
pub mod remembered;
pub mod source;
pub mod status;

/// The agent's files in `--state-dir`: what each dataplane owns, and the real servers
/// last found down.
pub mod state_files {
    pub const NETCONF_OWNED: &str = "netconf-owned";
    pub const IPVS_OWNED: &str = "ipvs-owned";
    pub const HEALTH_DOWN: &str = "health-down";
    pub const ALL: [&str; 3] = [NETCONF_OWNED, IPVS_OWNED, HEALTH_DOWN];
}

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use kubelvs_model::ObjectRef;
use kubelvs_planner::NodeIdentity;
use tracing::{error, info, warn};

use crate::checker::Checker;
use crate::metrics::{DataplaneLabels, Metrics, OutcomeLabels};
use crate::node::Node;

/// What wakes the agent's loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// SIGHUP, or the configuration file changed: read it again (once the changes
    /// stop coming: a writer may not be done).
    Reload,
    /// A change known to be whole (the configuration file written and closed, or
    /// replaced; an object changed in the API server): read at once, with whatever
    /// else is already queued.
    Complete,
    /// A real server went down or up.
    Health,
    /// A neighbour's MAC on the director's interface appeared, changed or went.
    Neighbours,
    /// SIGTERM or SIGINT: stop, leaving the dataplanes as they are.
    Stop,
}

/// Where the objects come from.
#[derive(Debug)]
pub enum Source {
    /// Standalone mode's YAML file.
    File(PathBuf),
    /// Watches of a cluster; status is written back through `status`.
    Cluster {
        watches: cluster::ClusterSource,
        status: cluster::StatusSender,
        events: tokio::sync::mpsc::UnboundedSender<events::Notice>,
        /// This node's RealServer observations as the API server held them at start.
        at_start: BTreeMap<ObjectRef, kubelvs_crds::HealthObservation>,
    },
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node: NodeIdentity,
    /// How often the file is checked for changes (where inotify does not say first).
    pub poll: Duration,
    /// A burst of changes within this much quiet becomes one apply.
    pub debounce: Duration,
    /// Full re-apply even without changes (repairs what others changed).
    pub resync: Duration,
    pub health_concurrency: usize,
    /// How often traffic counters are read from the dataplanes into /metrics.
    pub traffic_interval: Duration,
    /// Where the agent keeps what must survive a restart (the health view).
    pub state_dir: Option<PathBuf>,
    /// BIRD 2's daemon, started when a pool announces by BGP.
    pub bird: PathBuf,
    /// On stop, how long BGP announcements stay up tagged GRACEFUL_SHUTDOWN, so the
    /// routers move traffic away first.
    pub bgp_drain: Duration,
}

/// What a burst of events amounts to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Burst {
    pub reload: bool,
    pub stop: bool,
}

/// Debounce: takes the events that keep arriving less than `quiet` apart, for at most
/// `4 x quiet` (so a steady stream still gets applied), and says whether any asked for
/// a reload (or `changed` saw the source change meanwhile) or a stop. A burst of
/// edits becomes one apply.
pub fn gather(
    events: &mpsc::Receiver<Event>,
    quiet: Duration,
    mut changed: impl FnMut() -> bool,
) -> Burst {
    let mut burst = Burst::default();
    let deadline = Instant::now() + quiet * 4;
    while Instant::now() < deadline {
        match events.recv_timeout(quiet) {
            Ok(Event::Stop) => {
                burst.stop = true;
                return burst;
            }
            Ok(Event::Reload | Event::Complete) => burst.reload = true,
            Ok(Event::Health | Event::Neighbours) => {}
            Err(_) => break,
        }
        if changed() {
            burst.reload = true;
        }
    }
    burst
}

/// The file's identity for change detection (cluster mode: nothing to poll).
fn stamp(source: &Source) -> Option<(SystemTime, u64)> {
    let Source::File(path) = source else {
        return None;
    };
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Reads the dataplanes' traffic counters into the metrics when `interval` has passed
/// since the last read (`last_read`), whether or not anything was applied since.
fn read_traffic(
    node: &mut Node,
    metrics: &Metrics,
    last_read: &mut Option<Instant>,
    interval: Duration,
) {
    if last_read.is_some_and(|t| t.elapsed() < interval) {
        return;
    }
    *last_read = Some(Instant::now());
    let reports = node.traffic();
    let mut services = std::collections::HashSet::new();
    let mut real_servers = std::collections::HashSet::new();
    for &(dataplane, ref t) in &reports {
        for (key, c) in &t.services {
            let labels = metrics::ServiceLabels {
                dataplane,
                service: metrics::Shown(*key),
            };
            services.insert(labels);
            metrics.virtual_service.observe(labels, *c);
        }
        for (key, rs, c) in &t.real_servers {
            let labels = metrics::BackendLabels {
                dataplane,
                service: metrics::Shown(*key),
                real_server: metrics::Shown(*rs),
            };
            real_servers.insert(labels);
            metrics.real_server.observe(labels, *c);
        }
    }
    // Series of what left the dataplanes go with it.
    metrics.virtual_service.retain(&services);
    metrics.real_server.retain(&real_servers);
}

/// Sends this node's status entries (cluster mode).
fn publish_status(
    source: &Source,
    published: &mut status::Published,
    directors: &BTreeMap<ObjectRef, kubelvs_crds::DirectorStatus>,
    observations: &BTreeMap<ObjectRef, kubelvs_crds::HealthObservation>,
) {
    let Source::Cluster {
        status, watches, ..
    } = source
    else {
        return;
    };
    let Some(desired) = published.changed(directors, observations, |o| watches.uid_of(o)) else {
        return;
    };
    // Unchanged: the writer is not woken for nothing (the first plan always is).
    status.send_if_modified(|d| {
        let changed = d.as_deref() != Some(&desired);
        if changed {
            *d = Some(Arc::new(desired));
        }
        changed
    });
}

/// A stopping agent's BGP announcements: tagged GRACEFUL_SHUTDOWN for `grace`, so the
/// routers move traffic to the other directors while this one still forwards; they
/// are withdrawn when the agent (and its BIRD) exits.
fn drain(announcements: &mut bgp::Announcements, grace: Duration) {
    match announcements.drain() {
        Ok(true) => {
            info!(
                grace_ms = grace.as_millis() as u64,
                "BGP: draining (GRACEFUL_SHUTDOWN) before stopping"
            );
            std::thread::sleep(grace);
        }
        Ok(false) => {}
        Err(e) => {
            warn!(error = %e, "BGP: could not drain; the announcements are withdrawn as the agent stops")
        }
    }
}

/// Runs the agent until `Event::Stop`, and gives the dataplanes back (as they are:
/// stopping flushes nothing). Applies on the calling thread (dataplanes
/// belong to the network namespace of the thread that opened them); health checks
/// and the metrics server run on `rt`.
pub fn run(
    settings: Settings,
    source: Source,
    mut node: Node,
    rt: tokio::runtime::Handle,
    events: mpsc::Receiver<Event>,
    wake: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Node> {
    let mut checker = Checker::new(rt, wake, metrics.clone(), settings.health_concurrency);
    if let Some(dir) = &settings.state_dir {
        checker = checker.remembering(remembered::DownStore::in_dir(dir));
    }
    let mut seen_stamp = None;
    let mut last_apply: Option<Instant> = None;
    let mut objects = source::Objects::default();
    let mut docs = source::Cache::default();
    // Keeps the last plan, and re-plans only what changed (objects carry versions).
    let mut planner = kubelvs_planner::Planner::default();
    let mut planned_for: Option<NodeIdentity> = None;
    let mut notices = events::Notices::default();
    let mut traffic_read: Option<Instant> = None;
    let mut rejected: Vec<source::Rejected> = Vec::new();
    let mut problems: BTreeSet<String> = BTreeSet::new();
    let mut have_config = false;
    let mut live_seen: Option<BTreeSet<String>> = None;
    let bird = settings.bird.clone();
    let bird_dir = settings
        .state_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join("bird");
    let mut published = status::Published::default();
    let mut announcements = bgp::Announcements::new(move || {
        Box::new(bgp::Bird::new(&bird, &bird_dir)) as Box<dyn bgp::Speaker>
    });
    loop {
        // Wait for something to do.
        let mut reload = false;
        let mut health = false;
        let mut complete = false;
        match events.recv_timeout(settings.poll) {
            Ok(Event::Stop) => {
                info!("stopping");
                drain(&mut announcements, settings.bgp_drain);
                return Ok(node);
            }
            Ok(Event::Reload) => reload = true,
            Ok(Event::Complete) => (reload, complete) = (true, true),
            Ok(Event::Health | Event::Neighbours) => health = true,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(node),
        }
        let now_stamp = stamp(&source);
        if now_stamp != seen_stamp {
            reload = true;
        }
        // A DR real server's MAC being resolved wakes the loop through the neighbour
        // watch (`Event::Neighbours`); the resync solicits unresolved ones again.
        let resync = last_apply.is_none_or(|t| t.elapsed() >= settings.resync);
        if !(reload || health || resync) {
            read_traffic(
                &mut node,
                &metrics,
                &mut traffic_read,
                settings.traffic_interval,
            );
            continue;
        }
        // A complete write needs no quiet; what is already queued is still taken.
        let quiet = if complete {
            Duration::from_millis(1)
        } else {
            settings.debounce
        };
        let burst = gather(&events, quiet, || stamp(&source) != now_stamp);
        if burst.stop {
            info!("stopping");
            drain(&mut announcements, settings.bgp_drain);
            return Ok(node);
        }
        reload |= burst.reload;
        // How long the reload and the plan took, for the "applied" line.
        let started = Instant::now();
        if reload || !have_config {
            seen_stamp = stamp(&source);
            let loaded = match &source {
                Source::File(path) => docs
                    .load(path, &mut objects)
                    .map_err(|e| (path.display().to_string(), e)),
                Source::Cluster { watches, .. } => {
                    let (o, r) = watches.snapshot();
                    objects = o;
                    Ok(r)
                }
            };
            match loaded {
                Ok(r) => {
                    for bad in r.iter().filter(|b| !rejected.contains(b)) {
                        warn!(error = %bad.0, "object rejected");
                        // In a cluster, on the object too: `kubectl describe` shows it.
                        if let (Source::Cluster { events, .. }, Some(object)) = (&source, &bad.1) {
                            let _ = events.send(events::Notice {
                                object: object.clone(),
                                warning: true,
                                reason: "Malformed",
                                note: format!(
                                    "node {}: {} (left out; the other objects apply)",
                                    settings.node.name, bad.0
                                ),
                            });
                        }
                    }
                    if reload {
                        info!(
                            virtual_services = objects.virtual_services.len(),
                            real_servers = objects.real_servers.len(),
                            address_pools = objects.address_pools.len(),
                            rejected = r.len(),
                            "objects read"
                        );
                    }
                    metrics.rejected_objects.set(r.len() as i64);
                    rejected = r;
                    have_config = true;
                }
                Err((file, e)) => {
                    // Keep programming what we had: a missing, unreadable, empty or
                    // truncated file never empties the dataplanes, also at start (a
                    // restarted agent leaves what its predecessor programmed).
                    error!(%file, error = %e, "configuration not applied");
                    metrics.config_refused.inc();
                    if !have_config {
                        continue;
                    }
                }
            }
        }
        let identity = match &source {
            Source::Cluster { watches, .. } => watches.node(&settings.node),
            Source::File(_) => settings.node.clone(),
        };
        // Planning is pure but not free at 100,000 objects: redo it (and the probe
        // set it implies) only when the objects or this node changed; a resync
        // re-applies the same plan.
        let read_ms = started.elapsed().as_millis() as u64;
        let cached = !reload && planned_for.as_ref() == Some(&identity);
        if !cached {
            let p = planner.plan(&identity, objects.planner());
            let now_problems: BTreeSet<String> = p.problems.iter().map(|p| p.to_string()).collect();
            for p in now_problems.difference(&problems) {
                warn!(problem = %p, "plan");
            }
            problems = now_problems;
            checker.set_targets(&health::targets(p));
            if let Source::Cluster { watches, .. } = &source {
                // Only directors renew a Lease: liveness matters for announcing.
                watches.set_directing(!p.services.is_empty());
            }
            planned_for = Some(identity.clone());
        }
        let planned = planner.current();
        let unhealthy = checker.unhealthy();
        // A copy only to quiesce: at 100,000 real servers it is tens of megabytes.
        let plan = if unhealthy.is_empty() {
            std::borrow::Cow::Borrowed(planned)
        } else {
            let mut quiesced = planned.clone();
            health::quiesce(&mut quiesced, &unhealthy);
            std::borrow::Cow::Owned(quiesced)
        };

        let t = Instant::now();
        let plan_ms = (t - started).as_millis() as u64 - read_ms;
        // A director that came or went: another may have announced what this one
        // owns (two starting together each saw no other), so announce it again.
        let live = objects
            .announcers
            .as_ref()
            .map(|a| a.live.keys().cloned().collect::<BTreeSet<String>>());
        let ctx = kubelvs_model::ApplyContext {
            reannounce: live_seen.is_some() && live_seen != live,
            ..kubelvs_model::ApplyContext::at(t)
        };
        live_seen = live;
        let reports = node.apply_with(&plan, &ctx);
        metrics.apply_duration.observe(t.elapsed().as_secs_f64());
        metrics.outcomes.clear();
        for r in &reports {
            let dataplane = DataplaneLabels {
                dataplane: r.dataplane.clone(),
            };
            metrics
                .kernel_writes
                .get_or_create(&dataplane)
                .inc_by(r.writes);
            if !r.read_time.is_zero() {
                metrics
                    .kernel_read_duration
                    .get_or_create(&dataplane)
                    .observe(r.read_time.as_secs_f64());
            }
            // Counted here, then set: one series per outcome, not a lookup per service.
            let mut outcomes: BTreeMap<&'static str, i64> = BTreeMap::new();
            for o in r
                .services
                .iter()
                .map(|s| &s.outcome)
                .chain(r.vips.iter().map(|v| &v.outcome))
            {
                *outcomes.entry(o.name()).or_default() += 1;
            }
            for (outcome, n) in outcomes {
                metrics
                    .outcomes
                    .get_or_create(&OutcomeLabels {
                        dataplane: r.dataplane.clone(),
                        outcome: outcome.to_owned(),
                    })
                    .set(n);
            }
        }
        let writes: u64 = reports.iter().map(|r| r.writes).sum();
        if writes > 0 {
            info!(
                writes,
                took_ms = t.elapsed().as_millis() as u64,
                read_ms,
                plan_ms,
                "applied"
            );
        }
        read_traffic(
            &mut node,
            &metrics,
            &mut traffic_read,
            settings.traffic_interval,
        );
        let directors = status::directors(&identity.name, planned, &reports, &unhealthy);
        match announcements.update(
            &identity.addresses,
            &objects.secrets,
            &bgp::servable(planned, &directors),
        ) {
            Ok(true) => info!("BGP announcements changed"),
            Ok(false) => {}
            Err(e) => {
                error!(error = %e, "BGP announcements not applied; retried at the next apply")
            }
        }
        if let Source::Cluster { events, .. } = &source {
            let node = &identity.name;
            let states = checker.states();
            for n in notices.update(node, planned, &unhealthy, &states, &directors) {
                let _ = events.send(n);
            }
            let at_start = match &source {
                Source::Cluster { at_start, .. } => at_start,
                Source::File(_) => &BTreeMap::new(),
            };
            let observations = status::observations(node, planned, &states, at_start);
            publish_status(&source, &mut published, &directors, &observations);
        }
        metrics.observed.set_ready(true);
        last_apply = Some(Instant::now());
    }
}

#[cfg(test)]
mod debounce_tests {
    use super::*;

    const QUIET: Duration = Duration::from_millis(100);

    #[test]
    fn a_burst_of_events_is_taken_whole_and_becomes_one_reload() {
        let (tx, rx) = mpsc::channel();
        let sender = std::thread::spawn(move || {
            for _ in 0..8 {
                tx.send(Event::Reload).unwrap();
                std::thread::sleep(QUIET / 4);
            }
            tx
        });
        let burst = gather(&rx, QUIET, || false);
        let tx = sender.join().unwrap();
        assert_eq!(
            burst,
            Burst {
                reload: true,
                stop: false
            }
        );
        assert!(rx.try_recv().is_err(), "all eight taken by one gather");
        drop(tx);
    }

    #[test]
    fn a_steady_stream_is_cut_after_four_quiet_periods() {
        let (tx, rx) = mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let sender = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = tx.send(Event::Health);
                std::thread::sleep(QUIET / 5);
            }
        });
        let started = Instant::now();
        let burst = gather(&rx, QUIET, || false);
        let took = started.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sender.join().unwrap();
        assert_eq!(
            burst,
            Burst::default(),
            "health events alone ask for no reload"
        );
        assert!(took >= QUIET * 4 && took < QUIET * 6, "{took:?}");
    }

    #[test]
    fn stop_ends_the_burst_at_once_and_a_changed_source_reloads() {
        let (tx, rx) = mpsc::channel();
        tx.send(Event::Health).unwrap();
        tx.send(Event::Stop).unwrap();
        tx.send(Event::Reload).unwrap();
        assert_eq!(
            gather(&rx, QUIET, || false),
            Burst {
                reload: false,
                stop: true
            }
        );
        // The file changed while an event was being taken: reload.
        assert_eq!(
            gather(&rx, QUIET, || true),
            Burst {
                reload: true,
                stop: false
            }
        );
        // Nothing arrives: quiet at once.
        let started = Instant::now();
        assert_eq!(gather(&rx, QUIET, || true), Burst::default());
        assert!(started.elapsed() < QUIET * 2);
    }
}
