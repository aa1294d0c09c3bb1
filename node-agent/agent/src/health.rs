//! Health checks, keepalived style, and the pure decisions around them.
//!
//! - [`Target`]: what is probed (address, port, probe); one per real server and
//!   health check, shared by every service that checks it the same way.
//! - [`State::observe`]: the rise/fall state machine. A real server nothing is known
//!   of starts healthy (an agent's first start must not quiesce everything); one known
//!   to be down (before a restart, or under the check's previous timing) starts down
//!   ([`crate::remembered`]). It goes down after `fall` consecutive failures and up
//!   after `rise` consecutive successes.
//! - [`quiesce`]: the health view applied to the plan: an unhealthy real server gets
//!   weight 0 (open connections continue, new ones go elsewhere), a planning
//!   decision made without I/O.
//! - [`probe`]: one TCP connect, HTTP GET or UDP datagram, with a timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use kubelvs_model::{HealthCheck, NodePlan, Probe};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// One probe of one real server.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub address: IpAddr,
    pub port: u16,
    pub check: CheckKey,
}

/// The parts of a health check that make two checks the same probe.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CheckKey {
    pub probe: String,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    pub rise: u32,
    pub fall: u32,
}

impl Target {
    pub fn socket(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.socket(), self.check.probe)
    }
}

fn probe_port(check: &HealthCheck, real_port: u16) -> u16 {
    match &check.probe {
        Probe::Tcp { port } | Probe::Http { port, .. } | Probe::Udp { port, .. } => {
            port.unwrap_or(real_port)
        }
    }
}

fn describe(probe: &Probe) -> String {
    match probe {
        Probe::Tcp { .. } => "tcp".into(),
        Probe::Udp {
            payload,
            require_reply,
            ..
        } => {
            // The payload itself, not its length: two checks sending different
            // datagrams are two probes.
            let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "udp [{hex}]{}",
                if *require_reply {
                    ", reply required"
                } else {
                    ""
                }
            )
        }
        Probe::Http {
            tls,
            path,
            expected_status,
            host,
            ..
        } => format!(
            "{} GET {path} -> {expected_status}{}",
            if *tls { "https" } else { "http" },
            host.as_ref()
                .map(|h| format!(" host {h}"))
                .unwrap_or_default()
        ),
    }
}

/// The probe of a real server at `address:real_port` under `check`.
pub fn target_of(check: &HealthCheck, address: IpAddr, real_port: u16) -> Target {
    Target {
        address,
        port: probe_port(check, real_port),
        check: CheckKey {
            probe: describe(&check.probe),
            interval_ms: check.interval_ms,
            timeout_ms: check.timeout_ms,
            rise: check.rise,
            fall: check.fall,
        },
    }
}

/// Every probe the plan asks for, with the health check that defines it.
pub fn targets(plan: &NodePlan) -> BTreeMap<Target, HealthCheck> {
    let mut out = BTreeMap::new();
    for s in &plan.services {
        if let Some(check) = &s.health_check {
            for r in &s.real_servers {
                out.insert(target_of(check, r.address, r.port), check.clone());
            }
        }
    }
    out
}

/// The health of one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub healthy: bool,
    /// Consecutive results against the current state.
    pub streak: u32,
    pub last_probe: Option<Instant>,
    /// Wall-clock time of the last change of `healthy` (status shows it as it is).
    pub last_transition: Option<SystemTime>,
    /// The result of the probe that set `healthy` (the first, or the one that made it
    /// change): later results that change nothing leave status alone.
    pub message: String,
}

impl Default for State {
    fn default() -> Self {
        Self {
            healthy: true,
            streak: 0,
            last_probe: None,
            last_transition: None,
            message: "not probed yet".into(),
        }
    }
}

/// A change of health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Down,
    Up,
}

impl State {
    /// Records one probe result; returns the transition it caused, if any.
    pub fn observe(
        &mut self,
        ok: bool,
        message: String,
        rise: u32,
        fall: u32,
        now: Instant,
    ) -> Option<Transition> {
        if self.last_probe.replace(now).is_none() {
            self.message = message.clone();
        }
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.healthy { fall } else { rise };
        if self.streak < needed.max(1) {
            return None;
        }
        self.healthy = ok;
        self.streak = 0;
        self.message = message;
        self.last_transition = Some(SystemTime::now());
        Some(if ok { Transition::Up } else { Transition::Down })
    }
}

/// Sets weight 0 on every real server whose probe is unhealthy. Services without a
/// health check are left as planned.
pub fn quiesce(plan: &mut NodePlan, unhealthy: &BTreeSet<Target>) {
    if unhealthy.is_empty() {
        return;
    }
    for s in &mut plan.services {
        if let Some(check) = &s.health_check {
            for r in &mut s.real_servers {
                if unhealthy.contains(&target_of(check, r.address, r.port)) {
                    r.weight = 0;
                }
            }
        }
    }
}

/// What an HTTP(S) check asks for.
struct HttpGet<'a> {
    tls: bool,
    path: &'a str,
    expected: u16,
    host: &'a Option<String>,
}

/// One probe: `Ok(message)` when healthy, `Err(message)` otherwise.
pub async fn probe(target: SocketAddr, check: &HealthCheck) -> Result<String, String> {
    let timeout = Duration::from_millis(u64::from(check.timeout_ms.max(1)));
    let http = match &check.probe {
        Probe::Udp {
            payload,
            require_reply,
            ..
        } => return udp_probe(target, payload, *require_reply, timeout).await,
        Probe::Tcp { .. } => None,
        Probe::Http {
            tls,
            path,
            expected_status,
            host,
            ..
        } => Some(HttpGet {
            tls: *tls,
            path,
            expected: *expected_status,
            host,
        }),
    };
    match tokio::time::timeout(timeout, stream_probe(target, http)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// A TCP connect, then the HTTP(S) GET when there is one (its request checked first:
/// an invalid one is not even connected for).
async fn stream_probe(target: SocketAddr, http: Option<HttpGet<'_>>) -> Result<String, String> {
    let http = match http {
        // The Host header names the port; the TLS server name does not.
        Some(h) => {
            let header = h.host.clone().unwrap_or_else(|| target.to_string());
            let request = get_request(&header, h.path)?;
            Some((h, request))
        }
        None => None,
    };
    let stream = tokio::net::TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    let Some((
        HttpGet {
            tls,
            path,
            expected,
            host,
        },
        request,
    )) = http
    else {
        return Ok(format!("connected to {target}"));
    };
    if tls {
        let sni = host.clone().unwrap_or_else(|| target.ip().to_string());
        let stream = tls_connect(stream, &sni)
            .await
            .map_err(|e| format!("TLS with {target}: {e}"))?;
        http_get(stream, target, request, path, expected).await
    } else {
        http_get(stream, target, request, path, expected).await
    }
}

type GetRequest = http::Request<http_body_util::Empty<bytes::Bytes>>;

/// The check's GET, if its path is a valid origin-form target and its host a valid
/// header value (the CRD says so too; an object stored before that rule is refused
/// here): nothing a tenant writes adds a header or a second request.
fn get_request(host: &str, path: &str) -> Result<GetRequest, String> {
    http::Request::get(path)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "kube-lvs-agent")
        .header(http::header::CONNECTION, "close")
        .body(http_body_util::Empty::new())
        .map_err(|e| format!("GET {}: not a valid request: {e}", printable(path)))
}

/// keepalived's UDP_CHECK: a datagram on a connected socket, then up to `timeout` for
/// what comes back. An ICMP port unreachable surfaces as ECONNREFUSED on the socket:
/// down. A reply: up. Silence: up, unless a reply is required (UDP services that
/// answer nothing cannot be told from dead ones otherwise).
async fn udp_probe(
    target: SocketAddr,
    payload: &[u8],
    require_reply: bool,
    timeout: Duration,
) -> Result<String, String> {
    let local: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(local)
        .await
        .map_err(|e| format!("udp socket: {e}"))?;
    socket
        .connect(target)
        .await
        .map_err(|e| format!("udp {target}: {e}"))?;
    socket
        .send(payload)
        .await
        .map_err(|e| format!("udp send to {target}: {e}"))?;
    let mut buf = [0u8; 2048];
    match tokio::time::timeout(timeout, socket.recv(&mut buf)).await {
        Ok(Ok(n)) => Ok(format!("{n} bytes back from {target}")),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(format!("udp {target}: port unreachable"))
        }
        Ok(Err(e)) => Err(format!("udp {target}: {e}")),
        Err(_) if require_reply => Err(format!(
            "udp {target}: no reply within {} ms",
            timeout.as_millis()
        )),
        Err(_) => Ok(format!(
            "udp {target}: no port unreachable within {} ms",
            timeout.as_millis()
        )),
    }
}

/// Accepts any certificate: like keepalived's SSL_GET, the check asks whether the real
/// server answers over TLS, not who it is (real servers often carry self-signed or
/// VIP-named certificates).
#[derive(Debug)]
struct AnyCertificate(Arc<tokio_rustls::rustls::crypto::CryptoProvider>);

impl tokio_rustls::rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<tokio_rustls::rustls::client::danger::ServerCertVerified, tokio_rustls::rustls::Error>
    {
        Ok(tokio_rustls::rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONNECTOR: std::sync::OnceLock<tokio_rustls::TlsConnector> = std::sync::OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
            let config =
                tokio_rustls::rustls::ClientConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default TLS versions")
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                    .with_no_client_auth();
            tokio_rustls::TlsConnector::from(Arc::new(config))
        })
        .clone()
}

async fn tls_connect(
    stream: tokio::net::TcpStream,
    host: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tls_connector().connect(name, stream).await
}

/// `request` over `stream` with hyper; only the status is read, and the message never
/// carries response content (it goes into status and Events).
async fn http_get<S>(
    stream: S,
    target: SocketAddr,
    request: GetRequest,
    path: &str,
    expected: u16,
) -> Result<String, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("{target}: {e}"))?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await;
    driver.abort();
    let status = response
        .map_err(|e| format!("{target}: not an HTTP response ({e})"))?
        .status()
        .as_u16();
    if status == expected {
        Ok(format!("GET {path}: {status}"))
    } else {
        Err(format!("GET {path}: {status}, expected {expected}"))
    }
}

/// `s` with anything but printable ASCII escaped, for a message.
fn printable(s: &str) -> String {
    s.chars().take(128).flat_map(char::escape_default).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observe_all(s: &mut State, results: &[bool], rise: u32, fall: u32) -> Vec<Transition> {
        let now = Instant::now();
        results
            .iter()
            .filter_map(|ok| s.observe(*ok, String::new(), rise, fall, now))
            .collect()
    }

    #[test]
    fn starts_healthy_and_falls_after_fall_failures() {
        let mut s = State::default();
        assert!(s.healthy);
        assert!(observe_all(&mut s, &[false, false], 2, 3).is_empty());
        assert_eq!(observe_all(&mut s, &[false], 2, 3), [Transition::Down]);
        assert!(!s.healthy);
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let mut s = State::default();
        assert!(observe_all(&mut s, &[false, false, true, false, false], 2, 3).is_empty());
        assert!(s.healthy);
    }

    #[test]
    fn rises_after_rise_successes() {
        let mut s = State::default();
        observe_all(&mut s, &[false; 3], 2, 3);
        assert!(observe_all(&mut s, &[true], 2, 3).is_empty());
        assert_eq!(observe_all(&mut s, &[true], 2, 3), [Transition::Up]);
        assert!(s.healthy);
    }

    #[test]
    fn fall_and_rise_of_zero_act_as_one() {
        let mut s = State::default();
        assert_eq!(observe_all(&mut s, &[false], 0, 0), [Transition::Down]);
        assert_eq!(observe_all(&mut s, &[true], 0, 0), [Transition::Up]);
    }

    #[test]
    fn udp_checks_with_different_payloads_are_different_probes() {
        let udp = |payload: &[u8], require_reply: bool| HealthCheck {
            probe: Probe::Udp {
                port: None,
                payload: payload.to_vec(),
                require_reply,
            },
            interval_ms: 1000,
            timeout_ms: 1000,
            rise: 1,
            fall: 1,
        };
        let at = |c: &HealthCheck| target_of(c, "192.0.2.11".parse().unwrap(), 53);
        assert_ne!(
            at(&udp(&[1, 2], true)),
            at(&udp(&[3, 4], true)),
            "same length"
        );
        assert_ne!(at(&udp(&[1, 2], true)), at(&udp(&[1, 2], false)));
        assert_eq!(at(&udp(&[1, 2], true)), at(&udp(&[1, 2], true)));
        assert_eq!(
            at(&udp(&[0xde, 0xad], true)).check.probe,
            "udp [dead], reply required"
        );
    }
}
