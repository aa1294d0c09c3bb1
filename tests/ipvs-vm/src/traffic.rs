//! Real TCP traffic for the guest scenarios: an identity server that real
//! servers run, and a client that connects through the VIP.
//!
//! On accept the server writes `<server-name> <peer-address>\n`, so the client
//! learns which real server it reached and which source address that server saw
//! (the client's own for NAT/DR/TUN, the director's for FullNAT). Then it echoes
//! lines until the client closes, so a held connection can prove it still flows.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::str::FromStr;
use std::thread;
use std::time::Duration;

use socket2::{Domain, Socket, Type};

/// What the client learned from one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub server: String,
    /// The source address the real server saw.
    pub peer: IpAddr,
}

impl FromStr for Greeting {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        let mut words = line.split_whitespace();
        let (Some(server), Some(peer), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("malformed greeting {line:?}"));
        };
        let peer = peer
            .parse()
            .map_err(|e| format!("greeting {line:?}: peer address: {e}"))?;
        Ok(Self {
            server: server.to_owned(),
            peer,
        })
    }
}

/// Binds every port on all addresses, reports `READY` on stdout, then serves forever.
pub fn serve(name: &str, ports: &[u16]) -> io::Result<()> {
    let mut listeners = Vec::new();
    for port in ports {
        listeners.push(TcpListener::bind(("0.0.0.0", *port))?);
        // A separate IPv6-only listener: a dual-stack one would report IPv4
        // clients as ::ffff:a.b.c.d and clash with the IPv4 bind.
        let v6 = Socket::new(Domain::IPV6, Type::STREAM, None)?;
        v6.set_only_v6(true)?;
        v6.set_reuse_address(true)?;
        v6.bind(&SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), *port).into())?;
        v6.listen(128)?;
        listeners.push(v6.into());
    }
    println!("READY");
    io::stdout().flush()?;
    let mut handles = Vec::new();
    for listener in listeners {
        let name = name.to_owned();
        handles.push(thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let name = name.clone();
                thread::spawn(move || {
                    let _ = handle(&name, stream);
                });
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn handle(name: &str, stream: TcpStream) -> io::Result<()> {
    let peer = stream.peer_addr()?.ip();
    let mut writer = stream.try_clone()?;
    writeln!(writer, "{name} {peer}")?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 {
        writer.write_all(line.as_bytes())?;
        line.clear();
    }
    Ok(())
}

/// Connects to `target` (from `source` when given) and reads the greeting.
pub fn connect(
    target: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> io::Result<(Greeting, BufReader<TcpStream>)> {
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
    if let Some(src) = source {
        socket.bind(&SocketAddr::new(src, 0).into())?;
    }
    socket.connect_timeout(&target.into(), timeout)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(timeout))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let greeting = line
        .parse()
        .map_err(|e: String| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((greeting, reader))
}

/// Sends one line on an open connection and returns the echo.
pub fn echo(conn: &mut BufReader<TcpStream>, text: &str) -> io::Result<String> {
    conn.get_mut().write_all(format!("{text}\n").as_bytes())?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_parses_and_rejects_garbage() {
        let g: Greeting = "rs2 198.51.100.10".parse().unwrap();
        assert_eq!(g.server, "rs2");
        assert_eq!(g.peer, "198.51.100.10".parse::<IpAddr>().unwrap());
        for bad in ["", "rs1", "rs1 notanip", "rs1 1.2.3.4 extra"] {
            assert!(bad.parse::<Greeting>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn server_and_client_talk_over_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let _ = handle("rs9", s);
        });
        let (g, mut conn) = connect(addr, None, Duration::from_secs(5)).unwrap();
        assert_eq!(g.server, "rs9");
        assert_eq!(g.peer, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(echo(&mut conn, "ping").unwrap(), "ping");
    }
}
