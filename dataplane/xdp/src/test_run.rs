//! `BPF_PROG_TEST_RUN` (also live-frames mode), which aya does not wrap: for
//! fixtures, benchmarks and traffic generators (feature `testing`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `union bpf_attr` is larger than the test-run part we fill; the kernel wants
/// the rest zeroed, so the whole thing is a zeroed buffer of the union's size.
const BPF_ATTR_SIZE: usize = 160;
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `BPF_F_TEST_XDP_LIVE_FRAMES`: run in live-frames mode (XDP_TX/redirect really send).
pub const TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// `struct xdp_md` as BPF_PROG_TEST_RUN takes it in `ctx_in`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpMd {
    pub data: u32,
    pub data_end: u32,
    pub data_meta: u32,
    pub ingress_ifindex: u32,
    pub rx_queue_index: u32,
    pub egress_ifindex: u32,
}

/// One BPF_PROG_TEST_RUN call.
#[derive(Debug, Clone, Default)]
pub struct TestRun<'a> {
    pub data_in: &'a [u8],
    /// Room for the output packet; encapsulation grows it. 0 means `data_in.len() + 256`.
    pub data_out_capacity: usize,
    pub repeat: u32,
    /// Sets `ingress_ifindex` (the kernel checks the interface exists in the caller's netns).
    pub ingress_ifindex: Option<u32>,
    pub flags: u32,
    pub batch_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunResult {
    /// The XDP verdict (XDP_DROP = 1, XDP_PASS = 2, XDP_TX = 3, XDP_REDIRECT = 4).
    pub retval: u32,
    /// The packet as the program left it.
    pub data_out: Vec<u8>,
    /// Mean nanoseconds per run, as the kernel measured it.
    pub duration_ns: u32,
}

/// Runs `prog` once per `repeat` on a copy of `data_in` (see the kernel's
/// bpf_prog_test_run_xdp; with repeat > 1 the runs share one buffer).
pub fn test_run(prog: BorrowedFd<'_>, run: &TestRun<'_>) -> io::Result<TestRunResult> {
    let cap = if run.data_out_capacity == 0 {
        run.data_in.len() + 256
    } else {
        run.data_out_capacity
    };
    let mut out = vec![0u8; cap];
    let ctx = run.ingress_ifindex.map(|ifindex| XdpMd {
        data: 0,
        data_end: run.data_in.len() as u32,
        ingress_ifindex: ifindex,
        ..XdpMd::default()
    });

    let mut attr = [0u8; BPF_ATTR_SIZE];
    let put32 = |a: &mut [u8; BPF_ATTR_SIZE], off: usize, v: u32| {
        a[off..off + 4].copy_from_slice(&v.to_ne_bytes())
    };
    let put64 = |a: &mut [u8; BPF_ATTR_SIZE], off: usize, v: u64| {
        a[off..off + 8].copy_from_slice(&v.to_ne_bytes())
    };
    // struct { prog_fd, retval, data_size_in, data_size_out, data_in, data_out,
    //          repeat, duration, ctx_size_in, ctx_size_out, ctx_in, ctx_out,
    //          flags, cpu, batch_size } test;
    put32(&mut attr, 0, prog.as_raw_fd() as u32);
    put32(&mut attr, 8, run.data_in.len() as u32);
    put32(&mut attr, 12, cap as u32);
    put64(&mut attr, 16, run.data_in.as_ptr() as u64);
    put64(&mut attr, 24, out.as_mut_ptr() as u64);
    put32(&mut attr, 32, run.repeat.max(1));
    if let Some(ctx) = &ctx {
        put32(&mut attr, 40, std::mem::size_of::<XdpMd>() as u32);
        put64(&mut attr, 48, ctx as *const XdpMd as u64);
    }
    put32(&mut attr, 64, run.flags);
    put32(&mut attr, 72, run.batch_size);

    #[allow(unsafe_code)]
    // SAFETY: attr is a zeroed bpf_attr of adequate size; the pointers in it (data_in,
    // out, ctx) are valid for the sizes given and outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr.as_mut_ptr(),
            BPF_ATTR_SIZE as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let get32 = |off: usize| u32::from_ne_bytes(attr[off..off + 4].try_into().unwrap());
    let out_len = (get32(12) as usize).min(cap);
    out.truncate(out_len);
    Ok(TestRunResult {
        retval: get32(4),
        data_out: out,
        duration_ns: get32(36),
    })
}
