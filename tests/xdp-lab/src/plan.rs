//! The plan (kubelvs-model) for the lab's virtual services.

use std::net::IpAddr;

use kubelvs_model::{
    DataplaneKind, Forwarding, ObjectKind, ObjectRef, Protocol, RealServer, Scheduler,
    SchedulerFlags, Service, ServiceKey,
};

use crate::topology::Lab;

/// A maglev virtual service `lab.vip:port/protocol` over the lab's real servers with
/// these `weights` (one per real server; a real server with no weight is left out),
/// each listening on `target_port`.
pub fn service(
    lab: &Lab,
    port: u16,
    protocol: Protocol,
    forwarding: Forwarding,
    weights: &[u32],
    target_port: u16,
) -> Service {
    let mut real_servers: Vec<RealServer> = lab
        .real_servers
        .iter()
        .zip(weights)
        .map(|(rs, &weight)| RealServer {
            address: IpAddr::V4(rs.addr),
            port: target_port,
            weight,
            source: ObjectRef::new(ObjectKind::RealServer, "lab", &rs.role),
        })
        .collect();
    real_servers.sort_by_key(|r| (r.address, r.port));
    Service {
        key: ServiceKey {
            vip: IpAddr::V4(lab.vip),
            port,
            protocol,
        },
        scheduler: Scheduler::Maglev,
        scheduler_flags: SchedulerFlags::default(),
        forwarding,
        persistence: None,
        source_address: None,
        health_check: None,
        dataplane: DataplaneKind::Xdp,
        real_servers,
        source: ObjectRef::new(ObjectKind::VirtualService, "lab", "web"),
    }
}

/// [`service`] for the IPv6 VIP ([`crate::topology::VIP6`]) and the real servers'
/// IPv6 addresses (a lab built with [`crate::LabConfig::ipv6`]).
pub fn service6(
    lab: &Lab,
    port: u16,
    protocol: Protocol,
    forwarding: Forwarding,
    weights: &[u32],
    target_port: u16,
) -> Service {
    let mut s = service(lab, port, protocol, forwarding, weights, target_port);
    s.key.vip = IpAddr::V6(crate::topology::VIP6);
    for r in &mut s.real_servers {
        if let IpAddr::V4(a) = r.address {
            r.address = IpAddr::V6(crate::topology::addr6_of(a));
        }
    }
    s.real_servers.sort_by_key(|r| (r.address, r.port));
    s
}
