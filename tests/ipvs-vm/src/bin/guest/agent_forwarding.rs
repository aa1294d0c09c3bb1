//! `kube-lvs-agent` in kernel IPVS's other forwarding methods: DR, TUN (IPIP) and
//! FullNAT next to the NAT service of `agent`. The lab's real servers start bare;
//! an agent in each real server's namespace (`--dataplane none`) must put the DR/TUN
//! VIPs on `lo`, suppress ARP for them and bring the tunnel up, and undo it when the
//! virtual services go away.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::agent::{poll, write_config, AGENT, TIMEOUT};
use crate::lab::{cmd, peers, tally, Lab, CLIENT, DIRECTOR_LAN, REAL_SERVERS};
use crate::Reporter;

pub const DR_VIP: &str = "203.0.113.42";
pub const TUN_VIP: &str = "203.0.113.43";
pub const FULLNAT_VIP: &str = "203.0.113.44";
/// A host on the real servers' segment that asks ARP for the DR VIP.
const ASKER_NS: &str = "asker";
const ASKER: &str = "192.0.2.50";

/// The DR, TUN and FullNAT virtual services over the same real servers, which
/// listen on port 80 (no port mapping in DR/TUN).
pub fn services(with_dr: bool) -> String {
    let vs = |name: &str, vip: &str, forwarding: &str, extra: &str| {
        format!(
            "---
apiVersion: kubelvs.io/v1alpha1
kind: VirtualService
metadata: {{name: {name}, namespace: lab}}
spec:
  vip: {vip}
  ports: [{{name: http, port: 80}}]
  scheduler: rr
  forwarding: {forwarding}{extra}
  realServerSelector: {{matchLabels: {{app: web}}}}
  directors: {{nodeSelector: {{matchLabels: {{node-role.kubelvs.io/director: \"\"}}}}}}
"
        )
    };
    let mut y = String::new();
    if with_dr {
        y += &vs("web-dr", DR_VIP, "dr", "");
    }
    y += &vs("web-tun", TUN_VIP, "tun", "\n  tunnel: {type: ipip}");
    y += &vs(
        "web-fullnat",
        FULLNAT_VIP,
        "fullnat",
        "\n  sourceAddressPool: snat",
    );
    y += &format!(
        "---
apiVersion: kubelvs.io/v1alpha1
kind: AddressPool
metadata: {{name: snat}}
spec: {{addresses: [{DIRECTOR_LAN}/32], autoAssign: false}}
"
    );
    y
}

fn start_real_server_agent(ns: &str) -> Result<Child, String> {
    let state = format!("/run/agent/{ns}");
    let _ = std::fs::create_dir_all(&state);
    Command::new("ip")
        .args(["netns", "exec", ns, AGENT])
        .args(["--config", crate::agent::CONFIG, "--node", ns])
        .args(["--interface", "eth0", "--dataplane", "none"])
        .args(["--state-dir", &state, "--metrics-address", "127.0.0.1:9641"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("start the agent in {ns}: {e}"))
}

fn sysctl(ns: &str, path: &str) -> Option<String> {
    cmd(
        "ip",
        &["netns", "exec", ns, "cat", &format!("/proc/sys/{path}")],
    )
    .ok()
    .map(|s| s.trim().to_owned())
}

fn lo_has(ns: &str, vip: &str) -> bool {
    cmd("ip", &["-n", ns, "-o", "addr", "show", "dev", "lo"])
        .is_ok_and(|out| out.contains(&format!(" {vip}/32 ")))
}

fn tunl0_up(ns: &str) -> bool {
    cmd("ip", &["-n", ns, "-o", "link", "show", "dev", "tunl0"])
        .is_ok_and(|out| out.contains(",UP") || out.contains("<UP"))
}

/// A real server prepared for DR/TUN: both VIPs on `lo`, ARP suppressed on `all`
/// and `eth0`, tunl0 up with loose reverse-path filtering.
fn prepared(ns: &str) -> Result<(), String> {
    let wanted = [
        ("net/ipv4/conf/all/arp_ignore", "1"),
        ("net/ipv4/conf/all/arp_announce", "2"),
        ("net/ipv4/conf/eth0/arp_ignore", "1"),
        ("net/ipv4/conf/eth0/arp_announce", "2"),
        ("net/ipv4/conf/tunl0/rp_filter", "0"),
    ];
    for (path, value) in wanted {
        let got = sysctl(ns, path);
        if got.as_deref() != Some(value) {
            return Err(format!("{ns}: {path} is {got:?}, want {value}"));
        }
    }
    for vip in [DR_VIP, TUN_VIP] {
        if !lo_has(ns, vip) {
            return Err(format!("{ns}: {vip} not on lo"));
        }
    }
    if lo_has(ns, FULLNAT_VIP) {
        return Err(format!("{ns}: the FullNAT VIP is on lo"));
    }
    if !tunl0_up(ns) {
        return Err(format!("{ns}: tunl0 is not up"));
    }
    Ok(())
}

/// 30 connections to `vip`:80: every real server answers, none fails, and the
/// real servers see `peer` as the client.
fn traffic(lab: &Lab, vip: &str, peer: &str) -> Result<String, String> {
    let target: SocketAddr = format!("{vip}:80").parse().unwrap();
    let res = lab.connect(target, 30, TIMEOUT, &[])?;
    let (counts, mut errors) = tally(&res);
    let seen = peers(&res);
    let want: std::net::IpAddr = peer.parse().unwrap();
    if counts.len() == 3 && errors.is_empty() && seen == [want] {
        Ok(format!(
            "30 connections {counts:?}, real servers saw {peer}"
        ))
    } else {
        // What a person debugging it would look at first.
        let table = cmd("ipvsadm", &["-Ln", "--stats", "-t", &format!("{vip}:80")]);
        let (rs, _) = REAL_SERVERS[0];
        let links = cmd("ip", &["-n", rs, "-s", "-o", "link"]);
        let filters: Vec<String> = ["all", "default", "eth0", "tunl0", "lo"]
            .iter()
            .map(|d| {
                format!(
                    "{d}={:?}",
                    sysctl(rs, &format!("net/ipv4/conf/{d}/rp_filter"))
                )
            })
            .collect();
        errors.truncate(3);
        Err(format!(
            "{counts:?}, peers {seen:?}, errors {errors:?}\n{table:?}\n{rs} links: {links:?}\n{rs} rp_filter {filters:?}"
        ))
    }
}

/// The MACs that answered an ARP request for `vip` from the asker's namespace.
fn arp_answers(vip: &str) -> Result<Vec<String>, String> {
    // busybox arping prints `Unicast reply from IP [MAC] ...`; it exits 1 when
    // nobody answered, so its status is not an error here.
    let out = Command::new("ip")
        .args(["netns", "exec", ASKER_NS, "arping", "-c", "3", "-w", "3"])
        .args(["-I", "eth0", vip])
        .output()
        .map_err(|e| format!("arping: {e}"))?;
    let mut macs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let start = l.find('[')? + 1;
            let end = l[start..].find(']')? + start;
            Some(l[start..end].to_ascii_lowercase())
        })
        .collect();
    macs.sort();
    macs.dedup();
    Ok(macs)
}

fn asker() -> Result<(), String> {
    cmd("ip", &["netns", "add", ASKER_NS])?;
    cmd(
        "ip",
        &[
            "link",
            "add",
            "asker-lan",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ASKER_NS,
        ],
    )?;
    cmd("ip", &["link", "set", "asker-lan", "master", "lan0", "up"])?;
    cmd(
        "ip",
        &[
            "-n",
            ASKER_NS,
            "addr",
            "add",
            &format!("{ASKER}/24"),
            "dev",
            "eth0",
        ],
    )?;
    cmd("ip", &["-n", ASKER_NS, "link", "set", "eth0", "up"]).map(|_| ())
}

/// Runs after `agent`'s NAT cases with its director agent still running on
/// `config_base` (the NAT objects as they stand).
pub fn run(r: &mut Reporter, lab: &Lab, config_base: &str) {
    let mut agents = Vec::new();
    for (ns, _) in REAL_SERVERS {
        match start_real_server_agent(ns) {
            Ok(c) => agents.push(c),
            Err(e) => {
                r.case("agent_real_server_agents", Err(e));
                return;
            }
        }
    }
    if let Err(e) = write_config(&format!("{config_base}{}", services(true))) {
        r.case("agent_forwarding_config", Err(e));
        return;
    }
    // Generous: three agents start at once and each builds its CRD schemas and CEL
    // programs before the first plan, on one emulated vCPU (25-35 s seen).
    let ready = poll(Duration::from_secs(120), || {
        REAL_SERVERS
            .iter()
            .all(|(ns, _)| prepared(ns).is_ok())
            .then_some(())
    });
    r.case(
        "agent_real_servers_prepared",
        ready
            .map(|(_, t)| {
                format!("VIPs on lo, ARP suppressed, tunl0 up on 3 real servers after {t:?}")
            })
            .map_err(|e| {
                let why: Vec<String> = REAL_SERVERS
                    .iter()
                    .filter_map(|(ns, _)| prepared(ns).err())
                    .collect();
                format!("{e}: {}", why.join("; "))
            }),
    );
    // The director programs the services from the same file; wait for the last.
    let programmed = poll(Duration::from_secs(20), || {
        cmd("ipvsadm", &["-Ln", "-t", &format!("{FULLNAT_VIP}:80")]).ok()
    });
    if programmed.is_err() {
        r.case(
            "agent_forwarding_programmed",
            programmed.map(|_| String::new()),
        );
    }
    r.case("agent_dr_traffic", traffic(lab, DR_VIP, CLIENT));
    r.case("agent_tun_traffic", traffic(lab, TUN_VIP, CLIENT));
    r.case(
        "agent_fullnat_traffic",
        traffic(lab, FULLNAT_VIP, DIRECTOR_LAN),
    );

    // Read after the asker's port joins: a bridge takes its MAC from its ports.
    let director_mac = || {
        std::fs::read_to_string("/sys/class/net/lan0/address")
            .map(|s| s.trim().to_ascii_lowercase())
            .unwrap_or_default()
    };
    r.case(
        "agent_dr_arp_director_only",
        asker().and_then(|()| arp_answers(DR_VIP)).and_then(|macs| {
            let director_mac = director_mac();
            if macs == [director_mac.clone()] {
                Ok(format!(
                    "{DR_VIP} is-at {director_mac} (the director's lan0) only"
                ))
            } else {
                Err(format!(
                    "answered by {macs:?}; the director's lan0 is {director_mac}"
                ))
            }
        }),
    );

    // Without the DR service its VIP leaves lo; TUN still needs ARP suppression.
    let undone = write_config(&format!("{config_base}{}", services(false))).and_then(|()| {
        poll(Duration::from_secs(10), || {
            REAL_SERVERS
                .iter()
                .all(|(ns, _)| !lo_has(ns, DR_VIP) && lo_has(ns, TUN_VIP))
                .then_some(())
        })
    });
    r.case(
        "agent_dr_undone",
        undone.and_then(|(_, t)| {
            let kept = REAL_SERVERS
                .iter()
                .all(|(ns, _)| sysctl(ns, "net/ipv4/conf/all/arp_ignore").as_deref() == Some("1"));
            if kept {
                Ok(format!(
                    "{DR_VIP} off lo after {t:?}, ARP suppression kept for {TUN_VIP}"
                ))
            } else {
                Err("ARP suppression removed while the TUN VIP is still on lo".into())
            }
        }),
    );
    // Without any DR/TUN service the real servers are as they were: the sysctls
    // restored to their earlier values, nothing on lo.
    let restored = write_config(config_base).and_then(|()| {
        poll(Duration::from_secs(10), || {
            REAL_SERVERS
                .iter()
                .all(|(ns, _)| {
                    !lo_has(ns, TUN_VIP)
                        && sysctl(ns, "net/ipv4/conf/all/arp_ignore").as_deref() == Some("0")
                        && sysctl(ns, "net/ipv4/conf/all/arp_announce").as_deref() == Some("0")
                })
                .then_some(())
        })
    });
    r.case(
        "agent_real_servers_restored",
        restored
            .map(|(_, t)| format!("VIPs off lo, arp_ignore/arp_announce back to 0 after {t:?}")),
    );
    for mut a in agents {
        let _ = cmd("kill", &["-TERM", &a.id().to_string()]);
        let _ = a.wait();
    }
}
