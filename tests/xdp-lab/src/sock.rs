//! Socket options std does not offer: a chosen source port, and close by reset.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::{LabError, Result};

/// Connects to `remote` from `local`.
pub fn connect_from(local: SocketAddr, remote: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let io = |what: &str, source| LabError::Io {
        what: format!("{what} {local} -> {remote}"),
        source,
    };
    let socket = Socket::new(
        Domain::for_address(remote),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(|e| io("socket", e))?;
    socket
        .set_reuse_address(true)
        .map_err(|e| io("SO_REUSEADDR", e))?;
    socket.bind(&local.into()).map_err(|e| io("bind", e))?;
    socket
        .connect_timeout(&remote.into(), timeout)
        .map_err(|e| io("connect", e))?;
    Ok(socket.into())
}

/// SO_LINGER with a zero timeout: close sends a reset and leaves no TIME_WAIT.
pub fn set_linger_zero(stream: &TcpStream) -> std::io::Result<()> {
    SockRef::from(stream).set_linger(Some(Duration::ZERO))
}

/// A listening TCP socket on `addr`; an IPv6 one accepts IPv6 only, so that an IPv4
/// listener can share its port.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    Ok(socket.into())
}
