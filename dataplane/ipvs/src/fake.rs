//! [`FakeIpvs`]: an in-memory IPVS with the kernel's answers (EEXIST, ESRCH, ENOENT,
//! EINVAL for missing required attributes), for testing controller logic without a
//! kernel. Every message goes through encode + decode, so the codec is exercised too.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::apply::IpvsKernel;
use crate::client::describe;
use crate::codec::{Command, IpvsMessage, FWD_MASK};
use crate::director::DirectorHost;
use crate::error::Error;
use crate::sysctl::Sysctl;
use crate::table::{DestConfig, DestId, KernelDest, KernelService, ServiceConfig, ServiceId};

#[derive(Debug, Clone, Default)]
pub struct FakeIpvs {
    pub services: BTreeMap<ServiceId, KernelService>,
    /// Write messages received.
    pub writes: u64,
    /// Every write message received, decoded from the bytes that would go on the wire.
    pub log: Vec<IpvsMessage>,
    /// Dumps served (one per GET_SERVICE dump, one per GET_DEST dump).
    pub dumps: u64,
    /// Destinations dumps skip: kernel dumps are not snapshots and can miss entries.
    pub hidden: BTreeSet<(ServiceId, DestId)>,
}

impl FakeIpvs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a service as another tool (ipvsadm) would.
    pub fn insert(&mut self, s: KernelService) {
        self.services.insert(s.id, s);
    }

    /// Sets a destination's connection counters (what drains wait for).
    pub fn set_conns(&mut self, service: &ServiceId, dest: &DestId, active: u32, inactive: u32) {
        if let Some(d) = self
            .services
            .get_mut(service)
            .and_then(|s| s.dests.iter_mut().find(|d| d.id == *dest))
        {
            d.active_conns = active;
            d.inact_conns = inactive;
        }
    }

    fn exec(&mut self, msg: &IpvsMessage) -> Result<(), i32> {
        let svc = msg.service.as_ref();
        let id = svc.and_then(ServiceId::from_attrs);
        let full_service = |m: &IpvsMessage| -> Result<ServiceConfig, i32> {
            let s = m.service.as_ref().ok_or(libc::EINVAL)?;
            Ok(ServiceConfig {
                scheduler: s.sched_name.clone().ok_or(libc::EINVAL)?,
                flags: {
                    let f = s.flags.ok_or(libc::EINVAL)?;
                    f.flags & f.mask & !crate::codec::SVC_F_HASHED
                },
                timeout: s.timeout.ok_or(libc::EINVAL)?,
                netmask: s.netmask.ok_or(libc::EINVAL)?,
            })
        };
        let dest_id = |m: &IpvsMessage| -> Result<DestId, i32> {
            let d = m.dest.as_ref().ok_or(libc::EINVAL)?;
            Ok(DestId {
                addr: d.addr.ok_or(libc::EINVAL)?,
                port: d.port.ok_or(libc::EINVAL)?,
            })
        };
        let full_dest = |m: &IpvsMessage| -> Result<DestConfig, i32> {
            let d = m.dest.as_ref().ok_or(libc::EINVAL)?;
            Ok(DestConfig {
                fwd_method: d.fwd_method.ok_or(libc::EINVAL)? & FWD_MASK,
                weight: d.weight.ok_or(libc::EINVAL)?,
                u_thresh: d.u_thresh.ok_or(libc::EINVAL)?,
                l_thresh: d.l_thresh.ok_or(libc::EINVAL)?,
                tun_type: d.tun_type.unwrap_or(0),
                tun_port: d.tun_port.unwrap_or(0),
                tun_flags: d.tun_flags.unwrap_or(0),
            })
        };
        match msg.cmd {
            Command::Flush => {
                self.services.clear();
                Ok(())
            }
            Command::Zero => Ok(()),
            Command::NewService => {
                let id = id.ok_or(libc::EINVAL)?;
                let config = full_service(msg)?;
                if self.services.contains_key(&id) {
                    return Err(libc::EEXIST);
                }
                self.services.insert(
                    id,
                    KernelService {
                        id,
                        config,
                        dests: Vec::new(),
                        stats: Default::default(),
                    },
                );
                Ok(())
            }
            Command::SetService => {
                let id = id.ok_or(libc::EINVAL)?;
                let config = full_service(msg)?;
                let s = self.services.get_mut(&id).ok_or(libc::ESRCH)?;
                s.config = config;
                Ok(())
            }
            Command::DelService => {
                let id = id.ok_or(libc::EINVAL)?;
                self.services.remove(&id).map(|_| ()).ok_or(libc::ESRCH)
            }
            Command::NewDest | Command::SetDest | Command::DelDest => {
                let id = id.ok_or(libc::EINVAL)?;
                let did = dest_id(msg)?;
                let s = self.services.get_mut(&id).ok_or(libc::ESRCH)?;
                let pos = s.dests.iter().position(|d| d.id == did);
                match (msg.cmd, pos) {
                    (Command::NewDest, Some(_)) => Err(libc::EEXIST),
                    (Command::NewDest, None) => {
                        s.dests.push(KernelDest {
                            id: did,
                            config: full_dest(msg)?,
                            active_conns: 0,
                            inact_conns: 0,
                            persist_conns: 0,
                            stats: Default::default(),
                        });
                        Ok(())
                    }
                    (Command::SetDest, Some(i)) => {
                        s.dests[i].config = full_dest(msg)?;
                        Ok(())
                    }
                    (Command::DelDest, Some(i)) => {
                        s.dests.remove(i);
                        Ok(())
                    }
                    _ => Err(libc::ENOENT),
                }
            }
            _ => Err(libc::EOPNOTSUPP),
        }
    }
}

impl IpvsKernel for FakeIpvs {
    fn dump_services(&mut self) -> Result<Vec<KernelService>, Error> {
        self.dumps += 1;
        Ok(self
            .services
            .values()
            .map(|s| KernelService {
                dests: Vec::new(),
                ..s.clone()
            })
            .collect())
    }

    fn dump_dests(&mut self, id: &ServiceId) -> Result<Vec<KernelDest>, Error> {
        self.dumps += 1;
        // Like the kernel: a missing service gives an empty dump, not an error.
        Ok(self
            .services
            .get(id)
            .map(|s| {
                s.dests
                    .iter()
                    .filter(|d| !self.hidden.contains(&(*id, d.id)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    fn execute_batch(&mut self, msgs: &[IpvsMessage]) -> Vec<Result<(), Error>> {
        msgs.iter()
            .map(|m| {
                let bytes = m.encode(0x24, m.request_flags(), 1);
                let decoded = IpvsMessage::decode(&bytes[crate::nl::NLMSG_HDRLEN..])
                    .expect("our own encoding decodes");
                assert_eq!(&decoded, m, "codec round trip of a message we send");
                if decoded.cmd.is_write() {
                    self.writes += 1;
                }
                self.log.push(decoded.clone());
                self.exec(&decoded).map_err(|errno| Error::Kernel {
                    cmd: decoded.cmd,
                    object: describe(&decoded),
                    errno,
                })
            })
            .collect()
    }

    fn writes(&self) -> u64 {
        self.writes
    }

    fn write_time(&self) -> Duration {
        Duration::ZERO
    }
}

/// A fault to inject into [`FaultyIpvs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The kernel answers `errno` to `cmd` when it is about `service` (any service
    /// when `None`).
    Refuse {
        cmd: Command,
        service: Option<ServiceId>,
        errno: i32,
    },
    /// The services dump fails (EINTR, as a dump interrupted by a concurrent change).
    FailServiceDump,
    /// The destinations dump of `service` fails.
    FailDestDump(ServiceId),
    /// The socket is gone: every later call fails.
    DropSocket,
}

/// [`FakeIpvs`] that fails on demand, for the error paths a real kernel cannot be
/// made to take on cue.
#[derive(Debug, Clone, Default)]
pub struct FaultyIpvs {
    pub inner: FakeIpvs,
    pub faults: Vec<Fault>,
}

impl FaultyIpvs {
    pub fn new(inner: FakeIpvs) -> Self {
        Self {
            inner,
            faults: Vec::new(),
        }
    }

    pub fn with(mut self, fault: Fault) -> Self {
        self.faults.push(fault);
        self
    }

    fn dropped(&self) -> Option<Error> {
        self.faults
            .contains(&Fault::DropSocket)
            .then(|| Error::Socket {
                op: "sendmsg",
                source: std::io::Error::from_raw_os_error(libc::EBADF),
            })
    }

    fn refusal(&self, msg: &IpvsMessage) -> Option<i32> {
        let id = msg.service.as_ref().and_then(ServiceId::from_attrs);
        self.faults.iter().find_map(|f| match f {
            Fault::Refuse {
                cmd,
                service,
                errno,
            } if *cmd == msg.cmd && (service.is_none() || *service == id) => Some(*errno),
            _ => None,
        })
    }
}

impl IpvsKernel for FaultyIpvs {
    fn dump_services(&mut self) -> Result<Vec<KernelService>, Error> {
        if let Some(e) = self.dropped() {
            return Err(e);
        }
        if self.faults.contains(&Fault::FailServiceDump) {
            return Err(Error::Socket {
                op: "recvmsg (services dump)",
                source: std::io::Error::from_raw_os_error(libc::EINTR),
            });
        }
        self.inner.dump_services()
    }

    fn dump_dests(&mut self, id: &ServiceId) -> Result<Vec<KernelDest>, Error> {
        if let Some(e) = self.dropped() {
            return Err(e);
        }
        if self.faults.contains(&Fault::FailDestDump(*id)) {
            return Err(Error::Socket {
                op: "recvmsg (destinations dump)",
                source: std::io::Error::from_raw_os_error(libc::EINTR),
            });
        }
        self.inner.dump_dests(id)
    }

    fn execute_batch(&mut self, msgs: &[IpvsMessage]) -> Vec<Result<(), Error>> {
        msgs.iter()
            .map(|m| {
                if let Some(e) = self.dropped() {
                    return Err(e);
                }
                if let Some(errno) = self.refusal(m) {
                    self.inner.writes += u64::from(m.cmd.is_write());
                    return Err(Error::Kernel {
                        cmd: m.cmd,
                        object: describe(m),
                        errno,
                    });
                }
                self.inner
                    .execute_batch(std::slice::from_ref(m))
                    .pop()
                    .expect("one result per message")
            })
            .collect()
    }

    fn writes(&self) -> u64 {
        self.inner.writes
    }

    fn write_time(&self) -> Duration {
        Duration::ZERO
    }
}

/// An in-memory host: sysctl values and the last nft script, with failures on demand.
#[derive(Debug, Clone, Default)]
pub struct FakeHost {
    pub sysctls: BTreeMap<String, String>,
    pub nft_script: Option<String>,
    pub nft_loads: u64,
    /// Writing this sysctl fails (EACCES).
    pub fail_sysctl: Option<String>,
    /// Loading any nft script fails.
    pub fail_nft: bool,
}

impl DirectorHost for FakeHost {
    fn ensure_sysctls(&mut self, list: &[Sysctl]) -> Result<u64, Error> {
        let mut writes = 0;
        for s in list {
            if self.fail_sysctl.as_deref() == Some(s.path) {
                return Err(Error::Sysctl {
                    path: std::path::Path::new("/proc/sys").join(s.path),
                    source: std::io::Error::from_raw_os_error(libc::EACCES),
                });
            }
            if self.sysctls.get(s.path).map(String::as_str) != Some(s.value) {
                self.sysctls.insert(s.path.to_owned(), s.value.to_owned());
                writes += 1;
            }
        }
        Ok(writes)
    }

    fn load_nft(&mut self, script: &str) -> Result<(), Error> {
        if self.fail_nft {
            return Err(Error::Nft {
                table: crate::FULLNAT_TABLE,
                detail: "injected failure".into(),
            });
        }
        self.nft_script = Some(script.to_owned());
        self.nft_loads += 1;
        Ok(())
    }
}
