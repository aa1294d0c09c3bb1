//! Prometheus metrics (`kubelvs_` prefix, see docs/metrics.md) and the /metrics,
//! /healthz and /readyz endpoints, served by a small HTTP/1.1 responder.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DataplaneLabels {
    pub dataplane: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub dataplane: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RealServerLabels {
    pub real_server: String,
    pub probe: String,
}

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Mutex<Registry>,
    pub apply_duration: Histogram,
    pub kernel_writes: Family<DataplaneLabels, Counter>,
    pub outcomes: Family<OutcomeLabels, Gauge>,
    pub real_server_healthy: Family<RealServerLabels, Gauge>,
    pub rejected_objects: Gauge,
    pub health_transitions: Counter,
    pub ready: AtomicBool,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("kubelvs");
        let apply_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let kernel_writes = Family::<DataplaneLabels, Counter>::default();
        let outcomes = Family::<OutcomeLabels, Gauge>::default();
        let real_server_healthy = Family::<RealServerLabels, Gauge>::default();
        let rejected_objects = Gauge::default();
        let health_transitions = Counter::default();
        registry.register(
            "apply_duration_seconds",
            "Time to apply the node's plan on every dataplane",
            apply_duration.clone(),
        );
        registry.register(
            "kernel_writes",
            "Kernel write operations (netlink messages, map entries, sysctls) by dataplane",
            kernel_writes.clone(),
        );
        registry.register(
            "services",
            "Virtual services and real-server VIPs by dataplane and outcome of the last apply",
            outcomes.clone(),
        );
        registry.register(
            "real_server_healthy",
            "1 when the real server passes its health check, 0 when it is quiesced",
            real_server_healthy.clone(),
        );
        registry.register(
            "rejected_objects",
            "Objects of the configuration rejected by validation",
            rejected_objects.clone(),
        );
        registry.register(
            "health_transitions",
            "Real servers going down or up",
            health_transitions.clone(),
        );
        Arc::new(Self {
            registry: Mutex::new(registry),
            apply_duration,
            kernel_writes,
            outcomes,
            real_server_healthy,
            rejected_objects,
            health_transitions,
            ready: AtomicBool::new(false),
        })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry.lock().unwrap());
        out
    }
}

/// Serves /metrics, /healthz and /readyz on `listener` until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, ctype, body) = match path {
                "/metrics" => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics.render(),
                ),
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_owned()),
                "/readyz" if metrics.ready.load(Ordering::Relaxed) => {
                    ("200 OK", "text/plain", "ok\n".to_owned())
                }
                "/readyz" => (
                    "503 Service Unavailable",
                    "text/plain",
                    "the first apply has not finished\n".to_owned(),
                ),
                _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
        });
    }
}
