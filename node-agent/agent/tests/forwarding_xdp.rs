//! `kube-lvs-agent` standalone with the XDP dataplane in the other forwarding methods
//! it supports: TUN (real servers' agents run the XDP decapsulation, this kernel has
//! no ipip) and NAT (real servers route replies back through the director; the
//! director maps VIP:80 to 8080). Real TCP through the VIP reaches every real server.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use kubelvs_xdp_lab::bpf::Attached;
use kubelvs_xdp_lab::topology::{Host, Lab};
use kubelvs_xdp_lab::{LabConfig, ReturnPath};

fn args(host: &Host, file: &Path, dir: &Path, extra: &[&str]) -> Vec<String> {
    let (file, addr) = (file.display().to_string(), host.addr.to_string());
    let mut all = vec!["--config", &file, "--node-address", &addr];
    all.extend_from_slice(extra);
    agent_args(host, dir, &all)
}

fn run(forwarding: &str) {
    let (return_path, target_port) = match forwarding {
        "nat" => (ReturnPath::ViaDirector, 8080),
        _ => (ReturnPath::Direct, PORT),
    };
    let lab = Lab::build(LabConfig {
        vip_on_real_servers: false,
        return_path,
        ..LabConfig::default()
    })
    .unwrap();
    let _pass = Attached::attach(&lab.bridge, &lab.director.bridge_port, "xdp_pass").unwrap();
    let dir = std::env::temp_dir().join(format!("kubelvs-agentf-{}", lab.bridge.name()));
    std::fs::create_dir_all(&dir).unwrap();
    let pin = PathBuf::from("/sys/fs/bpf").join(lab.bridge.name());
    let file = dir.join("lab.yaml");
    std::fs::write(
        &file,
        lab_objects(&lab, forwarding, target_port, false, &[0, 1, 2]),
    )
    .unwrap();
    let _app = lab.start_servers(target_port).unwrap();
    let rs_extra: &[&str] = if forwarding == "tun" {
        &["--dataplane", "none", "--xdp-decap"]
    } else {
        &["--dataplane", "none"]
    };
    let _rs: Vec<Agent> = lab
        .real_servers
        .iter()
        .map(|rs| Agent::start(rs, &args(rs, &file, &dir, rs_extra), &dir))
        .collect();
    let pin_s = pin.display().to_string();
    let director = Agent::start(
        &lab.director,
        &args(
            &lab.director,
            &file,
            &dir,
            &[
                "--node-label",
                "node-role.kubelvs.io/director=",
                "--dataplane",
                "xdp",
                "--xdp-pin-dir",
                &pin_s,
            ],
        ),
        &dir,
    );
    eventually(Duration::from_secs(20), "director ready", || {
        http_get(&lab.director.netns, "/readyz").filter(|(s, _)| *s == 200)
    });
    let reached_all = eventually(Duration::from_secs(15), "every real server answers", || {
        let r = reached(&lab, 30);
        ["rs1", "rs2", "rs3"]
            .iter()
            .all(|rs| r.iter().any(|x| x == rs))
            .then_some(r)
    });
    assert!(
        reached_all.iter().all(|r| !r.starts_with("error")),
        "{forwarding}: {reached_all:?}\n{}",
        director.log()
    );
    drop(director);
    let _ = std::fs::remove_dir_all(&pin);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "privileged: netns + XDP"]
fn tun_through_the_agent_with_xdp_decapsulation_on_real_servers() {
    run("tun");
}

#[test]
#[ignore = "privileged: netns + XDP"]
fn nat_through_the_agent_with_port_mapping() {
    run("nat");
}
