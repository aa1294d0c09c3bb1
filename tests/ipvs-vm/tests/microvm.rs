//! Boots the Debian kernel in qemu (TCG) and runs the guest program against real
//! kernel IPVS. The console log of the last run is kept in
//! `target/ipvs-vm/console-<mode>.log`.

use std::path::Path;
use std::time::Duration;

use kubelvs_ipvs_vm::vm::{self, VmConfig, VmOutcome};

const GUEST: &str = env!("CARGO_BIN_EXE_kubelvs-ipvs-vm-guest");

/// Every case the scenarios run must PASS; a missing one fails the test.
const SCENARIO_CASES: &[&str] = &[
    "topology",
    "foreign_service_created",
    "apply",
    "ipvsadm_table",
    "reapply_zero_writes",
    "nat",
    "dr",
    "tun",
    "tun_gue",
    "tun_gre",
    "ipv6_nat_persistence",
    "wrr_weights",
    "sh_sticky",
    "persistence_sticky",
    "drain_weight_zero",
    "drain_removed_real_server",
    "foreign_service_survives",
    "dataplane_trait",
    "fullnat",
    "ipvs_director_failover",
    // kubelvs_ipvs::selftest in its own namespace; its cases print their own lines.
    "ipvs_selftest",
];

const AGENT_CASES: &[&str] = &[
    "agent_foreign_service",
    "agent_programs_ipvs",
    "agent_traffic",
    "agent_vip_guard",
    "agent_traffic_metrics",
    "agent_health_quiesce",
    "agent_health_restore",
    "agent_file_edit",
    "agent_restarts",
    "agent_real_servers_prepared",
    "agent_dr_traffic",
    "agent_tun_traffic",
    "agent_fullnat_traffic",
    "agent_dr_arp_director_only",
    "agent_dr_undone",
    "agent_real_servers_restored",
    "agent_foreign_untouched",
    "agent_cleanup",
];

const BENCH_CASES: &[&str] = &[
    "bench",
    "bench_apply_10k",
    "bench_weight_change_one_write",
    "bench_incremental_weight_change_one_write",
    "bench_weight_in_kernel",
    "bench_reapply_zero_writes",
    "bench_ipvsadm_restore",
];

fn boot(mode: &str, timeout: Duration) -> VmOutcome {
    boot_with(mode, timeout, Vec::new())
}

fn boot_with(mode: &str, timeout: Duration, extra: Vec<(String, std::path::PathBuf)>) -> VmOutcome {
    let config = VmConfig {
        mode: mode.into(),
        timeout,
        memory_mib: 1024,
        cpus: 1,
        cpu: std::env::var("KUBELVS_VM_CPU").unwrap_or_else(|_| "max".into()),
        extra,
        echo: false,
    };
    let outcome = vm::run(Path::new(GUEST), &config).expect("boot the microVM");
    println!("{}", outcome.console);
    println!(
        "microVM {mode}: {:?} in all, guest program started after {:?}",
        outcome.elapsed, outcome.boot_time
    );
    outcome
}

fn assert_passed(outcome: &VmOutcome, cases: &[&str]) {
    let problems = outcome.problems(cases);
    assert!(
        problems.is_empty(),
        "microVM run failed (console in {}):\n{}",
        outcome.console_log.display(),
        problems.join("\n")
    );
}

#[test]
#[ignore = "privileged: boots a microVM"]
fn ipvs_scenarios_in_microvm() {
    // The budget is 5 minutes for the VM test; a healthy run takes well under one.
    let outcome = boot("scenarios", Duration::from_secs(280));
    assert_passed(&outcome, SCENARIO_CASES);
}

/// `kubelvs_ipvs::selftest::module_reload`: `rmmod ip_vs_* ip_vs; modprobe ip_vs` under
/// a live client, whose next request must re-resolve the generic-netlink family id.
/// A boot of its own, since unloading ip_vs needs every other IPVS user gone.
#[test]
#[ignore = "privileged: boots a microVM (ip_vs module reload)"]
fn ipvs_module_reload_in_microvm() {
    let outcome = boot("reload", Duration::from_secs(180));
    assert_passed(&outcome, &["selftest_module_reload"]);
}

/// 10,000 services x 5 real servers: our apply versus `ipvsadm -R`, then one
/// weight change (one write, through `apply` and `apply_incremental`) and the same
/// plan again (zero writes). Prints its numbers (`KUBELVS MEASURE`); BENCHMARKS.md
/// quotes a `--release` run. About 2 minutes in a debug build, so it runs by default;
/// `KUBELVS_IPVS_BENCH=0` skips it.
#[test]
#[ignore = "privileged: boots a microVM (IPVS benchmark)"]
fn ipvs_benchmark_in_microvm() {
    if std::env::var("KUBELVS_IPVS_BENCH").is_ok_and(|v| v == "0") {
        println!("skipped: KUBELVS_IPVS_BENCH=0");
        return;
    }
    let outcome = boot("bench", Duration::from_secs(600));
    assert_passed(&outcome, BENCH_CASES);
    for name in [
        "bench_weight_change_writes",
        "bench_incremental_weight_change_writes",
    ] {
        assert_eq!(
            outcome.measure(name),
            Some(1.0),
            "{name}: one weight change must be one netlink write"
        );
    }
    for name in [
        "bench_ours_apply",
        "bench_ipvsadm_restore",
        "bench_ratio_ipvsadm_over_ours",
        "bench_weight_change_write_time",
        "bench_weight_change_apply",
        "bench_incremental_weight_change_write_time",
        "bench_incremental_weight_change_apply",
    ] {
        let value = outcome.measure(name);
        assert!(value.is_some_and(f64::is_finite), "{name} not measured");
        println!("{name} = {}", value.unwrap_or_default());
    }
}

#[test]
#[ignore = "boots a microVM (qemu, root for nothing but speed); scripts/test runs it"]
fn agent_standalone_in_microvm() {
    let agent = vm::agent_binary(Path::new(GUEST));
    let outcome = boot_with(
        "agent",
        Duration::from_secs(420),
        vec![("/bin/kube-lvs-agent".into(), agent)],
    );
    assert_passed(&outcome, AGENT_CASES);
}
