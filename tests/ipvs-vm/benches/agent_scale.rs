//! `kube-lvs-agent` (release build) at scale on kernel IPVS in the microVM: the guest's
//! `agent-scale-NxM` mode. Prints the guest's measurements (time to the first complete
//! apply, resident memory, idle CPU, mean apply, a file edit to the kernel).
//!
//! `cargo bench -p kubelvs-ipvs-vm --bench agent_scale` (options: N M; 10,000 x 10 by
//! default). Root is not needed; KVM is not used (the CPU is emulated).

use std::path::Path;
use std::time::Duration;

use kubelvs_ipvs_vm::vm::{self, VmConfig};

const GUEST: &str = env!("CARGO_BIN_EXE_kubelvs-ipvs-vm-guest");

fn main() {
    let (n, m) = kubelvs_measure::bench_size((10_000, 10));
    let agent = vm::agent_binary(Path::new(GUEST));
    let config = VmConfig {
        mode: format!("agent-scale-{n}x{m}"),
        timeout: Duration::from_secs(3600),
        memory_mib: 3072,
        cpus: 1,
        cpu: std::env::var("KUBELVS_VM_CPU").unwrap_or_else(|_| "max".into()),
        extra: vec![("/bin/kube-lvs-agent".into(), agent)],
        echo: false,
    };
    let outcome = vm::run(Path::new(GUEST), &config).expect("boot the microVM");
    let problems = outcome.problems(&["agent_scale_first_apply", "agent_scale_edit"]);
    for name in [
        "agent_scale_first_apply",
        "agent_scale_rss",
        "agent_scale_idle_cpu",
        "agent_scale_mean_apply",
        "agent_scale_edit_to_kernel",
    ] {
        println!("{name} = {:?}", outcome.measure(name));
    }
    assert!(
        problems.is_empty(),
        "agent scale run failed (console in {}):\n{}",
        outcome.console_log.display(),
        problems.join("\n")
    );
    println!(
        "agent scale on IPVS in the microVM: {n} x {m}, {:?} in all",
        outcome.elapsed
    );
}
