//! Addresses no VirtualService may have, whatever an AddressPool says: a VIP is a local
//! address on every director, so a VIP equal to a node's own address puts that node's
//! ports (the kubelet's 10250, the API server's 6443) behind a tenant's real servers,
//! and one inside the cluster's Service or Pod ranges shadows their traffic.
//!
//! - always: unspecified, loopback, link-local, multicast, the IPv4 broadcast address;
//! - the nodes' addresses (InternalIP and ExternalIP, from the Node objects);
//! - the ranges the operator is given (`--service-cidr`, `--pod-cidr`).

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

/// What the allocator must never hand out or admit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reserved {
    /// The nodes' own addresses.
    pub node_addresses: BTreeSet<IpAddr>,
    /// The cluster's Service and Pod ranges.
    pub cluster_ranges: Vec<IpNet>,
}

/// The special ranges as networks, for skipping them while allocating.
fn special_nets() -> [IpNet; 8] {
    [
        "0.0.0.0/32",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/4",
        "255.255.255.255/32",
        "::/127",
        "fe80::/10",
        "ff00::/8",
    ]
    .map(|n| n.parse().expect("constant network"))
}

impl Reserved {
    /// Why `ip` may not be a VIP, if it may not.
    pub fn why(&self, ip: IpAddr) -> Option<String> {
        if let Some(what) = kubelvs_crds::address::not_unicast(ip) {
            return Some(what.into());
        }
        if self.node_addresses.contains(&ip) {
            return Some("a node's own address".into());
        }
        self.cluster_ranges
            .iter()
            .find(|n| n.contains(&ip))
            .map(|n| format!("inside the cluster's range {n} (Service or Pod addresses)"))
    }

    /// The last address of the reserved network or address that holds `ip`, if any:
    /// where allocation resumes past it.
    pub fn end_of(&self, ip: IpAddr) -> Option<IpAddr> {
        if self.node_addresses.contains(&ip) {
            return Some(ip);
        }
        special_nets()
            .into_iter()
            .chain(self.cluster_ranges.iter().copied())
            .find(|n| n.contains(&ip))
            .map(|n| n.broadcast())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_node_and_cluster_addresses_are_named() {
        let r = Reserved {
            node_addresses: [ip("192.0.2.7")].into(),
            cluster_ranges: vec!["10.96.0.0/12".parse().unwrap()],
        };
        for (a, want) in [
            ("0.0.0.0", "unspecified"),
            ("127.0.0.2", "loopback"),
            ("::1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("239.1.1.1", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("192.0.2.7", "node"),
            ("10.96.0.1", "10.96.0.0/12"),
        ] {
            let why = r.why(ip(a)).unwrap_or_else(|| panic!("{a} admitted"));
            assert!(why.contains(want), "{a}: {why}");
            assert!(r.end_of(ip(a)).is_some(), "{a}");
        }
        for a in ["203.0.113.10", "2001:db8::10", "192.0.2.8", "10.112.0.1"] {
            assert_eq!(r.why(ip(a)), None, "{a}");
            assert_eq!(r.end_of(ip(a)), None, "{a}");
        }
        assert_eq!(r.end_of(ip("10.100.3.4")), Some(ip("10.111.255.255")));
        assert_eq!(r.end_of(ip("192.0.2.7")), Some(ip("192.0.2.7")));
    }
}
