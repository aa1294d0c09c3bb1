//! Telling a segment that a VIP moved here: gratuitous ARP (a request and a reply,
//! as neighbours differ in which they accept) for IPv4, an unsolicited neighbour
//! advertisement with the override flag to all nodes for IPv6. Sent at once and
//! [`REPEATS`] more times [`REPEAT_EVERY`] apart (as MetalLB does), since one frame
//! can be lost and a neighbour may ignore an update within its lock time; paced
//! ([`BATCH`] at a time), since a takeover moves many VIPs at once.
//!
//! Frames are built here (pure, tested) and sent on an `AF_PACKET` datagram socket
//! opened in the caller's network namespace; the kernel adds the Ethernet header.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const REPEATS: u32 = 4;
pub const REPEAT_EVERY: Duration = Duration::from_millis(1100);
/// Announcements are sent this many at a time, [`PACE`] apart: a takeover of
/// thousands of VIPs at once would otherwise burst past the receive queues of every
/// host on the segment (a broadcast reaches them all), and the neighbours would miss
/// most of it.
const BATCH: usize = 32;
const PACE: Duration = Duration::from_millis(2);

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

/// An ARP packet (Ethernet, IPv4) announcing `vip` at `mac`: a request (`reply`
/// false: target hardware address zero) or a reply whose target hardware address is
/// its sender's (Linux takes a reply as gratuitous only then).
pub fn arp(mac: [u8; 6], vip: Ipv4Addr, reply: bool) -> Vec<u8> {
    let mut p = Vec::with_capacity(28);
    p.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
    p.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    p.extend_from_slice(&[6, 4]);
    p.extend_from_slice(&(if reply { 2u16 } else { 1u16 }).to_be_bytes());
    p.extend_from_slice(&mac);
    p.extend_from_slice(&vip.octets());
    p.extend_from_slice(&if reply { mac } else { [0; 6] });
    p.extend_from_slice(&vip.octets());
    p
}

/// All nodes (ff02::1).
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// An IPv6 packet from `vip` to all nodes carrying an unsolicited neighbour
/// advertisement of `vip` at `mac`, override set (RFC 4861 7.2.6).
pub fn unsolicited_na(mac: [u8; 6], vip: Ipv6Addr) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[136, 0, 0, 0]); // type, code, checksum
    icmp.extend_from_slice(&0x2000_0000u32.to_be_bytes()); // O
    icmp.extend_from_slice(&vip.octets());
    icmp.extend_from_slice(&[2, 1]); // target link-layer address, 8 bytes
    icmp.extend_from_slice(&mac);
    let sum = icmpv6_checksum(vip, ALL_NODES, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut p = Vec::with_capacity(40 + icmp.len());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    p.extend_from_slice(&[58, 255]); // ICMPv6, hop limit 255 as NDP requires
    p.extend_from_slice(&vip.octets());
    p.extend_from_slice(&ALL_NODES.octets());
    p.extend_from_slice(&icmp);
    p
}

fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + msg.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(msg);
    let mut sum: u32 = pseudo
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The frames announcing `vip` at `mac`, with their Ethernet destination and type.
pub fn frames(mac: [u8; 6], vip: IpAddr) -> Vec<([u8; 6], u16, Vec<u8>)> {
    match vip {
        IpAddr::V4(v) => vec![
            ([0xff; 6], ETH_P_ARP, arp(mac, v, false)),
            ([0xff; 6], ETH_P_ARP, arp(mac, v, true)),
        ],
        IpAddr::V6(v) => vec![([0x33, 0x33, 0, 0, 0, 1], ETH_P_IPV6, unsolicited_na(mac, v))],
    }
}

/// One VIP's announcement, ready to send again: its socket stays in the namespace it
/// was opened in, whichever thread sends. One socket serves every announcement: a
/// takeover of thousands of VIPs must not take thousands of descriptors (an XDP
/// director already holds one per VIP's ring).
struct Announcement {
    socket: std::sync::Arc<OwnedFd>,
    ifindex: i32,
    vip: IpAddr,
    frames: Vec<([u8; 6], u16, Vec<u8>)>,
}

/// What the repeating thread is told.
#[derive(Debug)]
enum Repeat {
    Start(Announcement),
    /// The VIP left the interface (another director announces it now): repeating
    /// would send its neighbours back here.
    Stop {
        ifindex: i32,
        vip: IpAddr,
    },
}

// The two calls libc has and std does not (an AF_PACKET socket, sendto with a
// link-layer address), each on memory it owns for the call.
#[allow(unsafe_code)]
impl Announcement {
    /// An `AF_PACKET` datagram socket: it sends on any interface it is told.
    fn socket() -> io::Result<OwnedFd> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and is not owned elsewhere.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn send(&self) -> io::Result<()> {
        for (dest, ethertype, frame) in &self.frames {
            // SAFETY: a zeroed sockaddr_ll is valid; the fields are set below.
            let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_protocol = ethertype.to_be();
            to.sll_ifindex = self.ifindex;
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(dest);
            // SAFETY: `frame` and `to` outlive the call; the lengths are theirs.
            let sent = unsafe {
                libc::sendto(
                    self.socket.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&to as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if sent < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Sends announcements now and repeats them from a thread of its own.
#[derive(Debug)]
pub struct Announcer {
    repeats: Option<mpsc::Sender<Repeat>>,
    /// Opened at the first announcement, in the namespace of the thread that made it.
    socket: std::sync::OnceLock<std::sync::Arc<OwnedFd>>,
}

impl std::fmt::Debug for Announcement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Announcement(ifindex {})", self.ifindex)
    }
}

impl Default for Announcer {
    fn default() -> Self {
        Self::new()
    }
}

impl Announcer {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel::<Repeat>();
        let spawned = std::thread::Builder::new()
            .name("announce".into())
            .spawn(move || repeat(rx));
        Self {
            repeats: spawned.ok().map(|_| tx),
            socket: std::sync::OnceLock::new(),
        }
    }

    /// Announces `vip` at `mac` on the interface `ifindex`: at once (paced with the
    /// others, see [`BATCH`]), then [`REPEATS`] times. An error opening the socket is
    /// returned; without the background thread, it is sent once here.
    pub fn announce(&self, ifindex: u32, mac: [u8; 6], vip: IpAddr) -> io::Result<()> {
        let socket = match self.socket.get() {
            Some(s) => s.clone(),
            None => {
                let s = std::sync::Arc::new(Announcement::socket()?);
                self.socket.get_or_init(|| s).clone()
            }
        };
        let a = Announcement {
            socket,
            ifindex: ifindex as i32,
            vip,
            frames: frames(mac, vip),
        };
        match &self.repeats {
            Some(tx) => {
                let _ = tx.send(Repeat::Start(a));
                Ok(())
            }
            None => a.send(),
        }
    }

    /// Stops repeating the announcement of `vip` on interface `ifindex`.
    pub fn withdraw(&self, ifindex: u32, vip: IpAddr) {
        if let Some(tx) = &self.repeats {
            let _ = tx.send(Repeat::Stop {
                ifindex: ifindex as i32,
                vip,
            });
        }
    }
}

/// Sends each announcement at once and [`REPEATS`] more times, [`BATCH`] at a time;
/// ends when the [`Announcer`] goes.
fn repeat(rx: mpsc::Receiver<Repeat>) {
    let mut due: Vec<(Instant, u32, Announcement)> = Vec::new();
    let take = |m: Repeat, due: &mut Vec<(Instant, u32, Announcement)>| match m {
        Repeat::Start(a) => {
            due.retain(|(_, _, d)| (d.ifindex, d.vip) != (a.ifindex, a.vip));
            due.push((Instant::now(), REPEATS + 1, a));
        }
        Repeat::Stop { ifindex, vip } => {
            due.retain(|(_, _, d)| (d.ifindex, d.vip) != (ifindex, vip));
        }
    };
    loop {
        let wait = due
            .iter()
            .map(|(at, _, _)| at.saturating_duration_since(Instant::now()))
            .min();
        let received = match wait {
            Some(w) => rx.recv_timeout(w),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(m) => take(m, &mut due),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        // Whatever else a takeover queued goes out in this round.
        while let Ok(m) = rx.try_recv() {
            take(m, &mut due);
        }
        let now = Instant::now();
        let ready = due.iter_mut().filter(|(at, _, _)| *at <= now);
        for (sent, (at, left, a)) in ready.enumerate() {
            if sent > 0 && sent % BATCH == 0 {
                std::thread::sleep(PACE);
            }
            // Best effort: a frame lost is sent again with the next repeat.
            let _ = a.send();
            *left -= 1;
            *at = Instant::now() + REPEAT_EVERY;
        }
        due.retain(|(_, left, _)| *left > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];

    #[test]
    fn gratuitous_arp_names_the_vip_as_sender_and_target() {
        let vip = Ipv4Addr::new(203, 0, 113, 7);
        let req = arp(MAC, vip, false);
        assert_eq!(req.len(), 28);
        assert_eq!(&req[6..8], &[0, 1]);
        assert_eq!(&req[8..14], &MAC);
        assert_eq!(&req[14..18], &vip.octets());
        assert_eq!(&req[18..24], &[0; 6]);
        assert_eq!(&req[24..28], &vip.octets());
        let rep = arp(MAC, vip, true);
        assert_eq!(&rep[6..8], &[0, 2]);
        assert_eq!(&rep[18..24], &MAC);
    }

    #[test]
    fn unsolicited_na_is_a_valid_icmpv6_packet() {
        let vip: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let p = unsolicited_na(MAC, vip);
        assert_eq!(p.len(), 40 + 32);
        assert_eq!(&p[4..6], &32u16.to_be_bytes());
        assert_eq!((p[6], p[7]), (58, 255));
        assert_eq!(&p[8..24], &vip.octets());
        assert_eq!(&p[24..40], &ALL_NODES.octets());
        let icmp = &p[40..];
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[4] & 0xe0, 0x20, "override, not solicited, not router");
        assert_eq!(&icmp[8..24], &vip.octets());
        assert_eq!(&icmp[24..32], &[2, 1, 0x02, 0, 0, 0, 0, 0x11]);
        // The checksum over the pseudo-header and the message, checksum included, is 0.
        assert_eq!(icmpv6_checksum(vip, ALL_NODES, icmp), 0);
    }

    #[test]
    fn both_families_get_their_frames() {
        let v4 = frames(MAC, "192.0.2.1".parse().unwrap());
        assert_eq!(v4.len(), 2);
        assert!(v4
            .iter()
            .all(|(d, t, _)| *d == [0xff; 6] && *t == ETH_P_ARP));
        let v6 = frames(MAC, "2001:db8::1".parse().unwrap());
        assert_eq!(v6[0].0, [0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(v6[0].1, ETH_P_IPV6);
    }
}
