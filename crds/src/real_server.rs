//! `RealServer`: one backend address:port with a weight.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A real server: the address (and port) a virtual service forwards to.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kubelvs.io",
    version = "v1alpha1",
    kind = "RealServer",
    plural = "realservers",
    shortname = "lvsrs",
    category = "kubelvs",
    namespaced,
    status = "RealServerStatus",
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.address"}"#,
    printcolumn = r#"{"name":"Port","type":"integer","jsonPath":".spec.port"}"#,
    printcolumn = r#"{"name":"Weight","type":"integer","jsonPath":".spec.weight"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"Drain","type":"boolean","jsonPath":".spec.drain"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    derive = "PartialEq",
    cel
)]
#[serde(rename_all = "camelCase")]
pub struct RealServerSpec {
    /// IPv4 or IPv6 address of the real server: a unicast address, not loopback,
    /// link-local or unspecified (every director probes it from the host network).
    #[schemars(length(max = 45))]
    #[x_kube(
        validation = Rule::new("isIP(self)").message("spec.address: must be an IPv4 or IPv6 address"),
        validation = Rule::new("!isIP(self) || ip(self).isGlobalUnicast()").message("spec.address: must be a unicast address, not loopback, link-local (169.254.0.0/16 holds metadata services), multicast, broadcast or unspecified: directors probe it from their host network")
    )]
    pub address: String,
    /// The port it listens on, for virtual ports without a targetPort. Absent: the virtual port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Relative share of new connections (ipvsadm -w). 0 sends no new connections.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = 65535))]
    pub weight: u32,
    /// The node this real server runs on: that node's agent carries the VIP for dr and tun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub node_name: Option<String>,
    /// Drain: keep existing connections, send no new ones (weight 0, quiescent).
    #[serde(default)]
    pub drain: bool,
}

/// A RealServer as a director plans with it: what selects it (namespace, labels), its
/// name and uid (status and Events name it) and its spec. The API type is about 1.1 KB
/// a RealServer before its strings (`ObjectMeta`, and a label map's node); this is
/// under 150 bytes, and there is one per real server of every virtual service.
#[derive(Clone, Debug, PartialEq)]
pub struct RealServerRecord {
    pub namespace: Box<str>,
    pub name: Box<str>,
    /// In a cluster; none in a file.
    pub uid: Option<Box<str>>,
    pub labels: crate::selector::LabelSet,
    pub spec: RealServerSpec,
}

impl From<RealServer> for RealServerRecord {
    fn from(rs: RealServer) -> Self {
        let m = rs.metadata;
        Self {
            namespace: m.namespace.unwrap_or_default().into(),
            name: m.name.unwrap_or_default().into(),
            uid: m.uid.map(Into::into),
            labels: m.labels.unwrap_or_default().into(),
            spec: rs.spec,
        }
    }
}

impl crate::selector::Selectable for RealServerRecord {
    type Labels = crate::selector::LabelSet;
    fn namespace(&self) -> &str {
        &self.namespace
    }
    fn labels(&self) -> &Self::Labels {
        &self.labels
    }
}

/// ipvsadm's default weight.
pub const DEFAULT_WEIGHT: u32 = 1;

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RealServerStatus {
    /// Health as each director sees it; each entry is written by that director's agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub observations: Vec<HealthObservation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthObservation {
    /// The director node that probed.
    pub node: String,
    pub healthy: bool,
    /// When `healthy` last changed. Probe times and counts are metrics, not status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// The latest probe's result, in a few words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub message: Option<String>,
}
