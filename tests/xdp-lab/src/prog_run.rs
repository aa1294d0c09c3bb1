//! BPF_PROG_RUN in live-frames mode: the kernel runs an XDP program on frames it makes
//! from `data_in` and really transmits those the program returns XDP_TX for, out of
//! the interface given as ingress. The lab's traffic generator.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// `BPF_F_TEST_XDP_LIVE_FRAMES` from linux/bpf.h.
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// The `test` member of `union bpf_attr` (linux/bpf.h).
#[repr(C)]
#[derive(Debug, Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct xdp_md` (linux/bpf.h), the context given to the program.
#[repr(C)]
#[derive(Debug, Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// Runs the XDP program `prog` `repeat` times on copies of `frame` as received on
/// `ifindex` (in the calling thread's network namespace), transmitting what it
/// returns XDP_TX for. `batch_size` 0 means the kernel default (64).
pub fn run_live_frames(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    frame: &[u8],
    repeat: u32,
    batch_size: u32,
) -> io::Result<()> {
    let len = u32::try_from(frame.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let ctx = XdpMd {
        // The kernel requires data_end == data_size_in and no metadata.
        data_end: len,
        ingress_ifindex: ifindex,
        ..XdpMd::default()
    };
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: len,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: std::mem::size_of::<XdpMd>() as u32,
        ctx_in: &ctx as *const XdpMd as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size,
        ..TestRunAttr::default()
    };
    bpf_prog_test_run(&mut attr)
}

/// The bpf(2) call itself: the only unsafe code of the lab.
#[allow(unsafe_code)]
fn bpf_prog_test_run(attr: &mut TestRunAttr) -> io::Result<()> {
    // SAFETY: attr is a valid, exclusively borrowed bpf_attr prefix of the size we
    // pass (the kernel checks that the rest of its union is zero); the pointers in
    // it (data_in, ctx_in) point to memory the caller keeps alive during the call,
    // and live-frames mode writes no output buffers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layout_matches_linux_bpf_h() {
        // offsetof(union bpf_attr, test.batch_size) == 72 in linux/bpf.h.
        assert_eq!(std::mem::size_of::<TestRunAttr>(), 80);
        assert_eq!(std::mem::size_of::<XdpMd>(), 24);
    }
}
