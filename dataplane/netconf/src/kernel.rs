//! The kernel touchpoints of netconf behind [`NetKernel`]: [`RtNetlink`] (rtnetlink
//! for links and addresses, /proc/sys for sysctls); with the `testing` feature,
//! `FakeNet` (in memory) and `FaultyNet` (fails chosen operations).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, CacheInfo,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::LinkUnspec;

use crate::desired::LocalAddress;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("rtnetlink {op}: {message}")]
    Netlink { op: String, message: String },
    #[error("no interface named {0}")]
    NoSuchLink(String),
    #[error("sysctl {path}: {message}")]
    Sysctl { path: String, message: String },
    #[error("{0}")]
    Injected(String),
}

/// What netconf reads and writes.
pub trait NetKernel: Send {
    /// Every address of every link.
    fn addresses(&mut self) -> Result<BTreeSet<LocalAddress>, NetError>;
    fn add_address(&mut self, a: &LocalAddress) -> Result<(), NetError>;
    fn del_address(&mut self, a: &LocalAddress) -> Result<(), NetError>;
    /// Every link by name, and whether it is up.
    fn links(&mut self) -> Result<BTreeMap<String, bool>, NetError>;
    fn set_link_up(&mut self, name: &str, up: bool) -> Result<(), NetError>;
    /// A sysctl's value (trimmed); `None` when there is no such sysctl.
    fn read_sysctl(&mut self, path: &str) -> Result<Option<String>, NetError>;
    fn write_sysctl(&mut self, path: &str, value: &str) -> Result<(), NetError>;
    /// Tells the segment `a` is here now (gratuitous ARP, unsolicited neighbour
    /// advertisement), at once and a few times after: see [`crate::announce`].
    fn announce(&mut self, a: &LocalAddress) -> Result<(), NetError>;
    /// `a` left its interface: stop repeating its announcement.
    fn withdraw(&mut self, a: &LocalAddress);
}

/// The real kernel of the calling thread's network namespace (the netlink socket is
/// opened there, and /proc/sys/net shows the opening thread's namespace).
/// Blocking: runs rtnetlink on a runtime of its own, so call it from a plain thread
/// (or `spawn_blocking`), not from inside an async task.
#[derive(Debug)]
pub struct RtNetlink {
    rt: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
    proc_sys: PathBuf,
    announcer: crate::announce::Announcer,
}

fn nl_err(op: &str) -> impl Fn(rtnetlink::Error) -> NetError + '_ {
    move |e| NetError::Netlink {
        op: op.to_owned(),
        message: e.to_string(),
    }
}

impl RtNetlink {
    /// Sysctls under `root` instead of /proc/sys (in a container: the host's
    /// /proc/sys/net mounted read-write below `root`).
    pub fn with_proc_sys(mut self, root: impl Into<PathBuf>) -> Self {
        self.proc_sys = root.into();
        self
    }

    pub fn new() -> Result<Self, NetError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| NetError::Netlink {
                op: "runtime".into(),
                message: e.to_string(),
            })?;
        let (conn, handle, _) =
            rt.block_on(async { rtnetlink::new_connection() })
                .map_err(|e| NetError::Netlink {
                    op: "socket".into(),
                    message: e.to_string(),
                })?;
        rt.spawn(conn);
        Ok(Self {
            rt,
            handle,
            proc_sys: PathBuf::from("/proc/sys"),
            announcer: crate::announce::Announcer::new(),
        })
    }

    fn index_of(&mut self, name: &str) -> Result<u32, NetError> {
        self.link(name).map(|m| m.header.index)
    }

    fn link(&mut self, name: &str) -> Result<rtnetlink::packet_route::link::LinkMessage, NetError> {
        let handle = self.handle.clone();
        let found = self.rt.block_on(async move {
            handle
                .link()
                .get()
                .match_name(name.to_owned())
                .execute()
                .try_next()
                .await
        });
        match found {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(NetError::NoSuchLink(name.to_owned())),
            // The kernel answers ENODEV for an unknown name.
            Err(_) => Err(NetError::NoSuchLink(name.to_owned())),
        }
    }

    fn names(&mut self) -> Result<BTreeMap<u32, (String, bool)>, NetError> {
        let handle = self.handle.clone();
        let links: Vec<_> = self
            .rt
            .block_on(async move { handle.link().get().execute().try_collect().await })
            .map_err(nl_err("dump links"))?;
        Ok(links
            .into_iter()
            .filter_map(|m: rtnetlink::packet_route::link::LinkMessage| {
                let name = m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })?;
                Some((
                    m.header.index,
                    (name, m.header.flags.contains(LinkFlags::Up)),
                ))
            })
            .collect())
    }
}

impl NetKernel for RtNetlink {
    fn addresses(&mut self) -> Result<BTreeSet<LocalAddress>, NetError> {
        let names = self.names()?;
        let handle = self.handle.clone();
        let msgs: Vec<_> = self
            .rt
            .block_on(async move { handle.address().get().execute().try_collect().await })
            .map_err(nl_err("dump addresses"))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m: rtnetlink::packet_route::address::AddressMessage| {
                let (ifname, _) = names.get(&m.header.index)?;
                // An address that failed duplicate address detection is not usable: as
                // if missing, so it is added again (as a VIP, without DAD).
                let dadfailed = m.attributes.iter().any(|a| {
                    matches!(a, AddressAttribute::Flags(f) if f.contains(AddressFlags::Dadfailed))
                });
                if dadfailed {
                    return None;
                }
                // IFA_LOCAL is the interface's own address where the two differ
                // (point-to-point); IFA_ADDRESS otherwise.
                let addr = m
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    })
                    .or_else(|| {
                        m.attributes.iter().find_map(|a| match a {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })
                    })?;
                Some(LocalAddress {
                    ifname: ifname.clone(),
                    addr,
                    prefix_len: m.header.prefix_len,
                })
            })
            .collect())
    }

    fn add_address(&mut self, a: &LocalAddress) -> Result<(), NetError> {
        let index = self.index_of(&a.ifname)?;
        let add = |handle: rtnetlink::Handle| {
            let (addr, len) = (a.addr, a.prefix_len);
            async move {
                let mut request = handle.address().add(index, addr, len);
                if addr.is_ipv6() {
                    shared_vip_v6(request.message_mut());
                }
                request.execute().await
            }
        };
        match self.rt.block_on(add(self.handle.clone())) {
            // An IPv6 copy that failed DAD (added before VIPs were added without it)
            // is in the way: replace it.
            Err(rtnetlink::Error::NetlinkError(e))
                if a.addr.is_ipv6() && e.raw_code() == -EEXIST =>
            {
                self.del_address(a)?;
                self.rt
                    .block_on(add(self.handle.clone()))
                    .map_err(nl_err(&format!("add address {a}")))
            }
            r => r.map_err(nl_err(&format!("add address {a}"))),
        }
    }

    fn del_address(&mut self, a: &LocalAddress) -> Result<(), NetError> {
        let index = self.index_of(&a.ifname)?;
        let handle = self.handle.clone();
        let want = a.clone();
        let op = format!("delete address {a}");
        self.rt
            .block_on(async move {
                let mut msgs = handle.address().get().set_link_index_filter(index).execute();
                while let Some(m) = msgs.try_next().await? {
                    let matches = m.header.prefix_len == want.prefix_len
                        && m.attributes.iter().any(|at| {
                            matches!(at, AddressAttribute::Local(ip) | AddressAttribute::Address(ip) if *ip == want.addr)
                        });
                    if matches {
                        return handle.address().del(m).execute().await;
                    }
                }
                Ok(())
            })
            .map_err(nl_err(&op))
    }

    fn links(&mut self) -> Result<BTreeMap<String, bool>, NetError> {
        Ok(self.names()?.into_values().collect())
    }

    fn set_link_up(&mut self, name: &str, up: bool) -> Result<(), NetError> {
        let index = self.index_of(name)?;
        let handle = self.handle.clone();
        let msg = if up {
            LinkUnspec::new_with_index(index).up().build()
        } else {
            LinkUnspec::new_with_index(index).down().build()
        };
        self.rt
            .block_on(async move { handle.link().set(msg).execute().await })
            .map_err(nl_err(&format!(
                "set {name} {}",
                if up { "up" } else { "down" }
            )))
    }

    fn read_sysctl(&mut self, path: &str) -> Result<Option<String>, NetError> {
        match std::fs::read_to_string(self.proc_sys.join(path)) {
            Ok(v) => Ok(Some(v.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(NetError::Sysctl {
                path: path.to_owned(),
                message: e.to_string(),
            }),
        }
    }

    fn announce(&mut self, a: &LocalAddress) -> Result<(), NetError> {
        let link = self.link(&a.ifname)?;
        let mac = link
            .attributes
            .iter()
            .find_map(|at| match at {
                LinkAttribute::Address(m) => <[u8; 6]>::try_from(m.as_slice()).ok(),
                _ => None,
            })
            .ok_or_else(|| NetError::Netlink {
                op: format!("announce {a}"),
                message: format!("{} has no Ethernet address", a.ifname),
            })?;
        self.announcer
            .announce(link.header.index, mac, a.addr)
            .map_err(|e| NetError::Netlink {
                op: format!("announce {a}"),
                message: e.to_string(),
            })
    }

    fn withdraw(&mut self, a: &LocalAddress) {
        if let Ok(index) = self.index_of(&a.ifname) {
            self.announcer.withdraw(index, a.addr);
        }
    }

    fn write_sysctl(&mut self, path: &str, value: &str) -> Result<(), NetError> {
        std::fs::write(self.proc_sys.join(path), format!("{value}\n")).map_err(|e| {
            NetError::Sysctl {
                path: path.to_owned(),
                message: e.to_string(),
            }
        })
    }
}

/// errno EEXIST (asm-generic/errno-base.h).
const EEXIST: i32 = 17;

/// An IPv6 VIP is shared by design (every director of it, every DR real server):
/// duplicate address detection would fail it on all but the first node (`dadfailed`,
/// never usable), so it is added without DAD. And deprecated (preferred lifetime 0,
/// valid forever): the node never picks it as the source of its own connections,
/// whose replies would go to whichever node the network sends the VIP to.
fn shared_vip_v6(m: &mut AddressMessage) {
    m.header.flags |= AddressHeaderFlags::Nodad;
    m.attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    let mut lifetimes = CacheInfo::default();
    lifetimes.ifa_preferred = 0;
    lifetimes.ifa_valid = u32::MAX;
    m.attributes.push(AddressAttribute::CacheInfo(lifetimes));
}
