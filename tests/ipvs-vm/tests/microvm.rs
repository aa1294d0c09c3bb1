//! Boots the Debian kernel in qemu and runs the guest scenarios against real IPVS.

use std::path::Path;
use std::time::Duration;

use kubelvs_ipvs_vm::vm::{self, VmConfig};

const GUEST: &str = env!("CARGO_BIN_EXE_kubelvs-ipvs-vm-guest");

#[test]
#[ignore = "privileged: boots a microVM"]
fn ipvs_scenarios_in_microvm() {
    let config = VmConfig {
        mode: "scenarios".into(),
        timeout: Duration::from_secs(280),
        memory_mib: 512,
        cpus: 1,
    };
    let outcome = vm::run(Path::new(GUEST), &config).expect("boot the microVM");
    println!("{}", outcome.console);
    println!(
        "elapsed {:?}, guest started after {:?}",
        outcome.elapsed, outcome.boot_time
    );
    let problems = outcome.problems(&["ipvsadm", "nft", "netns"]);
    assert!(
        problems.is_empty(),
        "microVM run failed (console in {}):\n{}",
        outcome.console_log.display(),
        problems.join("\n")
    );
}
