//! Userspace cost of an apply, without a kernel: 10,000 services x 5 real servers
//! programmed into FakeIpvs (which also encodes and decodes every message), the
//! same plan again, then one weight change.
//!
//! cargo run --release -p kubelvs-ipvs --example fake_bench

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use kubelvs_ipvs::{FakeIpvs, IpvsDataplane};
use kubelvs_model::{
    DataplaneKind, Forwarding, ObjectKind, ObjectRef, Protocol, RealServer, Scheduler,
    SchedulerFlags, Service, ServiceKey,
};

fn plan(services: usize, dests: usize) -> Vec<Service> {
    (0..services)
        .map(|i| Service {
            key: ServiceKey {
                vip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1 + (i / 100) as u8)),
                port: 10_000 + (i % 100) as u16,
                protocol: Protocol::Tcp,
            },
            scheduler: Scheduler::Wrr,
            scheduler_flags: SchedulerFlags::default(),
            forwarding: Forwarding::Nat,
            persistence: None,
            source_address: None,
            health_check: None,
            dataplane: DataplaneKind::Ipvs,
            real_servers: (0..dests)
                .map(|d| RealServer {
                    address: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 21 + d as u8)),
                    port: 8080,
                    weight: 1 + d as u32,
                    source: ObjectRef::new(ObjectKind::RealServer, "bench", "rs"),
                })
                .collect(),
            source: ObjectRef::new(ObjectKind::VirtualService, "bench", "vs"),
        })
        .collect()
}

fn main() -> Result<(), kubelvs_ipvs::Error> {
    let state = std::env::temp_dir().join(format!("kubelvs-fake-bench-{}", std::process::id()));
    let mut dp = IpvsDataplane::with_client(FakeIpvs::new(), &state)?;
    let services = plan(10_000, 5);

    let t = Instant::now();
    let r = dp.apply(&services, Instant::now())?;
    println!("program 10000x5: {:?}, {} writes", t.elapsed(), r.writes);

    let t = Instant::now();
    let r = dp.apply(&services, Instant::now())?;
    println!("same plan again: {:?}, {} writes", t.elapsed(), r.writes);

    let mut changed = services.clone();
    changed[5_000].real_servers[2].weight += 10;
    let t = Instant::now();
    let r = dp.apply(&changed, Instant::now())?;
    println!(
        "one weight change (full apply): {:?}, {} writes",
        t.elapsed(),
        r.writes
    );

    changed[5_000].real_servers[2].weight += 10;
    let t = Instant::now();
    let r = dp.apply_incremental(&changed, Instant::now())?;
    println!(
        "one weight change (incremental): {:?}, {} writes",
        t.elapsed(),
        r.writes
    );
    let _ = std::fs::remove_file(&state);
    Ok(())
}
