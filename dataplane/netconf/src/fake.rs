//! Test doubles of [`NetKernel`] (feature `testing`): [`FakeNet`], an in-memory
//! node, and [`FaultyNet`], which fails chosen operations.

use std::collections::{BTreeMap, BTreeSet};

use crate::desired::LocalAddress;
use crate::kernel::{NetError, NetKernel};

/// An in-memory node: addresses, links and sysctls.
#[derive(Debug, Clone, Default)]
pub struct FakeNet {
    pub addresses: BTreeSet<LocalAddress>,
    pub links: BTreeMap<String, bool>,
    pub sysctls: BTreeMap<String, String>,
    /// Write operations performed.
    pub writes: u64,
    /// Every announcement sent (gratuitous ARP, unsolicited NA), in order.
    pub announced: Vec<LocalAddress>,
    /// Every announcement withdrawn (its repeats stopped), in order.
    pub withdrawn: Vec<LocalAddress>,
}

impl FakeNet {
    /// A node with `lo` and `eth0` up, and the default sysctls netconf touches.
    pub fn node() -> Self {
        let mut n = Self::default();
        n.links.insert("lo".into(), true);
        n.links.insert("eth0".into(), true);
        for scope in ["all", "default", "lo", "eth0"] {
            n.sysctls
                .insert(format!("net/ipv4/conf/{scope}/arp_ignore"), "0".into());
            n.sysctls
                .insert(format!("net/ipv4/conf/{scope}/arp_announce"), "0".into());
            n.sysctls
                .insert(format!("net/ipv4/conf/{scope}/rp_filter"), "0".into());
        }
        n.sysctls.insert("net/ipv4/ip_forward".into(), "0".into());
        n.sysctls
            .insert("net/ipv6/conf/all/forwarding".into(), "0".into());
        n
    }

    /// Adds a link (a tunnel device the module created), down.
    pub fn with_link(mut self, name: &str) -> Self {
        self.links.insert(name.into(), false);
        for key in ["rp_filter", "arp_ignore", "arp_announce"] {
            self.sysctls
                .insert(format!("net/ipv4/conf/{name}/{key}"), "0".into());
        }
        self
    }
}

impl NetKernel for FakeNet {
    fn addresses(&mut self) -> Result<BTreeSet<LocalAddress>, NetError> {
        Ok(self.addresses.clone())
    }
    fn add_address(&mut self, a: &LocalAddress) -> Result<(), NetError> {
        if !self.links.contains_key(&a.ifname) {
            return Err(NetError::NoSuchLink(a.ifname.clone()));
        }
        self.writes += 1;
        if !self.addresses.insert(a.clone()) {
            return Err(NetError::Netlink {
                op: format!("add address {a}"),
                message: "File exists (os error 17)".into(),
            });
        }
        Ok(())
    }
    fn del_address(&mut self, a: &LocalAddress) -> Result<(), NetError> {
        self.writes += 1;
        self.addresses.remove(a);
        Ok(())
    }
    fn links(&mut self) -> Result<BTreeMap<String, bool>, NetError> {
        Ok(self.links.clone())
    }
    fn set_link_up(&mut self, name: &str, up: bool) -> Result<(), NetError> {
        let l = self
            .links
            .get_mut(name)
            .ok_or_else(|| NetError::NoSuchLink(name.into()))?;
        *l = up;
        self.writes += 1;
        Ok(())
    }
    fn read_sysctl(&mut self, path: &str) -> Result<Option<String>, NetError> {
        Ok(self.sysctls.get(path).cloned())
    }
    fn announce(&mut self, a: &LocalAddress) -> Result<(), NetError> {
        if !self.addresses.contains(a) {
            return Err(NetError::Injected(format!("{a} is not configured")));
        }
        self.announced.push(a.clone());
        Ok(())
    }
    fn withdraw(&mut self, a: &LocalAddress) {
        self.withdrawn.push(a.clone());
    }
    fn write_sysctl(&mut self, path: &str, value: &str) -> Result<(), NetError> {
        let v = self.sysctls.get_mut(path).ok_or_else(|| NetError::Sysctl {
            path: path.into(),
            message: "No such file or directory (os error 2)".into(),
        })?;
        *v = value.to_owned();
        self.writes += 1;
        Ok(())
    }
}

/// A fault to inject into [`FaultyNet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetFault {
    /// Adding this address fails.
    AddAddress(std::net::IpAddr),
    /// Writing this sysctl fails.
    WriteSysctl(String),
    /// Reading the address table fails.
    DumpAddresses,
    /// Announcing this address fails.
    Announce(std::net::IpAddr),
}

/// [`FakeNet`] that fails on demand.
#[derive(Debug, Clone, Default)]
pub struct FaultyNet {
    pub inner: FakeNet,
    pub faults: Vec<NetFault>,
}

impl NetKernel for FaultyNet {
    fn addresses(&mut self) -> Result<BTreeSet<LocalAddress>, NetError> {
        if self.faults.contains(&NetFault::DumpAddresses) {
            return Err(NetError::Injected("address dump interrupted".into()));
        }
        self.inner.addresses()
    }
    fn add_address(&mut self, a: &LocalAddress) -> Result<(), NetError> {
        if self.faults.contains(&NetFault::AddAddress(a.addr)) {
            return Err(NetError::Injected(format!("adding {a} refused")));
        }
        self.inner.add_address(a)
    }
    fn del_address(&mut self, a: &LocalAddress) -> Result<(), NetError> {
        self.inner.del_address(a)
    }
    fn links(&mut self) -> Result<BTreeMap<String, bool>, NetError> {
        self.inner.links()
    }
    fn set_link_up(&mut self, name: &str, up: bool) -> Result<(), NetError> {
        self.inner.set_link_up(name, up)
    }
    fn read_sysctl(&mut self, path: &str) -> Result<Option<String>, NetError> {
        self.inner.read_sysctl(path)
    }
    fn announce(&mut self, a: &LocalAddress) -> Result<(), NetError> {
        if self.faults.contains(&NetFault::Announce(a.addr)) {
            return Err(NetError::Injected(format!("announcing {a} refused")));
        }
        self.inner.announce(a)
    }
    fn withdraw(&mut self, a: &LocalAddress) {
        self.inner.withdraw(a)
    }
    fn write_sysctl(&mut self, path: &str, value: &str) -> Result<(), NetError> {
        if self
            .faults
            .iter()
            .any(|f| *f == NetFault::WriteSysctl(path.into()))
        {
            return Err(NetError::Injected(format!("writing {path} refused")));
        }
        self.inner.write_sysctl(path, value)
    }
}
