//! The health probes against real local servers: TCP connect, HTTP and HTTPS GET with
//! the expected status (a self-signed certificate is accepted, as keepalived's
//! SSL_GET does), and the failures each must report.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::Arc;

use kubelvs_agent::health::probe;
use kubelvs_model::{HealthCheck, Probe};

fn check(probe: Probe) -> HealthCheck {
    HealthCheck {
        probe,
        interval_ms: 1000,
        timeout_ms: 1000,
        rise: 1,
        fall: 1,
    }
}

fn http(tls: bool, expected: u16) -> HealthCheck {
    check(Probe::Http {
        tls,
        path: "/healthz".into(),
        expected_status: expected,
        port: None,
        host: None,
    })
}

/// A plain HTTP server answering every request with `status`.
fn http_server(status: u16) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = write!(c, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
        }
    });
    addr
}

/// An HTTPS server with a fresh self-signed certificate, answering 200.
async fn https_server() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = std::env::temp_dir().join(format!("kubelvs-probe-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=real-server"])
        .args(["-keyout", "key.pem", "-out", "cert.pem"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let cert = CertificateDer::from_pem_file(dir.join("cert.pem")).unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = acceptor.accept(c).await {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn tcp_http_and_https_probes_tell_healthy_from_not() {
    let tcp = check(Probe::Tcp { port: None });
    let up = http_server(200);
    assert!(probe(up, &tcp).await.is_ok());
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    assert!(probe(closed, &tcp).await.unwrap_err().contains("connect"));

    assert_eq!(
        probe(up, &http(false, 200)).await.unwrap(),
        "GET /healthz: 200"
    );
    let sick = http_server(503);
    let e = probe(sick, &http(false, 200)).await.unwrap_err();
    assert!(e.contains("503, expected 200"), "{e}");

    let tls = https_server().await;
    assert_eq!(
        probe(tls, &http(true, 200)).await.unwrap(),
        "GET /healthz: 200"
    );
    // Plain HTTP where TLS is expected: not healthy.
    assert!(probe(up, &http(true, 200)).await.is_err());
}

fn udp(payload: &[u8], require_reply: bool) -> HealthCheck {
    let mut c = check(Probe::Udp {
        port: None,
        payload: payload.to_vec(),
        require_reply,
    });
    c.timeout_ms = 300;
    c
}

/// A UDP server that answers each datagram with `reply` (none when `None`), and
/// records what it received.
fn udp_server(reply: Option<&'static [u8]>) -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = tx.send(buf[..n].to_vec());
            if let Some(r) = reply {
                let _ = s.send_to(r, from);
            }
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn udp_probes_fail_on_port_unreachable_and_on_silence_when_a_reply_is_required() {
    // A DNS-like exchange: the payload arrives as sent, the reply makes it healthy.
    let (answering, got) = udp_server(Some(b"pong"));
    let ok = probe(answering, &udp(&[0xde, 0xad, 0xbe, 0xef], true))
        .await
        .unwrap();
    assert!(ok.contains("4 bytes back"), "{ok}");
    assert_eq!(got.recv().unwrap(), [0xde, 0xad, 0xbe, 0xef]);

    // Nothing listens: the kernel answers ICMP port unreachable.
    let closed = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    for require_reply in [false, true] {
        let e = probe(closed, &udp(b"", require_reply)).await.unwrap_err();
        assert!(e.contains("port unreachable"), "{e}");
    }

    // Listening but silent: healthy, unless a reply is required.
    let (silent, _got) = udp_server(None);
    let quiet = probe(silent, &udp(b"x", false)).await.unwrap();
    assert!(quiet.contains("no port unreachable"), "{quiet}");
    let e = probe(silent, &udp(b"x", true)).await.unwrap_err();
    assert!(e.contains("no reply within 300 ms"), "{e}");
}

/// A server recording the head of every request it gets, answering `answer`.
fn recording_server(answer: &'static str) -> (SocketAddr, std::sync::mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 2048];
            let n = c.read(&mut buf).unwrap_or(0);
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = c.write_all(answer.as_bytes());
        }
    });
    (addr, rx)
}

/// A check's host and path (from a tenant's VirtualService) never add headers or a
/// second request, and what the real server answers never reaches the message (which
/// goes into status and Events).
#[tokio::test]
async fn http_checks_send_only_what_the_check_says_and_report_no_response_content() {
    let (addr, heads) = recording_server(
        "HTTP/1.1 500 secret-token-in-the-reason\r\nContent-Length: 6\r\n\r\nsecret",
    );
    let mut injected = http(false, 200);
    if let Probe::Http { host, path, .. } = &mut injected.probe {
        *host = Some("web.shop\r\nX-Injected: 1".into());
        *path = "/healthz HTTP/1.1\r\nX-Also: 1\r\n\r\nGET /admin".into();
    }
    let e = probe(addr, &injected).await.unwrap_err();
    assert!(e.contains("not a valid request"), "{e}");
    assert!(
        heads.try_recv().is_err(),
        "nothing may be sent for an invalid check"
    );

    let e = probe(addr, &http(false, 200)).await.unwrap_err();
    assert_eq!(e, "GET /healthz: 500, expected 200");
    let head = heads.recv().unwrap();
    assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
    assert_eq!(head.matches("HTTP/1.1").count(), 1, "one request: {head}");
    assert!(!head.contains("X-Injected"), "{head}");
}
