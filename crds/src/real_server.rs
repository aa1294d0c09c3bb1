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
    /// Shared (`Arc`) with what the plan says came from it.
    pub namespace: std::sync::Arc<str>,
    pub name: std::sync::Arc<str>,
    /// In a cluster; none in a file.
    pub uid: Option<Box<str>>,
    pub labels: crate::selector::LabelSet,
    pub spec: RealServerRecordSpec,
}

/// A RealServer's spec as its record keeps it: the same fields in 48 bytes instead of
/// 64, so that a record and its `Arc`'s counts fit a 128-byte allocation (144 bytes
/// fall in the allocator's 160-byte class).
#[derive(Clone, Debug, PartialEq)]
pub struct RealServerRecordSpec {
    pub address: Box<str>,
    pub port: Option<u16>,
    pub weight: u32,
    pub node_name: Option<Box<str>>,
    pub drain: bool,
}

impl From<RealServerSpec> for RealServerRecordSpec {
    fn from(spec: RealServerSpec) -> Self {
        Self {
            address: spec.address.into(),
            port: spec.port,
            weight: spec.weight,
            node_name: spec.node_name.map(Into::into),
            drain: spec.drain,
        }
    }
}

impl From<RealServer> for RealServerRecord {
    fn from(rs: RealServer) -> Self {
        let m = rs.metadata;
        Self {
            namespace: shared_namespace(m.namespace.as_deref().unwrap_or_default()),
            name: m.name.unwrap_or_default().into(),
            uid: m.uid.map(Into::into),
            labels: m.labels.unwrap_or_default().into(),
            spec: rs.spec.into(),
        }
    }
}

/// `namespace` as the records that carry it share it: there are many RealServers
/// per namespace, and each copy would be an allocation of its own. A name nothing
/// holds any more (no record, no plan's reference) is dropped once the set has doubled
/// since it was last pruned.
fn shared_namespace(namespace: &str) -> std::sync::Arc<str> {
    use std::sync::{Arc, LazyLock, Mutex};
    #[derive(Default)]
    struct Shared {
        names: std::collections::HashSet<Arc<str>>,
        prune_at: usize,
    }
    static SHARED: LazyLock<Mutex<Shared>> = LazyLock::new(Mutex::default);
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(name) = shared.names.get(namespace) {
        return name.clone();
    }
    if shared.names.len() >= shared.prune_at {
        shared.names.retain(|n| Arc::strong_count(n) > 1);
        shared.prune_at = (2 * shared.names.len()).max(64);
    }
    let name: Arc<str> = namespace.into();
    shared.names.insert(name.clone());
    name
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn record(namespace: &str, name: &str) -> RealServerRecord {
        let mut rs = RealServer::new(
            name,
            RealServerSpec {
                address: "192.0.2.1".into(),
                port: None,
                weight: 1,
                node_name: None,
                drain: false,
            },
        );
        rs.metadata.namespace = Some(namespace.into());
        rs.into()
    }

    #[test]
    fn a_record_fits_a_128_byte_allocation_with_its_arc_counts() {
        assert!(std::mem::size_of::<RealServerRecord>() + 16 <= 128);
    }

    #[test]
    fn records_of_a_namespace_share_its_name_and_a_namespace_nobody_holds_is_dropped() {
        let a = record("shared-ns", "a");
        let b = record("shared-ns", "b");
        assert!(Arc::ptr_eq(&a.namespace, &b.namespace));
        assert_eq!(&*a.name, "a");
        let other = record("other-ns", "c");
        assert!(!Arc::ptr_eq(&a.namespace, &other.namespace));
        // Once no record holds "gone-ns", enough new namespaces prune it: a record made
        // afterwards gets a fresh allocation, and the set does not grow without bound.
        let gone = Arc::downgrade(&record("gone-ns", "d").namespace);
        let churn: Vec<RealServerRecord> =
            (0..200).map(|i| record(&format!("ns-{i}"), "e")).collect();
        drop(churn);
        for i in 0..200 {
            record(&format!("later-{i}"), "f");
        }
        assert!(
            gone.upgrade().is_none(),
            "a namespace nobody holds is let go"
        );
        assert!(Arc::ptr_eq(
            &a.namespace,
            &record("shared-ns", "g").namespace
        ));
    }
}
