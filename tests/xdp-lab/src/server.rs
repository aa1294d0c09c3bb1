//! Real servers: TCP servers inside a namespace that say who they are.
//!
//! Protocol, line based: on accept the server sends `<identity>\n`; then every line
//! it receives is echoed back as `<identity> <line>\n`, except `peer`, answered with
//! `<identity> peer <client address:port as the server sees it>\n`. A client thus
//! learns which real server its connection reached, can keep talking to check it
//! still does, and can check whose address the real server sees.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::netns::Netns;
use crate::{LabError, Result};

/// How often blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(20);

/// A TCP server bound to `0.0.0.0:port` in a namespace, stopped on drop.
#[derive(Debug)]
pub struct TcpServer {
    identity: String,
    port: u16,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<JoinHandle<Result<Result<()>>>>,
}

impl TcpServer {
    /// Binds `0.0.0.0:port` and starts accepting; returns once the socket listens.
    pub fn start(netns: &Netns, port: u16, identity: &str) -> Result<Self> {
        Self::start_on(
            netns,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            identity,
        )
    }

    /// Binds `addr` (an IPv6 one only for IPv6, beside an IPv4 listener on the same
    /// port) and starts accepting; returns once the socket listens.
    pub fn start_on(netns: &Netns, addr: SocketAddr, identity: &str) -> Result<Self> {
        let port = addr.port();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let thread = {
            let (stop, accepted, identity) = (stop.clone(), accepted.clone(), identity.to_owned());
            netns.spawn(move || -> Result<()> {
                let bound = crate::sock::listen(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|source| LabError::Io {
                        what: format!("{identity}: listen on {addr}"),
                        source,
                    });
                let listener = match bound {
                    Ok(l) => {
                        let _ = ready_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(());
                    }
                };
                accept_loop(&listener, &identity, &stop, &accepted)
            })?
        };
        let ready = ready_rx.recv().map_err(|_| LabError::Io {
            what: format!("{identity}: server thread ended before listening"),
            source: ErrorKind::BrokenPipe.into(),
        });
        let server = Self {
            identity: identity.to_owned(),
            port,
            stop,
            accepted,
            thread: Some(thread),
        };
        ready??;
        Ok(server)
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            match t.join().map(|r| r.and_then(|inner| inner)) {
                Ok(Err(e)) => eprintln!("xdp-lab: server {}: {e}", self.identity),
                Err(_) => eprintln!("xdp-lab: server {} panicked", self.identity),
                Ok(Ok(())) => {}
            }
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    identity: &str,
    stop: &Arc<AtomicBool>,
    accepted: &Arc<AtomicUsize>,
) -> Result<()> {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _peer)) => {
                accepted.fetch_add(1, Ordering::Relaxed);
                let (identity, stop) = (identity.to_owned(), stop.clone());
                // The accepted socket lives in the namespace already; its thread need not.
                std::thread::spawn(move || serve(stream, &identity, &stop));
            }
            // Nonblocking accept: the stop flag is the condition polled here.
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL / 4),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(LabError::Io {
                    what: format!("{identity}: accept"),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Greets, then echoes lines until the peer closes, an error, or stop.
fn serve(mut stream: TcpStream, identity: &str, stop: &AtomicBool) {
    let peer = stream
        .peer_addr()
        .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string());
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(POLL)))
        .and_then(|()| stream.write_all(format!("{identity}\n").as_bytes()));
    if setup.is_err() {
        return;
    }
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=pos).collect();
                    let mut reply = format!("{identity} ").into_bytes();
                    if line == b"peer\n" {
                        reply.extend_from_slice(format!("peer {peer}\n").as_bytes());
                    } else {
                        reply.extend_from_slice(&line);
                    }
                    if stream.write_all(&reply).is_err() {
                        return;
                    }
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
