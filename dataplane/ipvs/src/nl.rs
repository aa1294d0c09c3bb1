//! Netlink and generic-netlink framing: headers, attributes, ACK/DONE, and the
//! genl controller's CTRL_GETFAMILY. Pure: bytes in, bytes out, never panics.

use std::fmt;

/// `struct nlmsghdr` size.
pub const NLMSG_HDRLEN: usize = 16;
/// `struct genlmsghdr` size.
pub const GENL_HDRLEN: usize = 4;
/// `struct nlattr` header size.
pub const NLA_HDRLEN: usize = 4;

pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;

pub const NLA_F_NESTED: u16 = 0x8000;
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

pub const GENL_ID_CTRL: u16 = 0x10;
pub const CTRL_CMD_NEWFAMILY: u8 = 1;
pub const CTRL_CMD_GETFAMILY: u8 = 3;
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;
pub const CTRL_ATTR_VERSION: u16 = 3;
pub const CTRL_ATTR_HDRSIZE: u16 = 4;
pub const CTRL_ATTR_MAXATTR: u16 = 5;

/// Why bytes could not be decoded. Names the structure or attribute at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{what}: truncated, need {needed} bytes, have {available}")]
    Truncated {
        what: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("{what}: invalid length {len}")]
    BadLength { what: &'static str, len: usize },
    #[error("{what}: not UTF-8")]
    InvalidUtf8 { what: &'static str },
    #[error("unknown IPVS command {0}")]
    UnknownCommand(u8),
    #[error("unexpected netlink message type {0:#x}")]
    UnexpectedType(u16),
}

pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// `struct nlmsghdr`, host byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NlHeader {
    pub len: u32,
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
}

impl NlHeader {
    pub fn parse(buf: &[u8]) -> Result<Self, DecodeError> {
        let b = take(buf, NLMSG_HDRLEN, "nlmsghdr")?;
        Ok(Self {
            len: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            ty: u16::from_ne_bytes([b[4], b[5]]),
            flags: u16::from_ne_bytes([b[6], b[7]]),
            seq: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            pid: u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
        })
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.len.to_ne_bytes());
        out.extend_from_slice(&self.ty.to_ne_bytes());
        out.extend_from_slice(&self.flags.to_ne_bytes());
        out.extend_from_slice(&self.seq.to_ne_bytes());
        out.extend_from_slice(&self.pid.to_ne_bytes());
    }
}

fn take<'a>(buf: &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
    buf.get(..n).ok_or(DecodeError::Truncated {
        what,
        needed: n,
        available: buf.len(),
    })
}

/// One netlink message of a receive buffer: its header and the bytes after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NlMessage<'a> {
    pub header: NlHeader,
    pub payload: &'a [u8],
}

/// What a netlink message means to a requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NlKind<'a> {
    /// NLMSG_ERROR: `errno` 0 is an ACK, otherwise the positive errno.
    Ack { errno: i32 },
    /// NLMSG_DONE ends a dump; generic netlink may put a dump error here.
    Done { errno: i32 },
    /// NLMSG_NOOP / NLMSG_OVERRUN: nothing for us.
    Ignore,
    /// A family message (for generic netlink, starts with `genlmsghdr`).
    Data(&'a [u8]),
}

impl<'a> NlMessage<'a> {
    pub fn kind(&self) -> Result<NlKind<'a>, DecodeError> {
        match self.header.ty {
            NLMSG_ERROR => {
                let b = take(self.payload, 4, "nlmsgerr.error")?;
                let err = i32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
                Ok(NlKind::Ack {
                    errno: err.checked_neg().unwrap_or(i32::MAX),
                })
            }
            NLMSG_DONE => {
                // Old kernels send DONE without the int; treat that as success.
                let errno = match self.payload.get(..4) {
                    Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]])
                        .checked_neg()
                        .unwrap_or(i32::MAX),
                    None => 0,
                };
                Ok(NlKind::Done { errno })
            }
            NLMSG_NOOP | NLMSG_OVERRUN => Ok(NlKind::Ignore),
            _ => Ok(NlKind::Data(self.payload)),
        }
    }
}

/// Iterates the netlink messages in one receive buffer. Stops after the first error.
#[derive(Debug, Clone)]
pub struct NlMessages<'a> {
    buf: &'a [u8],
    failed: bool,
}

pub fn messages(buf: &[u8]) -> NlMessages<'_> {
    NlMessages { buf, failed: false }
}

impl<'a> Iterator for NlMessages<'a> {
    type Item = Result<NlMessage<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.buf.is_empty() {
            return None;
        }
        let r = (|| {
            let header = NlHeader::parse(self.buf)?;
            let len = header.len as usize;
            if len < NLMSG_HDRLEN || len > self.buf.len() {
                return Err(DecodeError::BadLength {
                    what: "nlmsghdr.nlmsg_len",
                    len,
                });
            }
            let payload = &self.buf[NLMSG_HDRLEN..len];
            let next = align4(len).min(self.buf.len());
            self.buf = &self.buf[next..];
            Ok(NlMessage { header, payload })
        })();
        if r.is_err() {
            self.failed = true;
        }
        Some(r)
    }
}

/// `struct genlmsghdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenlHeader {
    pub cmd: u8,
    pub version: u8,
}

/// Splits a generic-netlink payload into its header and attribute bytes.
pub fn split_genl(payload: &[u8]) -> Result<(GenlHeader, &[u8]), DecodeError> {
    let b = take(payload, GENL_HDRLEN, "genlmsghdr")?;
    Ok((
        GenlHeader {
            cmd: b[0],
            version: b[1],
        },
        &payload[GENL_HDRLEN..],
    ))
}

/// One attribute: type with the NESTED/NET_BYTEORDER bits masked off, and payload.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    pub ty: u16,
    pub payload: &'a [u8],
}

impl fmt::Debug for Attr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Attr({}, {:02x?})", self.ty, self.payload)
    }
}

/// Iterates attributes. Trailing bytes shorter than a header are ignored, as the kernel does.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    buf: &'a [u8],
    what: &'static str,
    failed: bool,
}

pub fn attrs<'a>(buf: &'a [u8], what: &'static str) -> Attrs<'a> {
    Attrs {
        buf,
        what,
        failed: false,
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<Attr<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.buf.len() < NLA_HDRLEN {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([self.buf[0], self.buf[1]]));
        let ty = u16::from_ne_bytes([self.buf[2], self.buf[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > self.buf.len() {
            self.failed = true;
            return Some(Err(DecodeError::BadLength {
                what: self.what,
                len,
            }));
        }
        let payload = &self.buf[NLA_HDRLEN..len];
        let next = align4(len).min(self.buf.len());
        self.buf = &self.buf[next..];
        Some(Ok(Attr { ty, payload }))
    }
}

impl<'a> Attr<'a> {
    fn fixed<const N: usize>(&self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let b = take(self.payload, N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }
    pub fn u8(&self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.fixed::<1>(what)?[0])
    }
    pub fn u16(&self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_ne_bytes(self.fixed(what)?))
    }
    pub fn be16(&self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.fixed(what)?))
    }
    pub fn u32(&self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_ne_bytes(self.fixed(what)?))
    }
    pub fn u64(&self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_ne_bytes(self.fixed(what)?))
    }
    /// A counter that is u32 in STATS and u64 in STATS64: read by length.
    pub fn counter(&self, what: &'static str) -> Result<u64, DecodeError> {
        match self.payload.len() {
            4..=7 => self.u32(what).map(u64::from),
            _ => self.u64(what),
        }
    }
    /// NUL-terminated string (the NUL and anything after it is dropped).
    pub fn string(&self, what: &'static str) -> Result<String, DecodeError> {
        let end = self
            .payload
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.payload.len());
        std::str::from_utf8(&self.payload[..end])
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8 { what })
    }
}

/// Appends attributes to a buffer, keeping 4-byte alignment.
#[derive(Debug, Default)]
pub struct AttrWriter {
    pub buf: Vec<u8>,
}

impl AttrWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, ty: u16, payload: &[u8]) {
        // Attribute payloads we build are at most a few hundred bytes.
        let len = u16::try_from(NLA_HDRLEN + payload.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() & 3 != 0 {
            self.buf.push(0);
        }
    }

    pub fn u8(&mut self, ty: u16, v: u8) {
        self.put(ty, &[v]);
    }
    pub fn u16(&mut self, ty: u16, v: u16) {
        self.put(ty, &v.to_ne_bytes());
    }
    pub fn be16(&mut self, ty: u16, v: u16) {
        self.put(ty, &v.to_be_bytes());
    }
    pub fn u32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_ne_bytes());
    }
    pub fn u64(&mut self, ty: u16, v: u64) {
        self.put(ty, &v.to_ne_bytes());
    }
    /// String with its mandatory NUL (NLA_NUL_STRING).
    pub fn string(&mut self, ty: u16, s: &str) {
        let mut b = Vec::with_capacity(s.len() + 1);
        b.extend_from_slice(s.as_bytes());
        b.push(0);
        self.put(ty, &b);
    }

    /// Writes a nest with NLA_F_NESTED (the kernel accepts it with or without).
    pub fn nest(&mut self, ty: u16, f: impl FnOnce(&mut AttrWriter)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0, 0, 0]);
        let mut inner = AttrWriter {
            buf: std::mem::take(&mut self.buf),
        };
        f(&mut inner);
        self.buf = inner.buf;
        let len = u16::try_from(self.buf.len() - start).unwrap_or(u16::MAX);
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }
}

/// Frames a generic-netlink message: nlmsghdr + genlmsghdr + attributes.
pub fn genl_message(
    family: u16,
    flags: u16,
    seq: u32,
    cmd: u8,
    version: u8,
    attrs: &[u8],
) -> Vec<u8> {
    let len = NLMSG_HDRLEN + GENL_HDRLEN + attrs.len();
    let mut out = Vec::with_capacity(len);
    NlHeader {
        len: u32::try_from(len).unwrap_or(u32::MAX),
        ty: family,
        flags,
        seq,
        pid: 0,
    }
    .write(&mut out);
    out.extend_from_slice(&[cmd, version, 0, 0]);
    out.extend_from_slice(attrs);
    out
}

/// CTRL_GETFAMILY request for `name` (REQUEST only: the reply or an error comes back).
pub fn get_family_request(name: &str, seq: u32) -> Vec<u8> {
    let mut w = AttrWriter::new();
    w.string(CTRL_ATTR_FAMILY_NAME, name);
    genl_message(
        GENL_ID_CTRL,
        NLM_F_REQUEST,
        seq,
        CTRL_CMD_GETFAMILY,
        1,
        &w.buf,
    )
}

/// The part of a CTRL_CMD_NEWFAMILY reply we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyInfo {
    pub id: u16,
    pub name: String,
    pub version: u32,
    pub max_attr: u32,
}

/// Parses a genl controller reply payload (after nlmsghdr).
pub fn parse_family(payload: &[u8]) -> Result<FamilyInfo, DecodeError> {
    let (_, body) = split_genl(payload)?;
    let mut id = None;
    let mut info = FamilyInfo {
        id: 0,
        name: String::new(),
        version: 0,
        max_attr: 0,
    };
    for a in attrs(body, "CTRL attributes") {
        let a = a?;
        match a.ty {
            CTRL_ATTR_FAMILY_ID => id = Some(a.u16("CTRL_ATTR_FAMILY_ID")?),
            CTRL_ATTR_FAMILY_NAME => info.name = a.string("CTRL_ATTR_FAMILY_NAME")?,
            CTRL_ATTR_VERSION => info.version = a.u32("CTRL_ATTR_VERSION")?,
            CTRL_ATTR_MAXATTR => info.max_attr = a.u32("CTRL_ATTR_MAXATTR")?,
            _ => {}
        }
    }
    info.id = id.ok_or(DecodeError::Truncated {
        what: "CTRL_ATTR_FAMILY_ID",
        needed: 2,
        available: 0,
    })?;
    Ok(info)
}
