//! The kernel's neighbour tables over rtnetlink (both families, one socket, no
//! process): the MACs DR needs, read with an `RTM_GETNEIGH` dump and followed with
//! the `RTNLGRP_NEIGH` multicast group, so a real server whose MAC changes is
//! re-programmed as soon as the kernel learns it.
//!
//! The codec ([`parse_messages`]) is pure and never panics on input; the sockets are
//! thin.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{MacAddr, Neighbours};

const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_DUMP: u16 = 0x300;
/// `RTMGRP_NEIGH`: the multicast group bit of `RTNLGRP_NEIGH` (3).
const RTMGRP_NEIGH: u32 = 1 << (3 - 1);
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// States whose MAC may be used: REACHABLE, STALE, DELAY, PROBE, NOARP, PERMANENT
/// (not INCOMPLETE or FAILED, whose link-layer address is stale or absent).
const NUD_USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;
const NLMSG_HDRLEN: usize = 16;
const NDMSG_LEN: usize = 12;

/// One neighbour message: an entry as it now is, or its removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighMessage {
    pub deleted: bool,
    pub ifindex: u32,
    pub addr: IpAddr,
    /// Set when the entry is in a usable state and carries a non-zero MAC.
    pub mac: Option<MacAddr>,
}

/// What one read of the socket held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub neighbours: Vec<NeighMessage>,
    /// NLMSG_DONE was seen (the end of a dump).
    pub done: bool,
    /// An NLMSG_ERROR with a non-zero errno (negated, as the kernel sends it).
    pub error: Option<i32>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses a buffer of netlink messages (a dump's reply or multicast notifications).
/// Other message types and malformed parts are skipped.
pub fn parse_messages(buf: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    let mut at = 0;
    while let (Some(len), Some(kind)) = (u32_at(buf, at), u16_at(buf, at + 4)) {
        let len = len as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            break;
        }
        let body = &buf[at + NLMSG_HDRLEN..at + len];
        match kind {
            NLMSG_DONE => out.done = true,
            NLMSG_ERROR => {
                let errno = u32_at(body, 0).map(|e| e as i32).unwrap_or(0);
                if errno != 0 {
                    out.error = Some(errno);
                }
            }
            RTM_NEWNEIGH | RTM_DELNEIGH => {
                if let Some(m) = parse_neigh(body, kind == RTM_DELNEIGH) {
                    out.neighbours.push(m);
                }
            }
            _ => {}
        }
        at += len.next_multiple_of(4);
    }
    out
}

/// One `struct ndmsg` and its attributes.
fn parse_neigh(body: &[u8], deleted: bool) -> Option<NeighMessage> {
    let family = *body.first()?;
    let ifindex = u32_at(body, 4)?;
    let state = u16_at(body, 8)?;
    let mut addr = None;
    let mut lladdr = None;
    let mut at = NDMSG_LEN;
    while let (Some(len), Some(kind)) = (u16_at(body, at), u16_at(body, at + 2)) {
        let len = len as usize;
        if len < 4 || at + len > body.len() {
            break;
        }
        let value = &body[at + 4..at + len];
        match (kind, family as i32, value.len()) {
            (NDA_DST, libc::AF_INET, 4) => {
                addr = Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(value).ok()?)))
            }
            (NDA_DST, libc::AF_INET6, 16) => {
                addr = Some(IpAddr::V6(Ipv6Addr::from(
                    <[u8; 16]>::try_from(value).ok()?,
                )))
            }
            (NDA_LLADDR, _, 6) => lladdr = <[u8; 6]>::try_from(value).ok(),
            _ => {}
        }
        at += len.next_multiple_of(4);
    }
    let usable = !deleted && state & NUD_USABLE != 0;
    // Multicast entries (IPv6 keeps NOARP ones) are never a real server.
    let addr = addr.filter(|a: &IpAddr| !a.is_multicast());
    Some(NeighMessage {
        deleted,
        ifindex,
        addr: addr?,
        mac: lladdr.filter(|m| usable && *m != [0; 6]),
    })
}

/// Applies `messages` about `ifindex` (all interfaces if `None`) to `table`; true if
/// a usable MAC appeared, changed or went.
pub fn update(table: &mut Neighbours, messages: &[NeighMessage], ifindex: Option<u32>) -> bool {
    let mut changed = false;
    for m in messages
        .iter()
        .filter(|m| ifindex.is_none_or(|i| i == m.ifindex))
    {
        let before = match m.mac {
            Some(mac) => table.insert(m.addr, mac),
            None => table.remove(&m.addr),
        };
        changed |= before != m.mac;
    }
    changed
}

fn route_socket(groups: u32) -> io::Result<OwnedFd> {
    #[allow(unsafe_code)]
    // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(unsafe_code)]
    // SAFETY: fd is fresh and owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    #[allow(unsafe_code)]
    // SAFETY: sockaddr_nl is plain integers; all-zero is valid.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_groups = groups;
    #[allow(unsafe_code)]
    // SAFETY: bind(2) with a sockaddr_nl that outlives the call, and its size.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    #[allow(unsafe_code)]
    // SAFETY: recv(2) into a buffer we own, of its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Every neighbour message of a dump of both families.
fn dump(fd: &OwnedFd) -> io::Result<Vec<NeighMessage>> {
    let mut req = [0u8; NLMSG_HDRLEN + NDMSG_LEN];
    req[0..4].copy_from_slice(&((NLMSG_HDRLEN + NDMSG_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETNEIGH.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // ndm_family AF_UNSPEC (0): both IPv4 and IPv6.
    #[allow(unsafe_code)]
    // SAFETY: send(2) of a buffer we own, of its length.
    let n = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(fd, &mut buf)?;
        let parsed = parse_messages(&buf[..n]);
        if let Some(errno) = parsed.error {
            return Err(io::Error::from_raw_os_error(-errno));
        }
        out.extend(parsed.neighbours);
        if parsed.done || n == 0 {
            return Ok(out);
        }
    }
}

/// Usable neighbours (both families) of the calling thread's network namespace, on
/// `ifname` if given.
pub fn read_neighbours(ifname: Option<&str>) -> io::Result<Neighbours> {
    let ifindex = ifname.map(crate::ifindex).transpose()?;
    let mut table = HashMap::new();
    update(&mut table, &dump(&route_socket(0)?)?, ifindex);
    Ok(table)
}

/// Follows the neighbour table of `ifname` (in the calling thread's network
/// namespace) on a thread of its own, calling `changed` whenever a usable MAC appears,
/// changes or goes (not on the state changes that keep the MAC). Runs until
/// `changed` returns false.
pub fn watch_neighbours(
    ifname: &str,
    mut changed: impl FnMut() -> bool + Send + 'static,
) -> io::Result<std::thread::JoinHandle<()>> {
    let ifindex = crate::ifindex(ifname)?;
    // Subscribe before the dump: nothing between the two is missed.
    let events = route_socket(RTMGRP_NEIGH)?;
    let mut table = HashMap::new();
    update(&mut table, &dump(&route_socket(0)?)?, Some(ifindex));
    // A thread inherits the network namespace of the thread that spawns it, but the
    // sockets are bound already: they stay in this one.
    std::thread::Builder::new()
        .name("neighbours".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match recv(&events, &mut buf) {
                    Ok(n) => n,
                    // ENOBUFS: notifications were lost. Read the table afresh (the
                    // old one could hide a change back to a value it holds) and
                    // report a change so the caller reads it too.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        if let Ok(fresh) = route_socket(0).and_then(|s| dump(&s)) {
                            table.clear();
                            update(&mut table, &fresh, Some(ifindex));
                        }
                        if !changed() {
                            return;
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                let parsed = parse_messages(&buf[..n]);
                if update(&mut table, &parsed.neighbours, Some(ifindex)) && !changed() {
                    return;
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink neighbour message as the kernel lays it out.
    fn msg(
        kind: u16,
        family: u8,
        ifindex: u32,
        state: u16,
        dst: &[u8],
        mac: Option<[u8; 6]>,
    ) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0];
        body.extend_from_slice(&ifindex.to_ne_bytes());
        body.extend_from_slice(&state.to_ne_bytes());
        body.extend_from_slice(&[0, 1]); // flags, type
        let mut attr = |kind: u16, v: &[u8]| {
            body.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
            body.extend_from_slice(&kind.to_ne_bytes());
            body.extend_from_slice(v);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        };
        attr(NDA_DST, dst);
        if let Some(m) = mac {
            attr(NDA_LLADDR, &m);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&body);
        m
    }

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x12];
    const REACHABLE: u16 = 0x02;
    const FAILED: u16 = 0x20;

    #[test]
    fn both_families_usable_states_and_deletions() {
        let v6: Ipv6Addr = "2001:db8::12".parse().unwrap();
        let mut buf = msg(
            RTM_NEWNEIGH,
            libc::AF_INET as u8,
            2,
            REACHABLE,
            &[192, 0, 2, 12],
            Some(MAC),
        );
        buf.extend(msg(
            RTM_NEWNEIGH,
            libc::AF_INET6 as u8,
            2,
            0x04,
            &v6.octets(),
            Some(MAC),
        ));
        buf.extend(msg(
            RTM_NEWNEIGH,
            libc::AF_INET as u8,
            2,
            FAILED,
            &[192, 0, 2, 13],
            Some(MAC),
        ));
        buf.extend(msg(
            RTM_DELNEIGH,
            libc::AF_INET as u8,
            3,
            REACHABLE,
            &[192, 0, 2, 14],
            Some(MAC),
        ));
        let mut done = buf.clone();
        done.truncate(0);
        done.extend_from_slice(&20u32.to_ne_bytes());
        done.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        done.extend_from_slice(&[0; 14]);
        buf.extend(done);
        let p = parse_messages(&buf);
        assert!(p.done);
        assert_eq!(p.error, None);
        let got: Vec<(IpAddr, Option<MacAddr>, bool)> = p
            .neighbours
            .iter()
            .map(|m| (m.addr, m.mac, m.deleted))
            .collect();
        assert_eq!(
            got,
            vec![
                ("192.0.2.12".parse().unwrap(), Some(MAC), false),
                (IpAddr::V6(v6), Some(MAC), false),
                ("192.0.2.13".parse().unwrap(), None, false),
                ("192.0.2.14".parse().unwrap(), None, true),
            ]
        );
    }

    #[test]
    fn updates_report_only_mac_changes_on_the_interface() {
        let mut t = HashMap::new();
        let m = |mac: Option<MacAddr>, ifindex: u32| NeighMessage {
            deleted: mac.is_none(),
            ifindex,
            addr: "192.0.2.12".parse().unwrap(),
            mac,
        };
        assert!(update(&mut t, &[m(Some(MAC), 2)], Some(2)));
        // REACHABLE -> STALE with the same MAC: nothing to do.
        assert!(!update(&mut t, &[m(Some(MAC), 2)], Some(2)));
        // Another interface: ignored.
        assert!(!update(&mut t, &[m(Some([9; 6]), 3)], Some(2)));
        assert!(update(&mut t, &[m(Some([9; 6]), 2)], Some(2)));
        assert!(update(&mut t, &[m(None, 2)], Some(2)));
        assert!(t.is_empty());
    }

    #[test]
    fn errors_and_garbage_never_panic() {
        let mut err = Vec::new();
        err.extend_from_slice(&36u32.to_ne_bytes());
        err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err.extend_from_slice(&[0; 10]);
        err.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        err.extend_from_slice(&[0; 16]);
        assert_eq!(parse_messages(&err).error, Some(-libc::EPERM));
        for cut in 0..err.len() {
            let _ = parse_messages(&err[..cut]);
        }
        let good = msg(
            RTM_NEWNEIGH,
            libc::AF_INET as u8,
            2,
            REACHABLE,
            &[192, 0, 2, 12],
            Some(MAC),
        );
        for cut in 0..good.len() {
            let p = parse_messages(&good[..cut]);
            assert!(p.neighbours.is_empty(), "cut at {cut}");
        }
        let mut bad_dst = good.clone();
        bad_dst[NLMSG_HDRLEN + NDMSG_LEN..NLMSG_HDRLEN + NDMSG_LEN + 2]
            .copy_from_slice(&7u16.to_ne_bytes());
        assert!(parse_messages(&bad_dst).neighbours.is_empty());
    }

    #[test]
    fn the_kernels_own_table_reads_and_names_a_missing_interface() {
        // Any namespace has lo; its table may be empty, but the dump must work.
        read_neighbours(Some("lo")).unwrap();
        assert!(read_neighbours(Some("no-such-if0")).is_err());
    }
}
