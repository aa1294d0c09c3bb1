//! `--ipvs-vm`: this program, with `--dataplane ipvs`, inside the test suite's microVM
//! (a Debian kernel with IPVS in qemu), for hosts whose kernel has no IPVS. The guest
//! program starts it; its output comes back on the console as it runs.

use std::path::Path;
use std::time::Duration;

use kubelvs_ipvs_vm::vm::{self, VmConfig};

use crate::lab::Result;

pub fn run(agent: &Path, requests: usize) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let guest = exe.with_file_name("kubelvs-ipvs-vm-guest");
    for needed in [&guest, &agent.to_path_buf()] {
        if !needed.exists() {
            return Err(format!(
                "{} not found: build it (cargo build -p kubelvs-ipvs-vm -p kubelvs-agent)",
                needed.display()
            ));
        }
    }
    println!(
        "kube-lvs demo --ipvs-vm: the demo on kernel IPVS, in a microVM (qemu, emulated CPU:\n\
         slower than this host; the first run downloads and caches a Debian kernel)\n"
    );
    let config = VmConfig {
        mode: format!("demo-{requests}"),
        timeout: Duration::from_secs(900),
        memory_mib: 1024,
        cpus: 1,
        cpu: "max".into(),
        extra: vec![
            ("/bin/kube-lvs-agent".into(), agent.to_path_buf()),
            ("/bin/kubelvs-demo".into(), exe),
        ],
        echo: true,
    };
    let outcome = vm::run(&guest, &config).map_err(|e| e.to_string())?;
    let problems = outcome.problems(&["demo"]);
    if problems.is_empty() {
        println!(
            "\nthe microVM powered off after {:.0} s: nothing of the lab outlives it. Again: `scripts/demo --ipvs-vm`",
            outcome.elapsed.as_secs_f64()
        );
        Ok(())
    } else {
        Err(format!(
            "{} (console in {})",
            problems.join("; "),
            outcome.console_log.display()
        ))
    }
}
