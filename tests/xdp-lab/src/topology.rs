//! The lab topology: a bridge in its own namespace, and hosts on it.
//!
//! ```text
//!                 bridge netns (br0)
//!    cli ─────────── dir ──────────── rs1   rs2   rs3      (bridge ports)
//!     │               │                │     │     │       veth pairs
//!   eth0            eth0             eth0  eth0  eth0
//!   client        director           real servers (VIP on lo)
//!   192.0.2.1     192.0.2.2          192.0.2.11 .12 .13
//! ```
//!
//! The client routes the VIP via the director. Real servers answer either directly
//! (DR, TUN) or through the director (NAT, nftables DNAT), see [`ReturnPath`].

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::netns::{unique_prefix, Netns};
use crate::server::TcpServer;
use crate::{LabError, Result};

/// The virtual IP the lab's services use.
pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const DIRECTOR_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const PREFIX_LEN: u8 = 24;
/// Host interfaces have the same name in every namespace: the namespaces keep them apart.
pub const HOST_IFNAME: &str = "eth0";

/// The IPv6 VIP (with [`LabConfig::ipv6`]), off the hosts' prefix like [`VIP`].
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 0x10);
const PREFIX6_LEN: u8 = 64;

/// IPv6 address of the host whose IPv4 address is `192.0.2.n`: `2001:db8::n` (hex).
pub fn addr6_of(addr: Ipv4Addr) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(addr.octets()[3]))
}

/// Address of real server `i` (0-based).
pub fn real_server_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 11 + i as u8)
}

/// How real servers' replies reach the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnPath {
    /// Straight to the client on the shared segment (DR, TUN).
    Direct,
    /// Through the director, which must undo its address rewrite (NAT, DNAT):
    /// real servers get a host route to the client via the director.
    ViaDirector,
}

#[derive(Debug, Clone)]
pub struct LabConfig {
    pub real_servers: usize,
    /// Put the VIP on the real servers' `lo` (/32) with ARP suppressed (DR, TUN).
    pub vip_on_real_servers: bool,
    pub return_path: ReturnPath,
    /// Also give every host an IPv6 address ([`addr6_of`]) and, with
    /// `vip_on_real_servers`, the real servers [`VIP6`]/128 on lo.
    pub ipv6: bool,
}

impl Default for LabConfig {
    fn default() -> Self {
        Self {
            real_servers: 3,
            vip_on_real_servers: true,
            return_path: ReturnPath::Direct,
            ipv6: false,
        }
    }
}

/// One machine of the lab: a namespace with one interface on the bridge.
#[derive(Debug)]
pub struct Host {
    /// Role in the lab: `client`, `director`, `rs1`...
    pub role: String,
    pub netns: Netns,
    pub ifname: String,
    pub ifindex: u32,
    pub addr: Ipv4Addr,
    /// With [`LabConfig::ipv6`].
    pub addr6: Option<Ipv6Addr>,
    pub mac: [u8; 6],
    /// Name of the veth peer in the bridge namespace.
    pub bridge_port: String,
}

/// A whole lab. Dropping it deletes every namespace it made, with their interfaces.
#[derive(Debug)]
pub struct Lab {
    pub client: Host,
    pub director: Host,
    pub real_servers: Vec<Host>,
    pub bridge: Netns,
    pub vip: Ipv4Addr,
    pub config: LabConfig,
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Lab {
    pub fn build(config: LabConfig) -> Result<Self> {
        let prefix = unique_prefix();
        let bridge = Netns::create(&format!("{prefix}-br"))?;
        bridge.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "forward_delay",
            "0",
            "stp_state",
            "0",
        ])?;
        bridge.ip(&["link", "set", "br0", "up"])?;

        let client = add_host(&bridge, &prefix, "client", "cli", CLIENT_ADDR, 0x01)?;
        let director = add_host(&bridge, &prefix, "director", "dir", DIRECTOR_ADDR, 0x02)?;
        let mut real_servers = Vec::with_capacity(config.real_servers);
        for i in 0..config.real_servers {
            let role = format!("rs{}", i + 1);
            real_servers.push(add_host(
                &bridge,
                &prefix,
                &role,
                &role,
                real_server_addr(i),
                0x11 + i as u8,
            )?);
        }
        let mut lab = Self {
            client,
            director,
            real_servers,
            bridge,
            vip: VIP,
            config,
        };
        lab.configure()?;
        if lab.config.ipv6 {
            lab.configure_ipv6()?;
        }
        lab.wait_links_up(Duration::from_secs(5))?;
        Ok(lab)
    }

    fn configure(&self) -> Result<()> {
        let vip = format!("{}/32", self.vip);
        let director = self.director.addr.to_string();
        let client = self.client.addr.to_string();

        self.client
            .netns
            .ip(&["route", "add", &vip, "via", &director])?;

        let d = &self.director.netns;
        d.sysctl("net.ipv4.ip_forward", "1")?;
        // The director forwards out of the interface it received on; an ICMP redirect
        // would teach hosts to bypass it.
        for scope in ["all", "default", HOST_IFNAME] {
            d.sysctl(&format!("net.ipv4.conf.{scope}.send_redirects"), "0")?;
        }

        for rs in &self.real_servers {
            let ns = &rs.netns;
            for scope in ["all", "default", "lo", HOST_IFNAME] {
                ns.sysctl(&format!("net.ipv4.conf.{scope}.rp_filter"), "0")?;
                ns.sysctl(&format!("net.ipv4.conf.{scope}.accept_redirects"), "0")?;
            }
            if self.config.vip_on_real_servers {
                // The LVS-DR recipe: answer ARP only for addresses on the receiving
                // interface, and never announce the VIP as an ARP source.
                for scope in ["all", HOST_IFNAME] {
                    ns.sysctl(&format!("net.ipv4.conf.{scope}.arp_ignore"), "1")?;
                    ns.sysctl(&format!("net.ipv4.conf.{scope}.arp_announce"), "2")?;
                }
                ns.ip(&["addr", "add", &vip, "dev", "lo"])?;
            }
            if self.config.return_path == ReturnPath::ViaDirector {
                ns.ip(&[
                    "route",
                    "add",
                    &format!("{client}/32"),
                    "via",
                    &director,
                    "dev",
                    HOST_IFNAME,
                ])?;
            }
        }
        Ok(())
    }

    fn configure_ipv6(&mut self) -> Result<()> {
        let hosts = std::iter::once(&mut self.client)
            .chain(std::iter::once(&mut self.director))
            .chain(self.real_servers.iter_mut());
        for host in hosts {
            let a = addr6_of(host.addr);
            // nodad: usable at once, no duplicate address detection to wait for.
            host.netns.ip(&[
                "addr",
                "add",
                &format!("{a}/{PREFIX6_LEN}"),
                "dev",
                &host.ifname,
                "nodad",
            ])?;
            host.addr6 = Some(a);
        }
        let vip6 = format!("{VIP6}/128");
        let director6 = addr6_of(self.director.addr).to_string();
        self.client
            .netns
            .ip(&["-6", "route", "add", &vip6, "via", &director6])?;
        self.director
            .netns
            .sysctl("net.ipv6.conf.all.forwarding", "1")?;
        let client6 = format!("{}/128", addr6_of(self.client.addr));
        for rs in &self.real_servers {
            // IPv6 neighbour discovery answers only for addresses of the receiving
            // interface: the VIP on lo needs no arp_ignore counterpart.
            if self.config.vip_on_real_servers {
                rs.netns.ip(&["addr", "add", &vip6, "dev", "lo"])?;
            }
            if self.config.return_path == ReturnPath::ViaDirector {
                rs.netns
                    .ip(&["-6", "route", "add", &client6, "via", &director6])?;
            }
        }
        Ok(())
    }

    /// Starts a [`TcpServer`] on `port` in every real server, named after its role.
    pub fn start_servers(&self, port: u16) -> Result<Vec<TcpServer>> {
        self.real_servers
            .iter()
            .map(|rs| TcpServer::start(&rs.netns, port, &rs.role))
            .collect()
    }

    /// Like [`Lab::start_servers`], listening on `[::]:port` (IPv6 only).
    pub fn start_servers6(&self, port: u16) -> Result<Vec<TcpServer>> {
        let any6 = std::net::SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
        self.real_servers
            .iter()
            .map(|rs| TcpServer::start_on(&rs.netns, any6, &rs.role))
            .collect()
    }

    /// Every host in the lab.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        [&self.client, &self.director]
            .into_iter()
            .chain(self.real_servers.iter())
    }

    /// Polls until every host interface reports carrier (both veth ends up).
    fn wait_links_up(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        for host in self.hosts() {
            loop {
                let state = host.netns.exec(
                    "cat",
                    &[&format!("/sys/class/net/{}/operstate", host.ifname)],
                )?;
                if state.trim() == "up" {
                    break;
                }
                if start.elapsed() > timeout {
                    return Err(LabError::Timeout {
                        what: format!("{} {} operstate {}", host.role, host.ifname, state.trim()),
                        after_ms: timeout.as_millis(),
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }
}

/// Creates a host namespace and links it to the bridge with a veth pair.
fn add_host(
    bridge: &Netns,
    prefix: &str,
    role: &str,
    port: &str,
    addr: Ipv4Addr,
    mac_suffix: u8,
) -> Result<Host> {
    let netns = Netns::create(&format!("{prefix}-{role}"))?;
    let mac = [0x02, 0, 0, 0, 0, mac_suffix];
    bridge.ip(&[
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        HOST_IFNAME,
        "netns",
        netns.name(),
    ])?;
    bridge.ip(&["link", "set", port, "master", "br0", "up"])?;
    netns.ip(&["link", "set", HOST_IFNAME, "address", &format_mac(mac)])?;
    netns.ip(&[
        "addr",
        "add",
        &format!("{addr}/{PREFIX_LEN}"),
        "dev",
        HOST_IFNAME,
    ])?;
    // Frames leaving a veth carry a partial checksum left for offload; if the XDP
    // director bounces them out again (XDP_TX), they arrive with a bad checksum.
    netns.exec("ethtool", &["-K", HOST_IFNAME, "tx", "off"])?;
    netns.ip(&["link", "set", HOST_IFNAME, "up"])?;
    let ifindex = netns.ifindex(HOST_IFNAME)?;
    Ok(Host {
        role: role.to_owned(),
        netns,
        ifname: HOST_IFNAME.to_owned(),
        ifindex,
        addr,
        addr6: None,
        mac,
        bridge_port: port.to_owned(),
    })
}

impl Lab {
    /// One more host on the bridge (its own namespace, `eth0` with `addr`/24), for a
    /// server the lab must reach: the test control plane's API server. It is not a
    /// client, director or real server of the lab.
    pub fn add_host(&self, role: &str, addr: Ipv4Addr, mac_suffix: u8) -> Result<Host> {
        let prefix = self.bridge.name().trim_end_matches("-br").to_owned();
        add_host(&self.bridge, &prefix, role, role, addr, mac_suffix)
    }
}
