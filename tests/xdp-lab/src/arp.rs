//! ARP from a lab host, on a raw packet socket: who answers for an address.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::{LabError, Result};

const ETH_P_ARP: u16 = 0x0806;

fn io(what: &str) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |source| LabError::Io {
        what: what.to_owned(),
        source,
    }
}

/// Broadcasts one ARP request "who has `target`" from `ifindex` (the calling
/// thread's namespace) and returns the sender MAC of every reply heard within
/// `wait`, in arrival order (duplicates kept: two hosts answering is the failure).
#[allow(unsafe_code)]
pub fn who_has(
    ifindex: u32,
    src_mac: [u8; 6],
    src_ip: Ipv4Addr,
    target: Ipv4Addr,
    wait: Duration,
) -> Result<Vec<[u8; 6]>> {
    // SAFETY: plain socket(2)/bind(2)/send(2)/recv(2) on a descriptor we own, with
    // buffers and a sockaddr_ll that outlive each call.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from(ETH_P_ARP.to_be()),
        );
        if fd < 0 {
            return Err(io("AF_PACKET socket")(std::io::Error::last_os_error()));
        }
        let close = Fd(fd);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ARP.to_be();
        sll.sll_ifindex = ifindex as i32;
        if libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            return Err(io("bind AF_PACKET")(std::io::Error::last_os_error()));
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let mut frame = Vec::with_capacity(42);
        frame.extend_from_slice(&[0xff; 6]);
        frame.extend_from_slice(&src_mac);
        frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
        frame.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
        frame.extend_from_slice(&src_mac);
        frame.extend_from_slice(&src_ip.octets());
        frame.extend_from_slice(&[0; 6]);
        frame.extend_from_slice(&target.octets());
        if libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) < 0 {
            return Err(io("send ARP request")(std::io::Error::last_os_error()));
        }
        let mut replies = Vec::new();
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 128];
        while Instant::now() < deadline {
            let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
            if n < 42 {
                continue;
            }
            let is_reply = buf[12..14] == ETH_P_ARP.to_be_bytes() && buf[20..22] == [0, 2];
            if is_reply && buf[28..32] == target.octets() {
                replies.push(buf[22..28].try_into().unwrap());
            }
        }
        drop(close);
        Ok(replies)
    }
}

/// Closes `fd` when dropped.
struct Fd(i32);

impl Drop for Fd {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: closing a descriptor this module opened, once.
        unsafe {
            libc::close(self.0);
        }
    }
}
