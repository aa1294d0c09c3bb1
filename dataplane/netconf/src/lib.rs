//! The node's network configuration for LVS, as a [`Dataplane`]: VIPs on directors,
//! the real-server role for DR and TUN (VIP on `lo`, ARP suppressed, tunnel device
//! up with reverse-path filtering off), IP forwarding for XDP directors.
//!
//! Layers, from pure to I/O:
//! - [`desired()`]: plan + options + the node's links -> [`Desired`] (pure).
//! - [`diff()`]: desired + observed + owned -> operations (pure). Only what kube-lvs
//!   added is ever removed; see the module for the rules.
//! - [`NetKernel`]: [`RtNetlink`] (rtnetlink and /proc/sys, no `ip` or `sysctl`
//!   processes); `FakeNet` and `FaultyNet` with the `testing` feature.
//! - [`Netconf`]: reads the node, applies the diff, persists what it owns in a state
//!   file (so a restarted agent still knows), and reports an outcome per virtual
//!   service and per real-server VIP.
//!
//! NAT return path: LVS-NAT needs the real servers' replies to come back through the
//! director. kube-lvs does not install policy routes for that on real servers (the
//! plan would have to name the director per real server, and a route per real
//! server's port reshapes the node's own traffic); where the network does not already
//! route real servers' replies via the director, use `fullnat`. See
//! docs/architecture.md.

pub mod announce;
pub mod desired;
pub mod diff;
#[cfg(feature = "testing")]
pub mod fake;
pub mod kernel;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use kubelvs_model::{
    ApplyContext, Dataplane, DataplaneReport, NodePlan, Outcome, Reason, ServiceOutcome, VipOutcome,
};

pub use desired::{desired, Desired, LocalAddress, NetconfOptions, Refusal, Subject};
pub use diff::{diff, Diff, Observed, Op, Owned};
#[cfg(feature = "testing")]
pub use fake::{FakeNet, FaultyNet, NetFault};
pub use kernel::{NetError, NetKernel, RtNetlink};

/// Where [`Netconf`] keeps what it owns, by default.
pub const DEFAULT_STATE_PATH: &str = "/run/kube-lvs/netconf-owned";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("netconf state file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("netconf state file {path}, line {line}: cannot parse {text:?}")]
    Parse {
        path: PathBuf,
        line: usize,
        text: String,
    },
}

/// The node's network configuration, applied from the plan.
#[derive(Debug)]
pub struct Netconf<K: NetKernel = RtNetlink> {
    kernel: K,
    opts: NetconfOptions,
    owned: Owned,
    state_path: PathBuf,
    /// Director VIPs added on an interface whose announcement failed: retried at
    /// each apply while they are wanted there.
    unannounced: BTreeSet<LocalAddress>,
}

impl<K: NetKernel> Netconf<K> {
    /// Loads what an earlier run owned from `state_path` (missing: nothing).
    pub fn new(
        kernel: K,
        opts: NetconfOptions,
        state_path: impl Into<PathBuf>,
    ) -> Result<Self, StateError> {
        let state_path = state_path.into();
        let owned = match std::fs::read_to_string(&state_path) {
            Ok(text) => Owned::parse(&text).map_err(|(line, text)| StateError::Parse {
                path: state_path.clone(),
                line,
                text,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Owned::default(),
            Err(source) => {
                return Err(StateError::Io {
                    path: state_path,
                    source,
                })
            }
        };
        Ok(Self {
            kernel,
            opts,
            owned,
            state_path,
            unannounced: BTreeSet::new(),
        })
    }

    pub fn kernel(&mut self) -> &mut K {
        &mut self.kernel
    }

    /// What kube-lvs added or changed on this node.
    pub fn owned(&self) -> &Owned {
        &self.owned
    }

    fn store(&self) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: self.state_path.clone(),
            source,
        };
        if let Some(dir) = self.state_path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = self.state_path.with_extension("tmp");
        std::fs::write(&tmp, self.owned.to_text()).map_err(io)?;
        std::fs::rename(&tmp, &self.state_path).map_err(io)
    }

    fn observe(
        &mut self,
        desired: &Desired,
        links: BTreeMap<String, bool>,
    ) -> Result<Observed, NetError> {
        let mut paths: BTreeSet<&String> = desired.sysctls.keys().collect();
        paths.extend(self.owned.sysctls.keys());
        let mut sysctls = BTreeMap::new();
        for p in paths {
            if let Some(v) = self.kernel.read_sysctl(p)? {
                sysctls.insert(p.clone(), v);
            }
        }
        Ok(Observed {
            addresses: self.kernel.addresses()?,
            sysctls,
            links,
        })
    }
}

/// Outcomes so far, by subject.
struct Outcomes<'a> {
    desired: &'a Desired,
    by_subject: BTreeMap<Subject, Outcome>,
}

impl<'a> Outcomes<'a> {
    fn new(desired: &'a Desired) -> Self {
        let by_subject = desired
            .subjects
            .keys()
            .map(|s| {
                let o = match desired.refused.get(s) {
                    Some(Refusal::Unsupported(r)) => Outcome::Unsupported(r.clone()),
                    Some(Refusal::Conflict(r)) => Outcome::Conflict(r.clone()),
                    None => Outcome::Programmed,
                };
                (*s, o)
            })
            .collect();
        Self {
            desired,
            by_subject,
        }
    }

    fn fail(&mut self, subjects: impl IntoIterator<Item = Subject>, message: &str) {
        for s in subjects {
            if let (Some(o), Some(source)) =
                (self.by_subject.get_mut(&s), self.desired.subjects.get(&s))
            {
                if o.is_programmed() {
                    *o = Outcome::Failed(Reason::new(source, "", message));
                }
            }
        }
    }

    fn fail_all(&mut self, message: &str) {
        let all: Vec<Subject> = self.by_subject.keys().copied().collect();
        self.fail(all, message);
    }

    /// The subjects that need what `op` changes (none for undoing).
    fn subjects_of(&self, op: &Op) -> Vec<Subject> {
        let set = match op {
            Op::AddAddress(a) => self.desired.addresses.get(a),
            Op::SetSysctl { path, .. } => self.desired.sysctls.get(path).map(|(_, s)| s),
            Op::LinkUp(l) => self.desired.links_up.get(l),
            _ => None,
        };
        set.into_iter().flatten().copied().collect()
    }

    fn into_report(self, report: &mut DataplaneReport) {
        for (subject, outcome) in self.by_subject {
            match subject {
                Subject::Service(key) => report.services.push(ServiceOutcome {
                    key,
                    source: self.desired.subjects[&subject].clone(),
                    outcome,
                }),
                Subject::RealServerVip(vip) => report.vips.push(VipOutcome { vip, outcome }),
            }
        }
    }
}

impl<K: NetKernel> Dataplane for Netconf<K> {
    fn name(&self) -> &'static str {
        "netconf"
    }

    fn apply(&mut self, plan: &NodePlan, ctx: &ApplyContext) -> DataplaneReport {
        let mut report = DataplaneReport::new(self.name());
        let links = match self.kernel.links() {
            Ok(l) => l,
            Err(e) => {
                let d = desired(plan, &self.opts, &BTreeSet::new());
                let mut outcomes = Outcomes::new(&d);
                outcomes.fail_all(&e.to_string());
                outcomes.into_report(&mut report);
                return report;
            }
        };
        let names: BTreeSet<String> = links.keys().cloned().collect();
        let d = desired(plan, &self.opts, &names);
        let mut outcomes = Outcomes::new(&d);
        let observed = match self.observe(&d, links) {
            Ok(o) => o,
            Err(e) => {
                outcomes.fail_all(&e.to_string());
                outcomes.into_report(&mut report);
                return report;
            }
        };
        for (path, (_, subjects)) in &d.sysctls {
            if !observed.sysctls.contains_key(path) {
                outcomes.fail(
                    subjects.iter().copied(),
                    &format!("sysctl {path} does not exist on this node (no such interface?)"),
                );
            }
        }
        let change = diff(&d, &observed, &self.owned);
        for op in &change.ops {
            let result = match op {
                Op::AddAddress(a) => self.kernel.add_address(a),
                Op::DelAddress(a) => self.kernel.del_address(a),
                Op::SetSysctl { path, value, .. } | Op::RestoreSysctl { path, value } => {
                    self.kernel.write_sysctl(path, value)
                }
                Op::LinkUp(l) => self.kernel.set_link_up(l, true),
                Op::LinkDown(l) => self.kernel.set_link_up(l, false),
            };
            match result {
                Ok(()) => {
                    self.owned.record(op);
                    report.writes += 1;
                    // A VIP newly on an interface took over from another director; one
                    // that left it was taken over by another.
                    match op {
                        Op::AddAddress(a) if a.ifname != "lo" => {
                            self.unannounced.insert(a.clone());
                        }
                        Op::DelAddress(a) if a.ifname != "lo" => {
                            self.unannounced.remove(a);
                            self.kernel.withdraw(a);
                        }
                        _ => {}
                    }
                }
                Err(e) => {
                    let subjects = outcomes.subjects_of(op);
                    outcomes.fail(subjects, &e.to_string());
                }
            }
        }
        self.owned.forget(&change.forget);
        if ctx.reannounce {
            self.unannounced
                .extend(d.addresses.keys().filter(|a| a.ifname != "lo").cloned());
        }
        self.unannounced.retain(|a| d.addresses.contains_key(a));
        for a in std::mem::take(&mut self.unannounced) {
            if let Err(e) = self.kernel.announce(&a) {
                let subjects = outcomes.subjects_of(&Op::AddAddress(a.clone()));
                outcomes.fail(subjects, &e.to_string());
                self.unannounced.insert(a);
            }
        }
        if let Err(e) = self.store() {
            outcomes.fail_all(&e.to_string());
        }
        outcomes.into_report(&mut report);
        report
    }

    /// An empty plan undoes every owned address, sysctl and link; whatever is still
    /// owned afterwards could not be undone.
    fn remove_all(&mut self, ctx: &ApplyContext) -> Result<u64, String> {
        let writes = self.apply(&NodePlan::default(), ctx).writes;
        let o = &self.owned;
        if o.addresses.is_empty() && o.sysctls.is_empty() && o.links.is_empty() {
            return Ok(writes);
        }
        let mut left: Vec<String> = o
            .addresses
            .iter()
            .map(|a| format!("address {a:?}"))
            .collect();
        left.extend(o.sysctls.keys().map(|p| format!("sysctl {p}")));
        left.extend(o.links.iter().map(|l| format!("link {l} up")));
        Err(format!("could not undo: {}", left.join(", ")))
    }
}
