//! Test doubles of [`DirectorMaps`] (feature `testing`): [`FakeMaps`] keeps the
//! director's maps in memory; [`FaultyMaps`] fails chosen writes or reads.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::backend::DirectorMaps;
use crate::maps::*;
use crate::plan::AnyVipKey;
use crate::{DirectorOptions, Result, XdpError};

/// The director's maps in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeMaps {
    pub vips: BTreeMap<AnyVipKey, VipMeta>,
    /// Indexed by real server id (0..max_reals).
    pub reals: Vec<Real>,
    /// `max_vips` rings of `ring_size` slots.
    pub rings: Vec<u32>,
    pub config: Config,
    pub ring_size: u32,
    /// `vip_addrs` and `vip_addrs6`.
    pub vip_addrs: BTreeSet<IpAddr>,
    /// Map writes received (ring slots counted one by one).
    pub writes: u64,
}

impl FakeMaps {
    pub fn new(opts: &DirectorOptions) -> Self {
        Self {
            vips: BTreeMap::new(),
            reals: vec![Real::default(); opts.max_reals as usize],
            rings: vec![REAL_NONE; (opts.max_vips * opts.ring_size) as usize],
            config: Config::default(),
            ring_size: opts.ring_size,
            vip_addrs: BTreeSet::new(),
            writes: 0,
        }
    }

    /// The ring of VIP `vip_id`.
    pub fn ring(&self, vip_id: u32) -> &[u32] {
        let n = self.ring_size as usize;
        &self.rings[vip_id as usize * n..(vip_id as usize + 1) * n]
    }

    fn out_of_range(map: &'static str, id: u32) -> XdpError {
        XdpError::Map {
            map,
            source: aya::maps::MapError::OutOfBounds {
                index: id,
                max_entries: 0,
            },
        }
    }
}

impl DirectorMaps for FakeMaps {
    fn set_config(&mut self, config: &Config) -> Result<()> {
        self.config = *config;
        self.writes += 1;
        Ok(())
    }
    fn set_real(&mut self, id: u32, real: &Real) -> Result<()> {
        let slot = self
            .reals
            .get_mut(id as usize)
            .ok_or_else(|| Self::out_of_range("reals", id))?;
        *slot = *real;
        self.writes += 1;
        Ok(())
    }
    fn zero_real_stats(&mut self, _id: u32) -> Result<()> {
        Ok(())
    }
    fn zero_vip_stats(&mut self, _id: u32) -> Result<()> {
        Ok(())
    }
    fn write_ring(&mut self, vip_id: u32, slots: &[u32]) -> Result<usize> {
        let n = self.ring_size as usize;
        let base = vip_id as usize * n;
        if base + n > self.rings.len() {
            return Err(Self::out_of_range("rings", vip_id));
        }
        let mut written = 0;
        for i in 0..n {
            let rid = slots.get(i).copied().unwrap_or(REAL_NONE);
            if self.rings[base + i] != rid {
                self.rings[base + i] = rid;
                written += 1;
            }
        }
        self.writes += written as u64;
        Ok(written)
    }
    fn insert_vip(&mut self, key: &AnyVipKey, meta: &VipMeta) -> Result<()> {
        self.vips.insert(*key, *meta);
        self.writes += 1;
        Ok(())
    }
    fn remove_vip(&mut self, key: &AnyVipKey) -> Result<()> {
        self.vips.remove(key);
        self.writes += 1;
        Ok(())
    }
    fn read_vips(&mut self) -> Result<Vec<(AnyVipKey, VipMeta)>> {
        Ok(self.vips.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn read_reals(&mut self) -> Result<Vec<(u32, Real)>> {
        Ok((1..self.reals.len() as u32)
            .map(|id| (id, self.reals[id as usize]))
            .collect())
    }
    fn read_config(&mut self) -> Result<Config> {
        Ok(self.config)
    }
    fn insert_vip_addr(&mut self, addr: IpAddr) -> Result<()> {
        self.vip_addrs.insert(addr);
        self.writes += 1;
        Ok(())
    }
    fn remove_vip_addr(&mut self, addr: IpAddr) -> Result<()> {
        self.vip_addrs.remove(&addr);
        self.writes += 1;
        Ok(())
    }
    fn read_vip_addrs(&mut self) -> Result<Vec<IpAddr>> {
        Ok(self.vip_addrs.iter().copied().collect())
    }
}

/// A fault to inject into [`FaultyMaps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapFault {
    /// Writing this real server id fails.
    Real(u32),
    /// Inserting any VIP fails.
    InsertVip,
    /// Reading the VIP map back fails.
    ReadVips,
    /// Writing any ring fails.
    Ring,
}

/// [`FakeMaps`] that fails on demand (as a full or read-only map would).
#[derive(Debug, Clone)]
pub struct FaultyMaps {
    pub inner: FakeMaps,
    pub faults: Vec<MapFault>,
}

fn injected(map: &'static str) -> XdpError {
    XdpError::Map {
        map,
        source: aya::maps::MapError::IoError(std::io::Error::from_raw_os_error(libc::E2BIG)),
    }
}

impl DirectorMaps for FaultyMaps {
    fn set_config(&mut self, config: &Config) -> Result<()> {
        self.inner.set_config(config)
    }
    fn set_real(&mut self, id: u32, real: &Real) -> Result<()> {
        if self.faults.contains(&MapFault::Real(id)) {
            return Err(injected("reals"));
        }
        self.inner.set_real(id, real)
    }
    fn zero_real_stats(&mut self, id: u32) -> Result<()> {
        self.inner.zero_real_stats(id)
    }
    fn zero_vip_stats(&mut self, id: u32) -> Result<()> {
        self.inner.zero_vip_stats(id)
    }
    fn write_ring(&mut self, vip_id: u32, slots: &[u32]) -> Result<usize> {
        if self.faults.contains(&MapFault::Ring) {
            return Err(injected("rings"));
        }
        self.inner.write_ring(vip_id, slots)
    }
    fn insert_vip(&mut self, key: &AnyVipKey, meta: &VipMeta) -> Result<()> {
        if self.faults.contains(&MapFault::InsertVip) {
            return Err(injected("vips"));
        }
        self.inner.insert_vip(key, meta)
    }
    fn remove_vip(&mut self, key: &AnyVipKey) -> Result<()> {
        self.inner.remove_vip(key)
    }
    fn read_vips(&mut self) -> Result<Vec<(AnyVipKey, VipMeta)>> {
        if self.faults.contains(&MapFault::ReadVips) {
            return Err(injected("vips"));
        }
        self.inner.read_vips()
    }
    fn read_reals(&mut self) -> Result<Vec<(u32, Real)>> {
        self.inner.read_reals()
    }
    fn read_config(&mut self) -> Result<Config> {
        self.inner.read_config()
    }
    fn insert_vip_addr(&mut self, addr: IpAddr) -> Result<()> {
        self.inner.insert_vip_addr(addr)
    }
    fn remove_vip_addr(&mut self, addr: IpAddr) -> Result<()> {
        self.inner.remove_vip_addr(addr)
    }
    fn read_vip_addrs(&mut self) -> Result<Vec<IpAddr>> {
        self.inner.read_vip_addrs()
    }
}
