//! Kernel interfaces aya does not wrap: mmap of an array map, interface indexes,
//! entering a network namespace. Each unsafe block is the narrowest it can be.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// A shared, writable mapping of part of a `BPF_F_MMAPABLE` array of u32: one ring.
/// The kernel rounds array elements up to 8 bytes, so element i is the u32 at 2 * i.
/// A ring is mapped only while it is written: a mapping of the whole array would
/// keep every page of it (the kernel maps them all at once) in the agent's resident
/// memory, 20 MB at 10,000 services.
#[derive(Debug)]
pub(crate) struct MmapU32 {
    /// The mapping's start.
    map: *mut libc::c_void,
    bytes: usize,
    /// Element 0 of the window.
    ptr: *mut u32,
    len: usize,
}

/// u32 words per array element (`round_up(value_size, 8)` in kernel/bpf/arraymap.c).
const ELEM_STRIDE: usize = 2;

impl MmapU32 {
    /// Maps elements `first..first + len` of the array map `fd`.
    pub(crate) fn new(fd: BorrowedFd<'_>, first: usize, len: usize) -> io::Result<Self> {
        // The offset must be a multiple of the page size: 16 or 64 KiB on some arm64.
        let page = page_size();
        let start = first * ELEM_STRIDE * 4;
        let end = (first + len) * ELEM_STRIDE * 4;
        let offset = start / page * page;
        let bytes = (end - offset).div_ceil(page) * page;
        #[allow(unsafe_code)]
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks offset and
        // size against the map and fails with EINVAL rather than map past its end.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // `start - offset` is within the first page of the mapping.
        let ptr = map.cast::<u8>().wrapping_add(start - offset).cast::<u32>();
        Ok(Self {
            map,
            bytes,
            ptr,
            len,
        })
    }

    pub(crate) fn get(&self, i: usize) -> u32 {
        assert!(i < self.len);
        #[allow(unsafe_code)]
        // SAFETY: i is in bounds; volatile because the BPF program shares the memory.
        unsafe {
            self.ptr.add(i * ELEM_STRIDE).read_volatile()
        }
    }

    pub(crate) fn set(&mut self, i: usize, v: u32) {
        assert!(i < self.len);
        #[allow(unsafe_code)]
        // SAFETY: i is in bounds; a u32 store is atomic for the BPF program reading it.
        unsafe {
            self.ptr.add(i * ELEM_STRIDE).write_volatile(v)
        }
    }
}

impl Drop for MmapU32 {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: map/bytes came from the successful mmap in new().
        unsafe {
            libc::munmap(self.map, self.bytes);
        }
    }
}

/// The system's page size.
fn page_size() -> usize {
    #[allow(unsafe_code)]
    // SAFETY: sysconf reads a constant of the system and has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

// The mapping is plain shared memory owned by this value.
#[allow(unsafe_code)]
// SAFETY: no thread-affine state; access goes through &self/&mut self.
unsafe impl Send for MmapU32 {}

/// Index of interface `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
    #[allow(unsafe_code)]
    // SAFETY: c is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(idx)
    }
}

/// Moves the calling thread into the network namespace at `path`
/// (e.g. `/var/run/netns/NAME`). Only this thread changes namespace.
pub fn enter_netns(path: &std::path::Path) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    #[allow(unsafe_code)]
    // SAFETY: f is an open namespace fd; setns affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
