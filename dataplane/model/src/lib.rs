//! The plan a dataplane applies: plain data, no Kubernetes, no netlink, no BPF.
//!
//! The node planner (`kubelvs-planner`) turns Kubernetes objects into a [`NodePlan`];
//! the IPVS and XDP dataplanes and the node's network configuration consume it.
//! Everything here is in LVS terms: a virtual [`Service`] (VIP:port/protocol) is
//! directed to [`RealServer`]s by a [`Scheduler`] with a [`Forwarding`] method.

#![forbid(unsafe_code)]

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub mod dataplane;
pub use dataplane::{
    ApplyContext, Dataplane, DataplaneReport, Outcome, RealServerNote, RealServerState, Reason,
    ServiceOutcome, Traffic, TrafficReport, VipOutcome,
};

/// L4 protocol of a virtual service. The discriminants are the IP protocol numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    Tcp = 6,
    Udp = 17,
    Sctp = 132,
}

impl Protocol {
    /// IANA protocol number, as IPVS and IP headers carry it.
    pub fn number(self) -> u8 {
        self as u8
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            132 => Some(Self::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

/// How a director picks a real server for a new connection.
///
/// Every scheduler the kernel ships (`net/netfilter/ipvs/ip_vs_*.c`), plus
/// `Maglev`, which only the XDP dataplane implements (the kernel's Maglev is `Mh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scheduler {
    Rr,
    Wrr,
    Lc,
    Wlc,
    Lblc,
    Lblcr,
    Dh,
    Sh,
    Sed,
    Nq,
    Fo,
    Ovf,
    Mh,
    Twos,
    Maglev,
}

impl Scheduler {
    pub const ALL: [Scheduler; 15] = [
        Self::Rr,
        Self::Wrr,
        Self::Lc,
        Self::Wlc,
        Self::Lblc,
        Self::Lblcr,
        Self::Dh,
        Self::Sh,
        Self::Sed,
        Self::Nq,
        Self::Fo,
        Self::Ovf,
        Self::Mh,
        Self::Twos,
        Self::Maglev,
    ];

    /// The name used in the API and, for kernel schedulers, the IPVS module suffix (`ip_vs_<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Rr => "rr",
            Self::Wrr => "wrr",
            Self::Lc => "lc",
            Self::Wlc => "wlc",
            Self::Lblc => "lblc",
            Self::Lblcr => "lblcr",
            Self::Dh => "dh",
            Self::Sh => "sh",
            Self::Sed => "sed",
            Self::Nq => "nq",
            Self::Fo => "fo",
            Self::Ovf => "ovf",
            Self::Mh => "mh",
            Self::Twos => "twos",
            Self::Maglev => "maglev",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The scheduler name kernel IPVS knows, or `None` for an XDP-only scheduler.
    pub fn kernel_name(self) -> Option<&'static str> {
        match self {
            Self::Maglev => None,
            other => Some(other.name()),
        }
    }

    /// Whether this scheduler hashes the connection, so `flag-1`/`flag-2` mean
    /// fallback/port (sh and mh only).
    pub fn is_hashing(self) -> bool {
        matches!(self, Self::Sh | Self::Mh)
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// IPVS scheduler flags (`ipvsadm -b`). For sh and mh, flag 1 is "fallback" (skip
/// unavailable servers) and flag 2 is "port" (hash the source port too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SchedulerFlags {
    pub flag1: bool,
    pub flag2: bool,
    pub flag3: bool,
}

impl SchedulerFlags {
    /// The bits IPVS uses in the service flags word (IP_VS_SVC_F_SCHED1..3).
    pub fn bits(self) -> u32 {
        (u32::from(self.flag1) << 3) | (u32::from(self.flag2) << 4) | (u32::from(self.flag3) << 5)
    }

    pub fn from_bits(bits: u32) -> Self {
        Self {
            flag1: bits & 0x08 != 0,
            flag2: bits & 0x10 != 0,
            flag3: bits & 0x20 != 0,
        }
    }
}

/// Encapsulation used by tunnel forwarding (IPVS `--tun-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Tunnel {
    Ipip,
    /// Generic UDP Encapsulation to this UDP port on the real server.
    Gue {
        port: u16,
    },
    Gre,
}

/// How a director delivers a packet to the real server it picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Forwarding {
    /// Masquerading: rewrite the destination; replies must come back through the director.
    Nat,
    /// Direct routing: rewrite the MAC only; the real server carries the VIP and answers directly.
    Dr,
    /// Encapsulate to the real server, which decapsulates and answers directly.
    Tun(Tunnel),
    /// NAT plus source NAT of the client to a director address, so real servers need no
    /// route back through the director. The client address is lost.
    FullNat,
}

impl Forwarding {
    /// Whether real servers must carry the VIP themselves (ARP suppressed).
    pub fn real_server_carries_vip(self) -> bool {
        matches!(self, Self::Dr | Self::Tun(_))
    }

    /// Whether the real server port may differ from the virtual port.
    pub fn allows_port_mapping(self) -> bool {
        matches!(self, Self::Nat | Self::FullNat)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Nat => "nat",
            Self::Dr => "dr",
            Self::Tun(_) => "tun",
            Self::FullNat => "fullnat",
        }
    }
}

/// Client affinity: connections from one client network go to the same real server
/// for `timeout_seconds` after the last one ends (ipvsadm `-p` and `-M`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Persistence {
    pub timeout_seconds: u32,
    /// Clients whose addresses share this many leading bits count as one client.
    pub prefix_length: u8,
}

/// Which dataplane programs a virtual service on a director.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataplaneKind {
    #[default]
    Ipvs,
    Xdp,
}

impl DataplaneKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ipvs => "ipvs",
            Self::Xdp => "xdp",
        }
    }
}

/// Health probe of a real server, keepalived style.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    /// Consecutive successes before a failed server is used again.
    pub rise: u32,
    /// Consecutive failures before a server is quiesced.
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Probe {
    /// TCP connect to the real server's port (or `port` when set).
    Tcp { port: Option<u16> },
    /// HTTP(S) GET of `path`, healthy when the status is `expected_status`.
    Http {
        tls: bool,
        path: String,
        expected_status: u16,
        port: Option<u16>,
        host: Option<String>,
    },
    /// A datagram (`payload`) to the real server's port (or `port`): unhealthy on an
    /// ICMP port unreachable, or, with `require_reply`, on no reply within the timeout.
    Udp {
        port: Option<u16>,
        payload: Vec<u8>,
        require_reply: bool,
    },
}

/// Identity of a virtual service in a dataplane: VIP, port and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceKey {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.vip {
            IpAddr::V4(a) => write!(f, "{a}:{}/{}", self.port, self.protocol),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{}", self.port, self.protocol),
        }
    }
}

/// The kinds of object a plan is made from, declared in the order of their names, so
/// that `ObjectRef`s sort as their text does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ObjectKind {
    AddressPool,
    RealServer,
    VirtualService,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AddressPool => "AddressPool",
            Self::RealServer => "RealServer",
            Self::VirtualService => "VirtualService",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Kubernetes object a piece of the plan came from, for status and errors. Its
/// names are shared (`Arc`), with the object's record and between the plan's copies:
/// there is one per real server of every virtual service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    pub kind: ObjectKind,
    /// Empty for cluster-scoped objects.
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ObjectRef {
    pub fn new(kind: ObjectKind, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One backend of a virtual service, as a dataplane programs it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RealServer {
    pub address: IpAddr,
    pub port: u16,
    /// Effective weight: 0 when drained (quiescent: no new connections, existing ones go on).
    pub weight: u32,
    /// The RealServer object this came from.
    pub source: ObjectRef,
}

/// One virtual service (one port of a VirtualService) that this node directs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Service {
    pub key: ServiceKey,
    pub scheduler: Scheduler,
    pub scheduler_flags: SchedulerFlags,
    pub forwarding: Forwarding,
    pub persistence: Option<Persistence>,
    /// FullNAT only: the director address the client is rewritten to.
    pub source_address: Option<IpAddr>,
    pub health_check: Option<HealthCheck>,
    pub dataplane: DataplaneKind,
    /// Sorted by (address, port).
    pub real_servers: Vec<RealServer>,
    /// The VirtualService this came from.
    pub source: ObjectRef,
}

/// A VIP this node must carry because it runs a DR or TUN real server for it:
/// VIP/32 (or /128) on a local interface with ARP suppressed, plus the tunnel for TUN.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RealServerVip {
    pub vip: IpAddr,
    /// `None` for DR; the decapsulation the node needs for TUN.
    pub tunnel: Option<TunnelKind>,
    pub sources: Vec<ObjectRef>,
}

impl RealServerVip {
    /// The object to report on about this VIP: its first VirtualService, or (a plan
    /// built by hand with no sources) the VIP itself.
    pub fn source(&self) -> ObjectRef {
        self.sources.first().cloned().unwrap_or_else(|| {
            ObjectRef::new(ObjectKind::VirtualService, "", &self.vip.to_string())
        })
    }
}

/// The decapsulation a TUN real server needs (the GUE port lives in the service).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TunnelKind {
    Ipip,
    Gue { port: u16 },
    Gre,
}

impl From<Tunnel> for TunnelKind {
    fn from(t: Tunnel) -> Self {
        match t {
            Tunnel::Ipip => Self::Ipip,
            Tunnel::Gue { port } => Self::Gue { port },
            Tunnel::Gre => Self::Gre,
        }
    }
}

/// Something wrong with the objects, found while planning. Planning goes on without
/// the faulty part; the agent reports these in status.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Problem {
    pub object: ObjectRef,
    /// JSON path of the offending field, e.g. `spec.ports[0].targetPort`.
    pub field: String,
    pub reason: ProblemReason,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.message)
    }
}

/// A stable category of [`Problem`], for conditions' `reason` and metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ProblemReason {
    /// The object is invalid on its own.
    Invalid,
    /// Another, older VirtualService already claims the same VIP:port/protocol.
    Conflict,
    /// No VIP yet: none in spec and none allocated in status.
    VipPending,
    /// A referenced object (AddressPool, ...) is missing or unusable here.
    Unresolved,
}

impl ProblemReason {
    pub fn name(self) -> &'static str {
        match self {
            Self::Invalid => "Invalid",
            Self::Conflict => "Conflict",
            Self::VipPending => "VipPending",
            Self::Unresolved => "Unresolved",
        }
    }
}

/// A BGP session from this director to a peer (a router), and the VIPs it may announce
/// over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpSession {
    pub local_asn: u32,
    pub peer: IpAddr,
    pub peer_asn: u32,
    pub port: u16,
    pub hold_time_seconds: u16,
    pub bfd: bool,
    /// The TCP MD5 password's Secret in the agents' namespace: (name, key).
    pub password_secret: Option<(String, String)>,
    pub vips: std::collections::BTreeSet<IpAddr>,
}

/// Everything one node must program, computed purely from its identity and the objects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    pub node: String,
    /// Virtual services this node directs, sorted by key.
    pub services: Vec<Service>,
    /// VIPs this node carries as a DR/TUN real server, sorted by VIP.
    pub real_server_vips: Vec<RealServerVip>,
    /// VIPs this node directs without answering ARP/NDP for them: another director
    /// owns their announcement, or the network routes them (announcement `none`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub unannounced_vips: std::collections::BTreeSet<IpAddr>,
    /// BGP sessions this node keeps as a director, sorted by peer, each with the VIPs
    /// of `bgp` pools it directs (announced while it can serve them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bgp_sessions: Vec<BgpSession>,
    /// Sorted.
    pub problems: Vec<Problem>,
}

impl NodePlan {
    /// Services programmed by one dataplane.
    pub fn services_for(&self, dataplane: DataplaneKind) -> impl Iterator<Item = &Service> {
        self.services
            .iter()
            .filter(move |s| s.dataplane == dataplane)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_names_round_trip() {
        for s in Scheduler::ALL {
            assert_eq!(Scheduler::from_name(s.name()), Some(s));
        }
        assert_eq!(Scheduler::from_name("none"), None);
        assert_eq!(Scheduler::Maglev.kernel_name(), None);
        assert_eq!(Scheduler::Mh.kernel_name(), Some("mh"));
    }

    #[test]
    fn scheduler_flag_bits_match_ip_vs_h() {
        let all = SchedulerFlags {
            flag1: true,
            flag2: true,
            flag3: true,
        };
        assert_eq!(all.bits(), 0x08 | 0x10 | 0x20);
        for bits in [0, 0x08, 0x10, 0x20, 0x38, 0x18] {
            assert_eq!(SchedulerFlags::from_bits(bits).bits(), bits);
        }
    }

    #[test]
    fn service_key_display_brackets_ipv6() {
        let k = ServiceKey {
            vip: "2001:db8::1".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
        };
        assert_eq!(k.to_string(), "[2001:db8::1]:80/TCP");
    }
}
