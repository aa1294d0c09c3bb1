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

/// Reads a request up to the end of its head: a client may send it in several
/// segments, and the request line's path can arrive after the first read. A client
/// that never ends its head is answered from what it sent within 10 s.
async fn request_head(conn: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let ended =
        |h: &[u8]| h.windows(4).any(|w| w == b"\r\n\r\n") || h.windows(2).any(|w| w == b"\n\n");
    let read = async {
        while !ended(&head) && head.len() < 8192 {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), read).await;
    (!head.is_empty()).then_some(head)
}

/// Serves `observed` on `listener` until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, observed: Arc<Observed>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let observed = observed.clone();
        tokio::spawn(async move {
            let Some(head) = request_head(&mut conn).await else {
                return;
            };
            let request = String::from_utf8_lossy(&head);
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn started(ready: bool) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let observed = Arc::new(Observed::new(Registry::default(), "not yet"));
        observed.set_ready(ready);
        tokio::spawn(serve(listener, observed));
        addr
    }

    /// Sends `parts` with a pause between them and returns the whole answer.
    async fn ask(addr: std::net::SocketAddr, parts: &[&str]) -> String {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        for p in parts {
            c.write_all(p.as_bytes()).await.unwrap();
            c.flush().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn a_request_sent_in_segments_gets_its_own_answer() {
        let addr = started(true).await;
        let a = ask(
            addr,
            &["GET ", "/readyz", " HTTP/1.1\r\nHost: x\r\n", "\r\n"],
        )
        .await;
        assert!(
            a.starts_with("HTTP/1.1 200 OK\r\n") && a.ends_with("\r\n\r\nok\n"),
            "{a}"
        );
    }

    #[tokio::test]
    async fn a_head_ended_by_bare_newlines_is_answered() {
        let addr = started(true).await;
        let a = ask(addr, &["GET /healthz HTTP/1.0\n\n"]).await;
        assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
    }

    #[tokio::test]
    async fn readiness_metrics_and_unknown_paths() {
        let addr = started(false).await;
        let a = ask(addr, &["GET /readyz HTTP/1.1\r\n\r\n"]).await;
        assert!(
            a.starts_with("HTTP/1.1 503 ") && a.ends_with("not yet\n"),
            "{a}"
        );
        let a = ask(addr, &["GET /healthz HTTP/1.1\r\n\r\n"]).await;
        assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
        let a = ask(addr, &["GET /metrics HTTP/1.1\r\n\r\n"]).await;
        assert!(
            a.contains("application/openmetrics-text") && a.ends_with("# EOF\n"),
            "{a}"
        );
        let a = ask(addr, &["GET /other HTTP/1.1\r\n\r\n"]).await;
        assert!(a.starts_with("HTTP/1.1 404 "), "{a}");
    }
}
