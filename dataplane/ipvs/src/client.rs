//! The thin I/O layer: one NETLINK_GENERIC socket, used serially.
//!
//! Requests get a fresh sequence number and every reply is checked against it.
//! Writes can be pipelined: [`IpvsClient::execute_batch`] puts many requests in one
//! `send` (the kernel processes them in order and acknowledges each), which is what
//! makes programming large tables cheaper than one round trip per entry.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::codec::{
    Command, DaemonAttrs, DestAttrs, Info, IpvsMessage, ServiceAttrs, Timeouts, IPVS_GENL_NAME,
};
use crate::error::Error;
use crate::nl::{self, NlKind};
use crate::table::{KernelDest, KernelService, ServiceId};

/// Receive slot per datagram: the kernel sizes dump skbs from it, up to 32 KiB.
const DUMP_SLOT: usize = 32 * 1024;
/// Receive buffer: four dump datagrams (or 256 acknowledgements) per syscall.
const RECV_BUF: usize = 4 * DUMP_SLOT;
/// Socket buffers: room for the acknowledgements of a whole batch.
const SOCK_BUF: usize = 8 * 1024 * 1024;
/// Receive slot per acknowledgement in batches (an ack with NETLINK_CAP_ACK is 36 bytes).
const ACK_SLOT: usize = 512;
/// Requests per `send` in [`IpvsClient::execute_batch`].
const DEFAULT_BATCH: usize = 1024;

/// A client for kernel IPVS in the caller's network namespace.
#[derive(Debug)]
pub struct IpvsClient {
    sock: sys::Socket,
    family: u16,
    seq: u32,
    writes: u64,
    buf: Vec<u8>,
    batch_size: usize,
    /// Time spent in send/recv of write messages (the "netlink time" of a change).
    write_time: Duration,
    /// Receive slot per datagram for replies (`buf` holds several).
    dump_slot: usize,
}

/// Short description of the object a message is about, for errors.
pub fn describe(msg: &IpvsMessage) -> String {
    let svc = msg
        .service
        .as_ref()
        .and_then(ServiceId::from_attrs)
        .map(|id| format!("service {id}"));
    let dest = msg
        .dest
        .as_ref()
        .and_then(|d| {
            Some(crate::table::DestId {
                addr: d.addr?,
                port: d.port?,
            })
        })
        .map(|d| format!("destination {d}"));
    match (svc, dest) {
        (Some(s), Some(d)) => format!("{s} {d}"),
        (Some(s), None) => s,
        (None, Some(d)) => d,
        (None, None) => String::from("(global)"),
    }
}

impl IpvsClient {
    /// Opens the socket and resolves the IPVS family id (the kernel autoloads ip_vs
    /// on that lookup when the module is available).
    pub fn new() -> Result<Self, Error> {
        let mut c = Self::open()?;
        if let Err(Error::FamilyNotFound(_)) = c.resolve_family() {
            // The kernel's own autoload needs a modprobe helper that minimal
            // systems may lack; try once ourselves, as moby/ipvs does.
            let _ = std::process::Command::new("modprobe")
                .args(["-q", "ip_vs"])
                .status();
            c.resolve_family()?;
        }
        Ok(c)
    }

    /// Opens the socket without resolving the IPVS family (for [`IpvsClient::lookup_family`]
    /// on kernels without IPVS). Call [`IpvsClient::resolve_family`] before IPVS requests.
    pub fn open() -> Result<Self, Error> {
        let sock = sys::Socket::open().map_err(|source| Error::Socket {
            op: "socket(AF_NETLINK, NETLINK_GENERIC)",
            source,
        })?;
        // Bigger buffers are best effort (FORCE needs CAP_NET_ADMIN): size batches so
        // their acknowledgements fit what we got (an ack skb costs well under 2 KiB).
        let _ = sock.set_buffers(SOCK_BUF);
        let batch_size = sock
            .recv_buffer()
            .map(|b| (b / 2048).clamp(16, DEFAULT_BATCH))
            .unwrap_or(16);
        let _ = sock.set_cap_ack();
        sock.set_recv_timeout(Duration::from_secs(60))
            .map_err(|source| Error::Socket {
                op: "setsockopt(SO_RCVTIMEO)",
                source,
            })?;
        Ok(Self {
            sock,
            family: 0,
            seq: 0,
            writes: 0,
            buf: vec![0; RECV_BUF],
            batch_size,
            write_time: Duration::ZERO,
            dump_slot: DUMP_SLOT,
        })
    }

    /// The generic-netlink family id currently used.
    pub fn family_id(&self) -> u16 {
        self.family
    }

    /// Write messages sent so far (NEW/SET/DEL/ZERO/FLUSH/...), retries included.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Time spent sending write messages and reading their acknowledgements.
    pub fn write_time(&self) -> Duration {
        self.write_time
    }

    /// Requests per `send` in batches.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Requests per `send` in batches (at least 1).
    pub fn set_batch_size(&mut self, n: usize) {
        self.batch_size = n.max(1);
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Looks the IPVS family id up by name with CTRL_GETFAMILY and uses it from now on.
    pub fn resolve_family(&mut self) -> Result<u16, Error> {
        let id = self.lookup_family(IPVS_GENL_NAME)?;
        self.family = id;
        Ok(id)
    }

    /// Looks any generic-netlink family id up by name ([`Error::FamilyNotFound`] if unknown).
    pub fn lookup_family(&mut self, name: &str) -> Result<u16, Error> {
        let seq = self.next_seq();
        let req = nl::get_family_request(name, seq);
        self.send(&req, "send CTRL_GETFAMILY")?;
        let mut id = None;
        loop {
            let n = self.recv("recv CTRL_GETFAMILY")?;
            let buf = std::mem::take(&mut self.buf);
            let r = (|| {
                for m in nl::messages(&buf[..n]) {
                    let m = m.map_err(|source| decode_err("CTRL_GETFAMILY", source))?;
                    if m.header.seq != seq {
                        continue;
                    }
                    match m
                        .kind()
                        .map_err(|source| decode_err("CTRL_GETFAMILY", source))?
                    {
                        NlKind::Ack { errno: 0 } | NlKind::Done { .. } => return Ok(true),
                        NlKind::Ack { errno } if errno == libc::ENOENT => {
                            return Err(Error::FamilyNotFound(name.to_owned()))
                        }
                        NlKind::Ack { errno } => {
                            return Err(Error::Socket {
                                op: "CTRL_GETFAMILY",
                                source: std::io::Error::from_raw_os_error(errno),
                            })
                        }
                        NlKind::Data(p) => {
                            let f = nl::parse_family(p)
                                .map_err(|source| decode_err("CTRL_GETFAMILY", source))?;
                            id = Some(f.id);
                            // REQUEST without ACK: the family message is the whole answer.
                            return Ok(true);
                        }
                        NlKind::Ignore => {}
                    }
                }
                Ok(false)
            })();
            self.buf = buf;
            if r? {
                break;
            }
        }
        id.ok_or_else(|| Error::FamilyNotFound(name.to_owned()))
    }

    fn send(&mut self, bytes: &[u8], op: &'static str) -> Result<(), Error> {
        self.sock
            .send(bytes)
            .map_err(|source| Error::Socket { op, source })
    }

    fn recv(&mut self, op: &'static str) -> Result<usize, Error> {
        self.sock
            .recv(&mut self.buf)
            .map_err(|source| Error::Socket { op, source })
    }

    /// Re-resolves the family after ENOENT/EINVAL; true if the id changed (module reloaded).
    fn family_changed(&mut self) -> bool {
        let old = self.family;
        matches!(self.resolve_family(), Ok(id) if id != old)
    }

    /// Sends one request and returns the IPVS messages of its answer (none for a
    /// plain ACK, several for a dump). Retries once if the family id went stale.
    pub fn request(&mut self, msg: &IpvsMessage) -> Result<Vec<IpvsMessage>, Error> {
        match self.request_once(msg) {
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EINVAL)) => {
                if self.family_changed() {
                    self.request_once(msg)
                } else {
                    Err(e)
                }
            }
            r => r,
        }
    }

    fn request_once(&mut self, msg: &IpvsMessage) -> Result<Vec<IpvsMessage>, Error> {
        let mut m = msg.clone();
        let cmd = msg.cmd as u8;
        self.request_once_cmd(&mut m, cmd)
    }

    /// [`IpvsClient::request_once`] with the genl command byte given explicitly.
    fn request_once_cmd(
        &mut self,
        msg: &mut IpvsMessage,
        cmd: u8,
    ) -> Result<Vec<IpvsMessage>, Error> {
        let msg = &*msg;
        let flags = msg.request_flags();
        let seq = self.next_seq();
        let mut bytes = msg.encode(self.family, flags, seq);
        bytes[nl::NLMSG_HDRLEN] = cmd;
        let start = Instant::now();
        self.send(&bytes, "send")?;
        if msg.cmd.is_write() {
            self.writes += 1;
        }
        // Kernels < 3.18 omit DEST ADDR_FAMILY; replies then take the service's.
        let service_af = msg.service.as_ref().and_then(|s| s.af);
        let mut out = Vec::new();
        loop {
            // Several datagrams per syscall: a dump's next part (and its DONE) is
            // produced while the previous one is read, so one recvmmsg takes them all.
            let got = self
                .sock
                .recv_many(&mut self.buf, self.dump_slot)
                .map_err(|source| Error::Socket { op: "recv", source })?;
            let buf = std::mem::take(&mut self.buf);
            let r: Result<bool, Error> = (|| {
                for (slot, len) in got.iter().enumerate() {
                    let len = len.ok_or_else(|| Error::Socket {
                        op: "recv (truncated)",
                        source: std::io::Error::other("netlink datagram larger than its slot"),
                    })?;
                    let start = slot * self.dump_slot;
                    for m in nl::messages(&buf[start..start + len]) {
                        let m = m.map_err(|source| decode_err(msg.cmd.name(), source))?;
                        if m.header.seq != seq {
                            if seq_is_older(m.header.seq, seq) {
                                // Left over from an earlier request that failed half-way.
                                continue;
                            }
                            return Err(Error::Sequence {
                                expected: seq,
                                got: m.header.seq,
                            });
                        }
                        match m
                            .kind()
                            .map_err(|source| decode_err(msg.cmd.name(), source))?
                        {
                            NlKind::Ack { errno: 0 } => return Ok(true),
                            NlKind::Ack { errno } | NlKind::Done { errno } if errno != 0 => {
                                return Err(Error::Kernel {
                                    cmd: msg.cmd,
                                    object: describe(msg),
                                    errno,
                                })
                            }
                            NlKind::Done { .. } => return Ok(true),
                            NlKind::Data(p) => {
                                let decoded = match service_af {
                                    Some(af) => IpvsMessage::decode_with_service_af(p, af),
                                    None => IpvsMessage::decode(p),
                                }
                                .map_err(|source| decode_err(msg.cmd.name(), source))?;
                                out.push(decoded);
                            }
                            _ => {}
                        }
                    }
                }
                Ok(false)
            })();
            self.buf = buf;
            match r {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    // A dump left half-read keeps running in the kernel, and the next
                    // dump on this socket would get EBUSY: read it to its end first.
                    if flags & nl::NLM_F_DUMP == nl::NLM_F_DUMP
                        && matches!(
                            e,
                            Error::Decode { .. }
                                | Error::Socket {
                                    op: "recv (truncated)",
                                    ..
                                }
                        )
                        && !ends_dump(&self.buf, self.dump_slot, &got, seq)
                    {
                        self.drain_dump(seq);
                    }
                    return Err(e);
                }
            }
        }
        if msg.cmd.is_write() {
            self.write_time += start.elapsed();
        }
        Ok(out)
    }

    /// Reads and drops the rest of dump `seq`, up to its DONE (or an error answer).
    /// Best effort: a socket error (the receive timeout) ends it.
    fn drain_dump(&mut self, seq: u32) {
        while let Ok(got) = self.sock.recv_many(&mut self.buf, self.dump_slot) {
            if ends_dump(&self.buf, self.dump_slot, &got, seq) {
                return;
            }
        }
    }

    /// Test hook: dumps generic-netlink `family` command `cmd` through the IPVS reply
    /// path (replies of other families fail to decode), reading one `slot`-byte
    /// datagram per syscall. Proves on any kernel that a dump abandoned after a
    /// decode error is read to its end, so the socket stays usable.
    #[doc(hidden)]
    pub fn dump_foreign_family(
        &mut self,
        family: u16,
        cmd: u8,
        slot: usize,
    ) -> Result<usize, Error> {
        let saved = (self.family, self.dump_slot, std::mem::take(&mut self.buf));
        self.family = family;
        self.dump_slot = slot;
        self.buf = vec![0; slot];
        // GET_SERVICE without a service is a dump; only the command number differs.
        let mut m = IpvsMessage::new(Command::GetService);
        let r = self.request_once_cmd(&mut m, cmd);
        (self.family, self.dump_slot, self.buf) = saved;
        r.map(|v| v.len())
    }

    /// Sends a write and waits for its acknowledgement.
    pub fn execute(&mut self, msg: &IpvsMessage) -> Result<(), Error> {
        self.request(msg).map(|_| ())
    }

    /// Sends many writes pipelined (`batch_size` per `send`) and returns one result
    /// per message, in order. The kernel goes on after a failed message, so one
    /// error does not stop the others. Messages that fail with ENOENT/EINVAL are
    /// resent once if the family id turns out to have changed.
    pub fn execute_batch(&mut self, msgs: &[IpvsMessage]) -> Vec<Result<(), Error>> {
        let mut results = self.execute_batch_once(msgs);
        let stale: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                matches!(r, Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EINVAL)))
            })
            .map(|(i, _)| i)
            .collect();
        if !stale.is_empty() && self.family_changed() {
            let again: Vec<IpvsMessage> = stale.iter().map(|&i| msgs[i].clone()).collect();
            for (i, r) in stale.into_iter().zip(self.execute_batch_once(&again)) {
                results[i] = r;
            }
        }
        results
    }

    fn execute_batch_once(&mut self, msgs: &[IpvsMessage]) -> Vec<Result<(), Error>> {
        let family = self.family;
        let start = Instant::now();
        let results = self.pipeline(msgs.len(), &mut |i, seq| {
            msgs[i].encode(family, nl::NLM_F_REQUEST | nl::NLM_F_ACK, seq)
        });
        self.write_time += start.elapsed();
        self.writes += msgs.iter().filter(|m| m.cmd.is_write()).count() as u64;
        results
            .into_iter()
            .zip(msgs)
            .map(|(r, m)| match r {
                Ok(()) => Ok(()),
                Err(Failure::Errno(errno)) => Err(Error::Kernel {
                    cmd: m.cmd,
                    object: describe(m),
                    errno,
                }),
                Err(Failure::Local { op, detail }) => Err(Error::Socket {
                    op,
                    source: std::io::Error::other(detail),
                }),
            })
            .collect()
    }

    /// Sends `n` requests, `batch_size` per `send`, each framed by `encode(index, seq)`
    /// with NLM_F_ACK, and collects one acknowledgement per request. Replies other
    /// than acknowledgements (data) are skipped; unknown sequence numbers too.
    fn pipeline(
        &mut self,
        n: usize,
        encode: &mut dyn FnMut(usize, u32) -> Vec<u8>,
    ) -> Vec<Result<(), Failure>> {
        let mut results: Vec<Option<Result<(), Failure>>> = (0..n).map(|_| None).collect();
        let mut first = 0;
        while first < n {
            let last = (first + self.batch_size).min(n);
            let mut bytes = Vec::with_capacity((last - first) * 128);
            let mut by_seq = HashMap::with_capacity(last - first);
            for i in first..last {
                let seq = self.next_seq();
                by_seq.insert(seq, i);
                bytes.extend_from_slice(&encode(i, seq));
            }
            first = last;
            if let Err(e) = self.send(&bytes, "send batch") {
                let detail = e.to_string();
                for i in by_seq.into_values() {
                    results[i] = Some(Err(Failure::Local {
                        op: "send batch",
                        detail: detail.clone(),
                    }));
                }
                continue;
            }
            while !by_seq.is_empty() {
                // Many acknowledgements per syscall: one recvmsg per ack would cost
                // as much as the writes themselves.
                let got = match self.sock.recv_many(&mut self.buf, ACK_SLOT) {
                    Ok(got) => got,
                    Err(e) => {
                        // ENOBUFS (acks dropped) or the receive timeout: the rest is unknown.
                        let detail = e.to_string();
                        for (_, i) in by_seq.drain() {
                            results[i] = Some(Err(Failure::Local {
                                op: "recv batch acknowledgements",
                                detail: detail.clone(),
                            }));
                        }
                        break;
                    }
                };
                for (slot, len) in got.into_iter().enumerate() {
                    // A datagram longer than a slot is not an ack (data is skipped).
                    let Some(len) = len else { continue };
                    let start = slot * ACK_SLOT;
                    for m in nl::messages(&self.buf[start..start + len]) {
                        let Ok(m) = m else { break };
                        let Ok(NlKind::Ack { errno }) = m.kind() else {
                            continue;
                        };
                        let Some(i) = by_seq.remove(&m.header.seq) else {
                            continue;
                        };
                        results[i] = Some(if errno == 0 {
                            Ok(())
                        } else {
                            Err(Failure::Errno(errno))
                        });
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or(Err(Failure::Local {
                    op: "batch",
                    detail: "no acknowledgement".into(),
                }))
            })
            .collect()
    }

    /// Pipelines CTRL_GETFAMILY lookups of `names` (with ACK) through the batch path:
    /// one result per name, ENOENT for unknown ones. Exercises pipelining on any
    /// kernel, IPVS or not.
    #[doc(hidden)]
    pub fn pipeline_family_lookups(&mut self, names: &[&str]) -> Vec<Result<(), i32>> {
        self.pipeline(names.len(), &mut |i, seq| {
            let mut b = nl::get_family_request(names[i], seq);
            b[6] |= nl::NLM_F_ACK as u8;
            b
        })
        .into_iter()
        .map(|r| match r {
            Ok(()) => Ok(()),
            Err(Failure::Errno(e)) => Err(e),
            Err(Failure::Local { .. }) => Err(-1),
        })
        .collect()
    }

    /// All services (one dump), without destinations.
    pub fn services(&mut self) -> Result<Vec<ServiceAttrs>, Error> {
        let replies = self.request(&IpvsMessage::new(Command::GetService))?;
        Ok(replies.into_iter().filter_map(|m| m.service).collect())
    }

    /// One service by identity (ESRCH if missing).
    pub fn service(&mut self, id: &ServiceId) -> Result<Option<ServiceAttrs>, Error> {
        let replies =
            self.request(&IpvsMessage::new(Command::GetService).with_service(id.to_attrs()))?;
        Ok(replies.into_iter().find_map(|m| m.service))
    }

    /// The destinations of one service (one dump; empty if the service does not exist).
    pub fn dests(&mut self, id: &ServiceId) -> Result<Vec<DestAttrs>, Error> {
        let replies =
            self.request(&IpvsMessage::new(Command::GetDest).with_service(id.to_attrs()))?;
        Ok(replies.into_iter().filter_map(|m| m.dest).collect())
    }

    /// The whole table: one service dump, then one destination dump per service.
    /// Dumps are not snapshots: concurrent changes may be missed until the next dump.
    pub fn dump(&mut self) -> Result<Vec<KernelService>, Error> {
        let mut out = self.dump_services()?;
        for s in &mut out {
            s.dests = self.dump_dests(&s.id)?;
        }
        Ok(out)
    }

    /// All services as plain data, without destinations.
    pub fn dump_services(&mut self) -> Result<Vec<KernelService>, Error> {
        Ok(self
            .services()?
            .iter()
            .filter_map(KernelService::from_attrs)
            .collect())
    }

    /// The destinations of one service as plain data.
    pub fn dump_dests(&mut self, id: &ServiceId) -> Result<Vec<KernelDest>, Error> {
        Ok(self
            .dests(id)?
            .iter()
            .filter_map(KernelDest::from_attrs)
            .collect())
    }

    /// IPVS version and connection table size.
    pub fn info(&mut self) -> Result<Info, Error> {
        let r = self.request(&IpvsMessage::new(Command::GetInfo))?;
        Ok(r.into_iter().next().map(|m| m.info).unwrap_or_default())
    }

    /// TCP, TCP FIN and UDP connection timeouts.
    pub fn timeouts(&mut self) -> Result<Timeouts, Error> {
        let r = self.request(&IpvsMessage::new(Command::GetConfig))?;
        Ok(r.into_iter().next().map(|m| m.timeouts).unwrap_or_default())
    }

    /// Sets timeouts; `None` or 0 leaves one unchanged.
    pub fn set_timeouts(&mut self, t: Timeouts) -> Result<(), Error> {
        let mut m = IpvsMessage::new(Command::SetConfig);
        m.timeouts = t;
        self.execute(&m)
    }

    /// Zeroes the counters of one service, or of everything.
    pub fn zero(&mut self, id: Option<&ServiceId>) -> Result<(), Error> {
        let mut m = IpvsMessage::new(Command::Zero);
        m.service = id.map(ServiceId::to_attrs);
        self.execute(&m)
    }

    /// Deletes every service in the namespace. The dataplane never calls this.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.execute(&IpvsMessage::new(Command::Flush))
    }

    /// Running sync daemons.
    pub fn daemons(&mut self) -> Result<Vec<DaemonAttrs>, Error> {
        let r = self.request(&IpvsMessage::new(Command::GetDaemon))?;
        Ok(r.into_iter().filter_map(|m| m.daemon).collect())
    }

    /// Starts a sync daemon (STATE, MCAST_IFN and SYNC_ID are required).
    pub fn new_daemon(&mut self, d: DaemonAttrs) -> Result<(), Error> {
        self.execute(&IpvsMessage::new(Command::NewDaemon).with_daemon(d))
    }

    /// Stops the sync daemon in `state` (SYNC_MASTER or SYNC_BACKUP).
    pub fn del_daemon(&mut self, state: u32) -> Result<(), Error> {
        self.execute(
            &IpvsMessage::new(Command::DelDaemon).with_daemon(DaemonAttrs {
                state: Some(state),
                ..Default::default()
            }),
        )
    }
}

/// Why one pipelined request failed.
#[derive(Debug)]
enum Failure {
    Errno(i32),
    Local { op: &'static str, detail: String },
}

fn decode_err(context: &str, source: nl::DecodeError) -> Error {
    Error::Decode {
        context: context.to_owned(),
        source,
    }
}

/// Whether the datagrams of `got` (slots of `buf`) hold the end of dump `seq`.
fn ends_dump(buf: &[u8], slot_size: usize, got: &[Option<usize>], seq: u32) -> bool {
    got.iter().enumerate().any(|(slot, len)| {
        let Some(len) = len else { return false };
        let start = slot * slot_size;
        buf.get(start..start + len).is_some_and(|b| {
            nl::messages(b).flatten().any(|m| {
                m.header.seq == seq
                    && matches!(m.kind(), Ok(NlKind::Done { .. }) | Ok(NlKind::Ack { .. }))
            })
        })
    })
}

/// Whether sequence `a` was sent before `b` (with wrap-around).
fn seq_is_older(a: u32, b: u32) -> bool {
    let d = b.wrapping_sub(a);
    d != 0 && d < u32::MAX / 2
}

#[allow(unsafe_code)]
mod sys {
    //! The raw socket calls. Each `unsafe` block passes pointers to live, correctly
    //! sized local values or buffers.

    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::Duration;

    #[derive(Debug)]
    pub struct Socket(OwnedFd);

    fn kernel_addr() -> libc::sockaddr_nl {
        // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
        let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        a.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        a
    }

    impl Socket {
        pub fn open() -> io::Result<Self> {
            // SAFETY: plain syscall with constant arguments.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::NETLINK_GENERIC,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fd is a freshly created descriptor we own.
            let sock = Self(unsafe { OwnedFd::from_raw_fd(fd) });
            let addr = kernel_addr();
            // SAFETY: addr is a valid sockaddr_nl of the given size.
            let r = unsafe {
                libc::bind(
                    sock.0.as_raw_fd(),
                    (&addr as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(sock)
        }

        fn setsockopt<T>(&self, level: i32, name: i32, v: &T) -> io::Result<()> {
            // SAFETY: v points to a live T and its size is passed.
            let r = unsafe {
                libc::setsockopt(
                    self.0.as_raw_fd(),
                    level,
                    name,
                    (v as *const T).cast(),
                    std::mem::size_of::<T>() as libc::socklen_t,
                )
            };
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }

        /// FORCE variants need CAP_NET_ADMIN and ignore rmem_max; fall back to the plain ones.
        pub fn set_buffers(&self, bytes: usize) -> io::Result<()> {
            let v = i32::try_from(bytes).unwrap_or(i32::MAX);
            self.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &v)
                .or_else(|_| self.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF, &v))?;
            self.setsockopt(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &v)
                .or_else(|_| self.setsockopt(libc::SOL_SOCKET, libc::SO_SNDBUF, &v))
        }

        /// The receive buffer the kernel granted (SO_RCVBUF reads back the doubled value).
        pub fn recv_buffer(&self) -> io::Result<usize> {
            let mut v: i32 = 0;
            let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
            // SAFETY: v and len are live locals of the sizes passed.
            let r = unsafe {
                libc::getsockopt(
                    self.0.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&mut v as *mut i32).cast(),
                    &mut len,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(usize::try_from(v).unwrap_or(0))
        }

        /// Acknowledgements without a copy of the request: smaller, so more fit a batch.
        pub fn set_cap_ack(&self) -> io::Result<()> {
            self.setsockopt(libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, &1i32)
        }

        pub fn set_recv_timeout(&self, d: Duration) -> io::Result<()> {
            let tv = libc::timeval {
                tv_sec: d.as_secs() as libc::time_t,
                tv_usec: libc::suseconds_t::from(d.subsec_micros() as i32),
            };
            self.setsockopt(libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
        }

        pub fn send(&self, buf: &[u8]) -> io::Result<()> {
            let addr = kernel_addr();
            loop {
                // SAFETY: buf and addr are live for the call; sizes are theirs.
                let r = unsafe {
                    libc::sendto(
                        self.0.as_raw_fd(),
                        buf.as_ptr().cast(),
                        buf.len(),
                        0,
                        (&addr as *const libc::sockaddr_nl).cast(),
                        std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                    )
                };
                if r >= 0 {
                    return Ok(());
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }

        /// Up to `buf.len() / slot` datagrams in one recvmmsg (waits for the first only),
        /// each into its own `slot`-sized part of `buf`. Returns, per datagram received,
        /// its length, or `None` if it did not fit its slot.
        pub fn recv_many(&self, buf: &mut [u8], slot: usize) -> io::Result<Vec<Option<usize>>> {
            let n = (buf.len() / slot).clamp(1, 1024);
            let base = buf.as_mut_ptr();
            let mut iovs: Vec<libc::iovec> = (0..n)
                .map(|i| libc::iovec {
                    // SAFETY: i * slot + slot <= buf.len(), so the pointer stays in buf.
                    iov_base: unsafe { base.add(i * slot) }.cast(),
                    iov_len: slot,
                })
                .collect();
            // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
            let mut msgs: Vec<libc::mmsghdr> =
                (0..n).map(|_| unsafe { std::mem::zeroed() }).collect();
            for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
            }
            loop {
                // SAFETY: msgs and iovs live across the call and point into buf,
                // which is borrowed mutably for this whole function.
                let r = unsafe {
                    libc::recvmmsg(
                        self.0.as_raw_fd(),
                        msgs.as_mut_ptr(),
                        n as libc::c_uint,
                        libc::MSG_WAITFORONE,
                        std::ptr::null_mut(),
                    )
                };
                if r >= 0 {
                    return Ok(msgs[..r as usize]
                        .iter()
                        .map(|m| {
                            (m.msg_hdr.msg_flags & libc::MSG_TRUNC == 0)
                                .then_some(m.msg_len as usize)
                        })
                        .collect());
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }

        /// One datagram; an error if it did not fit the buffer (MSG_TRUNC reports its size).
        pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
            loop {
                // SAFETY: buf is a live, writable buffer of buf.len() bytes.
                let r = unsafe {
                    libc::recv(
                        self.0.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_TRUNC,
                    )
                };
                if r >= 0 {
                    let n = r as usize;
                    if n > buf.len() {
                        return Err(io::Error::other(format!(
                            "netlink datagram of {n} bytes truncated to {}",
                            buf.len()
                        )));
                    }
                    return Ok(n);
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}
