//! The nftables DNAT load balancer: the kernel-NAT approach LVS is compared with.
//!
//! `dnat to numgen inc mod N map { ... }` round-robins new connections over the real
//! servers; conntrack rewrites the rest of each flow and undoes it on replies, so
//! real servers must send replies back through the director
//! ([`crate::ReturnPath::ViaDirector`]).

use std::net::Ipv4Addr;

use crate::netns::Netns;
use crate::Result;

pub const TABLE: &str = "kubelvs_lab";

/// L4 protocol keyword as nft spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
}

impl L4 {
    fn keyword(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// The ruleset for one virtual service `vip:port/l4` over `real_servers` (same port).
pub fn dnat_ruleset(vip: Ipv4Addr, port: u16, l4: L4, real_servers: &[Ipv4Addr]) -> String {
    let map = real_servers
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{i} : {a}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "table ip {TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tip daddr {vip} {l4} dport {port} counter dnat to numgen inc mod {n} map {{ {map} }}\n\
         \t}}\n\
         }}\n",
        l4 = l4.keyword(),
        n = real_servers.len(),
    )
}

/// Installs [`dnat_ruleset`] on the director (its namespace is its own, so the table
/// goes with it).
pub fn install_dnat(
    director: &Netns,
    vip: Ipv4Addr,
    port: u16,
    l4: L4,
    real_servers: &[Ipv4Addr],
) -> Result<()> {
    let ruleset = dnat_ruleset(vip, port, l4, real_servers);
    director
        .exec_with_input("nft", &["-f", "-"], Some(&ruleset))
        .map(drop)
}

/// Removes the table.
pub fn remove(director: &Netns) -> Result<()> {
    director
        .exec("nft", &["delete", "table", "ip", TABLE])
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_maps_every_real_server_by_index() {
        let r = dnat_ruleset(
            Ipv4Addr::new(203, 0, 113, 10),
            80,
            L4::Tcp,
            &[Ipv4Addr::new(192, 0, 2, 11), Ipv4Addr::new(192, 0, 2, 12)],
        );
        assert!(r.contains(
            "ip daddr 203.0.113.10 tcp dport 80 counter dnat to numgen inc mod 2 map { 0 : 192.0.2.11, 1 : 192.0.2.12 }"
        ), "{r}");
    }
}
