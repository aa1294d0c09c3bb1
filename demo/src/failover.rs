//! The `--cluster` demo's last step: a second director joins, one of the two answers
//! ARP for the VIP (the owner every agent computes from the directors' Leases), and the
//! owner is killed mid-traffic (agent SIGKILLed, link cut). The other announces the VIP
//! once the owner's Lease expires; the client's requests keep being answered.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kubelvs_test_cluster::Cluster;
use kubelvs_xdp_lab::bpf::Attached;
use kubelvs_xdp_lab::topology::{format_mac, Host, HOST_IFNAME};

use crate::lab::{poll, scrape, Agent, Result, Setup, PORT};

const DIRECTOR2_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
/// Each request may wait this long: a SYN sent to the dead director is sent again
/// 1, 3 and 7 s after the first, and answered once the other announced the VIP.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Who announces the lab's VIP, as the operator says (`status.announcedBy`: an
/// agent's word, of a director whose Lease is live).
fn announced_by(cluster: &Cluster) -> Vec<String> {
    crate::cluster::web_field(cluster, "{.status.announcedBy}")
        .unwrap_or_default()
        .split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The client's neighbour entry for the VIP: the MAC it sends the VIP's traffic to.
fn vip_mac(setup: &Setup) -> Option<String> {
    let vip = setup.lab.vip.to_string();
    let out = setup.lab.client.netns.ip(&["neigh", "show", &vip]).ok()?;
    let mut words = out.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next().map(str::to_owned)
}

pub struct Director2 {
    pub host: Host,
    _pass: Attached,
}

/// Adds the second director to the lab: its host on the bridge, its Node.
pub fn add_director(setup: &Setup, cluster: &Cluster) -> Result<Director2> {
    let host = setup
        .lab
        .add_host("director2", DIRECTOR2_ADDR, 0x03)
        .map_err(|e| e.to_string())?;
    let pass = Attached::attach(&setup.lab.bridge, &host.bridge_port, "xdp_pass")
        .map_err(|e| e.to_string())?;
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &kubelvs_test_cluster::node_object(&host.role, host.addr.into(), true),
        )
        .map_err(|e| e.to_string())?;
    // A switch floods frames for a MAC it forgot (the dead director's) to every port,
    // and an XDP director takes any frame to its VIP: flows would move before the
    // announcement does. The lab's bridge does not flood to directors, so what is shown
    // is the announcement's doing.
    for port in [&setup.lab.director.bridge_port, &host.bridge_port] {
        setup
            .lab
            .bridge
            .exec("bridge", &["link", "set", "dev", port, "flood", "off"])
            .map_err(|e| e.to_string())?;
    }
    Ok(Director2 { host, _pass: pass })
}

/// Runs the step: both directors' agents are in `agents` (by role).
pub fn run(
    setup: &Setup,
    cluster: &Cluster,
    namespace: &str,
    director2: &Director2,
    agents: &mut [Agent],
    lease_ms: u64,
) -> Result<()> {
    let lab = &setup.lab;
    let vip = lab.vip.to_string();
    // The client reaches the VIP on its segment, so ARP decides which director gets it.
    lab.client
        .netns
        .ip(&["route", "replace", &format!("{vip}/32"), "dev", HOST_IFNAME])
        .map_err(|e| e.to_string())?;
    poll(Duration::from_secs(30), "director2's agent ready", || {
        scrape(&director2.host.netns, "/readyz").filter(|(s, _)| *s == 200)
    })?;
    // Both directors see every real server pass before traffic is counted on.
    poll(
        Duration::from_secs(30),
        "director2 seeing 3 healthy real servers",
        || {
            let healthy = crate::cluster::web_field(
                cluster,
                "{.status.directors[?(@.node==\"director2\")].healthyRealServers}",
            )
            .ok()?;
            (healthy.trim() == "3").then_some(())
        },
    )?;
    crate::cluster::wait_healthy(cluster, "3/3")?;
    let owner = poll(Duration::from_secs(30), "one announcer in status", || {
        let a = announced_by(cluster);
        (a.len() == 1).then(|| a[0].clone())
    })?;
    let (owner_host, other_host) = if owner == lab.director.role {
        (&lab.director, &director2.host)
    } else {
        (&director2.host, &lab.director)
    };
    let to = SocketAddr::from((lab.vip, PORT));
    poll(
        Duration::from_secs(10),
        "the client reaching the owner",
        || {
            lab.client
                .netns
                .run(move || crate::http::get(to, Duration::from_secs(1)).ok())
                .ok()
                .flatten()?;
            (vip_mac(setup)? == format_mac(owner_host.mac)).then_some(())
        },
    )?;
    println!(
        "      director2 joined; of the two, {owner} answers ARP for {vip} (the Leases' live \
         directors, a hash every agent computes alike); the other carries it on lo, silent"
    );
    let wide = cluster
        .kubectl_ok(&["get", "lvs", "-n", namespace, "-o", "wide"])
        .map_err(|e| e.to_string())?;
    println!("      $ kubectl get lvs -n {namespace} -o wide");
    for l in wide.lines() {
        println!("        {l}");
    }

    // Requests, one after another, while the owner dies.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let client = lab
        .client
        .netns
        .spawn(move || {
            let mut answers: Vec<(Instant, Duration, String)> = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let t = Instant::now();
                let a =
                    crate::http::get(to, REQUEST_TIMEOUT).unwrap_or_else(|e| format!("error: {e}"));
                answers.push((t, t.elapsed(), a));
                std::thread::sleep(Duration::from_millis(20));
            }
            answers
        })
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(1));
    let agent = agents
        .iter_mut()
        .find(|a| a.role == owner)
        .ok_or("no agent for the owner")?;
    // The node dies: its link first (a node that is gone answers nothing), then its
    // agent (this lab's agents pin nothing the host keeps, so their XDP program
    // goes with them, and the node's stack would reset what reached it meanwhile).
    owner_host
        .netns
        .ip(&["link", "set", HOST_IFNAME, "down"])
        .map_err(|e| e.to_string())?;
    let died = Instant::now();
    agent.kill();
    println!("      {owner}: link cut and agent killed (SIGKILL), requests flowing");
    let new_mac = format_mac(other_host.mac);
    let took = poll(
        Duration::from_secs(20),
        "the other director announcing",
        || (vip_mac(setup)? == new_mac).then(|| died.elapsed()),
    )?;
    // Some more requests through the new owner.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let answers = client
        .join()
        .map_err(|_| "the client thread panicked")?
        .map_err(|e| e.to_string())?;
    let failed = answers
        .iter()
        .filter(|(_, _, a)| a.starts_with("error"))
        .count();
    let during = answers
        .iter()
        .filter(|(t, _, _)| *t >= died - Duration::from_secs(1))
        .count();
    let slowest = answers.iter().map(|(_, d, _)| *d).max().unwrap_or_default();
    println!(
        "      {} announced {vip} {:.2} s after (Lease {lease_ms} ms); the client's ARP entry \
         follows its gratuitous ARP",
        other_host.role,
        took.as_secs_f64()
    );
    println!(
        "      {} requests, {during} of them from the second before the kill on: {failed} failed; \
         the slowest took {:.2} s (a SYN sent to the dead director is sent again by TCP)",
        answers.len(),
        slowest.as_secs_f64(),
    );
    if failed > 0 {
        let errors: Vec<String> = answers
            .iter()
            .filter(|(_, _, a)| a.starts_with("error"))
            .map(|(t, d, a)| {
                let at = t.saturating_duration_since(died).as_secs_f64()
                    - died.saturating_duration_since(*t).as_secs_f64();
                format!(
                    "{a} (sent {at:.2} s after the kill, took {:.2} s)",
                    d.as_secs_f64()
                )
            })
            .collect();
        return Err(format!(
            "{failed} requests failed during the failover: {errors:?}"
        ));
    }
    println!("      ✓ no request failed while the announcing director died");
    let named = Instant::now();
    poll(
        Duration::from_secs(15),
        "status naming the new announcer",
        || (announced_by(cluster) == [other_host.role.as_str()]).then_some(()),
    )?;
    let wide = cluster
        .kubectl_ok(&["get", "lvs", "-n", namespace, "-o", "wide"])
        .map_err(|e| e.to_string())?;
    println!(
        "      the operator names {} in status {:.2} s later (it follows the directors' Leases too)",
        other_host.role,
        named.elapsed().as_secs_f64()
    );
    println!("      $ kubectl get lvs -n {namespace} -o wide");
    for l in wide.lines() {
        println!("        {l}");
    }
    Ok(())
}
