//! The director's maps behind [`DirectorMaps`]: [`AyaMaps`] writes the BPF maps
//! of a loaded program; with the `testing` feature, `FakeMaps` keeps them in memory
//! and `FaultyMaps` fails chosen writes. [`DirectorTable`] runs the pure
//! [`decide`](crate::decide::decide) and sends its writes through one of them.

use std::net::IpAddr;
use std::time::Instant;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues};
use kubelvs_model::Service;

use crate::decide::{decide, decide_weights, state_from_maps, Decided, MapWrite, State};
use crate::maps::*;
use crate::plan::{vip_key, AnyVipKey};
use crate::{map_err, sys, ApplyReport, DirectorOptions, Neighbours, Result, XdpError};

/// The writes and reads apply needs from the director's maps.
pub trait DirectorMaps: Send {
    fn set_config(&mut self, config: &Config) -> Result<()>;
    fn set_real(&mut self, id: u32, real: &Real) -> Result<()>;
    fn zero_real_stats(&mut self, id: u32) -> Result<()>;
    fn zero_vip_stats(&mut self, id: u32) -> Result<()>;
    /// Writes VIP `vip_id`'s ring (`REAL_NONE` past the end of `slots`); returns
    /// the number of slots that changed.
    fn write_ring(&mut self, vip_id: u32, slots: &[u32]) -> Result<usize>;
    fn insert_vip(&mut self, key: &AnyVipKey, meta: &VipMeta) -> Result<()>;
    /// Deleting a VIP that is not there succeeds.
    fn remove_vip(&mut self, key: &AnyVipKey) -> Result<()>;
    /// Every VIP entry.
    fn read_vips(&mut self) -> Result<Vec<(AnyVipKey, VipMeta)>>;
    /// Every real server entry, dead or alive, by id (1..max_reals).
    fn read_reals(&mut self) -> Result<Vec<(u32, Real)>>;
    fn read_config(&mut self) -> Result<Config>;
    /// Marks `addr` a VIP address: the program drops what reaches it on a port no VIP
    /// entry has.
    fn insert_vip_addr(&mut self, addr: IpAddr) -> Result<()>;
    /// Removing an address that is not there succeeds.
    fn remove_vip_addr(&mut self, addr: IpAddr) -> Result<()>;
    fn read_vip_addrs(&mut self) -> Result<Vec<IpAddr>>;
}

/// The director's VIPs, real servers and rings as its maps hold them, kept in step
/// with the plan by [`DirectorTable::apply_at`].
#[derive(Debug)]
pub struct DirectorTable<M: DirectorMaps> {
    maps: M,
    opts: DirectorOptions,
    state: State,
    /// A write failed: read the maps again before the next decision.
    stale: bool,
    /// What the last decision was made from, when it was clean: an edit of weights
    /// only is then decided for the changed services alone.
    decided: Option<Decided>,
}

impl<M: DirectorMaps> DirectorTable<M> {
    /// Adopts what the maps hold (a previous run's plan, after a restart).
    pub fn new(maps: M, opts: DirectorOptions) -> Result<Self> {
        let mut t = Self {
            maps,
            opts,
            state: State::default(),
            stale: true,
            decided: None,
        };
        t.refresh()?;
        Ok(t)
    }

    fn refresh(&mut self) -> Result<()> {
        let vips = self.maps.read_vips()?;
        let reals = self.maps.read_reals()?;
        let config = self.maps.read_config()?;
        let mut state = state_from_maps(vips, reals, config, self.opts.max_vips);
        state.vip_addrs = self.maps.read_vip_addrs()?.into_iter().collect();
        // Not in the maps: what rings were built from, and drain deadlines. Without
        // them (a restart) the next decision keeps what it no longer wants a while.
        state.adopted = self.state.ring_inputs.is_empty() && !state.reals.is_empty();
        state.ring_inputs = std::mem::take(&mut self.state.ring_inputs);
        state.draining = std::mem::take(&mut self.state.draining);
        state.orphans = std::mem::take(&mut self.state.orphans);
        self.state = state;
        self.stale = false;
        Ok(())
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    pub fn options(&self) -> &DirectorOptions {
        &self.opts
    }

    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    /// Programs the XDP services of the plan; see [`crate::XdpDirector::apply_at`].
    pub fn apply_at<S: std::borrow::Borrow<Service>>(
        &mut self,
        services: &[S],
        neighbours: &Neighbours,
        now: Instant,
    ) -> Result<ApplyReport> {
        if self.stale {
            self.decided = None;
            self.refresh()?;
        }
        let weights = self
            .decided
            .as_ref()
            .and_then(|last| decide_weights(&self.state, &self.opts, services, neighbours, last));
        if let Some(d) = weights {
            let mut report = ApplyReport::default();
            self.write_all(&d.writes, &mut report)?;
            self.state.ring_inputs.extend(d.ring_inputs);
            if let Some(last) = &mut self.decided {
                last.services.extend(d.fingerprints);
            }
            return Ok(report);
        }
        let d = decide(&self.state, &self.opts, services, neighbours, now);
        let mut report = d.report;
        self.write_all(&d.writes, &mut report)?;
        self.state = d.next;
        self.decided = Decided::of(&report, services, neighbours);
        Ok(report)
    }

    /// Writes `writes` in order, counting ring slots into `report`; on a failure the
    /// maps are read again before the next decision.
    fn write_all(&mut self, writes: &[MapWrite], report: &mut ApplyReport) -> Result<()> {
        for w in writes {
            match self.write(w) {
                Ok(slots) => report.ring_slots_written += slots,
                Err(e) => {
                    self.stale = true;
                    self.decided = None;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn write(&mut self, w: &MapWrite) -> Result<usize> {
        match w {
            MapWrite::Config(c) => self.maps.set_config(c).map(|()| 0),
            MapWrite::ZeroRealStats(id) => self.maps.zero_real_stats(*id).map(|()| 0),
            MapWrite::Real { id, real } => self.maps.set_real(*id, real).map(|()| 0),
            MapWrite::RemoveVip(k) => self.maps.remove_vip(k).map(|()| 0),
            MapWrite::Ring { vip_id, slots } => {
                if *vip_id >= self.opts.max_vips {
                    return Err(XdpError::InvalidOptions {
                        field: "max_vips",
                        reason: format!("VIP id {vip_id} is outside the rings map"),
                    });
                }
                self.maps.write_ring(*vip_id, slots)
            }
            MapWrite::ZeroVipStats(id) => self.maps.zero_vip_stats(*id).map(|()| 0),
            MapWrite::InsertVip(k, m) => self.maps.insert_vip(k, m).map(|()| 0),
            MapWrite::InsertVipAddr(a) => self.maps.insert_vip_addr(*a).map(|()| 0),
            MapWrite::RemoveVipAddr(a) => self.maps.remove_vip_addr(*a).map(|()| 0),
        }
    }

    /// The VIP id of a programmed service (indexes rings and vip_stats).
    pub fn vip_id(&self, key: &kubelvs_model::ServiceKey) -> Option<u32> {
        let vk = vip_key(key).ok()?;
        self.state.vips.get(&vk).map(|m| m.vip_id)
    }

    /// The real server id of `addr:port`, if programmed.
    pub fn real_id(&self, addr: impl Into<std::net::IpAddr>, port: u16) -> Option<u32> {
        self.state
            .reals
            .get(&(addr.into(), port))
            .map(|(id, _)| *id)
    }

    /// The generation of real server id `id`, if programmed: what a connection
    /// bound to it must carry.
    pub fn real_gen(&self, id: u32) -> Option<u32> {
        self.state
            .reals
            .values()
            .find(|(i, _)| *i == id)
            .map(|(_, r)| r.gen)
    }

    /// The real server address of id `id`, if programmed.
    pub fn real_addr(&self, id: u32) -> Option<std::net::SocketAddr> {
        self.state
            .reals
            .iter()
            .find(|(_, (i, _))| *i == id)
            .map(|((a, p), _)| std::net::SocketAddr::new(*a, *p))
    }
}

/// The BPF maps of a loaded director program.
pub struct AyaMaps {
    pub(crate) vips: BpfHashMap<MapData, VipKey, VipMeta>,
    pub(crate) vips6: BpfHashMap<MapData, Vip6Key, VipMeta>,
    pub(crate) reals: Array<MapData, Real>,
    /// The rings: each mapped while it is written (see [`sys::MmapU32`]).
    pub(crate) rings: MapData,
    /// Elements in `rings`.
    pub(crate) rings_len: usize,
    pub(crate) vip_stats: PerCpuArray<MapData, Stats>,
    pub(crate) real_stats: PerCpuArray<MapData, Stats>,
    pub(crate) config: Array<MapData, Config>,
    pub(crate) vip_addrs: BpfHashMap<MapData, u32, u32>,
    pub(crate) vip_addrs6: BpfHashMap<MapData, [u8; 16], u32>,
    pub(crate) ring_size: u32,
    pub(crate) max_reals: u32,
}

impl std::fmt::Debug for AyaMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AyaMaps").finish_non_exhaustive()
    }
}

fn zero_stats(map: &mut PerCpuArray<MapData, Stats>, id: u32, name: &'static str) -> Result<()> {
    let n = aya::util::nr_cpus().map_err(|(_, e)| XdpError::Map {
        map: name,
        source: aya::maps::MapError::IoError(e),
    })?;
    let zeros = PerCpuValues::try_from(vec![Stats::default(); n]).map_err(|e| XdpError::Map {
        map: name,
        source: aya::maps::MapError::IoError(e),
    })?;
    map.set(id, zeros, 0).map_err(map_err(name))
}

impl DirectorMaps for AyaMaps {
    fn set_config(&mut self, config: &Config) -> Result<()> {
        self.config.set(0, config, 0).map_err(map_err("config"))
    }

    fn set_real(&mut self, id: u32, real: &Real) -> Result<()> {
        self.reals.set(id, real, 0).map_err(map_err("reals"))
    }

    fn zero_real_stats(&mut self, id: u32) -> Result<()> {
        zero_stats(&mut self.real_stats, id, "real_stats")
    }

    fn zero_vip_stats(&mut self, id: u32) -> Result<()> {
        zero_stats(&mut self.vip_stats, id, "vip_stats")
    }

    fn write_ring(&mut self, vip_id: u32, slots: &[u32]) -> Result<usize> {
        let ring_size = self.ring_size as usize;
        let base = vip_id as usize * ring_size;
        if base + ring_size > self.rings_len {
            return Err(XdpError::InvalidOptions {
                field: "max_vips",
                reason: format!("VIP id {vip_id} is outside the rings map"),
            });
        }
        let mut ring =
            sys::MmapU32::new(std::os::fd::AsFd::as_fd(self.rings.fd()), base, ring_size)
                .map_err(XdpError::Mmap)?;
        let mut written = 0;
        for i in 0..ring_size {
            let rid = slots.get(i).copied().unwrap_or(REAL_NONE);
            if ring.get(i) != rid {
                ring.set(i, rid);
                written += 1;
            }
        }
        Ok(written)
    }

    fn insert_vip(&mut self, key: &AnyVipKey, meta: &VipMeta) -> Result<()> {
        match key {
            AnyVipKey::V4(k) => self.vips.insert(k, meta, 0).map_err(map_err("vips")),
            AnyVipKey::V6(k) => self.vips6.insert(k, meta, 0).map_err(map_err("vips6")),
        }
    }

    fn remove_vip(&mut self, key: &AnyVipKey) -> Result<()> {
        let r = match key {
            AnyVipKey::V4(k) => self.vips.remove(k).map_err(map_err("vips")),
            AnyVipKey::V6(k) => self.vips6.remove(k).map_err(map_err("vips6")),
        };
        match r {
            Err(XdpError::Map {
                source: aya::maps::MapError::KeyNotFound,
                ..
            }) => Ok(()),
            other => other,
        }
    }

    fn read_vips(&mut self) -> Result<Vec<(AnyVipKey, VipMeta)>> {
        let mut out = Vec::new();
        for item in self.vips.iter() {
            let (k, v) = item.map_err(map_err("vips"))?;
            out.push((AnyVipKey::V4(k), v));
        }
        for item in self.vips6.iter() {
            let (k, v) = item.map_err(map_err("vips6"))?;
            out.push((AnyVipKey::V6(k), v));
        }
        Ok(out)
    }

    fn read_reals(&mut self) -> Result<Vec<(u32, Real)>> {
        (1..self.max_reals)
            .map(|id| Ok((id, self.reals.get(&id, 0).map_err(map_err("reals"))?)))
            .collect()
    }

    fn read_config(&mut self) -> Result<Config> {
        self.config.get(&0, 0).map_err(map_err("config"))
    }

    fn insert_vip_addr(&mut self, addr: IpAddr) -> Result<()> {
        match addr {
            IpAddr::V4(a) => self
                .vip_addrs
                .insert(u32::from_ne_bytes(a.octets()), 1, 0)
                .map_err(map_err("vip_addrs")),
            IpAddr::V6(a) => self
                .vip_addrs6
                .insert(a.octets(), 1, 0)
                .map_err(map_err("vip_addrs6")),
        }
    }

    fn remove_vip_addr(&mut self, addr: IpAddr) -> Result<()> {
        let r = match addr {
            IpAddr::V4(a) => self
                .vip_addrs
                .remove(&u32::from_ne_bytes(a.octets()))
                .map_err(map_err("vip_addrs")),
            IpAddr::V6(a) => self
                .vip_addrs6
                .remove(&a.octets())
                .map_err(map_err("vip_addrs6")),
        };
        match r {
            Err(XdpError::Map {
                source: aya::maps::MapError::KeyNotFound,
                ..
            }) => Ok(()),
            other => other,
        }
    }

    fn read_vip_addrs(&mut self) -> Result<Vec<IpAddr>> {
        let mut out = Vec::new();
        for k in self.vip_addrs.keys() {
            let k = k.map_err(map_err("vip_addrs"))?;
            out.push(IpAddr::V4(k.to_ne_bytes().into()));
        }
        for k in self.vip_addrs6.keys() {
            let k = k.map_err(map_err("vip_addrs6"))?;
            out.push(IpAddr::V6(k.into()));
        }
        Ok(out)
    }
}
