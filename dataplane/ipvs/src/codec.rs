//! IPVS generic-netlink messages (include/uapi/linux/ip_vs.h), as plain data.
//!
//! [`IpvsMessage`] mirrors the wire: every attribute is an `Option`, so requests
//! (identity-only or full entries) and kernel replies (with counters and stats) are
//! the same type, and every message round-trips. Byte-order traps are encoded in the
//! types: ports are big-endian, the v4 netmask is big-endian bytes while the v6
//! netmask is a host-order prefix length ([`Netmask`]), FLAGS is 8 bytes
//! flags+mask ([`Flags`]), and IPv4 addresses may arrive as 16 bytes.
//!
//! Decoding never panics: unknown attributes (and STATS PAD) are skipped, nests are
//! accepted with or without NLA_F_NESTED, and bad lengths are [`DecodeError`]s.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::nl::{self, attrs, split_genl, Attr, AttrWriter, DecodeError};

/// Generic-netlink family name and version of IPVS.
pub const IPVS_GENL_NAME: &str = "IPVS";
pub const IPVS_GENL_VERSION: u8 = 1;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// IPVS commands (`enum IPVS_CMD_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Command {
    NewService = 1,
    SetService = 2,
    DelService = 3,
    GetService = 4,
    NewDest = 5,
    SetDest = 6,
    DelDest = 7,
    GetDest = 8,
    NewDaemon = 9,
    DelDaemon = 10,
    GetDaemon = 11,
    SetConfig = 12,
    GetConfig = 13,
    /// Reply-only command of GET_INFO.
    SetInfo = 14,
    GetInfo = 15,
    Zero = 16,
    Flush = 17,
}

impl Command {
    pub const ALL: [Command; 17] = [
        Self::NewService,
        Self::SetService,
        Self::DelService,
        Self::GetService,
        Self::NewDest,
        Self::SetDest,
        Self::DelDest,
        Self::GetDest,
        Self::NewDaemon,
        Self::DelDaemon,
        Self::GetDaemon,
        Self::SetConfig,
        Self::GetConfig,
        Self::SetInfo,
        Self::GetInfo,
        Self::Zero,
        Self::Flush,
    ];

    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|c| *c as u8 == v)
    }

    /// ipvsadm-style name, for errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::NewService => "NEW_SERVICE",
            Self::SetService => "SET_SERVICE",
            Self::DelService => "DEL_SERVICE",
            Self::GetService => "GET_SERVICE",
            Self::NewDest => "NEW_DEST",
            Self::SetDest => "SET_DEST",
            Self::DelDest => "DEL_DEST",
            Self::GetDest => "GET_DEST",
            Self::NewDaemon => "NEW_DAEMON",
            Self::DelDaemon => "DEL_DAEMON",
            Self::GetDaemon => "GET_DAEMON",
            Self::SetConfig => "SET_CONFIG",
            Self::GetConfig => "GET_CONFIG",
            Self::SetInfo => "SET_INFO",
            Self::GetInfo => "GET_INFO",
            Self::Zero => "ZERO",
            Self::Flush => "FLUSH",
        }
    }

    /// Whether the command changes kernel state (counted as a write).
    pub fn is_write(self) -> bool {
        !matches!(
            self,
            Self::GetService
                | Self::GetDest
                | Self::GetDaemon
                | Self::GetConfig
                | Self::GetInfo
                | Self::SetInfo
        )
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// IPVS_CMD_ATTR_*
pub const CMD_ATTR_SERVICE: u16 = 1;
pub const CMD_ATTR_DEST: u16 = 2;
pub const CMD_ATTR_DAEMON: u16 = 3;
pub const CMD_ATTR_TIMEOUT_TCP: u16 = 4;
pub const CMD_ATTR_TIMEOUT_TCP_FIN: u16 = 5;
pub const CMD_ATTR_TIMEOUT_UDP: u16 = 6;

// IPVS_SVC_ATTR_*
pub const SVC_ATTR_AF: u16 = 1;
pub const SVC_ATTR_PROTOCOL: u16 = 2;
pub const SVC_ATTR_ADDR: u16 = 3;
pub const SVC_ATTR_PORT: u16 = 4;
pub const SVC_ATTR_FWMARK: u16 = 5;
pub const SVC_ATTR_SCHED_NAME: u16 = 6;
pub const SVC_ATTR_FLAGS: u16 = 7;
pub const SVC_ATTR_TIMEOUT: u16 = 8;
pub const SVC_ATTR_NETMASK: u16 = 9;
pub const SVC_ATTR_STATS: u16 = 10;
pub const SVC_ATTR_PE_NAME: u16 = 11;
pub const SVC_ATTR_STATS64: u16 = 12;

// IPVS_DEST_ATTR_*
pub const DEST_ATTR_ADDR: u16 = 1;
pub const DEST_ATTR_PORT: u16 = 2;
pub const DEST_ATTR_FWD_METHOD: u16 = 3;
pub const DEST_ATTR_WEIGHT: u16 = 4;
pub const DEST_ATTR_U_THRESH: u16 = 5;
pub const DEST_ATTR_L_THRESH: u16 = 6;
pub const DEST_ATTR_ACTIVE_CONNS: u16 = 7;
pub const DEST_ATTR_INACT_CONNS: u16 = 8;
pub const DEST_ATTR_PERSIST_CONNS: u16 = 9;
pub const DEST_ATTR_STATS: u16 = 10;
pub const DEST_ATTR_ADDR_FAMILY: u16 = 11;
pub const DEST_ATTR_STATS64: u16 = 12;
pub const DEST_ATTR_TUN_TYPE: u16 = 13;
pub const DEST_ATTR_TUN_PORT: u16 = 14;
pub const DEST_ATTR_TUN_FLAGS: u16 = 15;

// IPVS_DAEMON_ATTR_*
pub const DAEMON_ATTR_STATE: u16 = 1;
pub const DAEMON_ATTR_MCAST_IFN: u16 = 2;
pub const DAEMON_ATTR_SYNC_ID: u16 = 3;
pub const DAEMON_ATTR_SYNC_MAXLEN: u16 = 4;
pub const DAEMON_ATTR_MCAST_GROUP: u16 = 5;
pub const DAEMON_ATTR_MCAST_GROUP6: u16 = 6;
pub const DAEMON_ATTR_MCAST_PORT: u16 = 7;
pub const DAEMON_ATTR_MCAST_TTL: u16 = 8;

// IPVS_STATS_ATTR_*
pub const STATS_ATTR_CONNS: u16 = 1;
pub const STATS_ATTR_INPKTS: u16 = 2;
pub const STATS_ATTR_OUTPKTS: u16 = 3;
pub const STATS_ATTR_INBYTES: u16 = 4;
pub const STATS_ATTR_OUTBYTES: u16 = 5;
pub const STATS_ATTR_CPS: u16 = 6;
pub const STATS_ATTR_INPPS: u16 = 7;
pub const STATS_ATTR_OUTPPS: u16 = 8;
pub const STATS_ATTR_INBPS: u16 = 9;
pub const STATS_ATTR_OUTBPS: u16 = 10;
pub const STATS_ATTR_PAD: u16 = 11;

// IPVS_INFO_ATTR_* (top level of SET_INFO replies; the numbers overlap CMD_ATTR_*)
pub const INFO_ATTR_VERSION: u16 = 1;
pub const INFO_ATTR_CONN_TAB_SIZE: u16 = 2;

// Service flags (IP_VS_SVC_F_*).
pub const SVC_F_PERSISTENT: u32 = 0x1;
/// Kernel-owned: always set in replies. Mask it out when comparing.
pub const SVC_F_HASHED: u32 = 0x2;
pub const SVC_F_ONEPACKET: u32 = 0x4;
pub const SVC_F_SCHED1: u32 = 0x8;
pub const SVC_F_SCHED2: u32 = 0x10;
pub const SVC_F_SCHED3: u32 = 0x20;

// Forwarding methods (IP_VS_CONN_F_FWD_MASK values).
pub const FWD_MASQ: u32 = 0;
pub const FWD_LOCALNODE: u32 = 1;
pub const FWD_TUNNEL: u32 = 2;
pub const FWD_DROUTE: u32 = 3;
pub const FWD_MASK: u32 = 0x7;

// Tunnel types and encap flags.
pub const TUN_TYPE_IPIP: u8 = 0;
pub const TUN_TYPE_GUE: u8 = 1;
pub const TUN_TYPE_GRE: u8 = 2;
pub const TUN_F_NOCSUM: u16 = 0;
pub const TUN_F_CSUM: u16 = 1;
pub const TUN_F_REMCSUM: u16 = 2;

// Sync daemon states.
pub const SYNC_MASTER: u32 = 1;
pub const SYNC_BACKUP: u32 = 2;

/// Longest scheduler / persistence-engine / interface name, without the NUL.
pub const NAME_MAX: usize = 15;

/// `struct ip_vs_flags`: the kernel computes `(old & !mask) | (flags & mask)`.
/// A 4-byte FLAGS (mask 0) is a silent no-op, so we always send both words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flags {
    pub flags: u32,
    pub mask: u32,
}

impl Flags {
    /// Set exactly these flags (mask all ones), as ipvsadm does.
    pub fn exactly(flags: u32) -> Self {
        Self {
            flags,
            mask: u32::MAX,
        }
    }
}

/// Persistence netmask: IPv4 is a mask sent big-endian, IPv6 a host-order prefix length 1..=128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Netmask {
    V4(Ipv4Addr),
    V6Prefix(u32),
}

impl Netmask {
    /// The default when there is no persistence: /32 or /128.
    pub fn host(af: u16) -> Self {
        if af == AF_INET6 {
            Self::V6Prefix(128)
        } else {
            Self::V4(Ipv4Addr::BROADCAST)
        }
    }

    /// From a prefix length (clamped to 32 or 128).
    pub fn from_prefix(af: u16, prefix: u8) -> Self {
        if af == AF_INET6 {
            Self::V6Prefix(u32::from(prefix.min(128)))
        } else {
            let p = u32::from(prefix.min(32));
            let bits = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            Self::V4(Ipv4Addr::from(bits))
        }
    }

    fn wire(self) -> [u8; 4] {
        match self {
            Self::V4(a) => a.octets(),
            Self::V6Prefix(p) => p.to_ne_bytes(),
        }
    }
}

/// Traffic counters; STATS carries the narrow ones as u32 (wrapping), STATS64 all as u64.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Stats {
    pub conns: u64,
    pub inpkts: u64,
    pub outpkts: u64,
    pub inbytes: u64,
    pub outbytes: u64,
    pub cps: u64,
    pub inpps: u64,
    pub outpps: u64,
    pub inbps: u64,
    pub outbps: u64,
}

/// Attributes of IPVS_CMD_ATTR_SERVICE. Identity: `af` plus `fwmark`, or plus
/// `protocol`, `addr`, `port`. A full entry adds `sched_name`, `flags`, `timeout`, `netmask`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceAttrs {
    pub af: Option<u16>,
    pub protocol: Option<u16>,
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
    pub fwmark: Option<u32>,
    /// Open string: the kernel loads any `ip_vs_<name>` module, and says "none" for no scheduler.
    pub sched_name: Option<String>,
    pub flags: Option<Flags>,
    pub timeout: Option<u32>,
    pub netmask: Option<Netmask>,
    pub pe_name: Option<String>,
    pub stats: Option<Stats>,
    pub stats64: Option<Stats>,
}

/// Attributes of IPVS_CMD_ATTR_DEST. Identity: `addr`, `port` (and `addr_family`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestAttrs {
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
    /// Forwarding method (FWD_*); the kernel masks it with 0x7.
    pub fwd_method: Option<u32>,
    pub weight: Option<u32>,
    pub u_thresh: Option<u32>,
    pub l_thresh: Option<u32>,
    pub active_conns: Option<u32>,
    pub inact_conns: Option<u32>,
    pub persist_conns: Option<u32>,
    pub stats: Option<Stats>,
    pub addr_family: Option<u16>,
    pub stats64: Option<Stats>,
    pub tun_type: Option<u8>,
    /// Big-endian on the wire.
    pub tun_port: Option<u16>,
    pub tun_flags: Option<u16>,
}

/// Attributes of IPVS_CMD_ATTR_DAEMON (connection sync daemon).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaemonAttrs {
    pub state: Option<u32>,
    pub mcast_ifn: Option<String>,
    pub sync_id: Option<u32>,
    pub sync_maxlen: Option<u16>,
    pub mcast_group: Option<Ipv4Addr>,
    pub mcast_group6: Option<Ipv6Addr>,
    /// Host order (the kernel adds the thread id, then converts).
    pub mcast_port: Option<u16>,
    pub mcast_ttl: Option<u8>,
}

/// Connection timeouts in seconds (SET_CONFIG / GET_CONFIG). 0 or absent = unchanged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp: Option<u32>,
    pub tcp_fin: Option<u32>,
    pub udp: Option<u32>,
}

/// GET_INFO reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Info {
    /// 0x010201 = "1.2.1".
    pub version: Option<u32>,
    pub conn_tab_size: Option<u32>,
}

/// One IPVS message, request or reply. For [`Command::SetInfo`] only `info` is
/// used (its attribute numbers overlap the command attributes); otherwise `info` is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsMessage {
    pub cmd: Command,
    pub service: Option<ServiceAttrs>,
    pub dest: Option<DestAttrs>,
    pub daemon: Option<DaemonAttrs>,
    pub timeouts: Timeouts,
    pub info: Info,
}

impl IpvsMessage {
    pub fn new(cmd: Command) -> Self {
        Self {
            cmd,
            service: None,
            dest: None,
            daemon: None,
            timeouts: Timeouts::default(),
            info: Info::default(),
        }
    }

    pub fn with_service(mut self, s: ServiceAttrs) -> Self {
        self.service = Some(s);
        self
    }

    pub fn with_dest(mut self, d: DestAttrs) -> Self {
        self.dest = Some(d);
        self
    }

    pub fn with_daemon(mut self, d: DaemonAttrs) -> Self {
        self.daemon = Some(d);
        self
    }

    /// The netlink flags a request for this message needs: DUMP for the dump-only
    /// commands (and GET_SERVICE without identity), ACK for the rest.
    pub fn request_flags(&self) -> u16 {
        let dump = match self.cmd {
            Command::GetDest | Command::GetDaemon => true,
            Command::GetService => self.service.is_none(),
            _ => false,
        };
        if dump {
            nl::NLM_F_REQUEST | nl::NLM_F_DUMP
        } else {
            nl::NLM_F_REQUEST | nl::NLM_F_ACK
        }
    }

    /// Encodes a full netlink message.
    pub fn encode(&self, family: u16, flags: u16, seq: u32) -> Vec<u8> {
        let mut w = AttrWriter::new();
        self.encode_attrs(&mut w);
        nl::genl_message(
            family,
            flags,
            seq,
            self.cmd as u8,
            IPVS_GENL_VERSION,
            &w.buf,
        )
    }

    /// Encodes the attributes only (after genlmsghdr).
    pub fn encode_attrs(&self, w: &mut AttrWriter) {
        if self.cmd == Command::SetInfo {
            if let Some(v) = self.info.version {
                w.u32(INFO_ATTR_VERSION, v);
            }
            if let Some(v) = self.info.conn_tab_size {
                w.u32(INFO_ATTR_CONN_TAB_SIZE, v);
            }
            return;
        }
        if let Some(s) = &self.service {
            w.nest(CMD_ATTR_SERVICE, |w| encode_service(s, w));
        }
        if let Some(d) = &self.dest {
            w.nest(CMD_ATTR_DEST, |w| encode_dest(d, w));
        }
        if let Some(d) = &self.daemon {
            w.nest(CMD_ATTR_DAEMON, |w| encode_daemon(d, w));
        }
        if let Some(v) = self.timeouts.tcp {
            w.u32(CMD_ATTR_TIMEOUT_TCP, v);
        }
        if let Some(v) = self.timeouts.tcp_fin {
            w.u32(CMD_ATTR_TIMEOUT_TCP_FIN, v);
        }
        if let Some(v) = self.timeouts.udp {
            w.u32(CMD_ATTR_TIMEOUT_UDP, v);
        }
    }

    /// Decodes a generic-netlink payload (genlmsghdr + attributes).
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let (hdr, body) = split_genl(payload)?;
        let cmd = Command::from_u8(hdr.cmd).ok_or(DecodeError::UnknownCommand(hdr.cmd))?;
        let mut m = Self::new(cmd);
        if cmd == Command::SetInfo {
            for a in attrs(body, "IPVS_INFO attributes") {
                let a = a?;
                match a.ty {
                    INFO_ATTR_VERSION => m.info.version = Some(a.u32("IPVS_INFO_ATTR_VERSION")?),
                    INFO_ATTR_CONN_TAB_SIZE => {
                        m.info.conn_tab_size = Some(a.u32("IPVS_INFO_ATTR_CONN_TAB_SIZE")?)
                    }
                    _ => {}
                }
            }
            return Ok(m);
        }
        let mut dest_raw = None;
        for a in attrs(body, "IPVS_CMD attributes") {
            let a = a?;
            match a.ty {
                CMD_ATTR_SERVICE => m.service = Some(decode_service(a.payload)?),
                CMD_ATTR_DEST => dest_raw = Some(a.payload),
                CMD_ATTR_DAEMON => m.daemon = Some(decode_daemon(a.payload)?),
                CMD_ATTR_TIMEOUT_TCP => m.timeouts.tcp = Some(a.u32("IPVS_CMD_ATTR_TIMEOUT_TCP")?),
                CMD_ATTR_TIMEOUT_TCP_FIN => {
                    m.timeouts.tcp_fin = Some(a.u32("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN")?)
                }
                CMD_ATTR_TIMEOUT_UDP => m.timeouts.udp = Some(a.u32("IPVS_CMD_ATTR_TIMEOUT_UDP")?),
                _ => {}
            }
        }
        if let Some(raw) = dest_raw {
            // Without ADDR_FAMILY the destination's family is the service's.
            let ctx_af = m.service.as_ref().and_then(|s| s.af);
            m.dest = Some(decode_dest(raw, ctx_af)?);
        }
        Ok(m)
    }

    /// Like [`IpvsMessage::decode`], but a destination without ADDR_FAMILY and
    /// without a service nest (GET_DEST dump replies on kernels < 3.18) takes `service_af`.
    pub fn decode_with_service_af(payload: &[u8], service_af: u16) -> Result<Self, DecodeError> {
        let mut m = Self::decode(payload)?;
        if let Some(d) = &mut m.dest {
            if d.addr_family.is_none() && service_af == AF_INET {
                if let Some(IpAddr::V6(a)) = d.addr {
                    let o = a.octets();
                    d.addr = Some(IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], o[3])));
                }
            }
        }
        Ok(m)
    }
}

fn addr_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Reads an address: 4 bytes is IPv4; 16 bytes is IPv6 unless `af` says IPv4, in
/// which case the kernel put it in the first 4 bytes and zero-filled the rest.
fn decode_addr(a: &Attr<'_>, af: Option<u16>, what: &'static str) -> Result<IpAddr, DecodeError> {
    let p = a.payload;
    match p.len() {
        4 => Ok(IpAddr::V4(Ipv4Addr::new(p[0], p[1], p[2], p[3]))),
        16 if af == Some(AF_INET) => Ok(IpAddr::V4(Ipv4Addr::new(p[0], p[1], p[2], p[3]))),
        16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(p);
            Ok(IpAddr::V6(Ipv6Addr::from(o)))
        }
        len => Err(DecodeError::BadLength { what, len }),
    }
}

fn encode_stats(s: &Stats, wide: bool, w: &mut AttrWriter) {
    let narrow = |w: &mut AttrWriter, ty: u16, v: u64| {
        if wide {
            w.u64(ty, v)
        } else {
            // STATS is the (wrapping) 32-bit view of the kernel's 64-bit counters.
            w.u32(ty, v as u32)
        }
    };
    narrow(w, STATS_ATTR_CONNS, s.conns);
    narrow(w, STATS_ATTR_INPKTS, s.inpkts);
    narrow(w, STATS_ATTR_OUTPKTS, s.outpkts);
    w.u64(STATS_ATTR_INBYTES, s.inbytes);
    w.u64(STATS_ATTR_OUTBYTES, s.outbytes);
    narrow(w, STATS_ATTR_CPS, s.cps);
    narrow(w, STATS_ATTR_INPPS, s.inpps);
    narrow(w, STATS_ATTR_OUTPPS, s.outpps);
    narrow(w, STATS_ATTR_INBPS, s.inbps);
    narrow(w, STATS_ATTR_OUTBPS, s.outbps);
}

fn decode_stats(buf: &[u8]) -> Result<Stats, DecodeError> {
    let mut s = Stats::default();
    for a in attrs(buf, "IPVS_STATS attributes") {
        let a = a?;
        let field = match a.ty {
            STATS_ATTR_CONNS => &mut s.conns,
            STATS_ATTR_INPKTS => &mut s.inpkts,
            STATS_ATTR_OUTPKTS => &mut s.outpkts,
            STATS_ATTR_INBYTES => &mut s.inbytes,
            STATS_ATTR_OUTBYTES => &mut s.outbytes,
            STATS_ATTR_CPS => &mut s.cps,
            STATS_ATTR_INPPS => &mut s.inpps,
            STATS_ATTR_OUTPPS => &mut s.outpps,
            STATS_ATTR_INBPS => &mut s.inbps,
            STATS_ATTR_OUTBPS => &mut s.outbps,
            // PAD (zero-length, from nla_put_u64_64bit) and future counters.
            _ => continue,
        };
        *field = a.counter("IPVS_STATS_ATTR value")?;
    }
    Ok(s)
}

fn encode_service(s: &ServiceAttrs, w: &mut AttrWriter) {
    if let Some(v) = s.af {
        w.u16(SVC_ATTR_AF, v);
    }
    if let Some(v) = s.protocol {
        w.u16(SVC_ATTR_PROTOCOL, v);
    }
    if let Some(v) = s.addr {
        w.put(SVC_ATTR_ADDR, &addr_bytes(v));
    }
    if let Some(v) = s.port {
        w.be16(SVC_ATTR_PORT, v);
    }
    if let Some(v) = s.fwmark {
        w.u32(SVC_ATTR_FWMARK, v);
    }
    if let Some(v) = &s.sched_name {
        w.string(SVC_ATTR_SCHED_NAME, v);
    }
    if let Some(v) = s.flags {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&v.flags.to_ne_bytes());
        b[4..].copy_from_slice(&v.mask.to_ne_bytes());
        w.put(SVC_ATTR_FLAGS, &b);
    }
    if let Some(v) = s.timeout {
        w.u32(SVC_ATTR_TIMEOUT, v);
    }
    if let Some(v) = s.netmask {
        w.put(SVC_ATTR_NETMASK, &v.wire());
    }
    if let Some(v) = &s.pe_name {
        w.string(SVC_ATTR_PE_NAME, v);
    }
    if let Some(v) = &s.stats {
        w.nest(SVC_ATTR_STATS, |w| encode_stats(v, false, w));
    }
    if let Some(v) = &s.stats64 {
        w.nest(SVC_ATTR_STATS64, |w| encode_stats(v, true, w));
    }
}

fn decode_service(buf: &[u8]) -> Result<ServiceAttrs, DecodeError> {
    let mut s = ServiceAttrs::default();
    // Address and netmask depend on AF, which may come in any order: read them last.
    let mut addr = None;
    let mut netmask = None;
    for a in attrs(buf, "IPVS_SVC attributes") {
        let a = a?;
        match a.ty {
            SVC_ATTR_AF => s.af = Some(a.u16("IPVS_SVC_ATTR_AF")?),
            SVC_ATTR_PROTOCOL => s.protocol = Some(a.u16("IPVS_SVC_ATTR_PROTOCOL")?),
            SVC_ATTR_ADDR => addr = Some(a),
            SVC_ATTR_PORT => s.port = Some(a.be16("IPVS_SVC_ATTR_PORT")?),
            SVC_ATTR_FWMARK => s.fwmark = Some(a.u32("IPVS_SVC_ATTR_FWMARK")?),
            SVC_ATTR_SCHED_NAME => s.sched_name = Some(a.string("IPVS_SVC_ATTR_SCHED_NAME")?),
            SVC_ATTR_FLAGS => {
                // The kernel zero-fills a short FLAGS; do the same.
                let mut b = [0u8; 8];
                let n = a.payload.len().min(8);
                b[..n].copy_from_slice(&a.payload[..n]);
                s.flags = Some(Flags {
                    flags: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
                    mask: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
                });
            }
            SVC_ATTR_TIMEOUT => s.timeout = Some(a.u32("IPVS_SVC_ATTR_TIMEOUT")?),
            SVC_ATTR_NETMASK => netmask = Some(a),
            SVC_ATTR_PE_NAME => s.pe_name = Some(a.string("IPVS_SVC_ATTR_PE_NAME")?),
            SVC_ATTR_STATS => s.stats = Some(decode_stats(a.payload)?),
            SVC_ATTR_STATS64 => s.stats64 = Some(decode_stats(a.payload)?),
            _ => {}
        }
    }
    if let Some(a) = addr {
        s.addr = Some(decode_addr(&a, s.af, "IPVS_SVC_ATTR_ADDR")?);
    }
    if let Some(a) = netmask {
        let b: [u8; 4] =
            a.payload
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or(DecodeError::BadLength {
                    what: "IPVS_SVC_ATTR_NETMASK",
                    len: a.payload.len(),
                })?;
        s.netmask = Some(if s.af == Some(AF_INET6) {
            Netmask::V6Prefix(u32::from_ne_bytes(b))
        } else {
            Netmask::V4(Ipv4Addr::from(b))
        });
    }
    Ok(s)
}

fn encode_dest(d: &DestAttrs, w: &mut AttrWriter) {
    // Order as in Seesaw's golden vector: ADDR_FAMILY first.
    if let Some(v) = d.addr_family {
        w.u16(DEST_ATTR_ADDR_FAMILY, v);
    }
    if let Some(v) = d.addr {
        w.put(DEST_ATTR_ADDR, &addr_bytes(v));
    }
    if let Some(v) = d.port {
        w.be16(DEST_ATTR_PORT, v);
    }
    if let Some(v) = d.fwd_method {
        w.u32(DEST_ATTR_FWD_METHOD, v);
    }
    if let Some(v) = d.weight {
        w.u32(DEST_ATTR_WEIGHT, v);
    }
    if let Some(v) = d.u_thresh {
        w.u32(DEST_ATTR_U_THRESH, v);
    }
    if let Some(v) = d.l_thresh {
        w.u32(DEST_ATTR_L_THRESH, v);
    }
    if let Some(v) = d.tun_type {
        w.u8(DEST_ATTR_TUN_TYPE, v);
    }
    if let Some(v) = d.tun_port {
        w.be16(DEST_ATTR_TUN_PORT, v);
    }
    if let Some(v) = d.tun_flags {
        w.u16(DEST_ATTR_TUN_FLAGS, v);
    }
    if let Some(v) = d.active_conns {
        w.u32(DEST_ATTR_ACTIVE_CONNS, v);
    }
    if let Some(v) = d.inact_conns {
        w.u32(DEST_ATTR_INACT_CONNS, v);
    }
    if let Some(v) = d.persist_conns {
        w.u32(DEST_ATTR_PERSIST_CONNS, v);
    }
    if let Some(v) = &d.stats {
        w.nest(DEST_ATTR_STATS, |w| encode_stats(v, false, w));
    }
    if let Some(v) = &d.stats64 {
        w.nest(DEST_ATTR_STATS64, |w| encode_stats(v, true, w));
    }
}

fn decode_dest(buf: &[u8], ctx_af: Option<u16>) -> Result<DestAttrs, DecodeError> {
    let mut d = DestAttrs::default();
    let mut addr = None;
    for a in attrs(buf, "IPVS_DEST attributes") {
        let a = a?;
        match a.ty {
            DEST_ATTR_ADDR => addr = Some(a),
            DEST_ATTR_PORT => d.port = Some(a.be16("IPVS_DEST_ATTR_PORT")?),
            DEST_ATTR_FWD_METHOD => d.fwd_method = Some(a.u32("IPVS_DEST_ATTR_FWD_METHOD")?),
            DEST_ATTR_WEIGHT => d.weight = Some(a.u32("IPVS_DEST_ATTR_WEIGHT")?),
            DEST_ATTR_U_THRESH => d.u_thresh = Some(a.u32("IPVS_DEST_ATTR_U_THRESH")?),
            DEST_ATTR_L_THRESH => d.l_thresh = Some(a.u32("IPVS_DEST_ATTR_L_THRESH")?),
            DEST_ATTR_ACTIVE_CONNS => d.active_conns = Some(a.u32("IPVS_DEST_ATTR_ACTIVE_CONNS")?),
            DEST_ATTR_INACT_CONNS => d.inact_conns = Some(a.u32("IPVS_DEST_ATTR_INACT_CONNS")?),
            DEST_ATTR_PERSIST_CONNS => {
                d.persist_conns = Some(a.u32("IPVS_DEST_ATTR_PERSIST_CONNS")?)
            }
            DEST_ATTR_STATS => d.stats = Some(decode_stats(a.payload)?),
            DEST_ATTR_ADDR_FAMILY => d.addr_family = Some(a.u16("IPVS_DEST_ATTR_ADDR_FAMILY")?),
            DEST_ATTR_STATS64 => d.stats64 = Some(decode_stats(a.payload)?),
            DEST_ATTR_TUN_TYPE => d.tun_type = Some(a.u8("IPVS_DEST_ATTR_TUN_TYPE")?),
            DEST_ATTR_TUN_PORT => d.tun_port = Some(a.be16("IPVS_DEST_ATTR_TUN_PORT")?),
            DEST_ATTR_TUN_FLAGS => d.tun_flags = Some(a.u16("IPVS_DEST_ATTR_TUN_FLAGS")?),
            _ => {}
        }
    }
    if let Some(a) = addr {
        let af = d.addr_family.or(ctx_af);
        d.addr = Some(decode_addr(&a, af, "IPVS_DEST_ATTR_ADDR")?);
    }
    Ok(d)
}

fn encode_daemon(d: &DaemonAttrs, w: &mut AttrWriter) {
    if let Some(v) = d.state {
        w.u32(DAEMON_ATTR_STATE, v);
    }
    if let Some(v) = &d.mcast_ifn {
        w.string(DAEMON_ATTR_MCAST_IFN, v);
    }
    if let Some(v) = d.sync_id {
        w.u32(DAEMON_ATTR_SYNC_ID, v);
    }
    if let Some(v) = d.sync_maxlen {
        w.u16(DAEMON_ATTR_SYNC_MAXLEN, v);
    }
    if let Some(v) = d.mcast_group {
        w.put(DAEMON_ATTR_MCAST_GROUP, &v.octets());
    }
    if let Some(v) = d.mcast_group6 {
        w.put(DAEMON_ATTR_MCAST_GROUP6, &v.octets());
    }
    if let Some(v) = d.mcast_port {
        w.u16(DAEMON_ATTR_MCAST_PORT, v);
    }
    if let Some(v) = d.mcast_ttl {
        w.u8(DAEMON_ATTR_MCAST_TTL, v);
    }
}

fn decode_daemon(buf: &[u8]) -> Result<DaemonAttrs, DecodeError> {
    let mut d = DaemonAttrs::default();
    for a in attrs(buf, "IPVS_DAEMON attributes") {
        let a = a?;
        match a.ty {
            DAEMON_ATTR_STATE => d.state = Some(a.u32("IPVS_DAEMON_ATTR_STATE")?),
            DAEMON_ATTR_MCAST_IFN => d.mcast_ifn = Some(a.string("IPVS_DAEMON_ATTR_MCAST_IFN")?),
            DAEMON_ATTR_SYNC_ID => d.sync_id = Some(a.u32("IPVS_DAEMON_ATTR_SYNC_ID")?),
            DAEMON_ATTR_SYNC_MAXLEN => d.sync_maxlen = Some(a.u16("IPVS_DAEMON_ATTR_SYNC_MAXLEN")?),
            DAEMON_ATTR_MCAST_GROUP => {
                let b = a.u32("IPVS_DAEMON_ATTR_MCAST_GROUP")?.to_ne_bytes();
                d.mcast_group = Some(Ipv4Addr::from(b));
            }
            DAEMON_ATTR_MCAST_GROUP6 => {
                let b: [u8; 16] = a.payload.get(..16).and_then(|b| b.try_into().ok()).ok_or(
                    DecodeError::BadLength {
                        what: "IPVS_DAEMON_ATTR_MCAST_GROUP6",
                        len: a.payload.len(),
                    },
                )?;
                d.mcast_group6 = Some(Ipv6Addr::from(b));
            }
            DAEMON_ATTR_MCAST_PORT => d.mcast_port = Some(a.u16("IPVS_DAEMON_ATTR_MCAST_PORT")?),
            DAEMON_ATTR_MCAST_TTL => d.mcast_ttl = Some(a.u8("IPVS_DAEMON_ATTR_MCAST_TTL")?),
            _ => {}
        }
    }
    Ok(d)
}
