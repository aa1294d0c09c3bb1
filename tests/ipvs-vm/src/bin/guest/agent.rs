//! `kube-lvs-agent` standalone on the microVM's kernel IPVS: the agent binary (put in
//! the image as /bin/kube-lvs-agent) directs the lab's NAT service from a YAML file;
//! real TCP through the VIP, health checks that quiesce and restore, a file edit
//! reaching the kernel, agent restarts that keep an open connection and the table,
//! and an ipvsadm-made service left alone throughout. Then `agent_forwarding`'s
//! DR, TUN and FullNAT services, with agents on the real servers too.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kubelvs_ipvs_vm::ipvsadm;

use crate::lab::{cmd, tally, Lab, REAL_SERVERS};
use crate::Reporter;

const VIP: &str = "203.0.113.40";
const KEY: &str = "TCP 203.0.113.40:80";
const FOREIGN: &str = "203.0.113.41";
pub const AGENT: &str = "/bin/kube-lvs-agent";
pub const CONFIG: &str = "/run/agent/lab.yaml";
const HEALTH_PORT: u16 = 9000;
pub const TIMEOUT: Duration = Duration::from_secs(3);

fn yaml(weights: [u32; 3]) -> String {
    let mut y = format!(
        "apiVersion: kubelvs.io/v1alpha1
kind: VirtualService
metadata: {{name: web, namespace: lab}}
spec:
  vip: {VIP}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
  scheduler: wrr
  forwarding: nat
  realServerSelector: {{matchLabels: {{app: web}}}}
  directors: {{nodeSelector: {{matchLabels: {{node-role.kubelvs.io/director: \"\"}}}}}}
  healthCheck: {{type: tcp, port: {HEALTH_PORT}, intervalSeconds: 1, timeoutSeconds: 1, rise: 1, fall: 2}}
"
    );
    for ((ns, addr), w) in REAL_SERVERS.iter().zip(weights) {
        y += &format!(
            "---
apiVersion: kubelvs.io/v1alpha1
kind: RealServer
metadata: {{name: {ns}, namespace: lab, labels: {{app: web}}}}
spec: {{address: {addr}, weight: {w}, nodeName: {ns}}}
"
        );
    }
    y
}

pub fn write_config(text: &str) -> Result<(), String> {
    std::fs::write("/run/agent/lab.tmp", text).map_err(|e| e.to_string())?;
    std::fs::rename("/run/agent/lab.tmp", CONFIG).map_err(|e| e.to_string())
}

fn start_agent() -> Result<Child, String> {
    start_agent_with("info", &["--traffic-interval-seconds", "1"])
}

/// The director's agent on `CONFIG`, logging at `log`, with `extra` flags.
pub fn start_agent_with(log: &str, extra: &[&str]) -> Result<Child, String> {
    Command::new(AGENT)
        .args(["--config", CONFIG, "--node", "director"])
        .args(["--node-label", "node-role.kubelvs.io/director="])
        .args(["--interface", "lvs0", "--dataplane", "ipvs"])
        .args(["--state-dir", "/run/agent/state"])
        .args(["--metrics-address", "127.0.0.1:9641"])
        .args(extra)
        .env("RUST_LOG", log)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("start {AGENT}: {e}"))
}

/// SIGTERM, as a DaemonSet's rollout stops the agent, then reap it.
pub fn stop_agent(mut child: Child) {
    let _ = cmd("kill", &["-TERM", &child.id().to_string()]);
    let _ = child.wait();
}

/// The agent's /metrics.
pub fn metrics() -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect("127.0.0.1:9641").map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    Ok(text)
}

fn health_server(lab: &Lab, ns: &str) -> Result<Child, String> {
    lab.serve(ns, &[HEALTH_PORT])
}

/// Weights of the VIP's destinations as ipvsadm lists them.
fn weights() -> Result<Vec<(String, u32)>, String> {
    let listed = ipvsadm::parse_list(&cmd("ipvsadm", &["-Ln"])?).map_err(|e| e.to_string())?;
    let svc = listed.get(KEY).ok_or(format!("{KEY} not in the table"))?;
    Ok(svc
        .dests
        .iter()
        .map(|(d, x)| (d.clone(), x.weight))
        .collect())
}

fn weight_of(addr: &str) -> Option<u32> {
    weights()
        .ok()?
        .into_iter()
        .find(|(d, _)| d.starts_with(&format!("{addr}:")))
        .map(|(_, w)| w)
}

pub fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Result<(T, Duration), String> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok((v, start.elapsed()));
        }
        if start.elapsed() > limit {
            return Err(format!("not within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn run(r: &mut Reporter) {
    // The agent puts the VIP on lvs0 itself; the foreign one ipvsadm's user adds.
    let lab = match Lab::up_bare(&[FOREIGN]) {
        Ok(l) => l,
        Err(e) => {
            r.case("agent_topology", Err(e));
            return;
        }
    };
    let _ = std::fs::create_dir_all("/run/agent/state");
    let foreign = cmd(
        "ipvsadm",
        &["-A", "-t", &format!("{FOREIGN}:80"), "-s", "wlc"],
    );
    if !r.case(
        "agent_foreign_service",
        foreign.map(|_| "ipvsadm -A".into()),
    ) {
        return;
    }
    let mut health: Vec<Option<Child>> = REAL_SERVERS
        .iter()
        .map(|(ns, _)| health_server(&lab, ns).ok())
        .collect();
    if let Err(e) = write_config(&yaml([1, 1, 1])) {
        r.case("agent_config", Err(e));
        return;
    }
    let mut agent = match start_agent() {
        Ok(a) => a,
        Err(e) => {
            r.case("agent_started", Err(e));
            return;
        }
    };
    // Generous: the first validation builds the CRD schemas and CEL programs, slow
    // under an emulated CPU.
    let programmed = poll(Duration::from_secs(60), || {
        weights()
            .ok()
            .filter(|w| w.len() == 3 && w.iter().all(|(_, w)| *w == 1))
    });
    if !r.case(
        "agent_programs_ipvs",
        programmed.map(|(w, t)| format!("{KEY} with {w:?} after {t:?}")),
    ) {
        stop_agent(agent);
        return;
    }
    let target: SocketAddr = format!("{VIP}:80").parse().unwrap();
    r.case(
        "agent_traffic",
        lab.connect(target, 30, TIMEOUT, &[]).and_then(|res| {
            let (counts, errors) = tally(&res);
            if counts.len() == 3 && errors.is_empty() {
                Ok(format!("30 connections {counts:?}"))
            } else {
                Err(format!("{counts:?} errors {errors:?}"))
            }
        }),
    );

    r.case("agent_vip_guard", vip_guard(&lab));

    // IPVS STATS64 in /metrics.
    r.case(
        "agent_traffic_metrics",
        poll(Duration::from_secs(5), || {
            let text = metrics().ok()?;
            let line = text.lines().find(|l| {
                l.starts_with("kubelvs_virtual_service_connections_total")
                    && l.contains(&format!("service=\"{VIP}:80/TCP\""))
            })?;
            let n: u64 = line.rsplit(' ').next()?.parse().ok()?;
            (n >= 30).then(|| line.to_owned())
        })
        .map(|(l, _)| l),
    );

    // A long-lived connection, and its real server's health endpoint stops.
    let held = lab.hold(target);
    let (victim_ns, victim_addr) = match &held {
        Ok(h) => {
            let name = h
                .greeting
                .as_ref()
                .map(|g| g.server.clone())
                .unwrap_or_default();
            REAL_SERVERS
                .iter()
                .copied()
                .find(|(ns, _)| *ns == name)
                .unwrap_or(REAL_SERVERS[0])
        }
        Err(_) => REAL_SERVERS[0],
    };
    let vi = REAL_SERVERS
        .iter()
        .position(|(ns, _)| *ns == victim_ns)
        .unwrap();
    if let Some(mut c) = health[vi].take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let quiesced = poll(Duration::from_secs(6), || {
        (weight_of(victim_addr) == Some(0)).then_some(())
    });
    if let Ok((_, t)) = &quiesced {
        r.measure("agent_quiesce_after_health_stop", t.as_secs_f64(), "s");
    }
    r.case(
        "agent_health_quiesce",
        quiesced.and_then(|(_, t)| {
            if t <= Duration::from_millis(3500) {
                Ok(format!(
                    "{victim_ns} weight 0 after {t:?} (fall 2 x 1 s + 1 s allowed)"
                ))
            } else {
                Err(format!("{victim_ns} quiesced only after {t:?}"))
            }
        }),
    );
    health[vi] = health_server(&lab, victim_ns).ok();
    r.case(
        "agent_health_restore",
        poll(Duration::from_secs(6), || {
            (weight_of(victim_addr) == Some(1)).then_some(())
        })
        .map(|(_, t)| format!("{victim_ns} weight 1 again after {t:?}")),
    );

    // A file edit reaches the kernel.
    let first = REAL_SERVERS[0].1;
    let edited = Instant::now();
    let edit = write_config(&yaml([3, 1, 1])).and_then(|()| {
        poll(Duration::from_secs(3), || {
            (weight_of(first) == Some(3)).then_some(())
        })
    });
    let took = edited.elapsed();
    if edit.is_ok() {
        r.measure("agent_file_edit_to_kernel", took.as_secs_f64(), "s");
    }
    r.case(
        "agent_file_edit",
        edit.and_then(|_| {
            if took < Duration::from_secs(1) {
                Ok(format!("weight 3 in the kernel {took:?} after the edit"))
            } else {
                Err(format!("took {took:?}"))
            }
        }),
    );

    // Restarts: the table stays, the open connection too.
    let before = weights();
    let mut restarts = Ok(());
    for i in 0..5 {
        stop_agent(agent);
        agent = match start_agent() {
            Ok(a) => a,
            Err(e) => {
                r.case("agent_restarts", Err(e));
                return;
            }
        };
        std::thread::sleep(Duration::from_millis(300));
        if weights() != before {
            restarts = Err(format!(
                "restart {i}: table {:?}, was {before:?}",
                weights()
            ));
            break;
        }
    }
    r.case(
        "agent_restarts",
        restarts.and_then(|()| match held {
            Ok(h) => h
                .echo()
                .map(|e| format!("5 restarts, table unchanged, held connection: {e}")),
            Err(e) => Err(e),
        }),
    );
    let foreign_ok = ipvsadm::parse_list(&cmd("ipvsadm", &["-Ln"]).unwrap_or_default())
        .ok()
        .and_then(|l| {
            l.get(&format!("TCP {FOREIGN}:80"))
                .map(|s| s.scheduler == "wlc" && s.dests.is_empty())
        });
    crate::agent_forwarding::run(r, &lab, &yaml([3, 1, 1]));
    r.case(
        "agent_foreign_untouched",
        if foreign_ok == Some(true) {
            Ok("TCP 203.0.113.41:80 wlc, no destinations".into())
        } else {
            Err("the ipvsadm-made service was changed or removed".into())
        },
    );
    r.case("agent_cleanup", cleanup(agent));
    for c in health.iter_mut().flatten() {
        let _ = c.kill();
    }
}

/// A listener of the director host (as sshd or the kubelet would be) answers on the
/// director's own address but not on the VIP, a local address of the director too:
/// the agent's nftables guard drops the VIP's unserved ports; the served one works.
fn vip_guard(lab: &Lab) -> Result<String, String> {
    const OWN_PORT: u16 = 2222;
    let mut own = Command::new(&lab.exe)
        .args(["serve", "director", &OWN_PORT.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("serve on the director: {e}"))?;
    let ready = {
        use std::io::BufRead;
        let mut line = String::new();
        let out = own.stdout.take().ok_or("no stdout")?;
        let _ = std::io::BufReader::new(out).read_line(&mut line);
        line
    };
    let result = (|| {
        if ready.trim() != "READY" {
            return Err(format!("the director's own server: {ready:?}"));
        }
        let to = |ip: &str| -> SocketAddr { format!("{ip}:{OWN_PORT}").parse().unwrap() };
        let direct = lab.connect(to(crate::lab::DIRECTOR_CLIENT_SIDE), 1, TIMEOUT, &[])?;
        let (counts, errors) = tally(&direct);
        if !errors.is_empty() || counts.is_empty() {
            return Err(format!(
                "the director's own port on its address: {errors:?}"
            ));
        }
        let via_vip = lab.connect(to(VIP), 1, Duration::from_secs(1), &[])?;
        let (counts, _) = tally(&via_vip);
        if !counts.is_empty() {
            return Err(format!(
                "the director's own port answered on the VIP: {counts:?}"
            ));
        }
        let served = lab.connect(format!("{VIP}:80").parse().unwrap(), 6, TIMEOUT, &[])?;
        let (_, errors) = tally(&served);
        if !errors.is_empty() {
            return Err(format!("the VIP's served port: {errors:?}"));
        }
        Ok(format!(
            "port {OWN_PORT} of the director answers on {} but not on {VIP}; {VIP}:80 served",
            crate::lab::DIRECTOR_CLIENT_SIDE
        ))
    })();
    let _ = own.kill();
    let _ = own.wait();
    result
}

/// Uninstall: with NAT, DR, TUN and FullNAT programmed, the agent stops and
/// `--cleanup` runs with its flags. kube-lvs's services, VIPs, FullNAT table and state
/// files go; the ipvsadm-made service and the foreign VIP stay.
fn cleanup(agent: Child) -> Result<String, String> {
    use crate::agent_forwarding::{services, DR_VIP, FULLNAT_VIP, TUN_VIP};
    const FULLNAT_TABLE: &str = "kubelvs_fullnat";
    let ours = [VIP, DR_VIP, TUN_VIP, FULLNAT_VIP];
    write_config(&(yaml([3, 1, 1]) + &services(true)))?;
    let listed = || ipvsadm::parse_list(&cmd("ipvsadm", &["-Ln"]).unwrap_or_default()).ok();
    poll(Duration::from_secs(30), || {
        let l = listed()?;
        let all = ours.iter().all(|v| l.contains_key(&format!("TCP {v}:80")));
        (all && cmd("nft", &["list", "table", "inet", FULLNAT_TABLE]).is_ok()).then_some(())
    })
    .map_err(|e| format!("programming the four services and the FullNAT table: {e}"))?;
    stop_agent(agent);
    let out = Command::new(AGENT)
        .args(["--config", CONFIG, "--node", "director"])
        .args(["--node-label", "node-role.kubelvs.io/director="])
        .args(["--interface", "lvs0", "--dataplane", "ipvs"])
        .args(["--state-dir", "/run/agent/state"])
        .args(["--metrics-address", "127.0.0.1:9641", "--cleanup"])
        .output()
        .map_err(|e| format!("{AGENT} --cleanup: {e}"))?;
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("--cleanup failed: {log}"));
    }
    let l = listed().ok_or("ipvsadm -Ln")?;
    let left: Vec<&String> = l.keys().collect();
    if left != [&format!("TCP {FOREIGN}:80")] {
        return Err(format!("IPVS services after cleanup: {left:?}"));
    }
    for table in [FULLNAT_TABLE, "kubelvs_vips"] {
        if cmd("nft", &["list", "table", "inet", table]).is_ok() {
            return Err(format!("nftables table {table} left"));
        }
    }
    let addrs = cmd("ip", &["-o", "addr", "show", "dev", "lvs0"])?;
    if let Some(v) = ours.iter().find(|v| addrs.contains(&format!(" {v}/"))) {
        return Err(format!("{v} left on lvs0: {addrs}"));
    }
    if !addrs.contains(&format!(" {FOREIGN}/")) {
        return Err(format!("the foreign VIP {FOREIGN} was removed: {addrs}"));
    }
    for f in ["ipvs-owned", "netconf-owned", "health-down"] {
        if std::path::Path::new("/run/agent/state").join(f).exists() {
            return Err(format!("state file {f} left"));
        }
    }
    Ok(format!(
        "4 services, their VIPs, the FullNAT and VIP guard tables and the state files removed; TCP {FOREIGN}:80 and its VIP kept"
    ))
}
