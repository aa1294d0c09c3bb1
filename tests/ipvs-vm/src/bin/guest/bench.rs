//! The IPVS benchmark: 10,000 services x 5 real servers programmed by our apply
//! versus `ipvsadm -R` restoring the same table, then one weight change among
//! them. Runs in its own network namespace (IPVS tables are per namespace), as a
//! child process started with `ip netns exec`, so it never sees the scenarios' table;
//! `ipvsadm -R` gets a second fresh namespace.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::Instant;

use kubelvs_ipvs::IpvsDataplane;
use kubelvs_ipvs_vm::ipvsadm;
use kubelvs_model::{
    DataplaneKind, Forwarding, ObjectKind, ObjectRef, Protocol, RealServer, Scheduler,
    SchedulerFlags, Service, ServiceKey,
};

use crate::lab::cmd;
use crate::Reporter;

const BENCH_NS: &str = "bench";
/// `ipvsadm -R` gets a namespace of its own: restoring into the one our apply used
/// would pay for the 50,000 flushed destinations still in the kernel's trash list
/// (every NEW_DEST scans it until they expire), which made ipvsadm look 3-4x slower.
const IPVSADM_NS: &str = "bench-ipvsadm";
pub const SERVICES: usize = 10_000;
pub const DESTS: usize = 5;

/// 100 VIPs x 100 ports, each with the same 5 real servers (weights 1..5).
pub fn bench_plan() -> Vec<Service> {
    let mut services: Vec<Service> = (0..SERVICES)
        .map(|i| {
            let vip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1 + (i / 100) as u8));
            let port = 10_000 + (i % 100) as u16;
            Service {
                key: ServiceKey {
                    vip,
                    port,
                    protocol: Protocol::Tcp,
                },
                scheduler: Scheduler::Wrr,
                scheduler_flags: SchedulerFlags::default(),
                forwarding: Forwarding::Nat,
                persistence: None,
                source_address: None,
                health_check: None,
                dataplane: DataplaneKind::Ipvs,
                real_servers: (0..DESTS)
                    .map(|d| RealServer {
                        address: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 21 + d as u8)),
                        port: 8080,
                        weight: 1 + d as u32,
                        source: ObjectRef::new(ObjectKind::RealServer, "bench", &format!("rs{d}")),
                    })
                    .collect(),
                source: ObjectRef::new(ObjectKind::VirtualService, "bench", &format!("vs{i}")),
            }
        })
        .collect();
    services.sort_by_key(|s| s.key);
    services
}

/// Outer half (root namespace): create the namespace and run the inner half there.
pub fn run(r: &mut Reporter) {
    let exe = match std::env::current_exe() {
        Ok(p) => p.display().to_string(),
        Err(e) => {
            r.case("bench", Err(format!("current_exe: {e}")));
            return;
        }
    };
    let setup = [BENCH_NS, IPVSADM_NS].iter().try_for_each(|ns| {
        cmd("ip", &["netns", "add", ns])?;
        // Real servers must be routable unicast addresses in the namespace.
        for args in [
            vec!["-n", ns, "link", "add", "bench0", "type", "dummy"],
            vec!["-n", ns, "link", "set", "bench0", "up"],
            vec!["-n", ns, "addr", "add", "198.51.100.1/24", "dev", "bench0"],
        ] {
            cmd("ip", &args)?;
        }
        Ok::<(), String>(())
    });
    if let Err(e) = setup {
        r.case("bench", Err(e));
        return;
    }
    let status = Command::new("ip")
        .args(["netns", "exec", BENCH_NS, &exe, "bench-inner"])
        .status();
    r.case(
        "bench",
        match status {
            Ok(s) if s.success() => Ok("benchmark finished".into()),
            Ok(s) => Err(format!("bench-inner exited with {s}")),
            Err(e) => Err(format!("bench-inner: {e}")),
        },
    );
}

/// `ipvsadm -R` of `script` inside namespace `ns`.
fn restore(ns: &str, script: &str) -> Result<(), String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "ipvsadm", "-R"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ipvsadm -R: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("ipvsadm -R stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("ipvsadm -R: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ipvsadm -R failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Counts services and destinations with a client we did not write.
fn count_listed(ns: &str) -> Result<(usize, usize), String> {
    let text = cmd("ip", &["netns", "exec", ns, "ipvsadm", "-Ln"])?;
    let listed = ipvsadm::parse_list(&text).map_err(|e| e.to_string())?;
    Ok((listed.len(), listed.values().map(|s| s.dests.len()).sum()))
}

/// Inner half, inside the bench namespace. Prints its own protocol lines.
pub fn inner() -> Result<(), String> {
    let mut r = Reporter::default();
    let services = bench_plan();
    let _ = std::fs::create_dir_all("/run/kubelvs");
    let mut dp =
        IpvsDataplane::new("/run/kubelvs/bench-owned-services").map_err(|e| e.to_string())?;

    let t = Instant::now();
    let rep = dp
        .apply(&services, Instant::now())
        .map_err(|e| e.to_string())?;
    let ours = t.elapsed();
    r.measure("bench_ours_apply", ours.as_secs_f64(), "s");
    r.measure("bench_ours_writes", rep.writes as f64, "messages");
    r.measure("bench_ours_write_time", rep.write_time.as_secs_f64(), "s");
    let counted = count_listed(BENCH_NS)?;
    r.case(
        "bench_apply_10k",
        if rep.errors.is_empty() && counted == (SERVICES, SERVICES * DESTS) {
            Ok(format!(
                "{SERVICES} services x {DESTS} real servers in {ours:?}, {} writes",
                rep.writes
            ))
        } else {
            Err(format!(
                "errors {:?}, ipvsadm lists {counted:?}",
                rep.errors.first().map(ToString::to_string)
            ))
        },
    );

    // One weight among 10,000 services.
    let mut changed = services.clone();
    let svc = &mut changed[SERVICES / 2];
    svc.real_servers[2].weight += 10;
    let t = Instant::now();
    let rep = dp
        .apply(&changed, Instant::now())
        .map_err(|e| e.to_string())?;
    let total = t.elapsed();
    r.measure("bench_weight_change_writes", rep.writes as f64, "messages");
    r.measure(
        "bench_weight_change_write_time",
        rep.write_time.as_secs_f64() * 1e3,
        "ms",
    );
    r.measure(
        "bench_weight_change_dump_time",
        rep.dump_time.as_secs_f64() * 1e3,
        "ms",
    );
    r.measure("bench_weight_change_apply", total.as_secs_f64() * 1e3, "ms");
    r.case(
        "bench_weight_change_one_write",
        if rep.writes == 1 && rep.updated_dests == 1 && rep.errors.is_empty() {
            Ok(format!(
                "1 SET_DEST, netlink write {:?}, whole apply {total:?}",
                rep.write_time
            ))
        } else {
            Err(format!(
                "writes={} updated_dests={} errors={}",
                rep.writes,
                rep.updated_dests,
                rep.errors.len()
            ))
        },
    );

    // The same change through the incremental path, which diffs against the table
    // this dataplane last read and wrote instead of dumping 10,000 services again.
    let svc = &mut changed[SERVICES / 2];
    svc.real_servers[2].weight += 10;
    let t = Instant::now();
    let rep = dp
        .apply_incremental(&changed, Instant::now())
        .map_err(|e| e.to_string())?;
    let total = t.elapsed();
    r.measure(
        "bench_incremental_weight_change_writes",
        rep.writes as f64,
        "messages",
    );
    r.measure(
        "bench_incremental_weight_change_write_time",
        rep.write_time.as_secs_f64() * 1e3,
        "ms",
    );
    r.measure(
        "bench_incremental_weight_change_apply",
        total.as_secs_f64() * 1e3,
        "ms",
    );
    r.case(
        "bench_incremental_weight_change_one_write",
        if rep.writes == 1 && rep.updated_dests == 1 && rep.errors.is_empty() {
            Ok(format!(
                "1 SET_DEST, netlink write {:?}, whole apply {total:?}",
                rep.write_time
            ))
        } else {
            Err(format!(
                "writes={} updated_dests={} errors={}",
                rep.writes,
                rep.updated_dests,
                rep.errors.len()
            ))
        },
    );
    let listed = ipvsadm::parse_list(&cmd("ipvsadm", &["-Ln"])?).map_err(|e| e.to_string())?;
    let key = format!(
        "TCP {}",
        std::net::SocketAddr::new(
            changed[SERVICES / 2].key.vip,
            changed[SERVICES / 2].key.port
        )
    );
    let weight = listed
        .get(&key)
        .and_then(|s| s.dests.get("198.51.100.23:8080"))
        .map(|d| d.weight);
    r.case(
        "bench_weight_in_kernel",
        if weight == Some(23) {
            Ok(format!(
                "ipvsadm shows {key} -> 198.51.100.23:8080 weight 23"
            ))
        } else {
            Err(format!(
                "ipvsadm shows weight {weight:?} for {key} -> 198.51.100.23:8080, expected 23"
            ))
        },
    );

    // The same plan again, at scale: nothing to write.
    let t = Instant::now();
    let rep = dp
        .apply(&changed, Instant::now())
        .map_err(|e| e.to_string())?;
    let total = t.elapsed();
    r.measure("bench_reapply_apply", total.as_secs_f64(), "s");
    r.case(
        "bench_reapply_zero_writes",
        if rep.writes == 0 && rep.ops() == 0 && rep.errors.is_empty() {
            Ok(format!(
                "10,000 services unchanged: 0 writes, {total:?} (reading the table)"
            ))
        } else {
            Err(format!(
                "writes={} ops={} errors={}",
                rep.writes,
                rep.ops(),
                rep.errors.len()
            ))
        },
    );

    // Our table goes, so its estimators stop competing for the vCPU.
    cmd("ipvsadm", &["-C"])?;
    // Two halves, timed apart: if the second is much slower, the cost per entry
    // grows with the table (kernel side), not just with ipvsadm's per-line work.
    let (first, second) = services.split_at(SERVICES / 2);
    let t = Instant::now();
    restore(IPVSADM_NS, &ipvsadm::restore_script(first))?;
    let half = t.elapsed();
    restore(IPVSADM_NS, &ipvsadm::restore_script(second))?;
    let theirs = t.elapsed();
    r.measure("bench_ipvsadm_restore_first_half", half.as_secs_f64(), "s");
    r.measure(
        "bench_ipvsadm_restore_second_half",
        (theirs - half).as_secs_f64(),
        "s",
    );
    r.measure("bench_ipvsadm_restore", theirs.as_secs_f64(), "s");
    r.measure(
        "bench_ratio_ipvsadm_over_ours",
        theirs.as_secs_f64() / ours.as_secs_f64(),
        "x",
    );
    let counted = count_listed(IPVSADM_NS)?;
    r.case(
        "bench_ipvsadm_restore",
        if counted == (SERVICES, SERVICES * DESTS) {
            Ok(format!("ipvsadm -R in {theirs:?}; ours {ours:?}"))
        } else {
            Err(format!("ipvsadm lists {counted:?} after restore"))
        },
    );
    cmd("ip", &["netns", "exec", IPVSADM_NS, "ipvsadm", "-C"])?;
    Ok(())
}
