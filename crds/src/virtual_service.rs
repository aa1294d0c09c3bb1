//! `VirtualService`: a VIP with ports, directed to the RealServers its selector picks.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A virtual service: one VIP, one or more ports, a scheduler and a forwarding method.
/// Each port becomes one LVS virtual service (VIP:port/protocol) on every director node.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kubelvs.io",
    version = "v1alpha1",
    kind = "VirtualService",
    plural = "virtualservices",
    shortname = "lvsvs",
    shortname = "lvs",
    category = "kubelvs",
    namespaced,
    status = "VirtualServiceStatus",
    printcolumn = r#"{"name":"VIP","type":"string","jsonPath":".status.vip"}"#,
    printcolumn = r#"{"name":"Ports","type":"string","jsonPath":".spec.ports[*].port"}"#,
    printcolumn = r#"{"name":"Scheduler","type":"string","jsonPath":".spec.scheduler"}"#,
    printcolumn = r#"{"name":"Forwarding","type":"string","jsonPath":".spec.forwarding"}"#,
    printcolumn = r#"{"name":"Healthy","type":"string","jsonPath":".status.realServers"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Announced By","type":"string","priority":1,"jsonPath":".status.announcedBy"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    derive = "PartialEq",
    cel
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(self.forwarding in ['dr', 'tun']) || self.ports.all(p, !has(p.targetPort) || p.targetPort == p.port)")
        .message("spec.ports[].targetPort: forwarding dr and tun cannot map ports: targetPort must equal port")
        .field_path(".ports"),
    validation = Rule::new("has(self.tunnel) == (self.forwarding == 'tun')")
        .message("spec.tunnel: required when forwarding is tun, and only allowed then")
        .field_path(".tunnel"),
    validation = Rule::new("has(self.sourceAddressPool) == (self.forwarding == 'fullnat')")
        .message("spec.sourceAddressPool: required when forwarding is fullnat (the director addresses clients are rewritten to), and only allowed then")
        .field_path(".sourceAddressPool"),
    validation = Rule::new("!has(self.schedulerFlags) || self.schedulerFlags.all(f, !f.startsWith('sh-') || self.scheduler == 'sh')")
        .message("spec.schedulerFlags: sh-fallback and sh-port need scheduler sh")
        .field_path(".schedulerFlags"),
    validation = Rule::new("!has(self.schedulerFlags) || self.schedulerFlags.all(f, !f.startsWith('mh-') || self.scheduler == 'mh')")
        .message("spec.schedulerFlags: mh-fallback and mh-port need scheduler mh")
        .field_path(".schedulerFlags"),
    validation = Rule::new("self.scheduler != 'maglev' || self.dataplane == 'xdp'")
        .message("spec.scheduler: maglev exists only in the xdp dataplane (the kernel's maglev is mh)")
        .field_path(".scheduler"),
    validation = Rule::new("self.dataplane != 'xdp' || self.scheduler in ['maglev', 'sh']")
        .message("spec.scheduler: the xdp dataplane schedules with maglev, or sh (maglev over the client address only)")
        .field_path(".scheduler"),
    validation = Rule::new("!(self.forwarding in ['dr', 'tun']) || has(self.directors)")
        .message("spec.directors: required for dr and tun: a node that directs must not also run a real server of the same VIP (it would re-schedule packets another director already forwarded), so say which nodes direct")
        .field_path(".directors"),
    validation = Rule::new("self.dataplane != 'xdp' || self.ports.all(p, p.protocol != 'SCTP')")
        .message("spec.ports[].protocol: the xdp dataplane balances TCP and UDP only")
        .field_path(".ports"),
    validation = Rule::new("self.dataplane != 'xdp' || self.forwarding in ['dr', 'tun', 'nat']")
        .message("spec.forwarding: the xdp dataplane forwards with dr, tun or nat")
        .field_path(".forwarding"),
    validation = Rule::new("self.dataplane != 'xdp' || !has(self.tunnel) || self.tunnel.type == 'ipip'")
        .message("spec.tunnel.type: the xdp dataplane encapsulates with ipip only")
        .field_path(".tunnel.type"),
    validation = Rule::new("!has(self.vip) || !has(self.persistence) || !has(self.persistence.netmask) || ip(self.vip).family() == 4")
        .message("spec.persistence.netmask: a dotted netmask needs an IPv4 vip; use prefixLength for IPv6")
        .field_path(".persistence.netmask"),
    validation = Rule::new("!has(self.vip) || !has(self.persistence) || !has(self.persistence.prefixLength) || ip(self.vip).family() == 6 || self.persistence.prefixLength <= 32")
        .message("spec.persistence.prefixLength: at most 32 for an IPv4 vip")
        .field_path(".persistence.prefixLength")
)]
pub struct VirtualServiceSpec {
    /// The virtual IP. When absent, the operator allocates one from `addressPool` (or a
    /// pool with autoAssign) and records it in status.vip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 45))]
    #[x_kube(
        validation = Rule::new("isIP(self)").message("spec.vip: must be an IPv4 or IPv6 address"),
        validation = Rule::new("!isIP(self) || ip(self).isGlobalUnicast()").message("spec.vip: must be a unicast address, not loopback, link-local, multicast, broadcast or unspecified")
    )]
    pub vip: Option<String>,

    /// The AddressPool to allocate the VIP from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub address_pool: Option<String>,

    /// Ports of the virtual service; each is one LVS service VIP:port/protocol.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(
        validation = Rule::new("self.all(p, self.exists_one(q, q.port == p.port && q.protocol == p.protocol))")
            .message("spec.ports: each port/protocol may appear only once"),
        validation = Rule::new("self.all(p, !has(p.name) || self.exists_one(q, has(q.name) && q.name == p.name))")
            .message("spec.ports: port names must be unique")
    )]
    pub ports: Vec<ServicePort>,

    /// How a director picks a real server for a new connection (ipvsadm -s).
    #[serde(default)]
    pub scheduler: Scheduler,

    /// Scheduler flags (ipvsadm -b).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub scheduler_flags: Vec<SchedulerFlag>,

    /// How the director delivers packets to real servers (ipvsadm -m/-g/-i, or fullnat).
    pub forwarding: ForwardingMethod,

    /// Encapsulation for forwarding tun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelSpec>,

    /// AddressPool holding the director addresses clients are rewritten to (fullnat only).
    /// Each director uses the pool addresses it carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub source_address_pool: Option<String>,

    /// Client affinity (ipvsadm -p and -M). On the xdp dataplane a client network
    /// stays on one real server while the set is stable (maglev over the masked client
    /// address); there are no templates, so timeoutSeconds has no effect there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<PersistenceSpec>,

    /// Selects the RealServers (in this namespace) behind this virtual service.
    pub real_server_selector: LabelSelector,

    /// Health check of each real server, run by every director.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,

    /// Which nodes direct this virtual service. Absent: every node running the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directors: Option<DirectorsSpec>,

    /// Which dataplane programs it: kernel IPVS or the kube-lvs XDP program.
    #[serde(default)]
    pub dataplane: Dataplane,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Optional name (a DNS label), unique within the virtual service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: Option<String>,
    /// The virtual port on the VIP.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// The real servers' port (nat and fullnat only). Absent: the RealServer's port, else `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub target_port: Option<u16>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

/// Every scheduler kernel IPVS ships, plus `maglev` for the XDP dataplane.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    Rr,
    #[default]
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

/// ipvsadm `-b` flags. `sh-*` and `mh-*` are the named forms of flag-1 (fallback) and
/// flag-2 (port) for the sh and mh schedulers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SchedulerFlag {
    #[serde(rename = "flag-1")]
    Flag1,
    #[serde(rename = "flag-2")]
    Flag2,
    #[serde(rename = "flag-3")]
    Flag3,
    ShFallback,
    ShPort,
    MhFallback,
    MhPort,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ForwardingMethod {
    /// Masquerading (ipvsadm -m): real servers must route replies back through the director.
    Nat,
    /// Direct routing (ipvsadm -g): real servers on the same L2 segment carry the VIP.
    Dr,
    /// Tunnelling (ipvsadm -i): real servers decapsulate and carry the VIP.
    Tun,
    /// NAT plus source NAT to a director address: no special routing on real servers.
    Fullnat,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.port) == (self.type == 'gue')")
        .message("spec.tunnel.port: required for type gue (the real server's GUE receive port), and only allowed then")
        .field_path(".port")
)]
pub struct TunnelSpec {
    #[serde(rename = "type", default)]
    pub tunnel_type: TunnelType,
    /// UDP port of the real servers' GUE receiver (type gue only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TunnelType {
    #[default]
    Ipip,
    Gue,
    Gre,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.netmask) && has(self.prefixLength))")
        .message("spec.persistence: set netmask or prefixLength, not both")
)]
pub struct PersistenceSpec {
    /// How long a client stays with its real server after its last connection (ipvsadm -p).
    #[serde(default = "default_persistence_timeout")]
    #[schemars(range(min = 1, max = 2147483))]
    pub timeout_seconds: u32,
    /// IPv4 clients in one network of this mask count as one client (ipvsadm -M).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 15),
        regex(
            pattern = r"^((255\.){3}(255|254|252|248|240|224|192|128|0)|(255\.){2}(254|252|248|240|224|192|128|0)\.0|255\.(254|252|248|240|224|192|128|0)\.0\.0|(254|252|248|240|224|192|128)\.0\.0\.0)$"
        )
    )]
    pub netmask: Option<String>,
    /// Clients sharing this many leading address bits count as one client (1-32 for IPv4, 1-128 for IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 128))]
    pub prefix_length: Option<u8>,
}

/// ipvsadm's default persistence timeout.
pub const DEFAULT_PERSISTENCE_TIMEOUT: u32 = 360;

fn default_persistence_timeout() -> u32 {
    DEFAULT_PERSISTENCE_TIMEOUT
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.path) == (self.type == 'http' || self.type == 'https')")
        .message("spec.healthCheck.path: required for http and https checks, and only allowed then")
        .field_path(".path"),
    validation = Rule::new("!has(self.expectedStatus) || self.type == 'http' || self.type == 'https'")
        .message("spec.healthCheck.expectedStatus: only for http and https checks")
        .field_path(".expectedStatus"),
    validation = Rule::new("!has(self.host) || self.type == 'http' || self.type == 'https'")
        .message("spec.healthCheck.host: only for http and https checks")
        .field_path(".host"),
    validation = Rule::new("!has(self.payload) || self.type == 'udp'")
        .message("spec.healthCheck.payload: only for udp checks")
        .field_path(".payload"),
    validation = Rule::new("!has(self.requireReply) || self.type == 'udp'")
        .message("spec.healthCheck.requireReply: only for udp checks")
        .field_path(".requireReply"),
    validation = Rule::new("self.timeoutSeconds <= self.intervalSeconds")
        .message("spec.healthCheck.timeoutSeconds: must not exceed intervalSeconds")
        .field_path(".timeoutSeconds")
)]
pub struct HealthCheckSpec {
    #[serde(rename = "type")]
    pub check_type: HealthCheckType,
    /// Request path for http and https checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/[!-~]*$"))]
    pub path: Option<String>,
    /// HTTP status that means healthy (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 599))]
    pub expected_status: Option<u16>,
    /// Host header (and TLS server name) for http and https checks: a DNS name or an
    /// address, optionally with a port; nothing else reaches the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(
            pattern = r"^([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$"
        )
    )]
    pub host: Option<String>,
    /// Port to probe instead of the real server's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// The datagram a udp check sends, in hex (keepalived's `payload`); empty by
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 2048), regex(pattern = r"^([0-9a-fA-F]{2})+$"))]
    pub payload: Option<String>,
    /// A udp check passes only when the real server replies within the timeout
    /// (keepalived's `require_reply`). Otherwise it fails only on an ICMP port
    /// unreachable, and silence passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_reply: Option<bool>,
    #[serde(default = "default_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: u32,
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: u32,
    /// Consecutive successes before a failed real server is used again.
    #[serde(default = "default_rise")]
    #[schemars(range(min = 1, max = 100))]
    pub rise: u32,
    /// Consecutive failures before a real server is quiesced (weight 0).
    #[serde(default = "default_fall")]
    #[schemars(range(min = 1, max = 100))]
    pub fall: u32,
}

fn default_interval() -> u32 {
    2
}
fn default_timeout() -> u32 {
    1
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckType {
    Tcp,
    Http,
    Https,
    /// A datagram to the port: down on ICMP port unreachable, or on no reply with
    /// `requireReply` (keepalived's UDP_CHECK).
    Udp,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DirectorsSpec {
    /// Nodes whose labels match direct this virtual service.
    pub node_selector: LabelSelector,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    #[default]
    Ipvs,
    Xdp,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceStatus {
    /// The VIP in use: spec.vip, or the one allocated from an AddressPool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `healthy/total` real servers: the selected ones not draining, and how many of
    /// them pass their health check on the director that sees the fewest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 23))]
    pub real_servers: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The director that answers ARP/NDP for the VIP (announcement `l2`), as the
    /// operator sees it: an agent's entry that says it announces, of a director whose
    /// Lease is live. Absent while none does (mode `none`, or no live director).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub announced_by: Option<String>,
    /// One entry per director node, each written by that node's agent (server-side apply).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub directors: Vec<DirectorStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DirectorStatus {
    pub node: String,
    /// Every port is on its dataplane on this node.
    pub programmed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<Dataplane>,
    /// Selected real servers this director sends connections to: passing their health
    /// check and reachable by its dataplane.
    #[serde(default)]
    pub healthy_real_servers: u32,
    /// This director answers ARP/NDP for the VIP (announcement `l2`: the owner among
    /// the live directors).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub announcing: bool,
    /// The first reason a port is not programmed. Only state lives here; traffic
    /// counters are in the agent's metrics (`kubectl lvs --stats` reads them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub message: Option<String>,
}
