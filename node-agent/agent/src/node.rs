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

/// What was last reported per (dataplane, subject), to log changes only, with the
/// apply that last reported it. Updated in place at every apply, for every service:
/// keys and the usual texts are not allocated.
type Seen = foldhash::HashMap<(&'static str, Subject), (Cow<'static, str>, u64)>;

/// Logs `text` for `key` through `log` if it is not what was last logged, and marks
/// it seen at `apply`.
fn note(
    seen: &mut Seen,
    apply: u64,
    key: (&'static str, Subject),
    text: Cow<'static, str>,
    log: impl FnOnce(&str),
) {
    match seen.entry(key) {
        std::collections::hash_map::Entry::Occupied(mut e) => {
            let (seen, at) = e.get_mut();
            if *seen != text {
                log(&text);
                *seen = text;
            }
            *at = apply;
        }
        std::collections::hash_map::Entry::Vacant(e) => {
            log(&text);
            e.insert((text, apply));
        }
    }
}

/// Every dataplane of this node, applied in order (netconf first: a director's VIPs
/// and a real server's ARP suppression before traffic is steered).
pub struct Node {
    dataplanes: Vec<Box<dyn Dataplane>>,
    seen: Seen,
    applies: u64,
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
            applies: 0,
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
        self.applies += 1;
        let (seen, apply) = (&mut self.seen, self.applies);
        let names = self.dataplanes.iter().map(|d| d.name());
        for (dataplane, r) in names.zip(&reports) {
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
                note(seen, apply, (dataplane, subject), text, |text| {
                    let subject = match subject {
                        Subject::RealServerVip(vip) => format!("real-server VIP {vip}"),
                        Subject::Service(key) | Subject::RealServer(key, _) => key.to_string(),
                    };
                    match outcome {
                        Outcome::Programmed => info!(%dataplane, %subject, "programmed"),
                        _ => warn!(%dataplane, %subject, outcome = %text, "not programmed"),
                    }
                });
            }
            for n in &r.real_servers {
                let key = (dataplane, Subject::RealServer(n.service, n.real_server));
                let text: Cow<'static, str> = match &n.state {
                    RealServerState::Draining => "Draining".into(),
                    state => format!("{state:?}").into(),
                };
                note(
                    seen,
                    apply,
                    key,
                    text,
                    |state| info!(%dataplane, service = %n.service, real_server = %n.real_server, %state, "real server"),
                );
            }
        }
        seen.retain(|_, (_, at)| *at == apply);
        reports
    }
}
