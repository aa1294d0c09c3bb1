//! The /metrics, /healthz and /readyz endpoint of the kube-lvs binaries: a small
//! HTTP/1.1 responder (one request per connection), enough for Prometheus and the
//! kubelet's probes without pulling a web framework into a node agent.

#![forbid(unsafe_code)]

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the endpoint shows.
pub trait Observed: Send + Sync + 'static {
    /// The OpenMetrics text of every metric.
    fn metrics(&self) -> String;
    /// `Ok` when ready to serve, else why not (the /readyz body).
    fn ready(&self) -> Result<(), String>;
}

/// Serves `observed` on `listener` until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, observed: Arc<dyn Observed>) {
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
                    observed.metrics(),
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
