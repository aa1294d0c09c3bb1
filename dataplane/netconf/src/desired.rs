//! Pure: what the node's network configuration must be for its plan.
//!
//! - Directors carry each VIP they direct (VIP/32 or /128) on the director device:
//!   the node's interface when one is configured, `lo` otherwise. The stack then
//!   answers ARP for it, and IPVS sees packets to it as local. A VIP the plan says
//!   this node does not announce goes on `lo` with ARP on the interface limited to
//!   the interface's own addresses (`arp_ignore=1`, `arp_announce=2`); without an
//!   interface every director answers for its VIPs, as there is nothing to limit.
//! - XDP directors forwarding NAT or TUN need IP forwarding (`bpf_fib_lookup`
//!   answers only where it is on). IPVS directors get their sysctls from the IPVS
//!   dataplane.
//! - DR/TUN real servers carry the VIP on `lo` with ARP suppressed
//!   (`arp_ignore=1`, `arp_announce=2` on `all` and on the interface), so only the
//!   director answers ARP for it; TUN real servers also need the tunnel device up
//!   and reverse-path filtering off on it and on `all` (decapsulated packets arrive
//!   on a device without an address, which any rp_filter mode rejects).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use kubelvs_model::{
    DataplaneKind, Forwarding, NodePlan, ObjectRef, Reason, ServiceKey, TunnelKind,
};

/// An address on a local interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalAddress {
    pub ifname: String,
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl LocalAddress {
    /// `addr` as a host address (/32 or /128) on `ifname`.
    pub fn host(ifname: &str, addr: IpAddr) -> Self {
        Self {
            ifname: ifname.to_owned(),
            addr,
            prefix_len: if addr.is_ipv4() { 32 } else { 128 },
        }
    }
}

impl fmt::Display for LocalAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} on {}", self.addr, self.prefix_len, self.ifname)
    }
}

/// What a piece of configuration is for: a directed virtual service, or a VIP this
/// node carries as a real server. Failures are reported on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    Service(ServiceKey),
    RealServerVip(IpAddr),
}

/// How the node is wired, for the parts of the configuration the plan cannot say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetconfOptions {
    /// The interface facing clients, directors and real servers. Director VIPs go on
    /// it and ARP suppression is set on it too; `None`: director VIPs go on `lo`.
    pub interface: Option<String>,
    /// IPIP real-server VIPs on a node without the kernel's tunnel device are
    /// decapsulated by kube-lvs's XDP program (the agent runs
    /// `kubelvs_xdp::DecapDataplane`): configure their VIP and ARP suppression
    /// anyway. Without it such VIPs are reported `Unsupported`.
    pub xdp_decap: bool,
}

impl NetconfOptions {
    pub fn director_device(&self) -> &str {
        self.interface.as_deref().unwrap_or("lo")
    }
}

/// The configuration the plan wants, each item with the subjects that need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub addresses: BTreeMap<LocalAddress, BTreeSet<Subject>>,
    /// Path under /proc/sys -> (value, subjects).
    pub sysctls: BTreeMap<String, (String, BTreeSet<Subject>)>,
    /// Links to bring up.
    pub links_up: BTreeMap<String, BTreeSet<Subject>>,
    /// Subjects this node cannot configure, and why. Nothing is configured for them.
    pub refused: BTreeMap<Subject, Refusal>,
    /// Every subject of the plan with the object it came from.
    pub subjects: BTreeMap<Subject, ObjectRef>,
}

/// Why a subject is not configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unsupported(Reason),
    Conflict(Reason),
}

impl Desired {
    /// `addr` as a host address on `ifname`, for `s`. Without allocating when the
    /// address is already wanted: every port of a VIP is a service, and services
    /// come in VIP order, so the address is usually the greatest one so far.
    fn address(&mut self, ifname: &str, addr: IpAddr, s: Subject) {
        let probe = |a: &LocalAddress| a.ifname == ifname && a.addr == addr;
        if let Some((_, subjects)) = self
            .addresses
            .iter_mut()
            .next_back()
            .filter(|(a, _)| probe(a))
        {
            subjects.insert(s);
            return;
        }
        self.addresses
            .entry(LocalAddress::host(ifname, addr))
            .or_default()
            .insert(s);
    }

    fn sysctl(&mut self, path: &str, value: &str, s: Subject) {
        match self.sysctls.get_mut(path) {
            Some((_, subjects)) => {
                subjects.insert(s);
            }
            None => {
                self.sysctls
                    .insert(path.to_owned(), (value.to_owned(), BTreeSet::from([s])));
            }
        }
    }
}

/// The configuration `plan` needs. `links` are the links the node has (tunnel
/// devices exist only where the kernel has the module).
pub fn desired(plan: &NodePlan, opts: &NetconfOptions, links: &BTreeSet<String>) -> Desired {
    let mut d = Desired::default();
    let director_dev = opts.director_device();
    for s in &plan.services {
        let subject = Subject::Service(s.key);
        d.subjects.insert(subject, s.source.clone());
        match opts.interface.as_deref() {
            // Another director announces it, or the network routes it: on lo, where
            // the stack still takes its packets, with ARP on the interface limited to
            // the interface's own addresses (NDP never answers for lo's).
            Some(interface) if plan.unannounced_vips.contains(&s.key.vip) => {
                d.address("lo", s.key.vip, subject);
                if s.key.vip.is_ipv4() {
                    d.sysctl(
                        &format!("net/ipv4/conf/{interface}/arp_ignore"),
                        "1",
                        subject,
                    );
                    d.sysctl(
                        &format!("net/ipv4/conf/{interface}/arp_announce"),
                        "2",
                        subject,
                    );
                }
            }
            _ => d.address(director_dev, s.key.vip, subject),
        }
        let forwards = matches!(s.forwarding, Forwarding::Nat | Forwarding::Tun(_));
        if s.dataplane == DataplaneKind::Xdp && forwards {
            let path = if s.key.vip.is_ipv4() {
                "net/ipv4/ip_forward"
            } else {
                "net/ipv6/conf/all/forwarding"
            };
            d.sysctl(path, "1", subject);
        }
    }
    for rv in &plan.real_server_vips {
        let subject = Subject::RealServerVip(rv.vip);
        let source = rv.source();
        d.subjects.insert(subject, source.clone());
        if director_dev == "lo" && !plan.services.is_empty() {
            // arp_ignore=1 on `all` would silence ARP for the director's VIPs on lo.
            d.refused.insert(
                subject,
                Refusal::Conflict(Reason::new(
                    &source,
                    "spec.directors",
                    "this node also directs VIPs, which sit on lo without an interface \
                     configured: ARP suppression for the real-server role would hide them; \
                     give the agent --interface so director VIPs go on it",
                )),
            );
            continue;
        }
        let tunnel_link = match (rv.tunnel, rv.vip) {
            (None, _) => None,
            (Some(TunnelKind::Ipip), IpAddr::V4(_)) => Some("tunl0"),
            (Some(TunnelKind::Ipip), IpAddr::V6(_)) => Some("ip6tnl0"),
            (Some(other), _) => {
                d.refused.insert(
                    subject,
                    Refusal::Unsupported(Reason::new(
                        &source,
                        "spec.tunnel.type",
                        format!("{other:?} decapsulation on real servers is not configured by kube-lvs (IPIP only)"),
                    )),
                );
                continue;
            }
        };
        let tunnel_link = tunnel_link.filter(|l| links.contains(*l) || !opts.xdp_decap);
        if let Some(link) = tunnel_link {
            if !links.contains(link) {
                d.refused.insert(
                    subject,
                    Refusal::Unsupported(Reason::new(
                        &source,
                        "spec.tunnel.type",
                        format!(
                            "this node has no {link} (the kernel's ipip/ip6_tunnel module is not \
                             loaded): decapsulate with kube-lvs's XDP program instead"
                        ),
                    )),
                );
                continue;
            }
            d.links_up
                .entry(link.to_owned())
                .or_default()
                .insert(subject);
            if link == "tunl0" {
                // tunl0 has no address, and the kernel's source validation drops
                // everything arriving on an address-less device unless rp_filter is 0
                // there, loose mode included; the value in force is the larger of
                // `all` and the device's, so both.
                for scope in ["all", "tunl0"] {
                    d.sysctl(&format!("net/ipv4/conf/{scope}/rp_filter"), "0", subject);
                }
            }
        }
        d.address("lo", rv.vip, subject);
        if rv.vip.is_ipv4() {
            let mut scopes = vec!["all".to_owned()];
            scopes.extend(opts.interface.clone());
            for scope in scopes {
                d.sysctl(&format!("net/ipv4/conf/{scope}/arp_ignore"), "1", subject);
                d.sysctl(&format!("net/ipv4/conf/{scope}/arp_announce"), "2", subject);
            }
        }
    }
    d
}
