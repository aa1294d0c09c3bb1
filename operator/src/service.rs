//! Pure: a LoadBalancer Service of class `kubelvs.io/lvs` and its EndpointSlices,
//! translated into the VirtualServices and RealServers that serve it, and the
//! Service's `status.loadBalancer` from those VirtualServices' VIPs.
//!
//! One VirtualService per IP family of the Service (named after the Service; a
//! second family adds `-ipv4`/`-ipv6`), one RealServer per endpoint address: ready
//! endpoints serve, terminating ones that still serve drain, the others are left out.
//! A bad annotation produces problems and no objects, so the objects already there
//! stay as they are.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kubelvs_crds::{
    Dataplane, DirectorsSpec, ForwardingMethod, HealthCheckSpec, HealthCheckType, PersistenceSpec,
    Protocol, RealServer, RealServerSpec, Scheduler, ServicePort, TunnelSpec, TunnelType,
    VirtualService, VirtualServiceSpec,
};

use crate::allocate::{IP_FAMILY, SHARING_KEY};

/// The `spec.loadBalancerClass` this operator serves.
pub const LOAD_BALANCER_CLASS: &str = "kubelvs.io/lvs";
/// Label on owned objects: the Service they serve.
pub const SERVICE_NAME_LABEL: &str = "kubelvs.io/service-name";
/// Label on owned objects: the IP family they serve.
pub const IP_FAMILY_LABEL: &str = "kubelvs.io/ip-family";
/// The Service condition the operator owns.
pub const ACCEPTED_CONDITION: &str = "kubelvs.io/Accepted";

/// Annotations read from the Service, with what each sets.
pub mod annotation {
    pub const SCHEDULER: &str = "kubelvs.io/scheduler";
    pub const FORWARDING: &str = "kubelvs.io/forwarding";
    pub const DATAPLANE: &str = "kubelvs.io/dataplane";
    pub const ADDRESS_POOL: &str = "kubelvs.io/address-pool";
    pub const SOURCE_ADDRESS_POOL: &str = "kubelvs.io/source-address-pool";
    pub const LOAD_BALANCER_IPS: &str = "kubelvs.io/load-balancer-ips";
    pub const ALLOW_SHARED_IP: &str = super::SHARING_KEY;
    pub const DIRECTORS: &str = "kubelvs.io/directors";
    pub const WEIGHT: &str = "kubelvs.io/weight";
    pub const TUNNEL_TYPE: &str = "kubelvs.io/tunnel-type";
    pub const TUNNEL_PORT: &str = "kubelvs.io/tunnel-port";
    pub const HEALTH_CHECK: &str = "kubelvs.io/health-check";
    pub const HEALTH_CHECK_PATH: &str = "kubelvs.io/health-check-path";
    pub const HEALTH_CHECK_PORT: &str = "kubelvs.io/health-check-port";
    pub const HEALTH_CHECK_INTERVAL: &str = "kubelvs.io/health-check-interval-seconds";
    pub const HEALTH_CHECK_TIMEOUT: &str = "kubelvs.io/health-check-timeout-seconds";
    pub const HEALTH_CHECK_RISE: &str = "kubelvs.io/health-check-rise";
    pub const HEALTH_CHECK_FALL: &str = "kubelvs.io/health-check-fall";

    /// Every annotation the Service controller reads.
    pub const ALL: &[&str] = &[
        SCHEDULER,
        FORWARDING,
        DATAPLANE,
        ADDRESS_POOL,
        SOURCE_ADDRESS_POOL,
        LOAD_BALANCER_IPS,
        ALLOW_SHARED_IP,
        DIRECTORS,
        WEIGHT,
        TUNNEL_TYPE,
        TUNNEL_PORT,
        HEALTH_CHECK,
        HEALTH_CHECK_PATH,
        HEALTH_CHECK_PORT,
        HEALTH_CHECK_INTERVAL,
        HEALTH_CHECK_TIMEOUT,
        HEALTH_CHECK_RISE,
        HEALTH_CHECK_FALL,
    ];
}

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// What a Service is served by.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translation {
    pub virtual_services: Vec<VirtualService>,
    pub real_servers: Vec<RealServer>,
}

/// Whether the operator serves `svc`: `type: LoadBalancer` of class `kubelvs.io/lvs`.
/// Services of other classes, and of no class, are never touched.
pub fn is_ours(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some("LoadBalancer")
            && s.load_balancer_class.as_deref() == Some(LOAD_BALANCER_CLASS)
    })
}

fn annotations(svc: &Service) -> BTreeMap<String, String> {
    svc.metadata.annotations.clone().unwrap_or_default()
}

/// An enum annotation through the API's own serde names.
fn parse_enum<T: serde::de::DeserializeOwned>(
    ann: &BTreeMap<String, String>,
    key: &str,
    allowed: &str,
    problems: &mut Vec<String>,
) -> Option<T> {
    let v = ann.get(key)?;
    match serde_json::from_value(serde_json::Value::String(v.clone())) {
        Ok(t) => Some(t),
        Err(_) => {
            problems.push(format!(
                "metadata.annotations[{key}]: {v:?} is not one of {allowed}"
            ));
            None
        }
    }
}

fn parse_number<T: std::str::FromStr>(
    ann: &BTreeMap<String, String>,
    key: &str,
    problems: &mut Vec<String>,
) -> Option<T> {
    let v = ann.get(key)?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => {
            problems.push(format!(
                "metadata.annotations[{key}]: {v:?} is not a whole number"
            ));
            None
        }
    }
}

/// `key=value,key2=value2` as a label selector's `matchLabels`.
fn parse_selector(text: &str) -> Option<LabelSelector> {
    let mut labels = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=')?;
        labels.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Some(LabelSelector {
        match_labels: Some(labels),
        match_expressions: None,
    })
}

/// The Service's choices from its annotations, shared by every family.
struct Choices {
    scheduler: Scheduler,
    forwarding: ForwardingMethod,
    dataplane: Dataplane,
    address_pool: Option<String>,
    source_address_pool: Option<String>,
    requested: Vec<IpAddr>,
    sharing_key: Option<String>,
    directors: Option<DirectorsSpec>,
    weight: u32,
    tunnel: Option<TunnelSpec>,
    health_check: Option<HealthCheckSpec>,
}

fn choices(svc: &Service, problems: &mut Vec<String>) -> Choices {
    use annotation as a;
    let ann = annotations(svc);
    for key in ann.keys() {
        if key.starts_with("kubelvs.io/") && !a::ALL.contains(&key.as_str()) {
            problems.push(format!(
                "metadata.annotations[{key}]: not an annotation kube-lvs reads (see docs/operator.md)"
            ));
        }
    }
    let scheduler = parse_enum(
        &ann,
        a::SCHEDULER,
        "rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh, twos, maglev",
        problems,
    )
    .unwrap_or_default();
    let forwarding = parse_enum(&ann, a::FORWARDING, "nat, dr, tun, fullnat", problems)
        .unwrap_or(ForwardingMethod::Nat);
    let dataplane = parse_enum(&ann, a::DATAPLANE, "ipvs, xdp", problems).unwrap_or_default();
    let spec = svc.spec.clone().unwrap_or_default();
    let mut requested = Vec::new();
    let wanted = ann
        .get(a::LOAD_BALANCER_IPS)
        .map(|v| (a::LOAD_BALANCER_IPS.to_owned(), v.clone()))
        .or_else(|| {
            spec.load_balancer_ip
                .clone()
                .filter(|v| !v.is_empty())
                .map(|v| ("spec.loadBalancerIP".to_owned(), v))
        });
    if let Some((field, text)) = wanted {
        let field = if field.starts_with("kubelvs.io/") {
            format!("metadata.annotations[{field}]")
        } else {
            field
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<IpAddr>() {
                Ok(ip)
                    if requested
                        .iter()
                        .any(|r: &IpAddr| r.is_ipv4() == ip.is_ipv4()) =>
                {
                    problems.push(format!("{field}: two addresses of one family ({part})"))
                }
                Ok(ip) => requested.push(ip),
                Err(_) => problems.push(format!("{field}: {part:?} is not an IP address")),
            }
        }
    }
    let directors = ann
        .get(a::DIRECTORS)
        .and_then(|text| match parse_selector(text) {
            Some(sel) => Some(DirectorsSpec { node_selector: sel }),
            None => {
                problems.push(format!(
                    "metadata.annotations[{}]: {text:?} is not a node selector (key=value,key=value)",
                    a::DIRECTORS
                ));
                None
            }
        });
    let weight = parse_number(&ann, a::WEIGHT, problems)
        .unwrap_or(kubelvs_crds::real_server::DEFAULT_WEIGHT);
    let tunnel = (forwarding == ForwardingMethod::Tun).then(|| TunnelSpec {
        tunnel_type: parse_enum::<TunnelType>(&ann, a::TUNNEL_TYPE, "ipip, gue, gre", problems)
            .unwrap_or_default(),
        port: parse_number(&ann, a::TUNNEL_PORT, problems),
    });
    let health_check =
        parse_enum::<HealthCheckType>(&ann, a::HEALTH_CHECK, "tcp, http, https, udp", problems)
            .map(|check_type| {
                let defaults: HealthCheckSpec =
                    serde_json::from_value(serde_json::json!({"type": "tcp"})).expect("defaults");
                HealthCheckSpec {
                    check_type,
                    path: ann.get(a::HEALTH_CHECK_PATH).cloned().or_else(|| {
                        matches!(check_type, HealthCheckType::Http | HealthCheckType::Https)
                            .then(|| "/".to_owned())
                    }),
                    expected_status: None,
                    host: None,
                    payload: None,
                    require_reply: None,
                    port: parse_number(&ann, a::HEALTH_CHECK_PORT, problems),
                    interval_seconds: parse_number(&ann, a::HEALTH_CHECK_INTERVAL, problems)
                        .unwrap_or(defaults.interval_seconds),
                    timeout_seconds: parse_number(&ann, a::HEALTH_CHECK_TIMEOUT, problems)
                        .unwrap_or(defaults.timeout_seconds),
                    rise: parse_number(&ann, a::HEALTH_CHECK_RISE, problems)
                        .unwrap_or(defaults.rise),
                    fall: parse_number(&ann, a::HEALTH_CHECK_FALL, problems)
                        .unwrap_or(defaults.fall),
                }
            });
    for key in [
        a::HEALTH_CHECK_PATH,
        a::HEALTH_CHECK_PORT,
        a::HEALTH_CHECK_INTERVAL,
        a::HEALTH_CHECK_TIMEOUT,
        a::HEALTH_CHECK_RISE,
        a::HEALTH_CHECK_FALL,
    ] {
        if ann.contains_key(key) && !ann.contains_key(a::HEALTH_CHECK) {
            problems.push(format!(
                "metadata.annotations[{key}]: needs {} (tcp, http or https)",
                a::HEALTH_CHECK
            ));
        }
    }
    Choices {
        scheduler,
        forwarding,
        dataplane,
        address_pool: ann.get(a::ADDRESS_POOL).cloned(),
        source_address_pool: ann.get(a::SOURCE_ADDRESS_POOL).cloned(),
        requested,
        sharing_key: ann.get(a::ALLOW_SHARED_IP).cloned(),
        directors,
        weight,
        tunnel,
        health_check,
    }
}

/// The Service's IP families in order (`IPv4` when the API server has not said).
fn families(svc: &Service) -> Vec<String> {
    let f = svc
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.clone())
        .unwrap_or_default();
    if f.is_empty() {
        vec!["IPv4".into()]
    } else {
        f
    }
}

/// The name of the VirtualService serving `family` of `svc`.
pub fn virtual_service_name(svc: &Service, family: &str) -> String {
    let name = svc.metadata.name.clone().unwrap_or_default();
    if families(svc).first().map(String::as_str) == Some(family) {
        name
    } else {
        format!("{name}-{}", family.to_lowercase())
    }
}

fn owner(svc: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.metadata.name.clone().unwrap_or_default(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn protocol(p: Option<&str>) -> Protocol {
    match p {
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        _ => Protocol::Tcp,
    }
}

/// An endpoint address as a RealServer name part: `10.0.0.5`, `fd00--5`.
fn address_name(ip: IpAddr) -> String {
    ip.to_string().replace(':', "-")
}

/// The VirtualServices and RealServers serving `svc`, or the problems that stop it.
pub fn translate(svc: &Service, slices: &[EndpointSlice]) -> Result<Translation, Vec<String>> {
    let mut problems = Vec::new();
    let c = choices(svc, &mut problems);
    let spec = svc.spec.clone().unwrap_or_default();
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let service_name = svc.metadata.name.clone().unwrap_or_default();
    let ports = spec.ports.clone().unwrap_or_default();
    if ports.is_empty() {
        problems.push("spec.ports: a LoadBalancer Service needs at least one port".into());
    }
    let persistence = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let timeout = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .map_or(DEFAULT_AFFINITY_TIMEOUT, |t| t.max(1) as u32);
        PersistenceSpec {
            timeout_seconds: timeout,
            netmask: None,
            prefix_length: None,
        }
    });
    let fams = families(svc);
    for ip in &c.requested {
        let fam = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        if !fams.iter().any(|f| f == fam) {
            problems.push(format!(
                "metadata.annotations[{}]: {ip} is {fam}, which the Service does not use (spec.ipFamilies)",
                annotation::LOAD_BALANCER_IPS
            ));
        }
    }

    let mut out = Translation::default();
    for family in &fams {
        let vs_name = virtual_service_name(svc, family);
        let family_slices: Vec<&EndpointSlice> = slices
            .iter()
            .filter(|s| &s.address_type == family)
            .collect();
        // The port each Service port reaches on the endpoints, per port name.
        let mut target: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
        for s in &family_slices {
            for p in s.ports.iter().flatten() {
                if let Some(n) = p.port.and_then(|n| u16::try_from(n).ok()) {
                    target
                        .entry(p.name.clone().unwrap_or_default())
                        .or_default()
                        .insert(n);
                }
            }
        }
        let mut vs_ports = Vec::new();
        let mut per_endpoint_port = false;
        for (i, p) in ports.iter().enumerate() {
            let Ok(port) = u16::try_from(p.port) else {
                problems.push(format!("spec.ports[{i}].port: {} is not a port", p.port));
                continue;
            };
            let name = p.name.clone().filter(|n| !n.is_empty());
            let resolved = target.get(&name.clone().unwrap_or_default());
            let target_port = match resolved.map(|s| s.iter().copied().collect::<Vec<_>>()) {
                Some(one) if one.len() == 1 => Some(one[0]),
                Some(many) if many.len() > 1 && ports.len() == 1 => {
                    per_endpoint_port = true;
                    None
                }
                Some(many) if many.len() > 1 => {
                    problems.push(format!(
                        "spec.ports[{i}].targetPort: endpoints reach it on different ports ({many:?}), which one virtual port of a multi-port Service cannot express"
                    ));
                    None
                }
                _ => match &p.target_port {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                        u16::try_from(*n).ok()
                    }
                    _ => None,
                },
            };
            let maps = target_port.is_some_and(|t| t != port) || per_endpoint_port;
            if maps && matches!(c.forwarding, ForwardingMethod::Dr | ForwardingMethod::Tun) {
                problems.push(format!(
                    "spec.ports[{i}].targetPort: forwarding {} cannot map port {port} to another port (the real servers must listen on {port}); use nat or fullnat in {}",
                    if c.forwarding == ForwardingMethod::Dr { "dr" } else { "tun" },
                    annotation::FORWARDING
                ));
            }
            vs_ports.push(ServicePort {
                name,
                port,
                protocol: protocol(p.protocol.as_deref()),
                target_port: target_port.filter(|t| *t != port),
            });
        }

        let labels = BTreeMap::from([
            (SERVICE_NAME_LABEL.to_owned(), service_name.clone()),
            (IP_FAMILY_LABEL.to_owned(), family.clone()),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                "kube-lvs-operator".to_owned(),
            ),
        ]);
        let mut vs_annotations = BTreeMap::from([(IP_FAMILY.to_owned(), family.clone())]);
        if let Some(k) = &c.sharing_key {
            vs_annotations.insert(SHARING_KEY.to_owned(), k.clone());
        }
        let vip = c
            .requested
            .iter()
            .find(|ip| (if ip.is_ipv4() { "IPv4" } else { "IPv6" }) == family)
            .map(|ip| ip.to_string());
        let vs = VirtualService {
            metadata: ObjectMeta {
                name: Some(vs_name.clone()),
                namespace: Some(namespace.clone()),
                labels: Some(labels.clone()),
                annotations: Some(vs_annotations),
                owner_references: Some(vec![owner(svc)]),
                ..Default::default()
            },
            spec: VirtualServiceSpec {
                vip,
                address_pool: c.address_pool.clone(),
                ports: vs_ports,
                scheduler: c.scheduler,
                scheduler_flags: Vec::new(),
                forwarding: c.forwarding,
                tunnel: c.tunnel.clone(),
                source_address_pool: c.source_address_pool.clone(),
                persistence: persistence.clone(),
                real_server_selector: LabelSelector {
                    match_labels: Some(BTreeMap::from([
                        (SERVICE_NAME_LABEL.to_owned(), service_name.clone()),
                        (IP_FAMILY_LABEL.to_owned(), family.clone()),
                    ])),
                    match_expressions: None,
                },
                health_check: c.health_check.clone(),
                directors: c.directors.clone(),
                dataplane: c.dataplane,
            },
            status: None,
        };
        if let Err(e) = kubelvs_crds::validate(&vs) {
            for f in &e.errors {
                problems.push(format!("VirtualService {vs_name}: {f}"));
            }
        }
        out.virtual_services.push(vs);

        // Endpoint addresses: serving beats draining when one shows up twice.
        let mut endpoints: BTreeMap<IpAddr, (bool, Option<String>, Option<u16>)> = BTreeMap::new();
        for s in &family_slices {
            let slice_port = s
                .ports
                .iter()
                .flatten()
                .next()
                .and_then(|p| p.port)
                .and_then(|n| u16::try_from(n).ok());
            for e in &s.endpoints {
                let cond = e.conditions.clone().unwrap_or_default();
                let ready = cond.ready.unwrap_or(true);
                let serving = cond.serving.unwrap_or(ready);
                let terminating = cond.terminating.unwrap_or(false);
                let drain = match (ready && !terminating, terminating && serving) {
                    (true, _) => false,
                    (false, true) => true,
                    (false, false) => continue,
                };
                for a in &e.addresses {
                    let Ok(ip) = a.parse::<IpAddr>() else {
                        continue;
                    };
                    let entry =
                        endpoints
                            .entry(ip)
                            .or_insert((drain, e.node_name.clone(), slice_port));
                    if !drain {
                        *entry = (false, e.node_name.clone(), slice_port);
                    }
                }
            }
        }
        for (ip, (drain, node, port)) in endpoints {
            out.real_servers.push(RealServer {
                metadata: ObjectMeta {
                    name: Some(format!("{vs_name}-{}", address_name(ip))),
                    namespace: Some(namespace.clone()),
                    labels: Some(labels.clone()),
                    owner_references: Some(vec![owner(svc)]),
                    ..Default::default()
                },
                spec: RealServerSpec {
                    address: ip.to_string(),
                    port: if per_endpoint_port { port } else { None },
                    weight: c.weight,
                    node_name: node,
                    drain,
                },
                status: None,
            });
        }
    }
    if let Some(rs) = out.real_servers.first() {
        if let Err(e) = kubelvs_crds::validate(rs) {
            for f in &e.errors {
                problems.push(format!(
                    "RealServer {}: {f}",
                    rs.metadata.name.as_deref().unwrap_or_default()
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        problems.sort();
        problems.dedup();
        Err(problems)
    }
}

/// `status.loadBalancer.ingress` from the VIPs of the Service's VirtualServices, in
/// the Service's family order, each with `ipMode: Proxy`: kube-proxy must leave the
/// address to the load balancer. With `VIP` it DNATs the address in PREROUTING on
/// every node, directors included, before IPVS sees the packet (and short-cuts
/// in-cluster clients to the endpoints): kube-lvs's scheduler, weights, health checks
/// and drain would be bypassed while its status says Programmed.
pub fn ingress(svc: &Service, virtual_services: &[VirtualService]) -> Vec<LoadBalancerIngress> {
    let mut out: Vec<LoadBalancerIngress> = Vec::new();
    for family in families(svc) {
        let name = virtual_service_name(svc, &family);
        let Some(vs) = virtual_services
            .iter()
            .find(|v| v.metadata.name.as_deref() == Some(name.as_str()))
        else {
            continue;
        };
        let Some(vip) = vs.status.as_ref().and_then(|s| s.vip.clone()) else {
            continue;
        };
        if out.iter().any(|i| i.ip.as_deref() == Some(vip.as_str())) {
            continue;
        }
        out.push(LoadBalancerIngress {
            ip: Some(vip),
            ip_mode: Some("Proxy".into()),
            ..Default::default()
        });
    }
    out
}
