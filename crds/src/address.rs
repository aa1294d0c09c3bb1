//! Which addresses may be a VIP or a real server at all: unicast ones that are not
//! loopback, link-local or unspecified. The CRDs say the same with CEL
//! (`ip(self).isGlobalUnicast()`); this is for objects stored before that rule and for
//! the decisions that must not trust the API server alone.

use std::net::IpAddr;

/// What `ip` is, when it is not a unicast address a VIP or real server may have.
pub fn not_unicast(ip: IpAddr) -> Option<&'static str> {
    let link_local = match ip {
        IpAddr::V4(v) => v.is_link_local(),
        IpAddr::V6(v) => v.is_unicast_link_local(),
    };
    // `::ffff:127.0.0.1` reaches 127.0.0.1 through a dual-stack socket: every check
    // below would see an ordinary IPv6 address.
    if matches!(ip, IpAddr::V6(v) if v.to_ipv4_mapped().is_some()) {
        Some("an IPv4-mapped IPv6 address (write the IPv4 address)")
    } else if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if link_local {
        Some("a link-local address (169.254.0.0/16 holds cloud metadata services)")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if matches!(ip, IpAddr::V4(v) if v.is_broadcast()) {
        Some("the broadcast address")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_addresses_are_named_and_unicast_ones_pass() {
        for (a, what) in [
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("127.0.0.2", "loopback"),
            ("::1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("::ffff:127.0.0.1", "IPv4-mapped"),
            ("::ffff:192.0.2.2", "IPv4-mapped"),
        ] {
            let why = not_unicast(a.parse().unwrap()).unwrap_or_else(|| panic!("{a}"));
            assert!(why.contains(what), "{a}: {why}");
        }
        for a in ["10.0.0.1", "192.0.2.1", "203.0.113.10", "2001:db8::1"] {
            assert_eq!(not_unicast(a.parse().unwrap()), None, "{a}");
        }
    }
}
