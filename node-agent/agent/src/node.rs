//! The node's dataplanes behind one list, and what the agent logs about outcomes.

use std::collections::BTreeMap;
use std::time::Instant;

use kubelvs_model::{ApplyContext, Dataplane, DataplaneReport, NodePlan, Outcome};
use tracing::{info, warn};

/// What was last reported per (dataplane, subject), to log changes only.
type Seen = BTreeMap<(String, String), String>;

/// Every dataplane of this node, applied in order (netconf first: a director's VIPs
/// and a real server's ARP suppression before traffic is steered).
pub struct Node {
    dataplanes: Vec<Box<dyn Dataplane>>,
    seen: Seen,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.dataplanes.iter().map(|d| d.name()).collect();
        f.debug_struct("Node").field("dataplanes", &names).finish()
    }
}

impl Node {
    pub fn new(dataplanes: Vec<Box<dyn Dataplane>>) -> Self {
        Self {
            dataplanes,
            seen: Seen::new(),
        }
    }

    /// The dataplanes, in apply order (for `--cleanup` on uninstall).
    pub fn dataplanes_mut(&mut self) -> &mut [Box<dyn Dataplane>] {
        &mut self.dataplanes
    }

    /// Traffic counters of every dataplane, by dataplane name.
    pub fn traffic(&mut self) -> Vec<(&'static str, kubelvs_model::TrafficReport)> {
        self.dataplanes
            .iter_mut()
            .map(|d| (d.name(), d.traffic()))
            .collect()
    }

    /// Applies `plan` on every dataplane; logs each outcome that changed.
    pub fn apply(&mut self, plan: &NodePlan, now: Instant) -> Vec<DataplaneReport> {
        self.apply_with(plan, &ApplyContext::at(now))
    }

    /// [`Node::apply`] with the whole context (see [`ApplyContext::reannounce`]).
    pub fn apply_with(&mut self, plan: &NodePlan, ctx: &ApplyContext) -> Vec<DataplaneReport> {
        let ctx = *ctx;
        let reports: Vec<DataplaneReport> = self
            .dataplanes
            .iter_mut()
            .map(|d| d.apply(plan, &ctx))
            .collect();
        let mut seen = Seen::new();
        for r in &reports {
            let subjects = r
                .services
                .iter()
                .map(|s| (s.key.to_string(), &s.outcome))
                .chain(
                    r.vips
                        .iter()
                        .map(|v| (format!("real-server VIP {}", v.vip), &v.outcome)),
                );
            for (subject, outcome) in subjects {
                let text = match outcome.reason() {
                    Some(reason) => format!("{}: {reason}", outcome.name()),
                    None => outcome.name().to_owned(),
                };
                let key = (r.dataplane.clone(), subject.clone());
                if self.seen.get(&key) != Some(&text) {
                    match outcome {
                        Outcome::Programmed => {
                            info!(dataplane = %r.dataplane, %subject, "programmed")
                        }
                        _ => {
                            warn!(dataplane = %r.dataplane, %subject, outcome = %text, "not programmed")
                        }
                    }
                }
                seen.insert(key, text);
            }
            for n in &r.real_servers {
                let key = (
                    r.dataplane.clone(),
                    format!("{} {}", n.service, n.real_server),
                );
                let text = format!("{:?}", n.state);
                if self.seen.get(&key) != Some(&text) {
                    info!(dataplane = %r.dataplane, service = %n.service, real_server = %n.real_server, state = %text, "real server");
                }
                seen.insert(key, text);
            }
        }
        self.seen = seen;
        reports
    }
}
