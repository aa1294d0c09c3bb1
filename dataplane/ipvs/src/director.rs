//! [`IpvsDirector`]: kernel IPVS as a [`Dataplane`]: the IPVS table ([`IpvsDataplane`]),
//! the director sysctls and the FullNAT nftables table, with an outcome per service.
//!
//! Host configuration goes through [`DirectorHost`] ([`SystemHost`] for the real
//! /proc/sys and nft; with the `testing` feature, `FakeHost` records and fails on
//! demand).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use kubelvs_model::{
    self as model, ApplyContext, Dataplane, DataplaneKind, DataplaneReport, NodePlan, Outcome,
    RealServerNote, RealServerState, Reason, ServiceOutcome,
};

use crate::apply::{IpvsDataplane, IpvsKernel};
use crate::error::Error;
use crate::fullnat::{apply_nft_script, fullnat_ruleset};
use crate::guard::guard_ruleset;
use crate::sysctl::{director_sysctls_for, Sysctl};
use crate::table::{DesiredService, PlanError, ServiceId};

/// The director's host configuration besides the IPVS table.
pub trait DirectorHost: Send {
    /// Sets each sysctl whose value differs; returns how many it wrote.
    fn ensure_sysctls(&mut self, list: &[Sysctl]) -> Result<u64, Error>;
    /// Replaces our nftables table with `script` (see [`fullnat_ruleset`]).
    fn load_nft(&mut self, script: &str) -> Result<(), Error>;
}

/// /proc/sys of the calling thread's network namespace, and `nft -f -`.
#[derive(Debug, Clone)]
pub struct SystemHost {
    root: PathBuf,
}

impl Default for SystemHost {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/proc/sys"),
        }
    }
}

impl SystemHost {
    /// Sysctls under `root` instead of /proc/sys.
    pub fn with_root(root: impl AsRef<Path>) -> Self {
        Self {
            root: root.as_ref().to_owned(),
        }
    }
}

impl DirectorHost for SystemHost {
    fn ensure_sysctls(&mut self, list: &[Sysctl]) -> Result<u64, Error> {
        let mut writes = 0;
        for s in list {
            let path = self.root.join(s.path);
            let current = std::fs::read_to_string(&path).map_err(|source| Error::Sysctl {
                path: path.clone(),
                source,
            })?;
            if current.trim() != s.value {
                std::fs::write(&path, format!("{}\n", s.value))
                    .map_err(|source| Error::Sysctl { path, source })?;
                writes += 1;
            }
        }
        Ok(writes)
    }

    fn load_nft(&mut self, script: &str) -> Result<(), Error> {
        apply_nft_script(script)
    }
}

/// Kernel IPVS as a [`Dataplane`].
#[derive(Debug)]
pub struct IpvsDirector<K: IpvsKernel = crate::IpvsClient, H: DirectorHost = SystemHost> {
    table: IpvsDataplane<K>,
    host: H,
    /// The FullNAT script last loaded, so an unchanged plan runs no nft.
    nft_loaded: Option<String>,
    /// The VIP guard script last loaded.
    guard_loaded: Option<String>,
    /// Services of the last apply that are programmed, for traffic counters.
    programmed: BTreeMap<ServiceId, model::ServiceKey>,
}

impl<K: IpvsKernel, H: DirectorHost> IpvsDirector<K, H> {
    pub fn new(table: IpvsDataplane<K>, host: H) -> Self {
        Self {
            table,
            host,
            nft_loaded: None,
            guard_loaded: None,
            programmed: BTreeMap::new(),
        }
    }

    pub fn table(&mut self) -> &mut IpvsDataplane<K> {
        &mut self.table
    }

    pub fn host(&mut self) -> &mut H {
        &mut self.host
    }
}

/// The field of a VirtualService a conversion error is about.
fn plan_error_reason(s: &model::Service, e: &PlanError) -> Reason {
    let field = match e {
        PlanError::UnsupportedScheduler { .. } => "spec.scheduler",
        PlanError::BadWeight { .. } => "spec.weight",
        PlanError::BadPersistencePrefix { .. } => "spec.persistence",
    };
    let object = match e {
        PlanError::BadWeight { real_server, .. } => s
            .real_servers
            .iter()
            .find(|r| r.address == *real_server)
            .map_or(&s.source, |r| &r.source),
        _ => &s.source,
    };
    Reason::new(object, field, e.to_string())
}

impl<K, H> Dataplane for IpvsDirector<K, H>
where
    K: IpvsKernel + Send,
    H: DirectorHost,
{
    fn name(&self) -> &'static str {
        DataplaneKind::Ipvs.name()
    }

    /// One dump of the services, then one of each programmed service's destinations.
    fn traffic(&mut self) -> kubelvs_model::TrafficReport {
        let mut out = kubelvs_model::TrafficReport::default();
        let Ok(services) = self.table.client().dump_services() else {
            return out;
        };
        for s in services {
            let Some(key) = self.programmed.get(&s.id).copied() else {
                continue;
            };
            out.services.push((key, traffic_of(&s.stats)));
            let Ok(dests) = self.table.client().dump_dests(&s.id) else {
                continue;
            };
            for d in dests {
                out.real_servers.push((
                    Some(key),
                    SocketAddr::new(d.id.addr, d.id.port),
                    traffic_of(&d.stats),
                ));
            }
        }
        out
    }

    fn apply(&mut self, plan: &NodePlan, ctx: &ApplyContext) -> DataplaneReport {
        let mut report = DataplaneReport::new(self.name());
        let services: Vec<&model::Service> = plan.services_for(DataplaneKind::Ipvs).collect();
        let mut outcomes: BTreeMap<ServiceId, Entry> = BTreeMap::new();
        let mut desired: Vec<DesiredService> = Vec::new();
        let mut planned: Vec<model::Service> = Vec::new();
        for s in &services {
            let outcome = match DesiredService::from_model(s) {
                Ok(d) => {
                    desired.push(d);
                    planned.push((*s).clone());
                    Outcome::Programmed
                }
                Err(e) => Outcome::Unsupported(plan_error_reason(s, &e)),
            };
            outcomes.insert(
                ServiceId::from_key(&s.key),
                (s.key, s.source.clone(), outcome),
            );
        }

        // Sysctls first: forwarding must be on before a NAT service takes traffic.
        let sysctls = director_sysctls_for(&planned);
        if !planned.is_empty() {
            match self.host.ensure_sysctls(&sysctls) {
                Ok(n) => report.writes += n,
                Err(e) => fail_where(&mut outcomes, |_| true, &e.to_string()),
            }
        }

        match self.table.apply_desired(&desired, ctx.now) {
            Ok(r) => {
                report.writes += r.writes;
                report.read_time += r.dump_time;
                for id in &r.conflicts {
                    if let Some((_, source, o)) = outcomes.get_mut(id) {
                        *o = Outcome::Conflict(Reason::new(
                            source,
                            "spec.vip",
                            format!(
                                "IPVS service {id} exists and was not created by kube-lvs; left alone"
                            ),
                        ));
                    }
                }
                for (id, message) in &r.failed {
                    if let Some((_, source, o)) = outcomes.get_mut(id) {
                        if o.is_programmed() {
                            *o = Outcome::Failed(Reason::new(source, "", message.clone()));
                        }
                    }
                }
            }
            Err(e) => fail_where(&mut outcomes, |_| true, &e.to_string()),
        }

        // FullNAT's source NAT lives in an nftables table of ours; run nft only when
        // its script changes.
        let script = fullnat_ruleset(&planned);
        if self.nft_loaded.as_deref() != Some(script.as_str())
            && (self.nft_loaded.is_some() || planned.iter().any(is_fullnat))
        {
            match self.host.load_nft(&script) {
                Ok(()) => {
                    report.writes += 1;
                    self.nft_loaded = Some(script);
                }
                Err(e) => {
                    let fullnat: Vec<model::ServiceKey> = planned
                        .iter()
                        .filter(|s| is_fullnat(s))
                        .map(|s| s.key)
                        .collect();
                    fail_where(&mut outcomes, |k| fullnat.contains(k), &e.to_string());
                }
            }
        }
        // The VIP guard (unserved ports of our VIPs dropped) in a table of its own.
        // It protects the node rather than forwards: a failure to load it fails no
        // service, and it is tried again at the next apply.
        let others: Vec<(std::net::IpAddr, u16, u16)> = self
            .table
            .kernel_services()
            .filter(|id| !self.table.owned().contains(id))
            .filter_map(|id| match *id {
                ServiceId::Inet {
                    protocol,
                    addr,
                    port,
                } => Some((addr, protocol, port)),
                _ => None,
            })
            .collect();
        let guard = guard_ruleset(&planned, &others);
        if self.guard_loaded.as_deref() != Some(guard.as_str())
            && (self.guard_loaded.is_some() || !planned.is_empty())
        {
            self.guard_loaded = None;
            if self.host.load_nft(&guard).is_ok() {
                report.writes += 1;
                self.guard_loaded = Some(guard);
            } else {
                // Fail open: an older guard must not go on dropping a port just
                // programmed.
                let _ = self.host.load_nft(&guard_ruleset(&[], &[]));
            }
        }

        for (service, dest) in self.table.draining().keys() {
            if let ServiceId::Inet { .. } = service {
                if let Some((key, _, _)) = outcomes.get(service) {
                    report.real_servers.push(RealServerNote {
                        service: *key,
                        real_server: SocketAddr::new(dest.addr, dest.port),
                        state: RealServerState::Draining,
                    });
                }
            }
        }
        self.programmed = outcomes
            .iter()
            .filter(|(_, (_, _, o))| o.is_programmed())
            .map(|(id, (key, _, _))| (*id, *key))
            .collect();
        report.services = outcomes
            .into_values()
            .map(|(key, source, outcome)| ServiceOutcome {
                key,
                source,
                outcome,
            })
            .collect();
        report
    }

    /// An empty plan removes every owned service; FullNAT's nftables table goes too
    /// (a fresh process does not know whether an earlier one loaded it, and the script
    /// deletes it only if present). The director's forwarding sysctls stay: other
    /// software on a director relies on forwarding as much as IPVS did.
    fn remove_all(&mut self, ctx: &ApplyContext) -> Result<u64, String> {
        let report = self.apply(&NodePlan::default(), ctx);
        let mut writes = report.writes;
        let mut left = Vec::new();
        if !self.table.owned().is_empty() {
            let ids: Vec<String> = self.table.owned().iter().map(|id| id.to_string()).collect();
            left.push(format!("IPVS services {}", ids.join(", ")));
        }
        match self
            .host
            .load_nft(&(fullnat_ruleset(&[]) + &guard_ruleset(&[], &[])))
        {
            Ok(()) => {
                writes += 1;
                self.nft_loaded = None;
                self.guard_loaded = None;
            }
            // Without nft no agent here could have loaded the table either.
            Err(Error::Nft { detail, .. }) if detail.starts_with("cannot run nft") => {}
            Err(e) => left.push(format!("nftables table: {e}")),
        }
        if left.is_empty() {
            Ok(writes)
        } else {
            Err(format!("could not remove: {}", left.join("; ")))
        }
    }
}

/// A service's key, its VirtualService and its outcome so far.
type Entry = (model::ServiceKey, model::ObjectRef, Outcome);

/// Marks the still-programmed services matching `pred` as failed with `message`.
fn fail_where(
    outcomes: &mut BTreeMap<ServiceId, Entry>,
    pred: impl Fn(&model::ServiceKey) -> bool,
    message: &str,
) {
    for (key, source, o) in outcomes.values_mut() {
        if o.is_programmed() && pred(key) {
            *o = Outcome::Failed(Reason::new(source, "", message));
        }
    }
}

fn traffic_of(s: &crate::codec::Stats) -> kubelvs_model::Traffic {
    kubelvs_model::Traffic {
        connections: s.conns,
        packets: s.inpkts + s.outpkts,
        bytes: s.inbytes + s.outbytes,
    }
}

fn is_fullnat(s: &model::Service) -> bool {
    s.forwarding == model::Forwarding::FullNat
}
