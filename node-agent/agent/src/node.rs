//! The node's dataplanes behind one list, and what the agent logs about outcomes.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use kubelvs_model::{
    ApplyContext, Dataplane, DataplaneReport, NodePlan, Outcome, RealServerState, ServiceKey,
};
use tracing::{info, warn};

/// What an outcome is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Subject {
    Service(ServiceKey),
    RealServerVip(IpAddr),
    RealServer(ServiceKey, SocketAddr),
}

/// What was last reported per (dataplane, subject), to log changes only. Keys and
/// the usual texts are not allocated: this is rebuilt at every apply, for every
/// service.
type Seen = foldhash::HashMap<(&'static str, Subject), Cow<'static, str>>;

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
            seen: Seen::default(),
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
        let mut seen = Seen::with_capacity_and_hasher(self.seen.len(), Default::default());
        for (d, r) in self.dataplanes.iter().zip(&reports) {
            let dataplane = d.name();
            let subjects = r
                .services
                .iter()
                .map(|s| (Subject::Service(s.key), &s.outcome))
                .chain(
                    r.vips
                        .iter()
                        .map(|v| (Subject::RealServerVip(v.vip), &v.outcome)),
                );
            for (subject, outcome) in subjects {
                let text: Cow<'static, str> = match outcome.reason() {
                    Some(reason) => format!("{}: {reason}", outcome.name()).into(),
                    None => outcome.name().into(),
                };
                let key = (dataplane, subject);
                if self.seen.get(&key) != Some(&text) {
                    let subject = match subject {
                        Subject::RealServerVip(vip) => format!("real-server VIP {vip}"),
                        Subject::Service(key) | Subject::RealServer(key, _) => key.to_string(),
                    };
                    match outcome {
                        Outcome::Programmed => info!(%dataplane, %subject, "programmed"),
                        _ => {
                            warn!(%dataplane, %subject, outcome = %text, "not programmed")
                        }
                    }
                }
                seen.insert(key, text);
            }
            for n in &r.real_servers {
                let key = (dataplane, Subject::RealServer(n.service, n.real_server));
                let text: Cow<'static, str> = match &n.state {
                    RealServerState::Draining => "Draining".into(),
                    state => format!("{state:?}").into(),
                };
                if self.seen.get(&key) != Some(&text) {
                    info!(%dataplane, service = %n.service, real_server = %n.real_server, state = %text, "real server");
                }
                seen.insert(key, text);
            }
        }
        self.seen = seen;
        reports
    }
}
