//! FullNAT on kernel IPVS: IPVS NAT (masquerading) plus source NAT of the client to
//! the service's `source_address`, in an nftables table we own. Real servers then
//! reply to the director without a route back through it; the client address is lost.
//!
//! The rule matches the conntrack *original* tuple (client -> VIP:port): IPVS with
//! `net.ipv4.vs.conntrack=1` only rewrites the reply tuple, so the original one still
//! names the virtual service after IPVS has rewritten the destination to a real server.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use kubelvs_model as model;

use crate::error::Error;

/// The nftables table we own (family inet, so one table covers IPv4 and IPv6).
pub const FULLNAT_TABLE: &str = "kubelvs_fullnat";

/// Renders the `nft -f -` script that replaces our table (and only it) atomically.
/// With no FullNAT service the table is removed.
pub fn fullnat_ruleset(services: &[model::Service]) -> String {
    let mut rules = String::new();
    let mut list: Vec<&model::Service> = services
        .iter()
        .filter(|s| {
            s.forwarding == model::Forwarding::FullNat && s.dataplane == model::DataplaneKind::Ipvs
        })
        .collect();
    list.sort_by_key(|s| s.key);
    for s in &list {
        let (l3, vip) = match s.key.vip {
            IpAddr::V4(a) => ("ip", a.to_string()),
            IpAddr::V6(a) => ("ip6", a.to_string()),
        };
        let proto = match s.key.protocol {
            model::Protocol::Tcp => "tcp",
            model::Protocol::Udp => "udp",
            model::Protocol::Sctp => "sctp",
        };
        let action = match s.source_address {
            Some(src) if src.is_ipv4() == s.key.vip.is_ipv4() => format!("snat {l3} to {src}"),
            Some(src) => {
                let _ = writeln!(
                    rules,
                    "\t\t# {}: source address {src} is not of the VIP's family; masquerading",
                    s.key
                );
                "masquerade".to_owned()
            }
            // No address given: the director's address on the way out.
            None => "masquerade".to_owned(),
        };
        let _ = writeln!(
            rules,
            "\t\tmeta l4proto {proto} ct direction original ct original {l3} daddr {vip} \
             ct original proto-dst {} {action} comment \"{}\"",
            s.key.port,
            comment(&s.source.to_string())
        );
    }
    let mut out = String::new();
    // "add" then "delete" makes the delete succeed whether or not the table exists.
    let _ = writeln!(out, "add table inet {FULLNAT_TABLE}");
    let _ = writeln!(out, "delete table inet {FULLNAT_TABLE}");
    if list.is_empty() {
        return out;
    }
    let _ = writeln!(out, "table inet {FULLNAT_TABLE} {{");
    let _ = writeln!(out, "\tchain postrouting {{");
    let _ = writeln!(
        out,
        "\t\ttype nat hook postrouting priority srcnat; policy accept;"
    );
    out.push_str(&rules);
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(out, "}}");
    out
}

/// nft comments are double-quoted strings: keep them printable and quote-free.
fn comment(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .filter(|c| *c != '"' && *c != '\\')
        .take(120)
        .collect()
}

/// Applies the ruleset with `nft -f -` in the current network namespace.
pub fn apply_fullnat(services: &[model::Service]) -> Result<(), Error> {
    apply_nft_script(&fullnat_ruleset(services))
}

/// Runs `nft -f -` with `script` on stdin.
pub fn apply_nft_script(script: &str) -> Result<(), Error> {
    apply_nft_script_via(&[], script)
}

/// Like [`apply_nft_script`], with a command prefix such as `["ip", "netns", "exec", "ns1"]`.
pub fn apply_nft_script_via(prefix: &[&str], script: &str) -> Result<(), Error> {
    let err = |detail: String| Error::Nft {
        table: FULLNAT_TABLE,
        detail,
    };
    let (program, args): (&str, Vec<&str>) = match prefix.split_first() {
        Some((p, rest)) => (p, rest.iter().copied().chain(["nft", "-f", "-"]).collect()),
        None => ("nft", vec!["-f", "-"]),
    };
    let mut child = Command::new(program)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| err(format!("writing the script: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("waiting for nft: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
