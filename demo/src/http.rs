//! The demo's real servers: a minimal HTTP/1.0 server per real server that answers
//! `GET /` with its name and `GET /healthz` with `ok`, and the client's GET.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use kubelvs_xdp_lab::netns::Netns;

/// An HTTP server on `0.0.0.0:port` inside a namespace; stopped (its socket closed) on drop.
#[derive(Debug)]
pub struct HttpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<kubelvs_xdp_lab::Result<()>>>,
}

impl HttpServer {
    pub fn start(netns: &Netns, port: u16, name: &str) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (flag, name) = (stop.clone(), name.to_owned());
        let handle = netns
            .spawn(move || {
                let listener =
                    match TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
                        .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    {
                        Ok(l) => {
                            let _ = ready_tx.send(Ok(()));
                            l
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => answer(conn, &name),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => {}
                    }
                }
            })
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("the server thread ended"))??;
        Ok(Self {
            stop,
            thread: Some(handle),
        })
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(mut conn: TcpStream, name: &str) {
    let _ = conn.set_nonblocking(false);
    // Long enough for a request whose packets wait out a director failover (TCP
    // retransmits them once the other director announced the VIP).
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = [0u8; 1024];
    let n = conn.read(&mut buf).unwrap_or(0);
    let request = String::from_utf8_lossy(&buf[..n]);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let body = if path == "/healthz" {
        "ok\n".to_owned()
    } else {
        format!("{name}\n")
    };
    let _ = conn.write_all(
        format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

/// `GET /` from `to`; the body's first line (the real server's name).
pub fn get(to: SocketAddr, timeout: Duration) -> Result<String, String> {
    let mut c = TcpStream::connect_timeout(&to, timeout).map_err(|e| e.to_string())?;
    c.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    c.write_all(b"GET / HTTP/1.0\r\nHost: demo\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    c.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP response")?;
    if !head.starts_with("HTTP/1.0 200") {
        return Err(head.lines().next().unwrap_or_default().to_owned());
    }
    Ok(body.trim().to_owned())
}
