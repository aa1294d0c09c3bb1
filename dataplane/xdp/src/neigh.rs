//! Reading the kernel's neighbour tables, for the MACs DR needs.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::MacAddr;

/// `ATF_COM`: the entry is complete (resolved).
const ATF_COM: u32 = 0x02;

/// Parses `/proc/net/arp` text: complete entries, optionally only on `ifname`.
/// Lines that do not parse are skipped: the table is advisory input.
pub fn parse_proc_net_arp(text: &str, ifname: Option<&str>) -> HashMap<IpAddr, MacAddr> {
    let mut out = HashMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [ip, _hw, flags, mac, _mask, dev] = f[..] else {
            continue;
        };
        if ifname.is_some_and(|n| n != dev) {
            continue;
        }
        let Ok(ip) = ip.parse::<Ipv4Addr>() else {
            continue;
        };
        let Some(flags) = flags
            .strip_prefix("0x")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
        else {
            continue;
        };
        if flags & ATF_COM == 0 {
            continue;
        }
        if let Some(mac) = parse_mac(mac) {
            if mac != [0; 6] {
                out.insert(IpAddr::V4(ip), mac);
            }
        }
    }
    out
}

/// Complete IPv4 neighbours of the calling thread's network namespace (on
/// `ifname` if given). `/proc/thread-self`, not `/proc/net`: the latter shows
/// the main thread's namespace, wrong for a thread that entered another one.
pub fn read_neighbours(ifname: Option<&str>) -> std::io::Result<HashMap<IpAddr, MacAddr>> {
    Ok(parse_proc_net_arp(
        &std::fs::read_to_string("/proc/thread-self/net/arp")?,
        ifname,
    ))
}

/// Parses `ip -6 neigh show` text: entries with a MAC in a usable state
/// (REACHABLE, STALE, DELAY, PROBE, PERMANENT, NOARP), optionally on `ifname`.
pub fn parse_ip_neigh(text: &str, ifname: Option<&str>) -> HashMap<IpAddr, MacAddr> {
    const USABLE: [&str; 6] = ["REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP"];
    let mut out = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(Ok(addr)) = f.first().map(|a| a.parse::<Ipv6Addr>()) else {
            continue;
        };
        let value = |key: &str| f.windows(2).find(|w| w[0] == key).map(|w| w[1]);
        if ifname.is_some_and(|n| value("dev") != Some(n)) {
            continue;
        }
        if !f.iter().any(|w| USABLE.contains(w)) {
            continue;
        }
        if let Some(mac) = value("lladdr").and_then(parse_mac) {
            out.insert(IpAddr::V6(addr), mac);
        }
    }
    out
}

/// Usable IPv6 neighbours of this network namespace (runs `ip -6 neigh show`).
pub fn read_neighbours6(ifname: Option<&str>) -> std::io::Result<HashMap<IpAddr, MacAddr>> {
    let out = std::process::Command::new("ip")
        .args(["-6", "neigh", "show"])
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "ip -6 neigh show: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(parse_ip_neigh(
        &String::from_utf8_lossy(&out.stdout),
        ifname,
    ))
}

/// `aa:bb:cc:dd:ee:ff` to bytes.
pub fn parse_mac(s: &str) -> Option<MacAddr> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured with `cat /proc/net/arp` in a lab namespace, plus an incomplete entry.
    const ARP: &str = "\
IP address       HW type     Flags       HW address            Mask     Device
198.51.100.12    0x1         0x2         6a:01:02:03:04:05     *        br0
198.51.100.13    0x1         0x0         00:00:00:00:00:00     *        br0
198.51.100.14    0x1         0x6         6a:01:02:03:04:07     *        eth1
garbage line
198.51.100.999   0x1         0x2         6a:01:02:03:04:08     *        br0
";

    #[test]
    fn parses_complete_entries_only() {
        let all = parse_proc_net_arp(ARP, None);
        assert_eq!(all.len(), 2);
        assert_eq!(
            all[&"198.51.100.12".parse::<IpAddr>().unwrap()],
            [0x6a, 1, 2, 3, 4, 5]
        );
        let br0 = parse_proc_net_arp(ARP, Some("br0"));
        assert_eq!(br0.len(), 1);
    }

    // Captured with `ip -6 neigh show` in a lab namespace, plus odd lines.
    const IP6: &str = "\
2001:db8::20 dev v0 lladdr 02:bb:00:00:00:20 PERMANENT
2001:db8::21 dev v0 lladdr 02:bb:00:00:00:21 router STALE
2001:db8::22 dev v0  FAILED
2001:db8::23 dev v1 lladdr 02:bb:00:00:00:23 REACHABLE
fe80::1 dev v0 lladdr 02:bb:00:00:00:01 INCOMPLETE
not-an-address dev v0 lladdr 02:bb:00:00:00:02 REACHABLE
";

    #[test]
    fn parses_usable_ipv6_neighbours() {
        let all = parse_ip_neigh(IP6, None);
        assert_eq!(all.len(), 3, "{all:?}");
        assert_eq!(
            all[&"2001:db8::21".parse::<IpAddr>().unwrap()],
            [2, 0xbb, 0, 0, 0, 0x21]
        );
        assert_eq!(parse_ip_neigh(IP6, Some("v1")).len(), 1);
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("00:11:22:aa:bb:cc"),
            Some([0, 0x11, 0x22, 0xaa, 0xbb, 0xcc])
        );
        assert_eq!(parse_mac("00:11:22:aa:bb"), None);
        assert_eq!(parse_mac("00:11:22:aa:bb:cc:dd"), None);
        assert_eq!(parse_mac("zz:11:22:aa:bb:cc"), None);
    }
}
