//! Director sysctls that LVS operation needs, set deliberately. See docs/ipvs.md.

use std::path::{Path, PathBuf};

use crate::error::Error;

/// One sysctl: path under /proc/sys, value, and why the director needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sysctl {
    /// Relative to /proc/sys, e.g. `net/ipv4/ip_forward`.
    pub path: &'static str,
    pub value: &'static str,
    pub why: &'static str,
}

/// The sysctls of a director, per network namespace. The `net/ipv4/vs/*` entries exist
/// only once ip_vs is loaded (opening an [`crate::IpvsClient`] loads it).
pub fn director_sysctls() -> Vec<Sysctl> {
    vec![
        Sysctl {
            path: "net/ipv4/ip_forward",
            value: "1",
            why: "NAT and FullNAT forward client packets to real servers and their replies \
                  back; TUN also needs it on the director",
        },
        Sysctl {
            path: "net/ipv4/vs/conntrack",
            value: "1",
            why: "keep nf_conntrack entries for IPVS connections, so the FullNAT nftables \
                  SNAT (and any stateful firewall) sees them",
        },
        Sysctl {
            path: "net/ipv4/vs/expire_nodest_conn",
            value: "1",
            why: "when a drained real server is finally deleted, expire its connections at \
                  once instead of silently dropping their packets until they time out",
        },
        Sysctl {
            path: "net/ipv4/vs/expire_quiescent_template",
            value: "1",
            why: "persistence templates pointing at a weight-0 (draining) real server expire, \
                  so persistent clients move off it",
        },
    ]
}

/// [`director_sysctls`] plus IPv6 forwarding when the plan has an IPv6 NAT or FullNAT
/// service (left out otherwise: it changes how the node takes router advertisements),
/// and sloppy TCP and SCTP when a service uses `mh`.
pub fn director_sysctls_for(services: &[kubelvs_model::Service]) -> Vec<Sysctl> {
    let mut list = director_sysctls();
    let ipvs = || {
        services
            .iter()
            .filter(|s| s.dataplane == kubelvs_model::DataplaneKind::Ipvs)
    };
    if ipvs().any(|s| s.scheduler == kubelvs_model::Scheduler::Mh) {
        list.extend([
            Sysctl {
                path: "net/ipv4/vs/sloppy_tcp",
                value: "1",
                why: "a flow whose director died reaches another one mid-stream: without it \
                      IPVS schedules only a SYN and drops the rest; with it, mh (the same \
                      table on every director) sends the flow to the real server it had",
            },
            Sysctl {
                path: "net/ipv4/vs/sloppy_sctp",
                value: "1",
                why: "the same for SCTP associations (an INIT is otherwise required)",
            },
        ]);
    }
    let v6_nat = ipvs().any(|s| s.key.vip.is_ipv6() && s.forwarding.allows_port_mapping());
    if v6_nat {
        list.push(Sysctl {
            path: "net/ipv6/conf/all/forwarding",
            value: "1",
            why: "IPv6 NAT and FullNAT forward client packets to real servers and back",
        });
    }
    list
}

/// Writes the sysctls under /proc/sys of the current network namespace.
pub fn apply_sysctls(list: &[Sysctl]) -> Result<(), Error> {
    apply_sysctls_at(Path::new("/proc/sys"), list)
}

/// Writes the sysctls under `root` (a /proc/sys, or a directory in tests).
pub fn apply_sysctls_at(root: &Path, list: &[Sysctl]) -> Result<(), Error> {
    for s in list {
        let path: PathBuf = root.join(s.path);
        std::fs::write(&path, format!("{}\n", s.value))
            .map_err(|source| Error::Sysctl { path, source })?;
    }
    Ok(())
}

/// Reads sysctls back (trimmed), for checks and status.
pub fn read_sysctls_at(root: &Path, list: &[Sysctl]) -> Result<Vec<String>, Error> {
    list.iter()
        .map(|s| {
            let path = root.join(s.path);
            std::fs::read_to_string(&path)
                .map(|v| v.trim().to_owned())
                .map_err(|source| Error::Sysctl { path, source })
        })
        .collect()
}
