//! Standalone mode: a change to the configuration file wakes the agent at once, through
//! inotify on the file's directory, rather than at the next poll of its size and
//! modification time. The directory, not the file: editors and `kubectl cp` replace a
//! file by renaming another over it, and a ConfigMap volume swaps its `..data` link,
//! neither of which a watch on the old file would see. The poll stays, as the fallback
//! where inotify cannot be had (some network file systems, exhausted watches).

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Calls `changed` from a thread of its own each time the file at `path` is written
/// and closed, created, replaced, removed or has its attributes changed (and when a
/// ConfigMap volume's `..`-prefixed entries are swapped), until `changed` returns
/// false. Its argument says whether the change is complete: the last event was the
/// file written and closed, or another renamed over it (a ConfigMap's `..data` swap
/// too), so there is no reason to wait for more. Fails if the kernel gives no inotify
/// watch on the directory.
pub fn follow(
    path: &Path,
    mut changed: impl FnMut(bool) -> bool + Send + 'static,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?
        .to_owned();
    let mut fd = Inotify::watch(dir)?;
    std::thread::Builder::new()
        .name("config-file-watch".into())
        .spawn(move || {
            let mut buf = EventBuffer([0; 4096]);
            loop {
                let Ok(events) = fd.read(&mut buf) else {
                    return;
                };
                // An overflowed queue lost events: any of them may have been ours.
                let ours: Vec<u32> = events
                    .iter()
                    .filter(|(mask, n)| {
                        let n = OsStr::from_bytes(n);
                        mask & libc::IN_Q_OVERFLOW != 0
                            || n == name
                            || n.as_bytes().starts_with(b"..")
                    })
                    .map(|(mask, _)| *mask)
                    .collect();
                let Some(last) = ours.last() else {
                    continue;
                };
                let complete = last & (libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO) != 0
                    && last & libc::IN_Q_OVERFLOW == 0;
                if !changed(complete) {
                    return;
                }
            }
        })?;
    Ok(())
}

/// An inotify instance watching one directory (closed on drop).
struct Inotify(File);

const EVENTS: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_ATTRIB;

impl Inotify {
    #[allow(unsafe_code)]
    fn watch(dir: &Path) -> io::Result<Self> {
        let c = CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: plain syscalls; the new descriptor is owned by the returned File.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let me = Self(File::from_raw_fd(fd));
            if libc::inotify_add_watch(fd, c.as_ptr(), EVENTS) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(me)
        }
    }

    /// Blocks for the next events: each one's mask and the name it carries (empty for
    /// the directory itself).
    fn read<'b>(&mut self, buf: &'b mut EventBuffer) -> io::Result<Vec<(u32, &'b [u8])>> {
        let n = match self.0.read(&mut buf.0) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let bytes = &buf.0[..n];
        let header = std::mem::size_of::<libc::inotify_event>();
        let mut names = Vec::new();
        let mut at = 0;
        while at + header <= bytes.len() {
            // struct inotify_event { int wd; u32 mask; u32 cookie; u32 len; char name[]; }
            let mask = u32::from_ne_bytes(bytes[at + 4..at + 8].try_into().unwrap());
            let len = u32::from_ne_bytes(bytes[at + 12..at + 16].try_into().unwrap()) as usize;
            let end = (at + header + len).min(bytes.len());
            let name = &bytes[at + header..end];
            let nul = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            names.push((mask, &name[..nul]));
            at = end;
        }
        Ok(names)
    }
}

/// Where the kernel writes events: aligned for its `struct inotify_event`.
#[repr(C, align(8))]
struct EventBuffer([u8; 4096]);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_file_renamed_over_the_configuration_wakes_and_a_neighbour_does_not() {
        let dir = std::env::temp_dir().join(format!("kubelvs-file-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("agent.yaml");
        std::fs::write(&config, "a").unwrap();
        let (tx, rx) = mpsc::channel();
        follow(&config, move |complete| tx.send(complete).is_ok()).unwrap();

        std::fs::write(dir.join("other.yaml"), "x").unwrap();
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "another file of the directory woke the agent"
        );
        std::fs::write(dir.join("agent.yaml.tmp"), "b").unwrap();
        // The temporary file's own events are not the configuration's.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        std::fs::rename(dir.join("agent.yaml.tmp"), &config).unwrap();
        let complete = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the rename over the configuration woke the agent");
        assert!(complete, "a rename is a whole new file");
        std::fs::write(&config, "c").unwrap();
        // Written and closed, the last of what arrives says so.
        let mut last = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("a write of the configuration woke the agent");
        while let Ok(more) = rx.recv_timeout(Duration::from_millis(200)) {
            last = more;
        }
        assert!(last, "written and closed");
        // Open for writing and not closed yet: a change, not a complete one.
        let open = std::fs::File::create(dir.join("agent.yaml.new")).unwrap();
        std::fs::rename(dir.join("agent.yaml.new"), &config).unwrap();
        assert!(
            rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            "the rename"
        );
        let attributes = std::fs::metadata(&config).unwrap().permissions();
        std::fs::set_permissions(&config, attributes).unwrap();
        let complete = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("an attribute change woke the agent");
        assert!(!complete, "an attribute change says nothing of the text");
        drop(open);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
