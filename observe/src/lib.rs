//! The /metrics, /healthz and /readyz endpoint of the kube-lvs binaries: a small
//! HTTP/1.1 responder (one request per connection), enough for Prometheus and the
//! kubelet's probes without pulling a web framework into a node agent.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the endpoint shows: a binary's registered metrics and whether it is ready.
#[derive(Debug)]
pub struct Observed {
    registry: Registry,
    ready: AtomicBool,
    /// The /readyz body until [`Observed::set_ready`].
    not_ready: &'static str,
}

impl Observed {
    /// Not ready until told; `not_ready` says what is awaited.
    pub fn new(registry: Registry, not_ready: &'static str) -> Self {
        Self {
            registry,
            ready: AtomicBool::new(false),
            not_ready,
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// `Ok` when ready to serve, else why not (the /readyz body).
    fn ready(&self) -> Result<(), &'static str> {
        if self.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(self.not_ready)
        }
    }
}

/// Serves `observed` on `listener` until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, observed: Arc<Observed>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let observed = observed.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, ctype, body) = match path {
                "/metrics" => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    observed.render(),
                ),
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_owned()),
                "/readyz" => match observed.ready() {
                    Ok(()) => ("200 OK", "text/plain", "ok\n".to_owned()),
                    Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
                },
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
