//! The director's pins on bpffs: the link of each interface and the maps outlive
//! the agent's process, so a restart keeps the connection table and the program.

use std::io;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::programs::Xdp;

use crate::{Result, XdpError, DIRECTOR_MAPS, DIRECTOR_PROG};

/// Swaps `prog` in behind the link pinned at `path` (bpf_link_update): the
/// interface never runs without a program, and the pin stays, so the link
/// outlives this process again.
pub(crate) fn replace_pinned(prog: &mut Xdp, path: &Path) -> Result<()> {
    let link_err = |source| XdpError::Link {
        path: path.to_path_buf(),
        source,
    };
    let pinned = PinnedLink::from_pin(path).map_err(link_err)?;
    let fd_link: FdLink = pinned.into();
    let xdp_link = XdpLink::try_from(fd_link).map_err(link_err)?;
    prog.attach_to_link(xdp_link)
        .map_err(|source| XdpError::Program {
            program: DIRECTOR_PROG,
            source,
        })?;
    Ok(())
}

/// Removes the director's pins from `dir` (the link of each interface and the maps:
/// nothing else, so a directory shared with other programs keeps theirs) and the
/// directory if that empties it. With no process holding the link, its program
/// detaches as its pin goes. For `kube-lvs-agent --cleanup`; returns what it removed.
pub fn remove_director_pins(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(XdpError::PinDir {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("link_") || DIRECTOR_MAPS.contains(&name.as_ref()) {
            remove_pin(&entry.path())?;
            removed.push(entry.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
    Ok(removed)
}

pub(crate) fn remove_pin(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(XdpError::PinDir {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Creates `dir`, mounting bpffs on /sys/fs/bpf first if nothing bpffs covers it
/// (fresh CI machines and containers often have it unmounted).
pub fn ensure_pin_dir(dir: &Path) -> Result<()> {
    let pin_err = |source| XdpError::PinDir {
        path: dir.to_path_buf(),
        source,
    };
    // Threads (parallel tests) must not each mount a bpffs over the other's.
    static MOUNT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = MOUNT.lock().unwrap_or_else(|p| p.into_inner());
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(pin_err)?;
    let covered = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[2] == "bpf" && dir.starts_with(f[1])
    });
    if !covered {
        let root = Path::new("/sys/fs/bpf");
        if dir.starts_with(root) {
            std::fs::create_dir_all(root).map_err(pin_err)?;
            let st = std::process::Command::new("mount")
                .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
                .status()
                .map_err(pin_err)?;
            if !st.success() {
                return Err(pin_err(io::Error::other(
                    "mount -t bpf bpf /sys/fs/bpf failed",
                )));
            }
        } else {
            return Err(pin_err(io::Error::other("not on a bpf filesystem")));
        }
    }
    std::fs::create_dir_all(dir).map_err(pin_err)
}
