//! A minimal writer for the `newc` cpio format the kernel unpacks as initramfs.
//!
//! Written here rather than shelling out to `cpio` so the archive can hold a
//! `/dev/console` device node (the kernel opens it for init's stdio before any
//! devtmpfs exists) without needing mknod on the host, and so the output is
//! byte-for-byte deterministic.

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Builds one newc archive in memory. Entries are written in insertion order,
/// so parents must be added before their children.
#[derive(Debug, Default)]
pub struct Archive {
    buf: Vec<u8>,
    next_ino: u32,
}

impl Archive {
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            next_ino: 1,
        }
    }

    pub fn dir(&mut self, path: &str) {
        self.entry(path, S_IFDIR | 0o755, (0, 0), &[]);
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, S_IFREG | (mode & 0o7777), (0, 0), data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, (0, 0), target.as_bytes());
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | 0o600, (major, minor), &[]);
    }

    /// Appends the trailer and pads to 512 bytes, so further archives can be
    /// concatenated after this one (the kernel unpacks them in sequence).
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.pad_to(512);
        self.buf
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let name = path.trim_start_matches('/');
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed for reproducible archives
            u32::try_from(data.len()).expect("initramfs member over 4 GiB"),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).expect("path length fits u32"),
            0, // check
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.buf.extend_from_slice(header.as_bytes());
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad_to(4);
        self.buf.extend_from_slice(data);
        self.pad_to(4);
    }

    fn pad_to(&mut self, align: usize) {
        let padded = self.buf.len().div_ceil(align) * align;
        self.buf.resize(padded, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_newc() {
        let mut a = Archive::new();
        a.file("/init", 0o755, b"#!/bin/sh\n");
        let bytes = a.finish();
        assert_eq!(&bytes[..6], b"070701");
        // ino 1, mode 0100755, size 10, namesize 5 ("init" + NUL).
        assert_eq!(&bytes[6..14], b"00000001");
        assert_eq!(&bytes[14..22], b"000081ed");
        assert_eq!(&bytes[54..62], b"0000000a");
        assert_eq!(&bytes[94..102], b"00000005");
        assert_eq!(&bytes[110..115], b"init\0");
        // header 110 + name 5 = 115, padded to 116, then the data.
        assert_eq!(&bytes[116..126], b"#!/bin/sh\n");
        assert_eq!(bytes.len() % 512, 0);
        let trailer = b"TRAILER!!!";
        assert!(bytes.windows(trailer.len()).any(|w| w == trailer));
    }

    #[test]
    fn device_node_carries_rdev() {
        let mut a = Archive::new();
        a.char_device("/dev/console", 5, 1);
        let bytes = a.finish();
        assert_eq!(&bytes[14..22], b"00002180");
        assert_eq!(&bytes[78..86], b"00000005");
        assert_eq!(&bytes[86..94], b"00000001");
    }
}
