//! The client side: connections to the VIP that learn which real server answered.
//!
//! Functions here create sockets, so call them inside the client's namespace
//! ([`crate::Netns::run`]); a [`Conn`] may then be used from any thread.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::{LabError, Result};

/// One TCP connection to a lab server, with the identity of the server that took it.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    real_server: String,
    pending: Vec<u8>,
    timeout: Duration,
}

impl Conn {
    /// Connects to `addr` and reads the server's greeting.
    pub fn open(addr: SocketAddr, timeout: Duration) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|source| LabError::Io {
            what: format!("connect to {addr}"),
            source,
        })?;
        Self::greet(stream, addr, timeout)
    }

    /// Connects from a fixed local address (e.g. a chosen source port, so the same
    /// flow can be opened again later).
    pub fn open_from(local: SocketAddr, addr: SocketAddr, timeout: Duration) -> Result<Self> {
        let stream = crate::sock::connect_from(local, addr, timeout)?;
        Self::greet(stream, addr, timeout)
    }

    fn greet(stream: TcpStream, addr: SocketAddr, timeout: Duration) -> Result<Self> {
        let mut conn = Self {
            stream,
            real_server: String::new(),
            pending: Vec::new(),
            timeout,
        };
        conn.real_server = conn.read_line().map_err(|e| LabError::Io {
            what: format!("greeting from {addr}: {e}"),
            source: ErrorKind::InvalidData.into(),
        })?;
        Ok(conn)
    }

    /// The identity of the real server that accepted this connection.
    pub fn real_server(&self) -> &str {
        &self.real_server
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.stream.local_addr().ok()
    }

    /// Sends `msg` (one line) and returns the echoed line, `<identity> <msg>`.
    pub fn echo(&mut self, msg: &str) -> Result<String> {
        self.stream
            .write_all(format!("{msg}\n").as_bytes())
            .map_err(|source| LabError::Io {
                what: format!("send to {}", self.real_server),
                source,
            })?;
        self.read_line()
    }

    /// The client's address and port as the real server sees them (`peer`).
    pub fn seen_as(&mut self) -> Result<String> {
        let line = self.echo("peer")?;
        let prefix = format!("{} peer ", self.real_server);
        line.strip_prefix(&prefix)
            .map(str::to_owned)
            .ok_or_else(|| LabError::Parse {
                command: "peer".into(),
                detail: format!("unexpected answer {line:?}"),
            })
    }

    /// Closes with a reset, leaving no TIME_WAIT, so the same flow can be reopened.
    pub fn reset(self) {
        let _ = crate::sock::set_linger_zero(&self.stream);
    }

    fn read_line(&mut self) -> Result<String> {
        let deadline = Instant::now() + self.timeout;
        let mut buf = [0u8; 1024];
        loop {
            if let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=pos).collect();
                return Ok(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(LabError::Timeout {
                    what: format!("a line from {}", self.real_server),
                    after_ms: self.timeout.as_millis(),
                });
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|source| LabError::Io {
                    what: "set read timeout".into(),
                    source,
                })?;
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(LabError::Io {
                        what: format!("read from {:?}", self.real_server),
                        source: ErrorKind::UnexpectedEof.into(),
                    })
                }
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(LabError::Io {
                        what: format!("read from {:?}", self.real_server),
                        source,
                    })
                }
            }
        }
    }
}

/// How many connections each real server took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spread {
    pub counts: BTreeMap<String, usize>,
}

impl Spread {
    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    pub fn count(&self, real_server: &str) -> usize {
        self.counts.get(real_server).copied().unwrap_or(0)
    }

    /// Share of connections `real_server` took, 0..=1.
    pub fn share(&self, real_server: &str) -> f64 {
        self.count(real_server) as f64 / self.total().max(1) as f64
    }
}

/// Opens `n` connections to `addr` one after the other, each closed after the greeting.
/// Every connection must succeed.
pub fn spread(addr: SocketAddr, n: usize, timeout: Duration) -> Result<Spread> {
    let mut spread = Spread::default();
    for _ in 0..n {
        let conn = Conn::open(addr, timeout)?;
        *spread.counts.entry(conn.real_server.clone()).or_default() += 1;
        conn.reset();
    }
    Ok(spread)
}

/// Connects to `addr` until it succeeds or `timeout` passes: the first connection of
/// a fresh lab waits for ARP and for the director's program to be in place.
pub fn open_with_retry(addr: SocketAddr, timeout: Duration) -> Result<Conn> {
    let start = Instant::now();
    loop {
        let attempt = Duration::from_millis(500).min(timeout);
        match Conn::open(addr, attempt) {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() >= timeout => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Opens one connection from each local address in `from` to `addr` and records which
/// real server took each flow. Connections are reset, so the same flows can be
/// opened again later (no TIME_WAIT).
pub fn flows(
    from: impl IntoIterator<Item = SocketAddr>,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<BTreeMap<SocketAddr, String>> {
    let mut owners = BTreeMap::new();
    for local in from {
        let conn = Conn::open_from(local, addr, timeout)?;
        owners.insert(local, conn.real_server.clone());
        conn.reset();
    }
    Ok(owners)
}
