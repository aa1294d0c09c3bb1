//! The guest's network: the VM's root namespace is the director; a client and
//! three real servers live in their own namespaces.
//!
//! ```text
//!  client ns                director (root ns)                    rs1..rs3 ns
//!  eth0 198.51.100.10-17 -- cl0 198.51.100.1
//!                           lvs0 (dummy) 203.0.113.x/32 VIPs
//!                           lan0 (bridge) 192.0.2.1 ---------- eth0 192.0.2.11..13
//!                                                              lo: DR/TUN VIPs, tunl0 up
//! ```
//! Client and real servers are in different subnets, so NAT replies must come
//! back through the director (their default route), as LVS-NAT requires.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use kubelvs_ipvs_vm::traffic::Greeting;

pub const CLIENT_NS: &str = "client";
pub const DIRECTOR_LAN: &str = "192.0.2.1";
pub const DIRECTOR_CLIENT_SIDE: &str = "198.51.100.1";
pub const CLIENT: &str = "198.51.100.10";
/// Extra client addresses (source hashing and persistence need several clients).
pub const CLIENTS: [&str; 8] = [
    "198.51.100.10",
    "198.51.100.11",
    "198.51.100.12",
    "198.51.100.13",
    "198.51.100.14",
    "198.51.100.15",
    "198.51.100.16",
    "198.51.100.17",
];
/// (namespace, address) of the real servers.
pub const REAL_SERVERS: [(&str, &str); 3] = [
    ("rs1", "192.0.2.11"),
    ("rs2", "192.0.2.12"),
    ("rs3", "192.0.2.13"),
];
/// The same hosts over IPv6 (client, director sides, real servers in REAL_SERVERS order).
pub const CLIENT6: &str = "2001:db8:c::10";
pub const DIRECTOR_CLIENT_SIDE6: &str = "2001:db8:c::1";
pub const DIRECTOR_LAN6: &str = "2001:db8:1::1";
pub const REAL_SERVERS6: [&str; 3] = ["2001:db8:1::11", "2001:db8:1::12", "2001:db8:1::13"];

/// UDP port real servers decapsulate GUE on (`ip fou add port ... gue`).
pub const GUE_PORT: u16 = 6080;

/// Ports every real server listens on: 80 for DR/TUN (no port mapping), 8080 for NAT.
pub const RS_PORTS: [u16; 2] = [80, 8080];

/// One connection's outcome: the client source used, and the greeting or the error.
pub type Attempt = (String, Result<Greeting, String>);

/// Runs a command, returning stdout or an error naming the command and its stderr.
pub fn cmd(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Feeds `commands` to `ip [-n ns] -batch -`: one process per namespace, which
/// matters under TCG, where every exec costs tens of milliseconds.
pub fn ip_batch(ns: Option<&str>, commands: &[String]) -> Result<(), String> {
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.args(["-n", ns]);
    }
    let mut child = c
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ip -batch: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(commands.join("\n").as_bytes())
            .map_err(|e| format!("ip -batch stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("ip -batch: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}-batch failed: {}",
            ns.map_or(String::new(), |n| format!("-n {n} ")),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// `ip addr add` of a single-host address (/32 or /128) on `dev`.
fn host_address(addr: &str, dev: &str) -> String {
    if addr.contains(':') {
        format!("addr add {addr}/128 dev {dev} nodad")
    } else {
        format!("addr add {addr}/32 dev {dev}")
    }
}

/// Writes sysctls inside namespace `ns` (root when `None`); /proc/sys/net is per netns.
pub fn sysctls(ns: Option<&str>, list: &[(&str, &str)]) -> Result<(), String> {
    let script: String = list
        .iter()
        .map(|(k, v)| format!("echo {v} > /proc/sys/{} && ", k.replace('.', "/")))
        .collect::<String>()
        + "true";
    match ns {
        Some(ns) => cmd("ip", &["netns", "exec", ns, "sh", "-c", &script]),
        None => cmd("sh", &["-c", &script]),
    }
    .map(|_| ())
}

/// The running lab: real server processes are killed when it drops.
#[derive(Debug)]
pub struct Lab {
    servers: Vec<Child>,
    pub exe: String,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

impl Lab {
    /// Builds the topology and starts one identity server per real server.
    /// `vips` go on the director; `rs_vips` also on every real server's `lo` (DR/TUN),
    /// whose tunnels and ARP suppression are configured too.
    pub fn up(vips: &[&str], rs_vips: &[&str]) -> Result<Self, String> {
        Self::build(vips, Some(rs_vips))
    }

    /// The same topology with the real servers left as a fresh host is: no VIP on
    /// `lo`, no ARP suppression, tunnel devices down. The agents on them must do it.
    pub fn up_bare(vips: &[&str]) -> Result<Self, String> {
        Self::build(vips, None)
    }

    fn build(vips: &[&str], rs_vips: Option<&[&str]>) -> Result<Self, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("current_exe: {e}"))?
            .display()
            .to_string();
        let mut root = vec![
            "link add lan0 type bridge".to_owned(),
            format!("addr add {DIRECTOR_LAN}/24 dev lan0"),
            "link set lan0 up".to_owned(),
            "link add lvs0 type dummy".to_owned(),
            "link set lvs0 up".to_owned(),
            "link set lo up".to_owned(),
            format!("netns add {CLIENT_NS}"),
            format!("link add cl0 type veth peer name eth0 netns {CLIENT_NS}"),
            format!("addr add {DIRECTOR_CLIENT_SIDE}/24 dev cl0"),
            // nodad: addresses are usable at once, no wait for duplicate detection.
            format!("addr add {DIRECTOR_CLIENT_SIDE6}/64 dev cl0 nodad"),
            format!("addr add {DIRECTOR_LAN6}/64 dev lan0 nodad"),
            "link set cl0 up".to_owned(),
        ];
        for vip in vips {
            root.push(host_address(vip, "lvs0"));
        }
        for (ns, _) in REAL_SERVERS {
            root.push(format!("netns add {ns}"));
            root.push(format!(
                "link add {ns}-lan type veth peer name eth0 netns {ns}"
            ));
            root.push(format!("link set {ns}-lan master lan0 up"));
        }
        ip_batch(None, &root)?;
        // Forwarding is left to the library's director sysctls (the scenarios prove
        // they suffice). DR/TUN replies come back through the director with the VIP
        // (one of its own addresses) as source: accept_local lets it forward them
        // instead of dropping them as martians.
        sysctls(
            None,
            &[
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.lan0.rp_filter", "0"),
                ("net.ipv4.conf.lan0.accept_local", "1"),
            ],
        )?;

        let mut client = vec![
            "link set lo up".to_owned(),
            "link set eth0 up".to_owned(),
            format!("route add default via {DIRECTOR_CLIENT_SIDE}"),
            format!("addr add {CLIENT6}/64 dev eth0 nodad"),
            format!("route add ::/0 via {DIRECTOR_CLIENT_SIDE6}"),
        ];
        for (i, c) in CLIENTS.iter().enumerate() {
            client.insert(i, format!("addr add {c}/24 dev eth0"));
        }
        ip_batch(Some(CLIENT_NS), &client)?;

        for (&(ns, addr), addr6) in REAL_SERVERS.iter().zip(REAL_SERVERS6) {
            let mut rs = vec![
                format!("addr add {addr}/24 dev eth0"),
                format!("addr add {addr6}/64 dev eth0 nodad"),
                "link set lo up".to_owned(),
                "link set eth0 up".to_owned(),
                format!("route add default via {DIRECTOR_LAN}"),
                format!("route add ::/0 via {DIRECTOR_LAN6}"),
            ];
            let Some(rs_vips) = rs_vips else {
                ip_batch(Some(ns), &rs)?;
                continue;
            };
            rs.extend([
                // tunl0 and gre0 appear in every namespace once ipip and ip_gre are
                // loaded; they decapsulate TUN (IPIP, and GUE after fou) and GRE.
                "link set tunl0 up".to_owned(),
                "link set gre0 up".to_owned(),
                format!("fou add port {GUE_PORT} gue"),
            ]);
            for vip in rs_vips {
                rs.push(host_address(vip, "lo"));
            }
            ip_batch(Some(ns), &rs)?;
            // DR/TUN real servers carry the VIP but must not answer ARP for it, and
            // must accept packets whose source is reachable only via another interface.
            sysctls(
                Some(ns),
                &[
                    ("net.ipv4.conf.all.arp_ignore", "1"),
                    ("net.ipv4.conf.all.arp_announce", "2"),
                    ("net.ipv4.conf.all.rp_filter", "0"),
                    ("net.ipv4.conf.eth0.rp_filter", "0"),
                    ("net.ipv4.conf.tunl0.rp_filter", "0"),
                    ("net.ipv4.conf.gre0.rp_filter", "0"),
                ],
            )?;
        }

        let mut lab = Lab {
            servers: Vec::new(),
            exe,
        };
        for (ns, _) in REAL_SERVERS {
            let server = lab.serve(ns, &RS_PORTS)?;
            lab.servers.push(server);
        }
        Ok(lab)
    }

    /// Starts a server in namespace `ns` on `ports` (it says its name, then echoes)
    /// and waits until it listens. The caller owns the process.
    pub fn serve(&self, ns: &str, ports: &[u16]) -> Result<Child, String> {
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let mut args = vec!["netns", "exec", ns, self.exe.as_str(), "serve", ns];
        args.extend(ports.iter().map(String::as_str));
        let mut child = Command::new("ip")
            .args(&args)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start server in {ns}: {e}"))?;
        let ready = child.stdout.take().map(|out| {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            line
        });
        if ready.as_deref().map(str::trim) != Some("READY") {
            let _ = child.kill();
            return Err(format!("server in {ns} did not report READY: {ready:?}"));
        }
        Ok(child)
    }

    /// Removes the real servers' default route: they can then reach only their own subnet.
    pub fn cut_route_back(&self) -> Result<(), String> {
        for (ns, _) in REAL_SERVERS {
            cmd("ip", &["-n", ns, "route", "del", "default"])?;
        }
        Ok(())
    }

    /// `count` connections from the client namespace to `target`, sources in turn.
    /// Each result is (source, greeting) or the error text.
    pub fn connect(
        &self,
        target: SocketAddr,
        count: usize,
        timeout: Duration,
        sources: &[&str],
    ) -> Result<Vec<Attempt>, String> {
        let count = count.to_string();
        let timeout = timeout.as_millis().to_string();
        let target = target.to_string();
        let mut args = vec![
            "netns",
            "exec",
            CLIENT_NS,
            self.exe.as_str(),
            "client",
            &target,
            &count,
            &timeout,
        ];
        args.extend_from_slice(sources);
        let out = cmd("ip", &args)?;
        out.lines()
            .map(|line| {
                let mut parts = line.splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("OK"), Some(src), Some(rest)) => {
                        Ok((src.to_owned(), rest.parse::<Greeting>()))
                    }
                    (Some("ERR"), Some(src), rest) => {
                        Ok((src.to_owned(), Err(rest.unwrap_or("").to_owned())))
                    }
                    _ => Err(format!("client printed {line:?}")),
                }
            })
            .collect()
    }

    /// Opens one long-lived connection from the client namespace.
    pub fn hold(&self, target: SocketAddr) -> Result<Held, String> {
        let target = target.to_string();
        let mut child = Command::new("ip")
            .args(["netns", "exec", CLIENT_NS, &self.exe, "hold", &target])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("hold: {e}"))?;
        let stdin = child.stdin.take().ok_or("hold: no stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("hold: no stdout")?);
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let mut held = Held {
            child,
            stdin: Some(stdin),
            stdout,
            greeting: None,
        };
        match line
            .trim()
            .strip_prefix("HELD ")
            .map(str::parse::<Greeting>)
        {
            Some(Ok(g)) => {
                held.greeting = Some(g);
                Ok(held)
            }
            _ => Err(format!("hold {target}: got {line:?}")),
        }
    }
}

/// A connection kept open by a helper process in the client namespace.
#[derive(Debug)]
pub struct Held {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub greeting: Option<Greeting>,
}

impl Held {
    /// Sends data over the held connection and returns what came back.
    pub fn echo(mut self) -> Result<String, String> {
        if let Some(mut stdin) = self.stdin.take() {
            stdin
                .write_all(b"go\n")
                .map_err(|e| format!("hold stdin: {e}"))?;
        }
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        line.trim()
            .strip_prefix("ECHO ")
            .map(str::to_owned)
            .ok_or_else(|| format!("held connection: got {line:?}"))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counts successful connections per real server; errors are collected.
pub fn tally(results: &[Attempt]) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut counts = BTreeMap::new();
    let mut errors = Vec::new();
    for (src, r) in results {
        match r {
            Ok(g) => *counts.entry(g.server.clone()).or_insert(0) += 1,
            Err(e) => errors.push(format!("from {src}: {e}")),
        }
    }
    (counts, errors)
}

/// The peers (source addresses seen by the real servers) of successful connections.
pub fn peers(results: &[Attempt]) -> Vec<IpAddr> {
    let mut p: Vec<IpAddr> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().map(|g| g.peer))
        .collect();
    p.sort();
    p.dedup();
    p
}
