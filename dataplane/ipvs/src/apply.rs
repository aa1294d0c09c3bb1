//! [`IpvsDataplane::apply`]: dump once, diff (pure, [`crate::diff()`]), send only the changes.
//!
//! A full apply dumps the services (one dump) every time, but the destinations of each
//! service cost a dump of their own: 10,000 of them for 10,000 services. So it reads
//! them only where the cache (what the last complete apply read and wrote) cannot be
//! trusted, plus a rotating slice of the rest ([`dests_to_read`]): what another tool
//! changed is still repaired, within [`VERIFY_ROUNDS`] applies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kubelvs_model as model;

use crate::client::IpvsClient;
use crate::codec::IpvsMessage;
use crate::diff::{diff, owned_after, Draining, Op, OpKind};
use crate::error::Error;
use crate::ownership::OwnedServices;
use crate::table::{DesiredService, KernelDest, KernelService, ServiceId};

/// Every destination list the cache holds is read again at least once per this many
/// full applies.
pub const VERIFY_ROUNDS: usize = 16;

/// A full apply reads at least this many trusted services' destinations (all of a
/// small table, every time).
pub const VERIFY_MIN: usize = 64;

/// Default time a removed real server is given to finish its connections.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// What one apply did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub added_services: usize,
    pub updated_services: usize,
    pub deleted_services: usize,
    pub added_dests: usize,
    pub updated_dests: usize,
    pub deleted_dests: usize,
    /// Netlink write messages sent by this apply (0 when the kernel already matched).
    pub writes: u64,
    /// Desired services whose identity belongs to a service we do not own: left alone.
    pub conflicts: Vec<ServiceId>,
    /// Destinations still draining (weight 0, waiting for connections or the deadline).
    pub draining: usize,
    /// Time reading the kernel table.
    pub dump_time: Duration,
    /// Services whose destinations were read from the kernel (the rest from the cache).
    pub dest_dumps: usize,
    /// Netlink time of the writes (send + acknowledgements).
    pub write_time: Duration,
    /// Operations the kernel refused (other than convergence: EEXIST on add,
    /// ESRCH/ENOENT on delete). The rest of the plan was still applied.
    pub errors: Vec<Error>,
    /// The services those errors were about, with the first error's message.
    pub failed: BTreeMap<ServiceId, String>,
}

impl ApplyReport {
    fn fail(&mut self, service: ServiceId, e: Error) {
        self.failed.entry(service).or_insert_with(|| e.to_string());
        self.errors.push(e);
    }

    fn count(&mut self, kind: OpKind) {
        match kind {
            OpKind::AddService => self.added_services += 1,
            OpKind::UpdateService => self.updated_services += 1,
            OpKind::DeleteService => self.deleted_services += 1,
            OpKind::AddDest => self.added_dests += 1,
            OpKind::UpdateDest => self.updated_dests += 1,
            OpKind::DeleteDest => self.deleted_dests += 1,
        }
    }

    /// Operations performed, all kinds.
    pub fn ops(&self) -> usize {
        self.added_services
            + self.updated_services
            + self.deleted_services
            + self.added_dests
            + self.updated_dests
            + self.deleted_dests
    }
}

/// What [`IpvsDataplane`] needs from the kernel: implemented by [`IpvsClient`] and,
/// for tests, by `FakeIpvs` (feature `testing`).
pub trait IpvsKernel {
    /// All services, without destinations (one dump).
    fn dump_services(&mut self) -> Result<Vec<KernelService>, Error>;
    /// The destinations of one service (one dump).
    fn dump_dests(&mut self, id: &ServiceId) -> Result<Vec<KernelDest>, Error>;
    /// Sends writes, one result per message, in order.
    fn execute_batch(&mut self, msgs: &[IpvsMessage]) -> Vec<Result<(), Error>>;
    /// Write messages sent so far.
    fn writes(&self) -> u64;
    /// Netlink time spent on writes so far.
    fn write_time(&self) -> Duration;
}

impl IpvsKernel for IpvsClient {
    fn dump_services(&mut self) -> Result<Vec<KernelService>, Error> {
        IpvsClient::dump_services(self)
    }
    fn dump_dests(&mut self, id: &ServiceId) -> Result<Vec<KernelDest>, Error> {
        IpvsClient::dump_dests(self, id)
    }
    fn execute_batch(&mut self, msgs: &[IpvsMessage]) -> Vec<Result<(), Error>> {
        IpvsClient::execute_batch(self, msgs)
    }
    fn writes(&self) -> u64 {
        IpvsClient::writes(self)
    }
    fn write_time(&self) -> Duration {
        IpvsClient::write_time(self)
    }
}

/// Kernel IPVS programmed from the plan, owning only what it created.
#[derive(Debug)]
pub struct IpvsDataplane<K: IpvsKernel = IpvsClient> {
    client: K,
    owned: OwnedServices,
    draining: Draining,
    drain_timeout: Duration,
    /// The table as last dumped plus what we wrote since, for [`IpvsDataplane::apply_incremental`]
    /// and the destinations a full apply trusts. Dropped whenever a write fails, so the
    /// next apply reads the kernel again.
    cache: Option<BTreeMap<ServiceId, KernelService>>,
    /// The last service whose destinations the rotating verification read.
    verified_to: Option<ServiceId>,
}

impl IpvsDataplane<IpvsClient> {
    /// Opens a netlink client in the current network namespace and loads the
    /// ownership state from `owner_state_path` (see [`crate::DEFAULT_STATE_PATH`]).
    pub fn new(owner_state_path: impl Into<PathBuf>) -> Result<Self, Error> {
        Self::with_client(IpvsClient::new()?, owner_state_path)
    }
}

impl<K: IpvsKernel> IpvsDataplane<K> {
    pub fn with_client(client: K, owner_state_path: impl Into<PathBuf>) -> Result<Self, Error> {
        Ok(Self {
            client,
            owned: OwnedServices::load(owner_state_path)?,
            draining: Draining::new(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            cache: None,
            verified_to: None,
        })
    }

    /// How long a removed real server may keep connections before it is deleted anyway.
    pub fn set_drain_timeout(&mut self, d: Duration) {
        self.drain_timeout = d;
    }

    pub fn client(&mut self) -> &mut K {
        &mut self.client
    }

    /// Services we created and still own.
    /// The kernel's services as the last complete apply left them (ours and others'),
    /// if it completed.
    pub fn kernel_services(&self) -> impl Iterator<Item = &ServiceId> {
        self.cache.iter().flat_map(|c| c.keys())
    }

    pub fn owned(&self) -> &BTreeSet<ServiceId> {
        self.owned.ids()
    }

    pub fn draining(&self) -> &Draining {
        &self.draining
    }

    /// Makes the kernel match the IPVS services of the plan (services for another
    /// dataplane are ignored). Safe to call repeatedly: the same plan twice sends zero
    /// writes. `now` drives drain deadlines.
    pub fn apply(
        &mut self,
        services: &[model::Service],
        now: Instant,
    ) -> Result<ApplyReport, Error> {
        self.apply_desired(&ipvs_services(services)?, now)
    }

    /// Like [`IpvsDataplane::apply`], but diffs against the table as this dataplane
    /// last read and wrote it instead of dumping the kernel again, when it has one.
    /// For frequent small changes (one weight) between periodic full applies: it does
    /// not see changes made by others, and drains only progress on a full apply
    /// (connection counters come from the dump).
    pub fn apply_incremental(
        &mut self,
        services: &[model::Service],
        now: Instant,
    ) -> Result<ApplyReport, Error> {
        self.reconcile(&ipvs_services(services)?, now, true)
    }

    /// [`IpvsDataplane::apply`] on already converted services (fwmark services too).
    pub fn apply_desired(
        &mut self,
        desired: &[DesiredService],
        now: Instant,
    ) -> Result<ApplyReport, Error> {
        self.reconcile(desired, now, false)
    }

    fn reconcile(
        &mut self,
        desired: &[DesiredService],
        now: Instant,
        use_cache: bool,
    ) -> Result<ApplyReport, Error> {
        let mut report = ApplyReport::default();
        let writes0 = self.client.writes();
        let wt0 = self.client.write_time();

        let t = Instant::now();
        // Taken whatever happens next: a full apply that fails part-way must not leave
        // an older cache for the next incremental apply to diff against.
        let cached = self.cache.take();
        let kernel: Vec<KernelService> = match cached {
            Some(c) if use_cache => c.into_values().collect(),
            cached => {
                let wanted: BTreeSet<ServiceId> = desired.iter().map(|d| d.id).collect();
                let mut kernel = self.client.dump_services()?;
                // Destinations only matter for services we own and keep.
                let ours =
                    |s: &KernelService| self.owned.ids().contains(&s.id) && wanted.contains(&s.id);
                let read = dests_to_read(
                    kernel.iter().filter(|s| ours(s)),
                    cached.as_ref(),
                    &self.draining,
                    &mut self.verified_to,
                );
                let mut cached = cached.unwrap_or_default();
                for s in kernel.iter_mut() {
                    if read.contains(&s.id) {
                        s.dests = self.client.dump_dests(&s.id)?;
                    } else if let Some(c) = cached.remove(&s.id) {
                        s.dests = c.dests;
                    }
                }
                report.dest_dumps = read.len();
                kernel
            }
        };
        report.dump_time = t.elapsed();

        let d = diff(
            &kernel,
            desired,
            self.owned.ids(),
            &self.draining,
            now,
            self.drain_timeout,
        );
        report.conflicts = d.conflicts.clone();
        self.send(&kernel, desired, &d.ops, &mut report)?;
        if report.errors.is_empty() && report.conflicts.len() == d.conflicts.len() {
            let mut table = table_map(kernel);
            for op in &d.ops {
                op.apply_to(&mut table);
            }
            self.cache = Some(table);
        }
        self.draining = d.draining;
        report.draining = self.draining.len();
        report.writes = self.client.writes() - writes0;
        report.write_time = self.client.write_time() - wt0;
        Ok(report)
    }

    fn send(
        &mut self,
        kernel: &[KernelService],
        desired: &[DesiredService],
        ops: &[Op],
        report: &mut ApplyReport,
    ) -> Result<(), Error> {
        if ops.is_empty() {
            // Still prune stale entries (services someone else deleted and we no longer want).
            let owned = owned_after(kernel, desired, self.owned.ids(), ops);
            return self.owned.store(owned);
        }
        let (svc_ops, dest_ops): (Vec<&Op>, Vec<&Op>) = ops.iter().partition(|o| {
            matches!(
                o.kind(),
                OpKind::AddService | OpKind::UpdateService | OpKind::DeleteService
            )
        });

        // Record ownership before creating, so a crash never orphans a service we made.
        let mut owned = owned_after(kernel, desired, self.owned.ids(), ops);
        let mut before = self.owned.ids().clone();
        before.extend(owned.iter().copied());
        self.owned.store(before)?;

        let msgs: Vec<_> = svc_ops.iter().map(|o| o.to_message()).collect();
        let results = self.client.execute_batch(&msgs);
        let mut failed: BTreeSet<ServiceId> = BTreeSet::new();
        for (op, r) in svc_ops.iter().zip(results) {
            match (op.kind(), r) {
                (kind, Ok(())) => report.count(kind),
                (OpKind::AddService, Err(e)) if e.is_exists() => {
                    // Someone else created it since our dump: not ours.
                    owned.remove(op.service());
                    failed.insert(*op.service());
                    report.conflicts.push(*op.service());
                }
                (OpKind::DeleteService, Err(e)) if e.is_not_found() => {}
                (OpKind::AddService, Err(e)) => {
                    owned.remove(op.service());
                    failed.insert(*op.service());
                    report.fail(*op.service(), e);
                }
                (_, Err(e)) => {
                    failed.insert(*op.service());
                    report.fail(*op.service(), e);
                }
            }
        }
        self.owned.store(owned)?;

        let dest_ops: Vec<&Op> = dest_ops
            .into_iter()
            .filter(|o| !failed.contains(o.service()))
            .collect();
        let msgs: Vec<_> = dest_ops.iter().map(|o| o.to_message()).collect();
        let results = self.client.execute_batch(&msgs);
        let mut retry: Vec<Op> = Vec::new();
        for (op, r) in dest_ops.iter().zip(results) {
            match (op, r) {
                (op, Ok(())) => report.count(op.kind()),
                (Op::DeleteDest { .. }, Err(e)) if e.is_not_found() => {}
                // The dump was not a snapshot: flip add <-> update once (keepalived, kube-router).
                (
                    Op::AddDest {
                        service,
                        dest,
                        config,
                    },
                    Err(e),
                ) if e.is_exists() => retry.push(Op::UpdateDest {
                    service: *service,
                    dest: *dest,
                    config: *config,
                }),
                (
                    Op::UpdateDest {
                        service,
                        dest,
                        config,
                    },
                    Err(e),
                ) if e.errno() == Some(libc::ENOENT) => retry.push(Op::AddDest {
                    service: *service,
                    dest: *dest,
                    config: *config,
                }),
                (op, Err(e)) => report.fail(*op.service(), e),
            }
        }
        let msgs: Vec<_> = retry.iter().map(Op::to_message).collect();
        for (op, r) in retry.iter().zip(self.client.execute_batch(&msgs)) {
            match r {
                Ok(()) => report.count(op.kind()),
                Err(e) => report.fail(*op.service(), e),
            }
        }
        Ok(())
    }
}

/// The kernel table as a map, for tests and callers that diff themselves.
pub fn table_map(kernel: Vec<KernelService>) -> BTreeMap<ServiceId, KernelService> {
    kernel.into_iter().map(|s| (s.id, s)).collect()
}

/// The plan's services for this dataplane, converted (services for XDP are ignored).
fn ipvs_services(services: &[model::Service]) -> Result<Vec<DesiredService>, Error> {
    services
        .iter()
        .filter(|s| s.dataplane == model::DataplaneKind::Ipvs)
        .map(DesiredService::from_model)
        .collect::<Result<_, _>>()
        .map_err(Error::from)
}

/// Which of `ours` (the kernel's services we own and want) get their destinations read
/// from the kernel in a full apply. Without a cache: all. With one: those the cache
/// lacks, those whose configuration the services dump shows changed (someone else
/// edited the service), those with a destination draining (its connection counters
/// decide when it goes), and of the rest the next `max(VERIFY_MIN, n / VERIFY_ROUNDS)`
/// after `cursor` in order, wrapping (so every one is read at least once per
/// `VERIFY_ROUNDS` applies). Moves `cursor` past the slice.
fn dests_to_read<'a>(
    ours: impl Iterator<Item = &'a KernelService>,
    cache: Option<&BTreeMap<ServiceId, KernelService>>,
    draining: &Draining,
    cursor: &mut Option<ServiceId>,
) -> BTreeSet<ServiceId> {
    let Some(cache) = cache else {
        return ours.map(|s| s.id).collect();
    };
    let draining: BTreeSet<ServiceId> = draining.keys().map(|(s, _)| *s).collect();
    let mut read = BTreeSet::new();
    let mut trusted = BTreeSet::new();
    for s in ours {
        match cache.get(&s.id) {
            Some(c) if c.config == s.config && !draining.contains(&s.id) => {
                trusted.insert(s.id);
            }
            _ => {
                read.insert(s.id);
            }
        }
    }
    let n = trusted.len() + read.len();
    let budget = VERIFY_MIN.max(n.div_ceil(VERIFY_ROUNDS)).min(trusted.len());
    let after = match cursor {
        Some(c) => trusted.range((std::ops::Bound::Excluded(*c), std::ops::Bound::Unbounded)),
        None => trusted.range(..),
    };
    let slice: Vec<ServiceId> = after.chain(trusted.iter()).take(budget).copied().collect();
    if let Some(last) = slice.last() {
        *cursor = Some(*last);
    }
    read.extend(slice);
    read
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{DestId, ServiceConfig};

    fn svc(i: u16, scheduler: &str) -> KernelService {
        KernelService {
            id: ServiceId::from_key(&model::ServiceKey {
                vip: "203.0.113.1".parse().unwrap(),
                port: i,
                protocol: model::Protocol::Tcp,
            }),
            config: ServiceConfig {
                scheduler: scheduler.into(),
                flags: 0,
                timeout: 0,
                netmask: crate::codec::Netmask::host(crate::codec::AF_INET),
            },
            dests: Vec::new(),
            stats: Default::default(),
        }
    }

    #[test]
    fn without_a_cache_every_service_is_read() {
        let kernel: Vec<KernelService> = (1..=100).map(|i| svc(i, "wrr")).collect();
        let mut cursor = None;
        let read = dests_to_read(kernel.iter(), None, &Draining::new(), &mut cursor);
        assert_eq!(read.len(), 100);
    }

    #[test]
    fn a_slice_rotates_over_the_trusted_and_the_untrusted_are_always_read() {
        let n = 1_000u16;
        let kernel: Vec<KernelService> = (1..=n).map(|i| svc(i, "wrr")).collect();
        let mut cache: BTreeMap<ServiceId, KernelService> =
            kernel.iter().map(|s| (s.id, s.clone())).collect();
        // Not in the cache; configuration changed behind our back; a destination draining.
        cache.remove(&kernel[10].id);
        cache.get_mut(&kernel[20].id).unwrap().config.scheduler = "rr".into();
        let mut draining = Draining::new();
        let dest = DestId {
            addr: "192.0.2.1".parse().unwrap(),
            port: 80,
        };
        draining.insert((kernel[30].id, dest), Instant::now());
        let always = [kernel[10].id, kernel[20].id, kernel[30].id];

        let mut cursor = None;
        let mut seen: BTreeMap<ServiceId, usize> = BTreeMap::new();
        let budget = VERIFY_MIN.max((n as usize).div_ceil(VERIFY_ROUNDS));
        for round in 0..VERIFY_ROUNDS {
            let read = dests_to_read(kernel.iter(), Some(&cache), &draining, &mut cursor);
            assert!(always.iter().all(|id| read.contains(id)), "round {round}");
            assert!(read.len() <= budget + always.len(), "{}", read.len());
            for id in read {
                *seen.entry(id).or_default() += 1;
            }
        }
        assert_eq!(
            seen.len(),
            n as usize,
            "every service read within the rounds"
        );
    }

    #[test]
    fn a_small_table_is_read_whole_every_time() {
        let kernel: Vec<KernelService> = (1..=VERIFY_MIN as u16).map(|i| svc(i, "wrr")).collect();
        let cache: BTreeMap<ServiceId, KernelService> =
            kernel.iter().map(|s| (s.id, s.clone())).collect();
        let mut cursor = None;
        for _ in 0..3 {
            let read = dests_to_read(kernel.iter(), Some(&cache), &Draining::new(), &mut cursor);
            assert_eq!(read.len(), VERIFY_MIN);
        }
    }
}
