//! `reload` mode: `kubelvs_ipvs::selftest::module_reload`, which unloads and reloads
//! ip_vs under a live client and proves the generic-netlink family id is re-resolved.
//! It needs exclusive use of ip_vs, so it runs in a boot of its own: nothing else in
//! this VM creates IPVS state (init only loads the modules).

use std::path::Path;

use kubelvs_ipvs::{selftest, IpvsClient};

use crate::lab::cmd;
use crate::Reporter;

pub fn run(r: &mut Reporter) {
    let mut client = match IpvsClient::new() {
        Ok(c) => c,
        Err(e) => {
            r.case(
                "selftest_module_reload",
                Err(format!("IpvsClient::new: {e}")),
            );
            return;
        }
    };
    // The client must have talked to the old family before the reload, or the
    // test would prove nothing about re-resolution.
    if let Err(e) = client.services() {
        r.case(
            "selftest_module_reload",
            Err(format!("GET_SERVICE before the reload: {e}")),
        );
        return;
    }
    let (name, result) = selftest::module_reload(&mut client, reload_ip_vs);
    r.case(name, result);
}

/// `rmmod` every scheduler (each holds a reference on ip_vs), then ip_vs itself,
/// checks it is really gone, and loads it again.
fn reload_ip_vs() -> Result<(), String> {
    let modules =
        std::fs::read_to_string("/proc/modules").map_err(|e| format!("/proc/modules: {e}"))?;
    for name in modules
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|m| m.starts_with("ip_vs_"))
    {
        cmd("rmmod", &[name])?;
    }
    cmd("rmmod", &["ip_vs"])?;
    if Path::new("/sys/module/ip_vs").exists() {
        return Err("ip_vs still loaded after rmmod".into());
    }
    cmd("modprobe", &["ip_vs"])?;
    Ok(())
}
