//! `kube-lvs-agent --cleanup`: kube-lvs leaves the node for good (uninstall). Every
//! dataplane removes what it owns and restores what it changed
//! ([`kubelvs_model::Dataplane::remove_all`]: VIPs, ARP suppression and other
//! sysctls, tunnels, IPVS services, the FullNAT table), the XDP director's pins go
//! (and with them its program), and so do the agent's state files. What others made
//! (addresses, IPVS services, programs, pins) stays: each dataplane knows what it
//! owns from its state file.

use std::path::Path;
use std::time::Instant;

use kubelvs_model::{ApplyContext, Dataplane};

/// What a cleanup did and what it could not do.
#[derive(Debug, Default)]
pub struct Cleanup {
    pub done: Vec<String>,
    pub failed: Vec<String>,
}

pub fn cleanup(
    dataplanes: &mut [Box<dyn Dataplane>],
    xdp_pin_dir: Option<&Path>,
    state_dir: &Path,
) -> Cleanup {
    let mut c = Cleanup::default();
    let ctx = ApplyContext::at(Instant::now());
    for d in dataplanes.iter_mut() {
        match d.remove_all(&ctx) {
            Ok(writes) => c.done.push(format!(
                "{}: removed and restored ({writes} kernel writes)",
                d.name()
            )),
            Err(e) => c.failed.push(format!("{}: {e}", d.name())),
        }
    }
    if let Some(dir) = xdp_pin_dir {
        match kubelvs_xdp::remove_director_pins(dir) {
            Ok(removed) => c.done.push(format!(
                "xdp: {} pins removed from {} (the director program detaches with its link)",
                removed.len(),
                dir.display()
            )),
            Err(e) => c.failed.push(format!("xdp: {e}")),
        }
    }
    // State files last, and only when everything went: a failed cleanup can be run
    // again and still knows what is ours.
    if c.failed.is_empty() {
        for f in crate::state_files::ALL {
            let path = state_dir.join(f);
            match std::fs::remove_file(&path) {
                Ok(()) => c.done.push(format!("removed {}", path.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => c.failed.push(format!("{}: {e}", path.display())),
            }
        }
    }
    c
}
