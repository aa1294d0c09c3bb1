//! Host side: boots the microVM with the `vm-selftest-guest` binary built next to
//! this one, prints the console, and fails unless every case passed.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use kubelvs_ipvs_vm::vm::{self, VmConfig};

fn main() -> ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "selftest".into());
    let Ok(me) = std::env::current_exe() else {
        eprintln!("current_exe unknown");
        return ExitCode::FAILURE;
    };
    let guest = me.with_file_name("vm-selftest-guest");
    if !guest.exists() {
        eprintln!(
            "{} missing: build both binaries (cargo build --release)",
            guest.display()
        );
        return ExitCode::FAILURE;
    }
    let config = VmConfig {
        mode: mode.clone(),
        timeout: Duration::from_secs(240),
        memory_mib: 512,
        cpus: 1,
        cpu: "max".into(),
    };
    let outcome = match vm::run(Path::new(&guest), &config) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("microVM: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", outcome.console);
    let mut cases = vec![
        "selftest_flush_start",
        "selftest_info",
        "selftest_timeouts",
        "selftest_ipv6_service",
        "selftest_fwmark_service",
        "selftest_tunnel_dest",
        "selftest_errno_mapping",
        "selftest_zero",
        "selftest_daemon",
        "selftest_flush",
    ];
    if mode == "reload" {
        cases.push("selftest_module_reload");
    }
    let problems = outcome.problems(&cases);
    if problems.is_empty() {
        println!("all {} cases passed in {:?}", cases.len(), outcome.elapsed);
        ExitCode::SUCCESS
    } else {
        eprintln!("{}", problems.join("\n"));
        ExitCode::FAILURE
    }
}
