//! Pure: the cluster's LVS table from VirtualServices and RealServers, as `ipvsadm -Ln`
//! lays it out: one line per virtual service (VIP:port/protocol), one per real server,
//! with each director's view (programmed, healthy) from the agents' status entries,
//! and, as `ipvsadm -Ln --stats`, the traffic the agents' metrics count, summed over
//! directors.

use std::collections::BTreeMap;

use kubelvs_crds::selector::RealServerIndex;
use kubelvs_crds::{ForwardingMethod, Protocol, RealServer, SchedulerFlag, VirtualService};

use crate::agents::{Traffic, TrafficCounters};
use serde::Serialize;

/// One LVS virtual service: a port of a VirtualService.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceRow {
    /// `namespace/name` of the VirtualService.
    pub virtual_service: String,
    pub protocol: String,
    /// `VIP:port`, or `<pending>:port` while the VIP is not allocated.
    pub address: String,
    pub scheduler: String,
    pub flags: Vec<String>,
    pub forwarding: String,
    pub dataplane: String,
    /// Each director's report: node -> programmed, and its message when not.
    pub directors: BTreeMap<String, DirectorView>,
    /// Summed over the directors that report it; absent when none does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficCounters>,
    pub real_servers: Vec<RealServerRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectorView {
    pub programmed: bool,
    pub healthy_real_servers: u32,
    /// This director answers ARP/NDP for the VIP.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub announcing: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RealServerRow {
    /// `namespace/name` of the RealServer.
    pub real_server: String,
    /// `address:port` the director forwards to.
    pub address: String,
    pub weight: u32,
    pub draining: bool,
    /// Each director's health check: node -> healthy (absent: not checked there).
    pub health: BTreeMap<String, HealthView>,
    /// Summed over the directors that report it; absent when none does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficCounters>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthView {
    pub healthy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl HealthView {
    fn passing() -> Self {
        Self {
            healthy: true,
            message: None,
        }
    }
}

fn key(meta: &kube::api::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

/// ipvsadm's names for the forwarding methods (`-Ln`'s Forward column).
fn forward(f: ForwardingMethod) -> &'static str {
    match f {
        ForwardingMethod::Nat => "Masq",
        ForwardingMethod::Dr => "Route",
        ForwardingMethod::Tun => "Tunnel",
        ForwardingMethod::Fullnat => "FullNat",
    }
}

fn lower<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// `ip:port` as the agents name it (an IPv6 address in its canonical form, bracketed).
fn host_port(ip: &str, port: u16) -> String {
    if let Ok(addr) = ip.parse::<std::net::IpAddr>() {
        return std::net::SocketAddr::new(addr, port).to_string();
    }
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The table, ordered like ipvsadm's: by VIP, then port and protocol.
/// `traffic`: the agents' counters (`--stats`), or none.
pub fn table(
    virtual_services: &[VirtualService],
    real_servers: &[RealServer],
    traffic: Option<&Traffic>,
) -> Vec<VirtualServiceRow> {
    let index = RealServerIndex::new(real_servers);
    let mut rows = Vec::new();
    for vs in virtual_services {
        let namespace = vs.metadata.namespace.clone().unwrap_or_default();
        let status = vs.status.clone().unwrap_or_default();
        let vip = status.vip.clone().or_else(|| vs.spec.vip.clone());
        let selected = index
            .select(&namespace, &vs.spec.real_server_selector)
            .unwrap_or_default();
        let mut flags: Vec<String> = vs
            .spec
            .scheduler_flags
            .iter()
            .map(|f: &SchedulerFlag| lower(f))
            .collect();
        if let Some(p) = &vs.spec.persistence {
            flags.push(format!("persistent {}", p.timeout_seconds));
            if let Some(m) = &p.netmask {
                flags.push(format!("mask {m}"));
            }
            if let Some(l) = p.prefix_length {
                flags.push(format!("prefix {l}"));
            }
        }
        let directors: BTreeMap<String, DirectorView> = status
            .directors
            .iter()
            .map(|d| {
                (
                    d.node.clone(),
                    DirectorView {
                        programmed: d.programmed,
                        healthy_real_servers: d.healthy_real_servers,
                        announcing: d.announcing,
                        message: d.message.clone(),
                    },
                )
            })
            .collect();
        for p in &vs.spec.ports {
            let address = host_port(vip.as_deref().unwrap_or("<pending>"), p.port);
            let service = format!("{address}/{}", protocol(p.protocol));
            let service_traffic = traffic.and_then(|t| t.service(&service));
            let checked_by: Vec<String> = if vs.spec.health_check.is_some() {
                directors.keys().cloned().collect()
            } else {
                Vec::new()
            };
            let real_servers = selected
                .iter()
                .map(|rs| {
                    let port = p.target_port.or(rs.spec.port).unwrap_or(p.port);
                    // A director that checks health reports a real server only once it
                    // went down: no entry from it means passing.
                    let mut health: BTreeMap<String, HealthView> = checked_by
                        .iter()
                        .map(|node| (node.clone(), HealthView::passing()))
                        .collect();
                    for o in rs.status.iter().flat_map(|s| &s.observations) {
                        health.insert(
                            o.node.clone(),
                            HealthView {
                                healthy: o.healthy,
                                message: o.message.clone(),
                            },
                        );
                    }
                    let address = host_port(&rs.spec.address, port);
                    let traffic = traffic.and_then(|t| t.real_server(&service, &address));
                    RealServerRow {
                        real_server: key(&rs.metadata),
                        address,
                        weight: if rs.spec.drain { 0 } else { rs.spec.weight },
                        draining: rs.spec.drain,
                        health,
                        traffic,
                    }
                })
                .collect();
            rows.push(VirtualServiceRow {
                virtual_service: key(&vs.metadata),
                protocol: protocol(p.protocol).into(),
                address,
                scheduler: lower(&vs.spec.scheduler),
                flags: flags.clone(),
                forwarding: forward(vs.spec.forwarding).into(),
                dataplane: lower(&vs.spec.dataplane),
                directors: directors.clone(),
                traffic: service_traffic,
                real_servers,
            });
        }
    }
    rows.sort_by(|a, b| {
        (&a.address, &a.protocol, &a.virtual_service).cmp(&(
            &b.address,
            &b.protocol,
            &b.virtual_service,
        ))
    });
    rows
}

fn health_text(h: &BTreeMap<String, HealthView>) -> String {
    if h.is_empty() {
        return "-".into();
    }
    h.iter()
        .map(|(node, v)| format!("{node}:{}", if v.healthy { "up" } else { "down" }))
        .collect::<Vec<_>>()
        .join(",")
}

fn directors_text(d: &BTreeMap<String, DirectorView>) -> String {
    if d.is_empty() {
        return "no director reported".into();
    }
    d.iter()
        .map(|(node, v)| {
            format!(
                "{node}:{}{}",
                if v.programmed { "programmed" } else { "FAILED" },
                if v.announcing { "+announcing" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The text table, ipvsadm style.
pub fn render(rows: &[VirtualServiceRow]) -> String {
    let mut out = format!(
        "kube-lvs virtual server table ({} virtual services)\n\
         Prot LocalAddress:Port Scheduler Flags\n  \
         -> RemoteAddress:Port           Forward Weight Health (per director)\n",
        rows.len()
    );
    for r in rows {
        let flags = if r.flags.is_empty() {
            String::new()
        } else {
            format!(" {}", r.flags.join(" "))
        };
        out += &format!(
            "{:<4} {} {}{flags}   [{} {}, {}, {}]\n",
            r.protocol,
            r.address,
            r.scheduler,
            r.virtual_service,
            r.dataplane,
            r.forwarding,
            directors_text(&r.directors)
        );
        for rs in &r.real_servers {
            let weight = if rs.draining {
                "0 (draining)".to_owned()
            } else {
                rs.weight.to_string()
            };
            out += &format!(
                "  -> {:<28} {:<7} {:<6} {}\n",
                rs.address,
                r.forwarding,
                weight,
                health_text(&rs.health)
            );
        }
    }
    out
}

/// The traffic table, as `ipvsadm -Ln --stats` lays it out: connections, packets and
/// bytes (in and out together) per virtual service and real server, summed over
/// directors; `-` where no director reported.
pub fn render_stats(rows: &[VirtualServiceRow]) -> String {
    fn cols(t: &Option<TrafficCounters>) -> String {
        match t {
            Some(t) => format!("{:>8} {:>10} {:>12}", t.connections, t.packets, t.bytes),
            None => format!("{:>8} {:>10} {:>12}", "-", "-", "-"),
        }
    }
    let mut out = format!(
        "kube-lvs virtual server table ({} virtual services), traffic summed over directors\n\
         {:<4} {:<30} {:>8} {:>10} {:>12}\n  -> RemoteAddress:Port\n",
        rows.len(),
        "Prot",
        "LocalAddress:Port",
        "Conns",
        "Packets",
        "Bytes"
    );
    for r in rows {
        out += &format!("{:<4} {:<30} {}\n", r.protocol, r.address, cols(&r.traffic));
        for rs in &r.real_servers {
            out += &format!("  -> {:<30} {}\n", rs.address, cols(&rs.traffic));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects() -> (Vec<VirtualService>, Vec<RealServer>) {
        let docs = "apiVersion: kubelvs.io/v1alpha1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  ports: [{port: 80, targetPort: 8080}, {port: 53, protocol: UDP}]
  scheduler: wrr
  forwarding: nat
  persistence: {timeoutSeconds: 300}
  realServerSelector: {matchLabels: {app: web}}
status:
  vip: 203.0.113.20
  directors:
  - {node: n1, programmed: true, dataplane: ipvs, healthyRealServers: 1, announcing: true}
  - {node: n2, programmed: false, healthyRealServers: 0, message: 'EEXIST'}
";
        let vs: VirtualService = serde_yaml::from_str(docs).unwrap();
        let rs = |name: &str, addr: &str, weight: u32, drain: bool, healthy: bool| -> RealServer {
            serde_yaml::from_str(&format!(
                "apiVersion: kubelvs.io/v1alpha1
kind: RealServer
metadata: {{name: {name}, namespace: shop, labels: {{app: web}}}}
spec: {{address: '{addr}', weight: {weight}, drain: {drain}}}
status:
  observations: [{{node: n1, healthy: {healthy}}}]
"
            ))
            .unwrap()
        };
        (
            vec![vs],
            vec![
                rs("a", "10.0.0.1", 3, false, true),
                rs("b", "fd00::2", 1, true, false),
            ],
        )
    }

    #[test]
    fn one_row_per_port_with_each_real_server_and_each_directors_view() {
        let (vs, rs) = objects();
        let t = table(&vs, &rs, None);
        assert_eq!(t.len(), 2);
        let tcp = t.iter().find(|r| r.protocol == "TCP").unwrap();
        assert_eq!(tcp.address, "203.0.113.20:80");
        assert_eq!(tcp.forwarding, "Masq");
        assert_eq!(tcp.flags, ["persistent 300"]);
        assert_eq!(tcp.real_servers[0].address, "10.0.0.1:8080", "targetPort");
        assert_eq!(tcp.real_servers[1].address, "[fd00::2]:8080");
        assert_eq!(tcp.real_servers[1].weight, 0, "draining");
        let udp = t.iter().find(|r| r.protocol == "UDP").unwrap();
        assert_eq!(udp.real_servers[0].address, "10.0.0.1:53");
        let text = render(&t);
        assert!(text.contains("TCP  203.0.113.20:80 wrr persistent 300   [shop/web ipvs, Masq, n1:programmed+announcing,n2:FAILED]"), "{text}");
        assert!(
            text.contains("  -> 10.0.0.1:8080                Masq    3      n1:up"),
            "{text}"
        );
        assert!(
            text.contains("  -> [fd00::2]:8080               Masq    0 (draining) n1:down"),
            "{text}"
        );
    }

    #[test]
    fn a_checking_director_without_an_observation_reports_the_real_server_passing() {
        let (mut vs, rs) = objects();
        vs[0].spec.health_check = serde_json::from_value(serde_json::json!({"type": "tcp"})).ok();
        assert!(vs[0].spec.health_check.is_some());
        let t = table(&vs, &rs, None);
        let tcp = t.iter().find(|r| r.protocol == "TCP").unwrap();
        let text = |h: &BTreeMap<String, HealthView>| health_text(h);
        // rs1: n1 observed it down once and up again; n2 never saw it fail.
        assert_eq!(text(&tcp.real_servers[0].health), "n1:up,n2:up");
        assert_eq!(text(&tcp.real_servers[1].health), "n1:down,n2:up");
        let (vs, rs) = objects();
        let t = table(&vs, &rs, None);
        let tcp = t.iter().find(|r| r.protocol == "TCP").unwrap();
        assert_eq!(
            text(&tcp.real_servers[0].health),
            "n1:up",
            "no health check: only what was observed"
        );
    }

    #[test]
    fn a_pending_vip_and_no_director_say_so() {
        let (mut vs, rs) = objects();
        vs[0].status = None;
        let text = render(&table(&vs, &rs, None));
        assert!(text.contains("<pending>:80"), "{text}");
        assert!(text.contains("no director reported"), "{text}");
    }

    #[test]
    fn stats_sum_each_port_and_real_server_over_directors() {
        let (vs, rs) = objects();
        // Two directors' /metrics (IPVS: per service and real server).
        let agent = |c: u64| {
            let series = |what: &str, labels: &str, c: u64| {
                format!(
                    "kubelvs_{what}_connections_total{{dataplane=\"ipvs\",{labels}}} {c}\n\
                     kubelvs_{what}_packets_total{{dataplane=\"ipvs\",{labels}}} {}\n\
                     kubelvs_{what}_bytes_total{{dataplane=\"ipvs\",{labels}}} {}\n",
                    2 * c,
                    100 * c
                )
            };
            let service = "service=\"203.0.113.20:80/TCP\"";
            series("virtual_service", service, c)
                + &series(
                    "real_server",
                    &format!("{service},real_server=\"10.0.0.1:8080\""),
                    c,
                )
                + &series(
                    "real_server",
                    &format!("{service},real_server=\"[fd00::2]:8080\""),
                    0,
                )
        };
        let mut traffic = Traffic::default();
        traffic.add_scrape(&agent(30));
        traffic.add_scrape(&agent(12));
        let t = table(&vs, &rs, Some(&traffic));
        let tcp = t.iter().find(|r| r.protocol == "TCP").unwrap();
        let sum = tcp.traffic.unwrap();
        assert_eq!((sum.connections, sum.packets, sum.bytes), (42, 84, 4200));
        assert_eq!(tcp.real_servers[0].traffic.unwrap().connections, 42);
        assert_eq!(tcp.real_servers[1].traffic.unwrap().connections, 0);
        let udp = t.iter().find(|r| r.protocol == "UDP").unwrap();
        assert_eq!(udp.traffic, None, "no director counted 53/UDP");
        let text = render_stats(&t);
        assert!(
            text.contains("TCP  203.0.113.20:80                      42         84         4200"),
            "{text}"
        );
        assert!(
            text.contains("  -> 10.0.0.1:8080                        42         84         4200"),
            "{text}"
        );
        assert!(
            text.contains("UDP  203.0.113.20:53                       -          -            -"),
            "{text}"
        );
        let json = serde_json::to_value(&t).unwrap();
        assert!(json
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["traffic"]["connections"] == 42));
    }
}
