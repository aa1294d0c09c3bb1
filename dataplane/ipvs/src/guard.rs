//! The VIP guard: a VIP is a local address of the director, so without a rule every
//! listener of the director host (sshd, the kubelet, the agent's metrics) answers on
//! it. An nftables table of ours drops what reaches a VIP of an IPVS service on a
//! port and protocol no service has, before IPVS and the host's sockets see it
//! (input hook, before IPVS's LOCAL_IN); ICMP still reaches the host. The XDP
//! dataplane does the same in its program.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use kubelvs_model as model;

/// The nftables table we own for it (family inet: IPv4 and IPv6).
pub const GUARD_TABLE: &str = "kubelvs_vips";

/// The `nft -f -` script that replaces the guard table (and only it) for `services`
/// (those of the IPVS dataplane count); with none, the table is removed. `others`
/// are ports (address, protocol number, port) that other tools' IPVS services serve:
/// on one of our VIPs they stay open, since we never take away what others made.
pub fn guard_ruleset(services: &[model::Service], others: &[(IpAddr, u16, u16)]) -> String {
    let ipvs: Vec<&model::Service> = services
        .iter()
        .filter(|s| s.dataplane == model::DataplaneKind::Ipvs)
        .collect();
    let mut out = String::new();
    // "add" then "delete" makes the delete succeed whether or not the table exists.
    let _ = writeln!(out, "add table inet {GUARD_TABLE}");
    let _ = writeln!(out, "delete table inet {GUARD_TABLE}");
    if ipvs.is_empty() {
        return out;
    }
    let vips = |v4: bool| -> BTreeSet<IpAddr> {
        ipvs.iter()
            .map(|s| s.key.vip)
            .filter(|a| a.is_ipv4() == v4)
            .collect()
    };
    // Protocol numbers, not names: a minimal image has no /etc/protocols to resolve
    // `icmp` or `ipv6-icmp` with.
    let served = |v4: bool| -> BTreeSet<String> {
        let ours = vips(v4);
        ipvs.iter()
            .map(|s| (s.key.vip, u16::from(s.key.protocol.number()), s.key.port))
            .chain(others.iter().copied().filter(|(a, _, _)| ours.contains(a)))
            .filter(|(a, _, _)| a.is_ipv4() == v4)
            .map(|(a, proto, port)| format!("{a} . {proto} . {port}"))
            .collect()
    };
    let elements = |items: Vec<String>| {
        if items.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", items.join(", "))
        }
    };
    let _ = writeln!(out, "table inet {GUARD_TABLE} {{");
    for (v4, addr) in [(true, "ipv4_addr"), (false, "ipv6_addr")] {
        let n = if v4 { "4" } else { "6" };
        let _ = writeln!(
            out,
            "\tset vips{n} {{ type {addr};{} }}",
            elements(vips(v4).iter().map(IpAddr::to_string).collect())
        );
        let _ = writeln!(
            out,
            "\tset served{n} {{ type {addr} . inet_proto . inet_service;{} }}",
            elements(served(v4).into_iter().collect())
        );
    }
    // One chain; each rule names its family, so the other family's packets pass by.
    let _ = writeln!(out, "\tchain input {{");
    let _ = writeln!(
        out,
        "\t\ttype filter hook input priority filter - 10; policy accept;"
    );
    // Replies to connections the node opened itself (IPv6 source selection can pick a
    // VIP as the source) are not new traffic to the VIP.
    let _ = writeln!(out, "\t\tct state established,related accept");
    for (l3, n, icmp) in [("ip", "4", 1), ("ip6", "6", 58)] {
        let _ = writeln!(
            out,
            "\t\t{l3} daddr @vips{n} meta l4proto != {icmp} {l3} daddr . meta l4proto . th dport != @served{n} drop"
        );
    }
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(out, "}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{
        DataplaneKind, Forwarding, ObjectKind, ObjectRef, Protocol, Scheduler, SchedulerFlags,
        Service, ServiceKey,
    };

    fn svc(vip: &str, port: u16, protocol: Protocol, dataplane: DataplaneKind) -> Service {
        Service {
            key: ServiceKey {
                vip: vip.parse().unwrap(),
                port,
                protocol,
            },
            scheduler: Scheduler::Wrr,
            scheduler_flags: SchedulerFlags::default(),
            forwarding: Forwarding::Nat,
            persistence: None,
            source_address: None,
            health_check: None,
            dataplane,
            real_servers: Vec::new(),
            source: ObjectRef::new(ObjectKind::VirtualService, "t", vip),
        }
    }

    #[test]
    fn every_ipvs_vip_with_its_served_ports_and_nothing_else() {
        let others = [
            // An ipvsadm-made service on our VIP stays reachable; one elsewhere is
            // none of the guard's business.
            ("203.0.113.40".parse().unwrap(), 6, 8080),
            ("198.51.100.9".parse().unwrap(), 6, 22),
        ];
        let script = guard_ruleset(
            &[
                svc("203.0.113.40", 80, Protocol::Tcp, DataplaneKind::Ipvs),
                svc("203.0.113.40", 53, Protocol::Udp, DataplaneKind::Ipvs),
                svc("2001:db8::40", 443, Protocol::Tcp, DataplaneKind::Ipvs),
                svc("203.0.113.50", 80, Protocol::Tcp, DataplaneKind::Xdp),
            ],
            &others,
        );
        assert!(script.starts_with("add table inet kubelvs_vips\ndelete table inet kubelvs_vips\n"));
        assert!(
            script.contains("set vips4 { type ipv4_addr; elements = { 203.0.113.40 }; }"),
            "{script}"
        );
        assert!(
            script.contains("elements = { 203.0.113.40 . 17 . 53, 203.0.113.40 . 6 . 80, 203.0.113.40 . 6 . 8080 }"),
            "{script}"
        );
        assert!(
            script.contains("elements = { 2001:db8::40 . 6 . 443 }"),
            "{script}"
        );
        assert!(!script.contains("198.51.100.9"), "{script}");
        assert!(
            !script.contains("203.0.113.50"),
            "the XDP VIP is its program's: {script}"
        );
        assert!(
            script.contains(
                "ip daddr @vips4 meta l4proto != 1 ip daddr . meta l4proto . th dport != @served4 drop"
            ),
            "{script}"
        );
        assert!(
            script.contains("ip6 daddr @vips6 meta l4proto != 58 "),
            "{script}"
        );
        assert!(script.contains("type filter hook input priority filter - 10"));
        assert!(
            script.contains("ct state established,related accept"),
            "{script}"
        );
    }

    #[test]
    fn without_ipvs_services_the_table_goes() {
        let script = guard_ruleset(
            &[svc("203.0.113.50", 80, Protocol::Tcp, DataplaneKind::Xdp)],
            &[],
        );
        assert_eq!(
            script,
            "add table inet kubelvs_vips\ndelete table inet kubelvs_vips\n"
        );
    }
}
