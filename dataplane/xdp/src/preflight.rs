//! What the director's interface and pin directory need so that forwarding keeps
//! working while the agent is stopped or restarting; checked when the director
//! attaches, and said in the log instead of failing silently later.
//!
//! - **A veth interface.** XDP_TX on a veth queues the frame on the peer's ring, but
//!   the kernel kicks the peer's NAPI poll after XDP_TX only when the peer runs an XDP
//!   program itself (`veth_xdp_flush` in drivers/net/veth.c). With GRO alone on the
//!   peer the frames wait until something else leaves the interface as an skb: while
//!   the agent runs, its health probes do, so traffic flows (with added latency); once
//!   it stops, nothing does and every new connection times out. A pass-through program
//!   on the peer (`XDP_PASS`) is all it takes; a physical NIC needs nothing.
//! - **Pins the next agent can see.** The program's link and the connection table are
//!   pinned on bpffs so that they outlive the process. `ip netns exec` remounts /sys,
//!   so /sys/fs/bpf there is a bpffs instance of the agent's own mount namespace that
//!   vanishes with it: the program detaches when the agent stops and a restart starts
//!   from an empty connection table.

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A reason forwarding will not survive the agent stopping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caveat {
    Veth { ifname: String },
    PrivatePins { dir: PathBuf, why: String },
}

impl fmt::Display for Caveat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Veth { ifname } => write!(
                f,
                "{ifname} is a veth: frames the director sends back out (XDP_TX) reach the \
                 peer only when the peer runs an XDP program (XDP_PASS is enough); without \
                 one they move only while other traffic leaves {ifname}, and stop when this \
                 agent stops. Attach a pass-through XDP program to the peer"
            ),
            Self::PrivatePins { dir, why } => write!(
                f,
                "pin directory {}: {why}; the XDP program and its connection table go when \
                 this agent stops, so a restart drops connections. Pin on a bpffs the host \
                 sees (run the agent with `nsenter --net=...` rather than `ip netns exec`, \
                 or --xdp-pin-dir on a bpffs mounted outside /sys)",
                dir.display()
            ),
        }
    }
}

/// `BPF_FS_MAGIC` (linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The caveats of attaching to `ifname` (in the calling thread's network namespace)
/// with pins in `pin_dir` (which exists by now).
pub fn caveats(ifname: &str, pin_dir: Option<&Path>) -> Vec<Caveat> {
    let mut out = Vec::new();
    if driver(ifname).is_ok_and(|d| d == "veth") {
        out.push(Caveat::Veth {
            ifname: ifname.to_owned(),
        });
    }
    if let Some(dir) = pin_dir {
        if let Some(why) = pins_private(dir) {
            out.push(Caveat::PrivatePins {
                dir: dir.to_owned(),
                why,
            });
        }
    }
    out
}

/// Why pins in `dir` would not outlive this process, if they would not.
fn pins_private(dir: &Path) -> Option<String> {
    match filesystem_magic(dir) {
        Ok(m) if m == BPF_FS_MAGIC => {}
        Ok(_) => return Some("not on a bpf filesystem".into()),
        Err(e) => return Some(format!("cannot tell its filesystem: {e}")),
    }
    // Another process's view of the same path, through /proc/PID/root (which resolves
    // in that process's mount namespace): the parent's (what started the agent, as
    // `ip netns exec` was started), else pid 1's. In a container both are, or see,
    // this process's own namespace, where the two views agree.
    let ours = std::fs::metadata(dir).ok()?.dev();
    // SAFETY: getppid(2) cannot fail.
    #[allow(unsafe_code)]
    let parent = unsafe { libc::getppid() };
    for pid in [parent, 1].into_iter().filter(|p| *p > 0) {
        let view = Path::new("/proc")
            .join(pid.to_string())
            .join("root")
            .join(dir.strip_prefix("/").unwrap_or(dir));
        match std::fs::metadata(&view) {
            Ok(m) => return private_mount(ours, Ok(m.dev())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return private_mount(ours, Err(e)),
            // Not ours to look at (pid 1 in some sandboxes): try the next.
            Err(_) => continue,
        }
    }
    None
}

/// Decides from the device of the pin directory as this process sees it (`ours`) and
/// as another process's mount namespace sees the same path.
fn private_mount(ours: u64, host: io::Result<u64>) -> Option<String> {
    match host {
        Ok(d) if d == ours => None,
        Ok(_) => Some(
            "a bpffs of this process's mount namespace only, not the one it was started \
             from (as under `ip netns exec`, which remounts /sys)"
                .into(),
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Some(
            "absent from the mount namespace the agent was started from (a bpffs mounted \
             for this process only, as under `ip netns exec`, which remounts /sys)"
                .into(),
        ),
        // Cannot look (no /proc/1 access): say nothing rather than guess.
        Err(_) => None,
    }
}

#[allow(unsafe_code)]
fn filesystem_magic(path: &Path) -> io::Result<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statfs(2) on a NUL-terminated path, into a struct it fills.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; both pointers outlive the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64)
}

/// The driver of `ifname` (`ethtool -i`), in the calling thread's network namespace.
#[allow(unsafe_code)]
pub fn driver(ifname: &str) -> io::Result<String> {
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    /// `struct ethtool_drvinfo` (linux/ethtool.h).
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    /// `struct ifreq` with `ifr_data`, padded to the kernel's 40 bytes.
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    let name = ifname.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: all-zero is a valid DrvInfo (integers and byte arrays).
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut info,
        _pad: [0; 16],
    };
    req.name[..name.len()].copy_from_slice(name);
    // SAFETY: a datagram socket only for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCETHTOOL reads req and writes info through req.data, both alive and
    // of the sizes the kernel expects.
    let ret = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, &mut req as *mut IfReq) };
    let err = io::Error::last_os_error();
    // SAFETY: closing the descriptor opened above, once.
    unsafe { libc::close(fd) };
    if ret != 0 {
        return Err(err);
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_private_when_the_host_sees_another_filesystem_or_none() {
        assert_eq!(private_mount(7, Ok(7)), None);
        assert!(private_mount(7, Ok(8)).unwrap().contains("ip netns exec"));
        assert!(private_mount(7, Err(io::ErrorKind::NotFound.into()))
            .unwrap()
            .contains("absent"));
        assert_eq!(
            private_mount(7, Err(io::ErrorKind::PermissionDenied.into())),
            None
        );
    }

    #[test]
    fn a_directory_off_bpffs_is_named() {
        let why = pins_private(Path::new("/tmp")).unwrap();
        assert!(why.contains("not on a bpf filesystem"), "{why}");
    }

    #[test]
    fn loopback_is_no_veth() {
        assert_eq!(driver("lo").ok().as_deref().filter(|d| *d == "veth"), None);
        assert!(driver("no-such-if0").is_err());
    }

    #[test]
    fn caveats_name_what_to_do() {
        let v = Caveat::Veth {
            ifname: "eth0".into(),
        }
        .to_string();
        assert!(v.contains("peer") && v.contains("XDP_PASS"), "{v}");
        let p = Caveat::PrivatePins {
            dir: "/sys/fs/bpf/kubelvs".into(),
            why: "x".into(),
        }
        .to_string();
        assert!(
            p.contains("/sys/fs/bpf/kubelvs") && p.contains("nsenter"),
            "{p}"
        );
    }
}
