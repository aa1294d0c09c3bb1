//! `ipvsadm`, a client we did not write, as the independent witness of what the
//! kernel holds: a parser for `ipvsadm -Ln` and renderers that turn our plan into
//! the same listing and into `ipvsadm -R` input (the benchmark's baseline).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use kubelvs_model::{Forwarding, Persistence, Scheduler, Service};

/// One virtual service as `ipvsadm -Ln` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedService {
    /// `TCP 203.0.113.1:80`, `UDP [2001:db8::1]:53` or `FWM 5`.
    pub key: String,
    pub scheduler: String,
    /// Scheduler flags as ipvsadm names them (`sh-fallback`, `flag-3`, ...), sorted.
    pub sched_flags: Vec<String>,
    /// Persistence timeout in seconds.
    pub persistent: Option<u32>,
    /// Persistence granularity, printed only when not a single host.
    pub mask: Option<String>,
    pub one_packet: bool,
    pub dests: BTreeMap<String, ListedDest>,
}

/// One real server line (`-> addr:port Forward Weight ActiveConn InActConn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedDest {
    /// `Masq`, `Route`, `Tunnel` or `Local`.
    pub forward: String,
    pub weight: u32,
    pub active: u32,
    pub inactive: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ipvsadm -Ln line {line}: {message}: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub text: String,
    pub message: String,
}

fn err(line: usize, text: &str, message: &str) -> ParseError {
    ParseError {
        line,
        text: text.to_owned(),
        message: message.to_owned(),
    }
}

/// Parses `ipvsadm -Ln` output into services keyed by [`ListedService::key`].
pub fn parse_list(text: &str) -> Result<BTreeMap<String, ListedService>, ParseError> {
    let mut services: BTreeMap<String, ListedService> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty()
            || line.starts_with("IP Virtual Server")
            || line.starts_with("Prot LocalAddress")
            || line.starts_with("-> RemoteAddress")
        {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if words[0] == "->" {
            let key = current
                .as_ref()
                .ok_or_else(|| err(n, raw, "real server before any service"))?;
            let [_, addr, forward, weight, active, inactive] = words[..] else {
                return Err(err(n, raw, "expected 6 fields"));
            };
            let num = |s: &str, what: &str| {
                s.parse::<u32>()
                    .map_err(|_| err(n, raw, &format!("{what} is not a number")))
            };
            let dest = ListedDest {
                forward: forward.to_owned(),
                weight: num(weight, "weight")?,
                active: num(active, "ActiveConn")?,
                inactive: num(inactive, "InActConn")?,
            };
            if let Some(s) = services.get_mut(key) {
                s.dests.insert(addr.to_owned(), dest);
            }
            continue;
        }
        let (key, rest) = match words[..] {
            ["TCP" | "UDP" | "SCTP" | "FWM", addr, ref rest @ ..] => {
                (format!("{} {addr}", words[0]), rest)
            }
            _ => return Err(err(n, raw, "neither a service nor a real server")),
        };
        let Some((scheduler, mut rest)) = rest.split_first() else {
            return Err(err(n, raw, "no scheduler"));
        };
        let mut svc = ListedService {
            key: key.clone(),
            scheduler: (*scheduler).to_owned(),
            sched_flags: Vec::new(),
            persistent: None,
            mask: None,
            one_packet: false,
            dests: BTreeMap::new(),
        };
        while let Some((word, tail)) = rest.split_first() {
            rest = tail;
            match *word {
                "ops" => svc.one_packet = true,
                "persistent" => {
                    let (t, tail) = rest
                        .split_first()
                        .ok_or_else(|| err(n, raw, "persistent without timeout"))?;
                    svc.persistent = Some(
                        t.parse()
                            .map_err(|_| err(n, raw, "persistence timeout is not a number"))?,
                    );
                    rest = tail;
                }
                "mask" | "pe" => {
                    let (v, tail) = rest
                        .split_first()
                        .ok_or_else(|| err(n, raw, "mask/pe without value"))?;
                    if *word == "mask" {
                        svc.mask = Some((*v).to_owned());
                    }
                    rest = tail;
                }
                w if w.starts_with('(') => {
                    svc.sched_flags = w
                        .trim_matches(['(', ')'])
                        .split(',')
                        .filter(|f| !f.is_empty())
                        .map(str::to_owned)
                        .collect();
                    svc.sched_flags.sort();
                }
                _ => return Err(err(n, raw, &format!("unknown service attribute {word:?}"))),
            }
        }
        current = Some(key.clone());
        services.insert(key, svc);
    }
    Ok(services)
}

/// Per-real-server numeric columns of `ipvsadm -Ln --stats --exact` or
/// `ipvsadm -Ln --persistent-conn`: service key -> real server -> columns after the address.
pub fn parse_columns(
    text: &str,
) -> Result<BTreeMap<String, BTreeMap<String, Vec<u64>>>, ParseError> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<u64>>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let words: Vec<&str> = raw.split_whitespace().collect();
        match words[..] {
            ["->", addr, ref cols @ ..] if addr.contains(':') && !cols.is_empty() => {
                let key = current
                    .as_ref()
                    .ok_or_else(|| err(i + 1, raw, "real server before any service"))?;
                let nums = cols
                    .iter()
                    .map(|c| c.parse::<u64>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| err(i + 1, raw, "non-numeric column"))?;
                out.entry(key.clone())
                    .or_default()
                    .insert(addr.to_owned(), nums);
            }
            [proto @ ("TCP" | "UDP" | "SCTP" | "FWM"), addr, ..] => {
                let key = format!("{proto} {addr}");
                out.entry(key.clone()).or_default();
                current = Some(key);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The TunnelInfo column of `ipvsadm -Ln --tun-info` (`ipip`, `gue:6080:-c`,
/// `gre:-c`, `n/a`): service key -> real server -> tunnel info.
pub fn parse_tun_info(
    text: &str,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, ParseError> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let words: Vec<&str> = raw.split_whitespace().collect();
        match words[..] {
            ["->", "RemoteAddress:Port", ..] => {}
            ["->", addr, _forward, info, ..] => {
                let key = current
                    .as_ref()
                    .ok_or_else(|| err(i + 1, raw, "real server before any service"))?;
                out.entry(key.clone())
                    .or_default()
                    .insert(addr.to_owned(), info.to_owned());
            }
            ["->", ..] => return Err(err(i + 1, raw, "real server line without tunnel info")),
            [proto @ ("TCP" | "UDP" | "SCTP" | "FWM"), addr, ..] => {
                let key = format!("{proto} {addr}");
                out.entry(key.clone()).or_default();
                current = Some(key);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// How `ipvsadm --tun-info` starts the tunnel column for a forwarding method.
pub fn expected_tun_info(f: Forwarding) -> String {
    match f {
        Forwarding::Tun(kubelvs_model::Tunnel::Ipip) => "ipip".into(),
        Forwarding::Tun(kubelvs_model::Tunnel::Gue { port }) => format!("gue:{port}"),
        Forwarding::Tun(kubelvs_model::Tunnel::Gre) => "gre".into(),
        _ => "n/a".into(),
    }
}

fn socket(addr: IpAddr, port: u16) -> String {
    SocketAddr::new(addr, port).to_string()
}

fn sched_flag_names(s: &Service) -> Vec<String> {
    let prefix = match s.scheduler {
        Scheduler::Sh => Some("sh"),
        Scheduler::Mh => Some("mh"),
        _ => None,
    };
    let f = s.scheduler_flags;
    let mut names: Vec<String> = [
        (f.flag1, 1, "fallback"),
        (f.flag2, 2, "port"),
        (f.flag3, 3, ""),
    ]
    .into_iter()
    .filter(|(on, ..)| *on)
    .map(|(_, n, hashing)| match prefix {
        Some(p) if !hashing.is_empty() => format!("{p}-{hashing}"),
        _ => format!("flag-{n}"),
    })
    .collect();
    names.sort();
    names
}

fn mask_text(vip: IpAddr, p: &Persistence) -> Option<String> {
    match vip {
        IpAddr::V4(_) if p.prefix_length < 32 => {
            let bits = u32::MAX
                .checked_shl(32 - u32::from(p.prefix_length))
                .unwrap_or(0);
            Some(std::net::Ipv4Addr::from(bits).to_string())
        }
        IpAddr::V6(_) if p.prefix_length < 128 => Some(p.prefix_length.to_string()),
        _ => None,
    }
}

/// ipvsadm's name for a forwarding method.
pub fn forward_name(f: Forwarding) -> &'static str {
    match f {
        Forwarding::Nat | Forwarding::FullNat => "Masq",
        Forwarding::Dr => "Route",
        Forwarding::Tun(_) => "Tunnel",
    }
}

/// The listing `ipvsadm -Ln` must show for our plan (connection counters zero;
/// compare with [`same_table`], which ignores them).
pub fn expected_listing(services: &[Service]) -> BTreeMap<String, ListedService> {
    services
        .iter()
        .map(|s| {
            let key = format!("{} {}", s.key.protocol, socket(s.key.vip, s.key.port));
            let dests = s
                .real_servers
                .iter()
                .map(|r| {
                    let dest = ListedDest {
                        forward: forward_name(s.forwarding).to_owned(),
                        weight: r.weight,
                        active: 0,
                        inactive: 0,
                    };
                    (socket(r.address, r.port), dest)
                })
                .collect();
            let svc = ListedService {
                key: key.clone(),
                scheduler: s.scheduler.name().to_owned(),
                sched_flags: sched_flag_names(s),
                persistent: s.persistence.map(|p| p.timeout_seconds),
                mask: s.persistence.as_ref().and_then(|p| mask_text(s.key.vip, p)),
                one_packet: false,
                dests,
            };
            (key, svc)
        })
        .collect()
}

/// Differences between what `ipvsadm` listed and what we expected, ignoring
/// connection counters; empty when they match. Services in `listed` that are not
/// expected are reported too, unless their key is in `foreign`.
pub fn table_differences(
    listed: &BTreeMap<String, ListedService>,
    expected: &BTreeMap<String, ListedService>,
    foreign: &[&str],
) -> Vec<String> {
    let mut out = Vec::new();
    for (key, want) in expected {
        let Some(got) = listed.get(key) else {
            out.push(format!("{key}: missing"));
            continue;
        };
        let mut got = got.clone();
        for d in got.dests.values_mut() {
            d.active = 0;
            d.inactive = 0;
        }
        if &got != want {
            out.push(format!("{key}: listed {got:?}, expected {want:?}"));
        }
    }
    for key in listed.keys() {
        if !expected.contains_key(key) && !foreign.contains(&key.as_str()) {
            out.push(format!("{key}: listed but not in the plan"));
        }
    }
    out
}

/// `ipvsadm -R` input that creates the same table as applying `services`.
pub fn restore_script(services: &[Service]) -> String {
    let mut out = String::new();
    for s in services {
        let proto = match s.key.protocol {
            kubelvs_model::Protocol::Tcp => "-t",
            kubelvs_model::Protocol::Udp => "-u",
            kubelvs_model::Protocol::Sctp => "--sctp-service",
        };
        let vs = socket(s.key.vip, s.key.port);
        let _ = write!(out, "-A {proto} {vs} -s {}", s.scheduler.name());
        let flags = sched_flag_names(s);
        if !flags.is_empty() {
            let _ = write!(out, " -b {}", flags.join(","));
        }
        if let Some(p) = &s.persistence {
            let _ = write!(out, " -p {}", p.timeout_seconds);
            if let Some(m) = mask_text(s.key.vip, p) {
                let _ = write!(out, " -M {m}");
            }
        }
        out.push('\n');
        let method = match s.forwarding {
            Forwarding::Nat | Forwarding::FullNat => "-m",
            Forwarding::Dr => "-g",
            Forwarding::Tun(_) => "-i",
        };
        for r in &s.real_servers {
            let rs = socket(r.address, r.port);
            let _ = writeln!(out, "-a {proto} {vs} -r {rs} {method} -w {}", r.weight);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  203.0.113.1:80 wrr
  -> 192.0.2.11:8080              Masq    1      0          3
  -> 192.0.2.12:8080              Masq    2      1          0
TCP  203.0.113.6:80 sh (sh-port,sh-fallback)
TCP  203.0.113.7:80 rr persistent 60 mask 255.255.255.0
  -> 192.0.2.13:80                Route   1      0          0
UDP  [2001:db8::1]:53 rr ops
FWM  5 wlc
  -> 192.0.2.11:0                 Tunnel  7      0          0
";

    #[test]
    fn parses_a_real_listing() {
        let t = parse_list(LISTING).unwrap();
        assert_eq!(t.len(), 5);
        let wrr = &t["TCP 203.0.113.1:80"];
        assert_eq!(wrr.scheduler, "wrr");
        assert_eq!(wrr.dests["192.0.2.12:8080"].weight, 2);
        assert_eq!(wrr.dests["192.0.2.12:8080"].active, 1);
        assert_eq!(wrr.dests["192.0.2.11:8080"].inactive, 3);
        assert_eq!(
            t["TCP 203.0.113.6:80"].sched_flags,
            ["sh-fallback", "sh-port"]
        );
        let p = &t["TCP 203.0.113.7:80"];
        assert_eq!(p.persistent, Some(60));
        assert_eq!(p.mask.as_deref(), Some("255.255.255.0"));
        assert_eq!(p.dests["192.0.2.13:80"].forward, "Route");
        assert!(t["UDP [2001:db8::1]:53"].one_packet);
        assert_eq!(t["FWM 5"].dests["192.0.2.11:0"].forward, "Tunnel");
    }

    #[test]
    fn parses_stats_and_persistent_columns() {
        let stats = "\
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  203.0.113.5:80                    600     3600     2400   190000   150000
  -> 192.0.2.11:8080                   100      600      400    31000    25000
";
        let t = parse_columns(stats).unwrap();
        assert_eq!(t["TCP 203.0.113.5:80"]["192.0.2.11:8080"][0], 100);
        let persist = "\
Prot LocalAddress:Port            Weight    PersistConn ActiveConn InActConn
  -> RemoteAddress:Port
TCP  203.0.113.7:80 rr persistent 60
  -> 192.0.2.11:8080              1         3          0          12
";
        let t = parse_columns(persist).unwrap();
        assert_eq!(t["TCP 203.0.113.7:80"]["192.0.2.11:8080"], [1, 3, 0, 12]);
        assert!(parse_columns("  -> 1.2.3.4:80 1 2").is_err());
        assert!(parse_columns("TCP 1.2.3.4:80\n  -> 1.2.3.5:80 1 x").is_err());
    }

    #[test]
    fn parses_tunnel_info() {
        let text = "\
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn
TCP  203.0.113.10:80 rr
  -> 192.0.2.11:80                Tunnel  gue:6080:-c   1      0          0
TCP  203.0.113.1:80 rr
  -> 192.0.2.11:8080              Masq    n/a           1      0          0
";
        let t = parse_tun_info(text).unwrap();
        assert!(
            t["TCP 203.0.113.10:80"]["192.0.2.11:80"].starts_with(&expected_tun_info(
                Forwarding::Tun(kubelvs_model::Tunnel::Gue { port: 6080 })
            ))
        );
        assert_eq!(
            t["TCP 203.0.113.1:80"]["192.0.2.11:8080"],
            expected_tun_info(Forwarding::Nat)
        );
        assert!(parse_tun_info("  -> 1.2.3.4:80 Masq").is_err());
        assert!(parse_tun_info("TCP 1.2.3.4:80 rr\n  -> 1.2.3.5:80").is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "  -> 192.0.2.11:80 Masq 1 0 0",
            "TCP",
            "TCP 1.2.3.4:80",
            "TCP 1.2.3.4:80 rr persistent",
            "TCP 1.2.3.4:80 rr persistent x",
            "TCP 1.2.3.4:80 rr bogus",
            "TCP 1.2.3.4:80 rr\n  -> 1.2.3.5:80 Masq x 0 0",
            "TCP 1.2.3.4:80 rr\n  -> 1.2.3.5:80 Masq",
            "hello world",
        ] {
            assert!(parse_list(bad).is_err(), "{bad:?}");
        }
    }
}
