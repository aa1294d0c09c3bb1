//! The XDP director as a [`Dataplane`], with neighbour resolution behind
//! [`NeighbourProvider`] ([`KernelNeighbours`] reads the kernel's tables and asks it
//! to resolve what is missing; [`StaticNeighbours`] is given MACs by tests).

#[cfg(feature = "testing")]
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use kubelvs_model::{
    ApplyContext, Dataplane, DataplaneKind, DataplaneReport, NodePlan, Outcome, RealServerNote,
    RealServerState, Reason, ServiceOutcome,
};

use std::time::Instant;

use crate::backend::{DirectorMaps, DirectorTable};
use crate::{read_neighbours, ApplyReport, Neighbours, XdpDirector};

/// Where the director learns real servers' MACs (DR rewrites only the MAC).
pub trait NeighbourProvider: Send {
    /// The MACs known for `addrs`; for those not known, asks for them to be resolved
    /// so a later call finds them.
    fn resolve(&mut self, addrs: &[IpAddr]) -> Neighbours;
}

/// The kernel's neighbour tables (of the calling thread's network namespace). A
/// missing entry is solicited by sending one empty UDP datagram to the discard port
/// of the real server: the kernel queues it and sends the ARP request (or IPv6
/// neighbour solicitation) itself.
#[derive(Debug, Clone, Default)]
pub struct KernelNeighbours {
    /// Only neighbours on this interface (the one the director is attached to).
    pub ifname: Option<String>,
}

impl NeighbourProvider for KernelNeighbours {
    fn resolve(&mut self, addrs: &[IpAddr]) -> Neighbours {
        let known = read_neighbours(self.ifname.as_deref()).unwrap_or_default();
        for a in addrs.iter().filter(|a| !known.contains_key(a)) {
            solicit(*a);
        }
        known
    }
}

/// Makes the kernel resolve `addr`'s link-layer address. Best effort: an
/// unreachable address stays unresolved and is reported as such.
fn solicit(addr: IpAddr) {
    const DISCARD_PORT: u16 = 9;
    let any: IpAddr = match addr {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    if let Ok(sock) = UdpSocket::bind((any, 0)) {
        let _ = sock.send_to(&[], SocketAddr::new(addr, DISCARD_PORT));
    }
}

/// Fixed MACs, for tests; records what it was asked to resolve.
#[cfg(feature = "testing")]
#[derive(Debug, Clone, Default)]
pub struct StaticNeighbours {
    pub known: Neighbours,
    pub solicited: BTreeSet<IpAddr>,
}

#[cfg(feature = "testing")]
impl NeighbourProvider for StaticNeighbours {
    fn resolve(&mut self, addrs: &[IpAddr]) -> Neighbours {
        for a in addrs.iter().filter(|a| !self.known.contains_key(a)) {
            self.solicited.insert(*a);
        }
        self.known.clone()
    }
}

/// What [`XdpDataplane`] drives: the loaded [`XdpDirector`], or in tests a
/// [`DirectorTable`] over fake maps.
pub trait XdpApply: Send {
    fn apply_at(
        &mut self,
        services: &[&kubelvs_model::Service],
        neighbours: &Neighbours,
        now: Instant,
    ) -> crate::Result<ApplyReport>;
}

impl XdpApply for XdpDirector {
    fn apply_at(
        &mut self,
        services: &[&kubelvs_model::Service],
        neighbours: &Neighbours,
        now: Instant,
    ) -> crate::Result<ApplyReport> {
        XdpDirector::apply_at(self, services, neighbours, now)
    }
}

impl<M: DirectorMaps> XdpApply for DirectorTable<M> {
    fn apply_at(
        &mut self,
        services: &[&kubelvs_model::Service],
        neighbours: &Neighbours,
        now: Instant,
    ) -> crate::Result<ApplyReport> {
        DirectorTable::apply_at(self, services, neighbours, now)
    }
}

impl XdpTraffic for XdpDirector {
    fn traffic(&self) -> kubelvs_model::TrafficReport {
        let Ok(stats) = self.stats() else {
            return kubelvs_model::TrafficReport::default();
        };
        let t = |c: &crate::Counts| kubelvs_model::Traffic {
            connections: c.new_conns,
            packets: c.packets,
            bytes: c.bytes,
        };
        kubelvs_model::TrafficReport {
            services: stats.vips.iter().map(|(k, c)| (*k, t(c))).collect(),
            // Real servers are shared between VIPs in the maps; reported once each.
            real_servers: stats
                .real_servers
                .iter()
                .map(|(a, c)| (None, *a, t(c)))
                .collect(),
        }
    }
}

impl<M: DirectorMaps> XdpTraffic for DirectorTable<M> {
    fn traffic(&self) -> kubelvs_model::TrafficReport {
        kubelvs_model::TrafficReport::default()
    }
}

/// Traffic counters of what [`XdpDataplane`] drives.
pub trait XdpTraffic {
    fn traffic(&self) -> kubelvs_model::TrafficReport;
}

/// The XDP director as a [`Dataplane`].
#[derive(Debug)]
pub struct XdpDataplane<N: NeighbourProvider = KernelNeighbours, D: XdpApply = XdpDirector> {
    director: D,
    neighbours: N,
}

impl<N: NeighbourProvider, D: XdpApply> XdpDataplane<N, D> {
    pub fn new(director: D, neighbours: N) -> Self {
        Self {
            director,
            neighbours,
        }
    }

    pub fn director(&mut self) -> &mut D {
        &mut self.director
    }

    pub fn neighbours(&mut self) -> &mut N {
        &mut self.neighbours
    }
}

impl<N: NeighbourProvider, D: XdpApply + XdpTraffic> Dataplane for XdpDataplane<N, D> {
    fn traffic(&mut self) -> kubelvs_model::TrafficReport {
        self.director.traffic()
    }

    fn name(&self) -> &'static str {
        DataplaneKind::Xdp.name()
    }

    fn apply(&mut self, plan: &NodePlan, ctx: &ApplyContext) -> DataplaneReport {
        let mut report = DataplaneReport::new(self.name());
        let services: Vec<&kubelvs_model::Service> =
            plan.services_for(DataplaneKind::Xdp).collect();
        // Every real server, not only DR ones: TUN and NAT use a known MAC instead
        // of a route lookup.
        // Hashed, then sorted: real servers are often shared by many services.
        let mut addrs: Vec<IpAddr> = services
            .iter()
            .flat_map(|s| s.real_servers.iter().map(|r| r.address))
            .collect::<foldhash::HashSet<_>>()
            .into_iter()
            .collect();
        addrs.sort_unstable();
        let neighbours = self.neighbours.resolve(&addrs);
        let outcome_of = |s: &kubelvs_model::Service, r: &crate::ApplyReport| match r
            .skipped
            .iter()
            .find(|(k, _)| *k == s.key)
        {
            Some((_, skip)) => Outcome::Unsupported(Reason::new(
                skip.object.as_ref().unwrap_or(&s.source),
                skip.field,
                skip.reason.clone(),
            )),
            None => Outcome::Programmed,
        };
        match self.director.apply_at(&services, &neighbours, ctx.now) {
            Ok(r) => {
                report.writes = r.writes();
                report.services = services
                    .iter()
                    .map(|s| ServiceOutcome {
                        key: s.key,
                        source: s.source.clone(),
                        outcome: outcome_of(s, &r),
                    })
                    .collect();
                let notes =
                    |list: &[(kubelvs_model::ServiceKey, SocketAddr)],
                     state: &dyn Fn(&SocketAddr) -> RealServerState| {
                        list.iter()
                            .map(|(service, real_server)| RealServerNote {
                                service: *service,
                                real_server: *real_server,
                                state: state(real_server),
                            })
                            .collect::<Vec<_>>()
                    };
                report
                    .real_servers
                    .extend(notes(&r.draining, &|_| RealServerState::Draining));
                report.real_servers.extend(notes(&r.unresolved, &|a| {
                    RealServerState::Unresolved(format!(
                        "no neighbour entry (MAC) for {}: DR cannot reach it; resolution requested",
                        a.ip()
                    ))
                }));
            }
            Err(e) => {
                report.services = services
                    .iter()
                    .map(|s| ServiceOutcome {
                        key: s.key,
                        source: s.source.clone(),
                        outcome: Outcome::Failed(Reason::new(&s.source, "", e.to_string())),
                    })
                    .collect();
            }
        }
        report
    }
}
