//! Director failover on kernel IPVS: two directors of one DR VIP with `mh` (source
//! port hashed too) and the sysctls the agent sets with it (`sloppy_tcp`): the VM's
//! root namespace and a second namespace `dir2` on the same real-server LAN. Long-lived
//! connections opened through the first keep their real servers when the client's
//! route moves to the second and the first's service is gone, as after its death.
//! Control: the same with `sloppy_tcp` off on the second, where they must break.
//!
//! ```text
//!  client ns  eth0 198.51.100.10 -- cl0 (root: director 1) -- lan0 -- rs1..rs3
//!             eth1 198.51.101.10 -- eth0 (dir2: director 2) eth1 --'
//! ```
//! Real servers answer the client directly (DR), through the root namespace, which
//! routes their replies as the LAN's gateway whichever director forwarded.

use std::time::Instant;

use kubelvs_ipvs::{apply_sysctls, director_sysctls_for, IpvsDataplane};
use kubelvs_model::{Forwarding, Scheduler, SchedulerFlags, Service};

use crate::lab::{cmd, ip_batch, sysctls, Held, Lab, CLIENT_NS, DIRECTOR_LAN, REAL_SERVERS};
use crate::scenarios::{check_report, service};

const VIP: &str = "203.0.113.30";
const DIR2_NS: &str = "dir2";
const DIR2_CLIENT_SIDE: &str = "198.51.101.1";
const CLIENT_SECOND: &str = "198.51.101.10";
const DIR2_LAN: &str = "192.0.2.2";
const ROOT_STATE: &str = "/run/kubelvs/failover-owned";
const DIR2_STATE: &str = "/run/kubelvs/failover-dir2-owned";
const CONNECTIONS: usize = 6;
/// A broken connection costs the client's read timeout (5 s): the control needs few.
const CONTROL_CONNECTIONS: usize = 2;

/// The VIP's service: DR over the three real servers, `mh` with the port hashed, so
/// one client's connections spread over them.
pub fn mh_service() -> Service {
    let mut s = service(VIP, Scheduler::Mh, Forwarding::Dr, [1, 1, 1]);
    s.scheduler_flags = SchedulerFlags {
        flag2: true,
        ..SchedulerFlags::default()
    };
    s
}

/// Programs `services` and the director sysctls they need in this process's network
/// namespace (run inside `dir2` as the guest's `ipvs-director` mode); `sloppy` false
/// then turns `sloppy_tcp` back off, for the control.
pub fn program(state: &str, services: &[Service], sloppy: bool) -> Result<(), String> {
    let mut dp = IpvsDataplane::new(state).map_err(|e| format!("IpvsDataplane::new: {e}"))?;
    let report = dp
        .apply(services, Instant::now())
        .map_err(|e| e.to_string())?;
    check_report(&report)?;
    apply_sysctls(&director_sysctls_for(services)).map_err(|e| e.to_string())?;
    if !sloppy {
        std::fs::write("/proc/sys/net/ipv4/vs/sloppy_tcp", "0\n").map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn program_dir2(lab: &Lab, sloppy: bool) -> Result<(), String> {
    cmd(
        "ip",
        &[
            "netns",
            "exec",
            DIR2_NS,
            &lab.exe,
            "ipvs-director",
            DIR2_STATE,
            if sloppy { "sloppy" } else { "strict" },
        ],
    )
    .map(|_| ())
}

fn topology() -> Result<(), String> {
    ip_batch(
        None,
        &[
            format!("netns add {DIR2_NS}"),
            format!("link add eth1 netns {CLIENT_NS} type veth peer name eth0 netns {DIR2_NS}"),
            format!("link add d2-lan type veth peer name eth1 netns {DIR2_NS}"),
            "link set d2-lan master lan0 up".to_owned(),
            format!("addr add {VIP}/32 dev lvs0"),
        ],
    )?;
    ip_batch(
        Some(DIR2_NS),
        &[
            "link set lo up".to_owned(),
            format!("addr add {DIR2_CLIENT_SIDE}/24 dev eth0"),
            format!("addr add {DIR2_LAN}/24 dev eth1"),
            "link set eth0 up".to_owned(),
            "link set eth1 up".to_owned(),
            format!("addr add {VIP}/32 dev lo"),
        ],
    )?;
    ip_batch(
        Some(CLIENT_NS),
        &[
            format!("addr add {CLIENT_SECOND}/24 dev eth1"),
            "link set eth1 up".to_owned(),
        ],
    )?;
    // The real servers reply through the root namespace (an earlier scenario may
    // have cut that route).
    for (ns, _) in REAL_SERVERS {
        ip_batch(
            Some(ns),
            &[
                format!("addr add {VIP}/32 dev lo"),
                format!("route replace default via {DIRECTOR_LAN}"),
            ],
        )?;
    }
    // Requests leave the client by one interface and replies come back by the other;
    // dir2 takes packets from clients it has no route to.
    let loose = [
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.eth0.rp_filter", "0"),
        ("net.ipv4.conf.eth1.rp_filter", "0"),
    ];
    sysctls(Some(DIR2_NS), &loose)?;
    sysctls(Some(CLIENT_NS), &loose)
}

/// The client's route to the VIP: through director 1 (its default route) or dir2.
fn route_via_dir2(on: bool) -> Result<(), String> {
    let args: Vec<&str> = if on {
        vec![
            "-n",
            CLIENT_NS,
            "route",
            "replace",
            VIP,
            "via",
            DIR2_CLIENT_SIDE,
            "dev",
            "eth1",
        ]
    } else {
        vec!["-n", CLIENT_NS, "route", "del", VIP]
    };
    cmd("ip", &args).map(|_| ())
}

/// Opens connections through director 1, moves the route to dir2, removes director
/// 1's service, and says which connections still carry data: (server, alive).
fn fail_over(
    lab: &Lab,
    root: &mut IpvsDataplane,
    connections: usize,
) -> Result<Vec<(String, bool)>, String> {
    let report = root
        .apply(&[mh_service()], Instant::now())
        .map_err(|e| format!("director 1: {e}"))?;
    check_report(&report)?;
    let target = std::net::SocketAddr::new(VIP.parse().expect("constant"), 80);
    let held: Vec<Held> = (0..connections)
        .map(|_| lab.hold(target))
        .collect::<Result<_, _>>()?;
    route_via_dir2(true)?;
    let gone = root
        .apply(&[], Instant::now())
        .map_err(|e| format!("removing director 1's service: {e}"))?;
    check_report(&gone)?;
    let outcome = held
        .into_iter()
        .map(|h| {
            let server = h
                .greeting
                .as_ref()
                .map(|g| g.server.clone())
                .unwrap_or_default();
            (server, h.echo().is_ok())
        })
        .collect();
    route_via_dir2(false)?;
    Ok(outcome)
}

pub fn run(lab: &Lab) -> Result<String, String> {
    let started = Instant::now();
    topology()?;
    let mut root = IpvsDataplane::new(ROOT_STATE).map_err(|e| e.to_string())?;
    apply_sysctls(&director_sysctls_for(&[mh_service()])).map_err(|e| e.to_string())?;

    // Control: director 2 without sloppy TCP drops (resets) what it did not see open.
    program_dir2(lab, false)?;
    let control = fail_over(lab, &mut root, CONTROL_CONNECTIONS)?;
    let survived = control.iter().filter(|(_, alive)| *alive).count();
    if survived > 0 {
        return Err(format!(
            "control: a connection survived without sloppy_tcp; the test proves nothing: {control:?}"
        ));
    }

    program_dir2(lab, true)?;
    let moved = fail_over(lab, &mut root, CONNECTIONS)?;
    let lost: Vec<&(String, bool)> = moved.iter().filter(|(_, alive)| !*alive).collect();
    let mut servers: Vec<&str> = moved.iter().map(|(s, _)| s.as_str()).collect();
    servers.sort();
    servers.dedup();
    if !lost.is_empty() {
        return Err(format!(
            "lost in the failover with mh + sloppy_tcp: {lost:?} of {moved:?}"
        ));
    }
    if servers.len() < 2 {
        return Err(format!("the connections were not spread: {moved:?}"));
    }
    Ok(format!(
        "control (sloppy_tcp off): {survived}/{CONTROL_CONNECTIONS} survived; mh + sloppy_tcp: \
         {CONNECTIONS}/{CONNECTIONS} kept their real servers ({}) ({:.1} s)",
        servers.join(", "),
        started.elapsed().as_secs_f64()
    ))
}
