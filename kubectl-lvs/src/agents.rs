//! Traffic from the agents' own metrics, not from object status: counters change with
//! every packet, and status is for state. In a cluster the agents' pods are read
//! through the API server's proxy (`pods/proxy`), so RBAC decides who may see every
//! tenant's traffic; `--agent URL` reads an agent's endpoint directly (agents run
//! outside pods, or standalone).

use std::collections::BTreeMap;

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde::Serialize;

/// The chart's labels on the agent DaemonSet's pods.
pub const AGENT_SELECTOR: &str =
    "app.kubernetes.io/name=kube-lvs,app.kubernetes.io/component=agent";

/// The agent's default metrics port (`--metrics-address`), for a pod that names none.
const DEFAULT_PORT: i32 = 9641;

/// What `ipvsadm -Ln --stats` counts, in and out together.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    /// Connections scheduled (IPVS) or new flows (XDP).
    pub connections: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// Counters summed over every agent read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Traffic {
    /// Per virtual service (`VIP:port/PROTO`).
    pub services: BTreeMap<String, TrafficCounters>,
    /// Per (virtual service, real server `address:port`). The service is empty where
    /// a dataplane counts a real server across services (XDP).
    pub real_servers: BTreeMap<(String, String), TrafficCounters>,
}

impl Traffic {
    /// A virtual service's counters, if any agent reported it.
    pub fn service(&self, service: &str) -> Option<TrafficCounters> {
        self.services.get(service).copied()
    }

    /// A real server's counters for `service`: per service where the dataplane counts
    /// so, else across services.
    pub fn real_server(&self, service: &str, real_server: &str) -> Option<TrafficCounters> {
        let per = |s: &str| {
            self.real_servers
                .get(&(s.to_owned(), real_server.to_owned()))
                .copied()
        };
        match (per(service), per("")) {
            (None, None) => None,
            (a, b) => {
                let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
                Some(TrafficCounters {
                    connections: a.connections + b.connections,
                    packets: a.packets + b.packets,
                    bytes: a.bytes + b.bytes,
                })
            }
        }
    }

    /// Adds one agent's `/metrics` answer (Prometheus or OpenMetrics text).
    pub fn add_scrape(&mut self, text: &str) {
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, labels, value)) = sample(line) else {
                continue;
            };
            // `kubelvs_<what>_<field>_total`
            let Some((what, field)) = name
                .strip_prefix("kubelvs_")
                .and_then(|n| n.strip_suffix("_total"))
                .and_then(|n| n.rsplit_once('_'))
            else {
                continue;
            };
            let label = |k: &str| {
                labels
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let counters = match what {
                "virtual_service" => self.services.entry(label("service")).or_default(),
                "real_server" => self
                    .real_servers
                    .entry((label("service"), label("real_server")))
                    .or_default(),
                _ => continue,
            };
            // Counters are integers: read them as such (an f64 loses them past 2^53).
            let value = value
                .parse::<u64>()
                .unwrap_or_else(|_| value.parse::<f64>().map_or(0, |v| v as u64));
            match field {
                "connections" => counters.connections += value,
                "packets" => counters.packets += value,
                "bytes" => counters.bytes += value,
                _ => {}
            }
        }
    }
}

/// A sample's labels, as (name, value).
type Labels = Vec<(String, String)>;

/// One sample line: `name{label="value",...} value [timestamp]`.
fn sample(line: &str) -> Option<(&str, Labels, &str)> {
    let line = line.trim();
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i + 1);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    // A quoted value, with \\, \" and \n escaped.
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                c => value.push(c),
                            },
                            c => value.push(c),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                c => key.push(c),
            }
        }
        rest = &inner[end?..];
    }
    let value = rest.split_whitespace().next()?;
    value.parse::<f64>().ok()?;
    Some((name, labels, value))
}

/// Where the chart is installed unless told otherwise (`--agents-namespace`).
pub const DEFAULT_AGENTS_NAMESPACE: &str = "kube-lvs";

/// Reads the metrics of every running agent pod in `namespace` (the release's: pods
/// anywhere else that carry the same labels are a tenant's, not agents) through the
/// API server's proxy. What cannot be read is named in the returned warnings; the
/// rest still counts, and the table is shown either way.
pub async fn from_pods(client: &kube::Client, namespace: &str) -> (Traffic, usize, Vec<String>) {
    let mut traffic = Traffic::default();
    let mut read = 0;
    let mut warnings = Vec::new();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = match pods
        .list(&ListParams::default().labels(AGENT_SELECTOR))
        .await
    {
        Ok(l) => l,
        Err(e) => {
            warnings.push(format!(
                "the agents' pods in namespace {namespace} ({AGENT_SELECTOR}) not listed \
                 (needs list on pods there; --agents-namespace names the release's \
                 namespace): {e}"
            ));
            return (traffic, read, warnings);
        }
    };
    for pod in &list.items {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let running = pod
            .status
            .as_ref()
            .is_some_and(|s| s.phase.as_deref() == Some("Running") && s.pod_ip.is_some());
        if !running {
            warnings.push(format!("agent pod {ns}/{name}: not running, not counted"));
            continue;
        }
        let port = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some("metrics"))
            .map_or(DEFAULT_PORT, |p| p.container_port);
        let request = http::Request::get(format!(
            "/api/v1/namespaces/{ns}/pods/{name}:{port}/proxy/metrics"
        ))
        .body(Vec::new());
        let answer = match request {
            Ok(r) => client.request_text(r).await,
            Err(e) => Err(kube::Error::HttpError(e)),
        };
        match answer {
            Ok(text) => {
                traffic.add_scrape(&text);
                read += 1;
            }
            Err(e) => warnings.push(format!(
                "agent pod {ns}/{name}: metrics not read through the API server's proxy \
                 (needs get on pods/proxy): {e}"
            )),
        }
    }
    (traffic, read, warnings)
}

/// Reads an agent's metrics endpoint directly: `http://HOST:PORT[/metrics]`.
pub async fn from_url(url: &str) -> anyhow::Result<String> {
    tokio::time::timeout(std::time::Duration::from_secs(10), read_url(url))
        .await
        .with_context(|| format!("--agent {url}: no answer within 10 s"))?
}

async fn read_url(url: &str) -> anyhow::Result<String> {
    use http_body_util::BodyExt;
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("--agent {url}: not a URL"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "--agent {url}: only http:// (the agent's metrics endpoint)"
    );
    let authority = uri
        .authority()
        .with_context(|| format!("--agent {url}: no host"))?
        .clone();
    let host_port = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(DEFAULT_PORT as u16)
    );
    let path = match uri.path() {
        "" | "/" => "/metrics",
        p => p,
    };
    let stream = tokio::net::TcpStream::connect(&host_port)
        .await
        .with_context(|| format!("--agent {url}: connecting"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .with_context(|| format!("--agent {url}"))?;
    let driver = tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, authority.as_str())
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("--agent {url}"))?;
    anyhow::ensure!(
        response.status().is_success(),
        "--agent {url}: {}",
        response.status()
    );
    let body = response
        .into_body()
        .collect()
        .await
        .with_context(|| format!("--agent {url}"))?
        .to_bytes();
    driver.abort();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_escaped_labels_and_timestamps_parse() {
        let (name, labels, v) =
            sample(r#"kubelvs_x_total{a="1",b="q\"u\\o,te}"} 42 1700000000"#).unwrap();
        assert_eq!(name, "kubelvs_x_total");
        assert_eq!(
            labels,
            vec![("a".into(), "1".into()), ("b".into(), "q\"u\\o,te}".into())]
        );
        assert_eq!(v, "42");
        assert_eq!(sample("up 1").unwrap().2, "1");
        assert!(sample(r#"broken{a="1" 2"#).is_none());
        assert!(sample("").is_none());
    }

    #[test]
    fn counters_sum_over_agents_and_a_real_server_falls_back_to_its_cross_service_count() {
        let mut t = Traffic::default();
        let agent = |c: u64| {
            format!(
                "# TYPE kubelvs_virtual_service_connections counter\n\
                 kubelvs_virtual_service_connections_total{{dataplane=\"xdp\",service=\"203.0.113.1:80/TCP\"}} {c}\n\
                 kubelvs_virtual_service_bytes_total{{dataplane=\"xdp\",service=\"203.0.113.1:80/TCP\"}} {}\n\
                 kubelvs_real_server_connections_total{{dataplane=\"xdp\",service=\"\",real_server=\"192.0.2.11:80\"}} {c}\n\
                 kubelvs_real_server_connections_total{{dataplane=\"ipvs\",service=\"203.0.113.1:80/TCP\",real_server=\"192.0.2.11:80\"}} 1\n\
                 kubelvs_apply_duration_seconds_count 3\n# EOF\n",
                100 * c
            )
        };
        t.add_scrape(&agent(30));
        t.add_scrape(&agent(12));
        let s = t.service("203.0.113.1:80/TCP").unwrap();
        assert_eq!((s.connections, s.bytes, s.packets), (42, 4200, 0));
        assert_eq!(
            t.real_server("203.0.113.1:80/TCP", "192.0.2.11:80")
                .unwrap()
                .connections,
            44
        );
        assert_eq!(
            t.real_server("203.0.113.9:80/TCP", "192.0.2.11:80")
                .unwrap()
                .connections,
            42
        );
        assert_eq!(t.real_server("203.0.113.1:80/TCP", "192.0.2.12:80"), None);
        assert_eq!(t.service("203.0.113.1:53/UDP"), None);
    }
}
