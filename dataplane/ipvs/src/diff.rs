//! The pure reconciliation decision: kernel table + desired services + what we own +
//! drain bookkeeping + `now` -> the minimal list of operations.
//!
//! Rules:
//! - Services we do not own are never touched, even when a desired service has the
//!   same identity (that is reported as a conflict instead).
//! - A changed scheduler/flags/persistence is one SET_SERVICE, a changed weight or
//!   forwarding one SET_DEST: never delete + add, never flush.
//! - A destination removed from the plan is drained: weight 0 first, deleted when its
//!   active+inactive connections reach 0 or its deadline passes. A destination with
//!   no connections is deleted at once, and so is a UDP one (UDP has no end of
//!   connection; its entries would keep steering datagrams to it).
//! - A removed service is deleted at once (its VIP is going away).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::codec::{Command, IpvsMessage};
use crate::table::{DesiredService, DestConfig, DestId, KernelService, ServiceConfig, ServiceId};

/// One change to the kernel table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    AddService {
        id: ServiceId,
        config: ServiceConfig,
    },
    UpdateService {
        id: ServiceId,
        config: ServiceConfig,
    },
    DeleteService {
        id: ServiceId,
    },
    AddDest {
        service: ServiceId,
        dest: DestId,
        config: DestConfig,
    },
    UpdateDest {
        service: ServiceId,
        dest: DestId,
        config: DestConfig,
    },
    DeleteDest {
        service: ServiceId,
        dest: DestId,
    },
}

/// The kind of an [`Op`], for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    AddService,
    UpdateService,
    DeleteService,
    AddDest,
    UpdateDest,
    DeleteDest,
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Self::AddService { .. } => OpKind::AddService,
            Self::UpdateService { .. } => OpKind::UpdateService,
            Self::DeleteService { .. } => OpKind::DeleteService,
            Self::AddDest { .. } => OpKind::AddDest,
            Self::UpdateDest { .. } => OpKind::UpdateDest,
            Self::DeleteDest { .. } => OpKind::DeleteDest,
        }
    }

    pub fn service(&self) -> &ServiceId {
        match self {
            Self::AddService { id, .. }
            | Self::UpdateService { id, .. }
            | Self::DeleteService { id } => id,
            Self::AddDest { service, .. }
            | Self::UpdateDest { service, .. }
            | Self::DeleteDest { service, .. } => service,
        }
    }

    /// The one netlink message that performs this operation.
    pub fn to_message(&self) -> IpvsMessage {
        match self {
            Self::AddService { id, config } => {
                IpvsMessage::new(Command::NewService).with_service(config.to_attrs(id))
            }
            Self::UpdateService { id, config } => {
                IpvsMessage::new(Command::SetService).with_service(config.to_attrs(id))
            }
            Self::DeleteService { id } => {
                IpvsMessage::new(Command::DelService).with_service(id.to_attrs())
            }
            Self::AddDest {
                service,
                dest,
                config,
            } => IpvsMessage::new(Command::NewDest)
                .with_service(service.to_attrs())
                .with_dest(config.to_attrs(dest)),
            Self::UpdateDest {
                service,
                dest,
                config,
            } => IpvsMessage::new(Command::SetDest)
                .with_service(service.to_attrs())
                .with_dest(config.to_attrs(dest)),
            Self::DeleteDest { service, dest } => {
                // Identity only: DEL_DEST needs address, port and family.
                let d = crate::codec::DestAttrs {
                    addr_family: Some(crate::table::af_of(dest.addr)),
                    addr: Some(dest.addr),
                    port: Some(dest.port),
                    ..Default::default()
                };
                IpvsMessage::new(Command::DelDest)
                    .with_service(service.to_attrs())
                    .with_dest(d)
            }
        }
    }

    /// Applies the operation to an in-memory table, as the kernel would (used by tests
    /// and by the cached table of the dataplane). Destinations added here have no connections.
    pub fn apply_to(&self, table: &mut BTreeMap<ServiceId, KernelService>) {
        match self {
            Self::AddService { id, config } => {
                table.entry(*id).or_insert_with(|| KernelService {
                    id: *id,
                    config: config.clone(),
                    dests: Vec::new(),
                    stats: Default::default(),
                });
            }
            Self::UpdateService { id, config } => {
                if let Some(s) = table.get_mut(id) {
                    s.config = config.clone();
                }
            }
            Self::DeleteService { id } => {
                table.remove(id);
            }
            Self::AddDest {
                service,
                dest,
                config,
            } => {
                if let Some(s) = table.get_mut(service) {
                    if !s.dests.iter().any(|d| d.id == *dest) {
                        s.dests.push(crate::table::KernelDest {
                            id: *dest,
                            config: *config,
                            active_conns: 0,
                            inact_conns: 0,
                            persist_conns: 0,
                            stats: Default::default(),
                        });
                    }
                }
            }
            Self::UpdateDest {
                service,
                dest,
                config,
            } => {
                if let Some(d) = table
                    .get_mut(service)
                    .and_then(|s| s.dests.iter_mut().find(|d| d.id == *dest))
                {
                    d.config = *config;
                }
            }
            Self::DeleteDest { service, dest } => {
                if let Some(s) = table.get_mut(service) {
                    s.dests.retain(|d| d.id != *dest);
                }
            }
        }
    }
}

/// Destinations being drained, with the deadline after which they are deleted anyway.
pub type Draining = BTreeMap<(ServiceId, DestId), Instant>;

/// The decision for one reconciliation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// In the order they must be sent: service deletes, then service adds/updates,
    /// then destination deletes, updates and adds.
    pub ops: Vec<Op>,
    /// Drain bookkeeping to carry to the next reconciliation.
    pub draining: Draining,
    /// Desired services whose identity is taken by a service we do not own.
    pub conflicts: Vec<ServiceId>,
}

/// Computes the operations that make `kernel` match `desired` for the services in
/// `owned` (plus the desired services not yet in the kernel, which we will own).
pub fn diff(
    kernel: &[KernelService],
    desired: &[DesiredService],
    owned: &BTreeSet<ServiceId>,
    draining: &Draining,
    now: Instant,
    drain_timeout: Duration,
) -> Diff {
    let kernel: BTreeMap<ServiceId, &KernelService> = kernel.iter().map(|s| (s.id, s)).collect();
    let mut want: BTreeMap<ServiceId, &DesiredService> = BTreeMap::new();
    for d in desired {
        want.entry(d.id).or_insert(d);
    }

    let mut out = Diff::default();
    let mut svc_ops = Vec::new();
    let mut del_dest = Vec::new();
    let mut upd_dest = Vec::new();
    let mut add_dest = Vec::new();

    for id in kernel.keys() {
        if owned.contains(id) && !want.contains_key(id) {
            out.ops.push(Op::DeleteService { id: *id });
        }
    }

    for (id, d) in &want {
        let Some(k) = kernel.get(id) else {
            svc_ops.push(Op::AddService {
                id: *id,
                config: d.config.clone(),
            });
            for dd in &d.dests {
                add_dest.push(Op::AddDest {
                    service: *id,
                    dest: dd.id,
                    config: dd.config,
                });
            }
            continue;
        };
        if !owned.contains(id) {
            out.conflicts.push(*id);
            continue;
        }
        if k.config != d.config {
            svc_ops.push(Op::UpdateService {
                id: *id,
                config: d.config.clone(),
            });
        }
        let want_dests: BTreeMap<DestId, &DestConfig> =
            d.dests.iter().map(|dd| (dd.id, &dd.config)).collect();
        for kd in &k.dests {
            match want_dests.get(&kd.id) {
                Some(cfg) => {
                    if !kd.config.same_as(cfg) {
                        upd_dest.push(Op::UpdateDest {
                            service: *id,
                            dest: kd.id,
                            config: **cfg,
                        });
                    }
                }
                None => {
                    let key = (*id, kd.id);
                    let deadline = draining.get(&key).copied();
                    let expired = deadline.is_some_and(|t| now >= t);
                    // UDP has no connection end to wait for: a draining UDP real server
                    // would keep receiving its clients' datagrams until the entries time
                    // out. Deleted at once, expire_nodest_conn expires its entries and
                    // the next datagram is rescheduled.
                    let udp = matches!(id, ServiceId::Inet { protocol, .. } if *protocol == 17);
                    if kd.connections() == 0 || expired || udp {
                        del_dest.push(Op::DeleteDest {
                            service: *id,
                            dest: kd.id,
                        });
                        continue;
                    }
                    if kd.config.weight != 0 {
                        upd_dest.push(Op::UpdateDest {
                            service: *id,
                            dest: kd.id,
                            config: DestConfig {
                                weight: 0,
                                ..kd.config
                            },
                        });
                    }
                    // A weight-0 destination we did not book (agent restart) starts its clock now.
                    out.draining
                        .insert(key, deadline.unwrap_or(now + drain_timeout));
                }
            }
        }
        for dd in &d.dests {
            if !k.dests.iter().any(|kd| kd.id == dd.id) {
                add_dest.push(Op::AddDest {
                    service: *id,
                    dest: dd.id,
                    config: dd.config,
                });
            }
        }
    }

    out.ops.extend(svc_ops);
    out.ops.extend(del_dest);
    out.ops.extend(upd_dest);
    out.ops.extend(add_dest);
    out
}

/// What we own after a reconciliation: owned services still in the kernel or still
/// wanted, plus the ones this diff creates.
pub fn owned_after(
    kernel: &[KernelService],
    desired: &[DesiredService],
    owned: &BTreeSet<ServiceId>,
    ops: &[Op],
) -> BTreeSet<ServiceId> {
    let in_kernel: BTreeSet<ServiceId> = kernel.iter().map(|s| s.id).collect();
    let wanted: BTreeSet<ServiceId> = desired.iter().map(|s| s.id).collect();
    let mut out: BTreeSet<ServiceId> = owned
        .iter()
        .filter(|id| in_kernel.contains(id) || wanted.contains(id))
        .copied()
        .collect();
    for op in ops {
        match op {
            Op::AddService { id, .. } => {
                out.insert(*id);
            }
            Op::DeleteService { id } => {
                out.remove(id);
            }
            _ => {}
        }
    }
    out
}
