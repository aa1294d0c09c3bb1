//! The one seam between the node agent and whatever programs the node: kernel IPVS,
//! the XDP director, and the host's network configuration (VIPs, ARP suppression,
//! tunnels, return paths) all implement [`Dataplane`]. The agent holds a list of them,
//! hands each the whole [`NodePlan`] (each takes its own part), and gets back one
//! [`DataplaneReport`] per dataplane with an outcome per virtual service: a failure is
//! always per service, never for the whole plan.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::{NodePlan, ObjectRef, ServiceKey};

/// What a dataplane is told besides the plan.
#[derive(Debug, Clone, Copy)]
pub struct ApplyContext {
    /// Drives drain deadlines.
    pub now: Instant,
    /// The directors alive changed: announce again every VIP this node announces
    /// (another director may have announced it meanwhile, as two starting together do).
    pub reannounce: bool,
}

impl ApplyContext {
    pub fn at(now: Instant) -> Self {
        Self {
            now,
            reannounce: false,
        }
    }
}

/// Why a part of the plan is not programmed: the object and field a user would fix
/// (or look at), and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reason {
    pub object: ObjectRef,
    /// JSON path of the field the reason is about, e.g. `spec.scheduler`; empty when
    /// no single field is to blame (a kernel error).
    pub field: String,
    pub message: String,
}

impl Reason {
    pub fn new(object: &ObjectRef, field: &str, message: impl Into<String>) -> Self {
        Self {
            object: object.clone(),
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.object, self.message)
        } else {
            write!(f, "{}: {}: {}", self.object, self.field, self.message)
        }
    }
}

/// The result of applying one part of the plan (a virtual service, or a VIP this
/// node carries as a real server).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// In the kernel as the plan says.
    Programmed,
    /// This dataplane cannot do what the object asks (a scheduler, forwarding method
    /// or protocol it lacks, a capacity it does not have). Nothing was written for it.
    Unsupported(Reason),
    /// Someone else holds the same identity (a service another tool made, an address
    /// configured by hand). Left alone.
    Conflict(Reason),
    /// The kernel refused a write, or reading it failed. The rest was still applied;
    /// the next apply retries.
    Failed(Reason),
}

impl Outcome {
    /// A stable name for conditions' `reason` and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Programmed => "Programmed",
            Self::Unsupported(_) => "Unsupported",
            Self::Conflict(_) => "Conflict",
            Self::Failed(_) => "Failed",
        }
    }

    pub fn is_programmed(&self) -> bool {
        matches!(self, Self::Programmed)
    }

    pub fn reason(&self) -> Option<&Reason> {
        match self {
            Self::Programmed => None,
            Self::Unsupported(r) | Self::Conflict(r) | Self::Failed(r) => Some(r),
        }
    }
}

/// The outcome for one virtual service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceOutcome {
    pub key: ServiceKey,
    /// The VirtualService it came from.
    pub source: ObjectRef,
    pub outcome: Outcome,
}

/// The outcome for one VIP this node carries as a DR/TUN real server.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VipOutcome {
    pub vip: IpAddr,
    pub outcome: Outcome,
}

/// A real server that is in the dataplane but not (or no longer) taking new
/// connections as the plan wants.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RealServerNote {
    pub service: ServiceKey,
    pub real_server: SocketAddr,
    pub state: RealServerState,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RealServerState {
    /// Removed from the plan: weight 0, open connections continue, deleted when they
    /// end or at the drain deadline.
    Draining,
    /// The director cannot reach it yet (e.g. no neighbour entry for a DR real server):
    /// not given new connections until it resolves.
    Unresolved(String),
}

/// What one apply of one dataplane did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneReport {
    /// Which dataplane (`ipvs`, `xdp`, `netconf`).
    pub dataplane: String,
    /// One entry per service of the plan this dataplane is responsible for.
    pub services: Vec<ServiceOutcome>,
    /// One entry per real-server VIP, for the dataplane that configures them.
    pub vips: Vec<VipOutcome>,
    /// Real servers draining or unresolved.
    pub real_servers: Vec<RealServerNote>,
    /// Kernel write operations (netlink messages, map updates, sysctl writes): 0 when
    /// the kernel already matched the plan.
    pub writes: u64,
    /// Time spent reading the kernel's table to diff against (IPVS dumps).
    pub read_time: std::time::Duration,
}

impl DataplaneReport {
    pub fn new(dataplane: &str) -> Self {
        Self {
            dataplane: dataplane.to_owned(),
            ..Self::default()
        }
    }

    /// Outcomes that are not [`Outcome::Programmed`], services and VIPs alike.
    pub fn problems(&self) -> impl Iterator<Item = &Outcome> {
        self.services
            .iter()
            .map(|s| &s.outcome)
            .chain(self.vips.iter().map(|v| &v.outcome))
            .filter(|o| !o.is_programmed())
    }

    /// The outcome for `key`, if this dataplane is responsible for it.
    pub fn service(&self, key: &ServiceKey) -> Option<&Outcome> {
        self.services
            .iter()
            .find(|s| s.key == *key)
            .map(|s| &s.outcome)
    }
}

/// Traffic counters as the kernel keeps them (totals since programmed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Connections (IPVS) or new flows (XDP) scheduled.
    pub connections: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// Counters per virtual service and per real server of one dataplane.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficReport {
    pub services: Vec<(ServiceKey, Traffic)>,
    /// Per real server of a service; `None` where the dataplane counts per real server
    /// across services (the XDP director shares one entry per address:port).
    pub real_servers: Vec<(Option<ServiceKey>, SocketAddr, Traffic)>,
}

/// Something that programs this node from its plan. Idempotent and diff-based:
/// applying the same plan twice writes nothing the second time. Never removes what
/// it did not create. Never fails as a whole: every failure is an [`Outcome`] of the
/// part it concerns.
pub trait Dataplane: Send {
    /// `ipvs`, `xdp` or `netconf`, as reports and metrics name it.
    fn name(&self) -> &'static str;

    /// Makes the kernel match this dataplane's part of `plan`.
    fn apply(&mut self, plan: &NodePlan, ctx: &ApplyContext) -> DataplaneReport;

    /// Traffic counters of what this dataplane programmed (none for a dataplane that
    /// forwards nothing). A failure to read them is an empty report.
    fn traffic(&mut self) -> TrafficReport {
        TrafficReport::default()
    }

    /// Removes, for good, everything this dataplane owns on the node and restores what
    /// it changed (`kube-lvs-agent --cleanup`, on uninstall); what others made stays.
    /// An empty plan does most of it; a dataplane overrides this for what an empty plan
    /// keeps. Returns the kernel writes, or what was left and why.
    fn remove_all(&mut self, ctx: &ApplyContext) -> Result<u64, String> {
        Ok(self.apply(&NodePlan::default(), ctx).writes)
    }
}
