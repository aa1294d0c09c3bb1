//! `AddressPool`: addresses for VIPs (and FullNAT source addresses).

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A pool of addresses: VIPs are allocated from it, FullNAT directors take source addresses from it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kubelvs.io",
    version = "v1alpha1",
    kind = "AddressPool",
    plural = "addresspools",
    shortname = "lvspool",
    category = "kubelvs",
    status = "AddressPoolStatus",
    printcolumn = r#"{"name":"Addresses","type":"string","jsonPath":".spec.addresses"}"#,
    printcolumn = r#"{"name":"Auto","type":"boolean","jsonPath":".spec.autoAssign"}"#,
    printcolumn = r#"{"name":"Allocated","type":"integer","jsonPath":".status.allocated"}"#,
    printcolumn = r#"{"name":"Available","type":"integer","jsonPath":".status.available"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    derive = "PartialEq",
    cel
)]
#[serde(rename_all = "camelCase")]
pub struct AddressPoolSpec {
    /// CIDRs (`203.0.113.0/28`) or inclusive ranges (`203.0.113.10-203.0.113.20`).
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 90)))]
    #[x_kube(
        validation = Rule::new("self.all(a, isCIDR(a) || (a.split('-').size() == 2 && isIP(a.split('-')[0]) && isIP(a.split('-')[1]) && ip(a.split('-')[0]).family() == ip(a.split('-')[1]).family()))")
            .message("spec.addresses: each entry must be a CIDR (203.0.113.0/28) or a range of one family (203.0.113.10-203.0.113.20)")
    )]
    pub addresses: Vec<String>,
    /// Whether VirtualServices without `vip` or `addressPool` may get addresses from this pool.
    #[serde(default = "default_true")]
    pub auto_assign: bool,
    /// Only VirtualServices in matching namespaces may use this pool. Absent: all namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// How clients' networks find the pool's addresses. Absent: `mode: l2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announcement: Option<Announcement>,
}

/// How a pool's VIPs are announced to the network.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode != 'bgp' || has(self.bgp)")
        .message("spec.announcement.bgp: mode bgp needs the local ASN and the peers")
)]
pub struct Announcement {
    #[serde(default)]
    pub mode: AnnouncementMode,
    /// Nodes that may announce (among each VIP's directors). Absent: every director.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Mode `bgp`: the directors' ASN and their peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpAnnouncement>,
}

/// `l2`: one director answers ARP (IPv4) and NDP (IPv6) for each VIP: the owner, chosen
/// among the live directors by a hash every agent computes alike; the others carry the
/// VIP silently and still forward what reaches them. `bgp`: every director that can
/// serve a VIP announces its /32 (/128) to the pool's BGP peers, so the routers spread
/// flows over the directors (ECMP), and withdraws it when it cannot. `none`: no director
/// answers for it; the network already routes the addresses to the directors (static
/// routes).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AnnouncementMode {
    #[default]
    #[serde(rename = "l2")]
    L2,
    #[serde(rename = "bgp")]
    Bgp,
    #[serde(rename = "none")]
    Unannounced,
}

/// The BGP sessions a pool's VIPs are announced over: from every director, with the
/// same ASN, to each peer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BgpAnnouncement {
    /// The directors' ASN.
    #[serde(rename = "localASN")]
    #[schemars(range(min = 1, max = 4294967294u32))]
    pub local_asn: u32,
    #[schemars(length(min = 1, max = 16))]
    pub peers: Vec<BgpPeer>,
}

/// One BGP neighbour of the directors (a top-of-rack router).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BgpPeer {
    #[schemars(length(max = 45))]
    #[x_kube(
        validation = Rule::new("isIP(self)").message("spec.announcement.bgp.peers[].address: must be an IPv4 or IPv6 address")
    )]
    pub address: String,
    #[schemars(range(min = 1, max = 4294967294u32))]
    pub asn: u32,
    /// Absent: 179.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub port: Option<u16>,
    /// BGP hold time. Absent: 9 s (3 s keepalives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 3, max = 65535))]
    pub hold_time_seconds: Option<u16>,
    /// Bidirectional Forwarding Detection on the session (300 ms x 3): a dead director's
    /// routes are withdrawn in about a second instead of a hold time. Absent: on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<bool>,
    /// The session's TCP MD5 password (RFC 2385): key `key` of the Secret `name` in the
    /// agents' namespace (standalone: a Secret in the agent's file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
}

/// A key of a Secret in the agents' namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

impl AddressPool {
    /// The pool's announcement mode.
    pub fn announcement_mode(&self) -> AnnouncementMode {
        self.spec
            .announcement
            .as_ref()
            .map(|a| a.mode)
            .unwrap_or_default()
    }
}

fn default_true() -> bool {
    true
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressPoolStatus {
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub allocated: u64,
    #[serde(default)]
    pub available: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// An inclusive address range of a pool entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    pub first: IpAddr,
    pub last: IpAddr,
}

impl AddressRange {
    pub fn contains(&self, a: IpAddr) -> bool {
        a.is_ipv4() == self.first.is_ipv4() && self.first <= a && a <= self.last
    }
}

impl AddressPool {
    /// The ranges of `spec.addresses`. Malformed entries are skipped: validation rejects
    /// them, except a reversed range, which CEL cannot see (it cannot compare addresses);
    /// the operator reports that one.
    pub fn ranges(&self) -> Vec<AddressRange> {
        self.spec
            .addresses
            .iter()
            .filter_map(|a| parse_range(a))
            .collect()
    }
}

/// `203.0.113.0/28` or `203.0.113.10-203.0.113.20`.
pub fn parse_range(entry: &str) -> Option<AddressRange> {
    if let Ok(net) = entry.parse::<IpNet>() {
        return Some(AddressRange {
            first: net.network(),
            last: net.broadcast(),
        });
    }
    let (a, b) = entry.split_once('-')?;
    let (first, last): (IpAddr, IpAddr) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (first.is_ipv4() == last.is_ipv4() && first <= last).then_some(AddressRange { first, last })
}
