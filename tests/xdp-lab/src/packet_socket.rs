//! The lab's second traffic generator: an AF_PACKET socket that sends prebuilt
//! frames with sendmmsg(2), for kernels that refuse BPF_PROG_RUN in live-frames mode
//! (a locked-down kernel answers EPERM). Each frame becomes an skb on the client's
//! veth, where live frames start as XDP frames: the generator costs more per frame,
//! so its figures are compared with each other (ratios within one run), not with
//! live-frames figures.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::bpf::GEN_HEADERS;

/// `PACKET_QDISC_BYPASS` (linux/if_packet.h): hand frames to the driver directly, as
/// live frames do, instead of through the device's queueing discipline.
const PACKET_QDISC_BYPASS: libc::c_int = 20;
/// Frames per sendmmsg(2) call (the kernel caps a call at UIO_MAXIOV = 1024).
const BATCH: usize = 1024;

/// A raw packet socket bound to one interface, with one frame per flow.
#[derive(Debug)]
pub struct PacketSocketGenerator {
    fd: OwnedFd,
    /// One frame per flow: the template with source port `first + i`.
    frames: Vec<Vec<u8>>,
    /// The flow the next frame belongs to.
    next: usize,
    sent: u64,
}

impl PacketSocketGenerator {
    /// Opens the socket on `ifindex` (call it from a thread inside the interface's
    /// namespace; the socket keeps that namespace). `frame` is the first flow's frame:
    /// Ethernet + IPv4 + UDP with checksum 0, so only the source port differs
    /// between flows.
    pub fn open(
        ifindex: u32,
        frame: &[u8],
        first_source_port: u16,
        flows: u16,
    ) -> io::Result<Self> {
        if frame.len() < GEN_HEADERS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame of {} bytes has no UDP header", frame.len()),
            ));
        }
        let fd = raw_socket(ifindex)?;
        let frames = (0..flows.max(1))
            .map(|i| {
                let mut f = frame.to_vec();
                let port = first_source_port.wrapping_add(i);
                f[34..36].copy_from_slice(&port.to_be_bytes());
                f
            })
            .collect();
        Ok(Self {
            fd,
            frames,
            next: 0,
            sent: 0,
        })
    }

    /// Sends `count` frames, cycling over the flows. Frames the kernel refused for
    /// lack of buffer space are not counted as sent.
    pub fn send(&mut self, count: u32) -> io::Result<()> {
        let mut left = count as usize;
        while left > 0 {
            let n = left.min(BATCH);
            let sent = self.send_batch(n)?;
            self.sent += sent as u64;
            self.next = (self.next + sent) % self.frames.len();
            left -= n;
        }
        Ok(())
    }

    /// Frames handed to the kernel so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    #[allow(unsafe_code)]
    fn send_batch(&self, n: usize) -> io::Result<usize> {
        let mut iov: Vec<libc::iovec> = (0..n)
            .map(|i| {
                let f = &self.frames[(self.next + i) % self.frames.len()];
                libc::iovec {
                    iov_base: f.as_ptr() as *mut libc::c_void,
                    iov_len: f.len(),
                }
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: mmsghdr is plain integers and pointers; all-zero is valid.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: msgs holds n headers, each pointing to one iovec that points into a
        // frame of self; all of it outlives the call, and the kernel only reads it.
        let ret =
            unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), n as libc::c_uint, 0) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            // A full device: nothing sent this time, like a full ring for live frames.
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(ret as usize)
    }
}

/// An AF_PACKET raw socket bound to `ifindex`, sending only, bypassing the qdisc.
#[allow(unsafe_code)]
fn raw_socket(ifindex: u32) -> io::Result<OwnedFd> {
    // Protocol 0: the socket receives nothing, so it costs nothing on the way in.
    // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a c_int that outlives the call.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain integers; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: bind(2) with a sockaddr_ll that outlives the call, and its size.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}
