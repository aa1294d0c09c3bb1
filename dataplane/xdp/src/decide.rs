//! Pure: what to write into the director's maps for a plan. [`decide`] takes what
//! the maps hold ([`State`]), the plan's services, the neighbours and `now`, and
//! returns the writes in the order they must happen, the state after them and the
//! report. No I/O: the writes go through [`crate::backend::DirectorMaps`].
//!
//! Order matters to the program reading the maps concurrently: the global config
//! first (the ring size must be there before any VIP is), then real servers (before
//! any ring refers to them), then removed VIPs (entry deleted, then ring cleared, so
//! their ids are free), then each VIP's ring before its `vips` entry (a new VIP
//! never meets an empty ring), then the VIP addresses (whose unserved ports the
//! program drops) after their entries, and real servers no one uses last (marked dead,
//! so flows bound to them are rescheduled).

use std::collections::{BTreeMap, BTreeSet};

// foldhash: decide looks up every service and real server at every apply.
use foldhash::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use kubelvs_model::{DataplaneKind, Service, ServiceKey};

use crate::maps::*;
use crate::plan::{desired, real_entry, AnyVipKey, RealKey, Skipped, Want};
use crate::{ApplyReport, DirectorOptions, Neighbours, XdpError};

/// What the maps hold, as far as apply is concerned (read back from them on load).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub vips: HashMap<AnyVipKey, VipMeta>,
    /// Live real servers: id and entry.
    pub reals: HashMap<RealKey, (u32, Real)>,
    /// Generation of every real server id ever used, live or dead.
    pub gens: HashMap<u32, u32>,
    /// Maglev input per VIP when its ring was last written by this process.
    pub ring_inputs: HashMap<AnyVipKey, Vec<(RealKey, u32)>>,
    /// Real servers removed from a VIP, kept at weight 0 until their deadline.
    pub draining: BTreeMap<(AnyVipKey, RealKey), Instant>,
    /// Adopted from a previous run's maps and not yet decided on: which of them were
    /// draining, and until when, died with that run, so the first decision keeps every
    /// real server the plan no longer wants for one more drain timeout.
    pub adopted: bool,
    /// Real servers kept that way, until their deadline: their connections continue.
    pub orphans: BTreeMap<RealKey, Instant>,
    /// VIP entries read back with an id out of range: deleted (or rewritten with a
    /// valid id) by the next apply.
    pub stray: Vec<AnyVipKey>,
    pub next_real: u32,
    pub config: Config,
    /// Addresses in `vip_addrs`/`vip_addrs6`: those of the VIP entries.
    pub vip_addrs: BTreeSet<IpAddr>,
}

/// One write to the director's maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapWrite {
    Config(Config),
    /// Zero the per-CPU counters of a real server id before it is reused.
    ZeroRealStats(u32),
    Real {
        id: u32,
        real: Real,
    },
    RemoveVip(AnyVipKey),
    /// The whole ring of a VIP (empty: cleared); the backend writes changed slots.
    Ring {
        vip_id: u32,
        slots: Vec<u32>,
    },
    ZeroVipStats(u32),
    InsertVip(AnyVipKey, VipMeta),
    /// A VIP address whose unserved ports the program drops.
    InsertVipAddr(IpAddr),
    RemoveVipAddr(IpAddr),
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, Default)]
pub struct Decision {
    pub writes: Vec<MapWrite>,
    pub next: State,
    /// Everything but `ring_slots_written`, which the backend counts.
    pub report: ApplyReport,
}

/// Real ids are handed out round-robin from the last one used so that a freed id
/// is reused as late as possible.
fn alloc_real_id(state: &mut State, max: u32) -> Result<u32, XdpError> {
    let in_use: HashSet<u32> = state.reals.values().map(|(id, _)| *id).collect();
    for step in 1..max {
        let id = (state.next_real + step) % max;
        if id != REAL_NONE && !in_use.contains(&id) {
            state.next_real = id;
            return Ok(id);
        }
    }
    Err(XdpError::TooManyReals { max })
}

pub fn decide<S: std::borrow::Borrow<Service>>(
    state: &State,
    opts: &DirectorOptions,
    services: &[S],
    neighbours: &Neighbours,
    now: Instant,
) -> Decision {
    let mut next = state.clone();
    let mut writes = Vec::new();
    let mut report = ApplyReport::default();
    let ring_size = opts.ring_size;

    // 1. What we want: per VIP key, its meta (minus id) and its real servers,
    //    draining ones at weight 0; DR real servers without a MAC at weight 0 too.
    let mut want: BTreeMap<AnyVipKey, Want> = BTreeMap::new();
    let mut draining: BTreeMap<(AnyVipKey, RealKey), Instant> = BTreeMap::new();
    for s in services
        .iter()
        .map(|s| s.borrow())
        .filter(|s| s.dataplane == DataplaneKind::Xdp)
    {
        let (vk, mut w) = match desired(s, opts.director_addr6.is_some(), ring_size) {
            Ok(d) => d,
            Err(reason) => {
                report.skipped.push((s.key, reason));
                continue;
            }
        };
        if w.forwarding == FWD_DR {
            for (rk, weight) in &mut w.reals {
                if !neighbours.contains_key(&rk.0) {
                    report.unresolved.push((s.key, SocketAddr::new(rk.0, rk.1)));
                    *weight = 0;
                }
            }
        }
        let previous = state.ring_inputs.get(&vk).map_or(&[][..], Vec::as_slice);
        // UDP has no connection end: a removed UDP real server is not drained, or its
        // clients' datagrams would keep going to it until the deadline.
        let udp = s.key.protocol == kubelvs_model::Protocol::Udp;
        for &(rk, _) in previous.iter().filter(|_| !udp) {
            if w.reals.iter().any(|(k, _)| *k == rk) {
                continue;
            }
            let deadline = state
                .draining
                .get(&(vk, rk))
                .copied()
                .unwrap_or(now + opts.drain_timeout);
            if now < deadline {
                draining.insert((vk, rk), deadline);
                w.reals.push((rk, 0));
                report.draining.push((s.key, SocketAddr::new(rk.0, rk.1)));
            }
        }
        w.reals.sort();
        want.insert(vk, w);
    }
    next.draining = draining;
    next.orphans = state
        .orphans
        .iter()
        .filter(|(_, deadline)| now < **deadline)
        .map(|(k, d)| (*k, *d))
        .collect();
    if state.adopted {
        for k in state.reals.keys() {
            next.orphans.entry(*k).or_insert(now + opts.drain_timeout);
        }
        next.adopted = false;
    }

    // 2. Global config.
    let nat = |v6: bool| {
        want.iter()
            .any(|(k, w)| w.forwarding == FWD_NAT && matches!(k, AnyVipKey::V6(_)) == v6)
    };
    let cfg = Config {
        director_addr: u32::from_ne_bytes(opts.director_addr.octets()),
        ring_size,
        flags: if nat(false) { CFG_F_NAT } else { 0 } | if nat(true) { CFG_F_NAT6 } else { 0 },
        pad: 0,
        director_addr6: opts.director_addr6.map(|a| a.octets()).unwrap_or_default(),
    };
    if cfg != state.config {
        writes.push(MapWrite::Config(cfg));
        next.config = cfg;
        report.config_written = true;
    }

    // 3. Real servers: keep ids, add new ones. A service whose new real server finds
    //    no free id keeps what it had.
    let mut wanted_reals: HashMap<RealKey, Real> = HashMap::default();
    let mut kept: Vec<AnyVipKey> = Vec::new();
    for (vk, w) in &want {
        for (rk, _) in &w.reals {
            if wanted_reals.contains_key(rk) {
                continue;
            }
            let mac = neighbours.get(&rk.0).copied();
            let value = match next.reals.get(rk) {
                Some(&(id, old)) => {
                    let value = real_entry(*rk, mac, old.gen);
                    if value != old {
                        writes.push(MapWrite::Real { id, real: value });
                        next.reals.insert(*rk, (id, value));
                        report.real_servers_updated += 1;
                    }
                    value
                }
                None => match alloc_real_id(&mut next, opts.max_reals) {
                    Ok(id) => {
                        // A new generation: flows bound to this id before are stale.
                        let gen = next.gens.get(&id).copied().unwrap_or(0).wrapping_add(1);
                        let value = real_entry(*rk, mac, gen);
                        writes.push(MapWrite::ZeroRealStats(id));
                        writes.push(MapWrite::Real { id, real: value });
                        next.reals.insert(*rk, (id, value));
                        next.gens.insert(id, gen);
                        report.real_servers_added += 1;
                        value
                    }
                    Err(e) => {
                        report
                            .skipped
                            .push((w.service, Skipped::new("", e.to_string())));
                        kept.push(*vk);
                        break;
                    }
                },
            };
            wanted_reals.insert(*rk, value);
        }
    }
    for vk in &kept {
        want.remove(vk);
        // Its previous ring still refers to its previous real servers.
        for (rk, _) in state.ring_inputs.get(vk).into_iter().flatten() {
            if let Some((_, r)) = next.reals.get(rk) {
                wanted_reals.insert(*rk, *r);
            }
        }
    }

    // 4. VIPs: removed ones first, then each wanted VIP's ring before its entry.
    let removed: Vec<AnyVipKey> = state
        .vips
        .keys()
        .chain(state.stray.iter())
        .filter(|vk| !want.contains_key(vk) && !kept.contains(vk))
        .copied()
        .collect();
    for vk in removed {
        writes.push(MapWrite::RemoveVip(vk));
        if let Some(m) = next.vips.remove(&vk) {
            writes.push(MapWrite::Ring {
                vip_id: m.vip_id,
                slots: Vec::new(),
            });
        }
        next.ring_inputs.remove(&vk);
        report.vips_removed += 1;
    }
    next.stray.clear();
    let mut used_ids: Vec<bool> = vec![false; opts.max_vips as usize];
    for m in next.vips.values() {
        if let Some(u) = used_ids.get_mut(m.vip_id as usize) {
            *u = true;
        }
    }
    for (vk, w) in &want {
        let vk = *vk;
        let old = next.vips.get(&vk).copied();
        let vip_id = match old {
            Some(m) => m.vip_id,
            None => {
                let Some(id) = used_ids.iter().position(|u| !u) else {
                    let e = XdpError::TooManyVips { max: opts.max_vips };
                    report
                        .skipped
                        .push((w.service, Skipped::new("", e.to_string())));
                    continue;
                };
                used_ids[id] = true;
                writes.push(MapWrite::ZeroVipStats(id as u32));
                id as u32
            }
        };
        if old.is_none() || next.ring_inputs.get(&vk) != Some(&w.reals) {
            let slots = match ring(w, &next, ring_size) {
                Ok(slots) => slots,
                Err(e) => {
                    report
                        .skipped
                        .push((w.service, Skipped::new("", e.to_string())));
                    continue;
                }
            };
            writes.push(MapWrite::Ring { vip_id, slots });
            next.ring_inputs.insert(vk, w.reals.clone());
        }
        let meta = w.meta(vip_id);
        if old != Some(meta) {
            writes.push(MapWrite::InsertVip(vk, meta));
            next.vips.insert(vk, meta);
            if old.is_some() {
                report.vips_updated += 1;
            } else {
                report.vips_added += 1;
            }
        }
    }

    // 5. The addresses of the VIP entries: added after their entries (a port being
    //    programmed is never dropped), removed after theirs went.
    let addrs: BTreeSet<IpAddr> = next
        .vips
        .keys()
        .filter_map(|k| k.service_key().map(|s| s.vip))
        .collect();
    for a in addrs.difference(&state.vip_addrs) {
        writes.push(MapWrite::InsertVipAddr(*a));
    }
    for a in state.vip_addrs.difference(&addrs) {
        writes.push(MapWrite::RemoveVipAddr(*a));
    }
    next.vip_addrs = addrs;

    // 6. Real servers no one uses any more (drains over): dead, keeping their
    //    generation for the id's next owner to bump.
    let gone: Vec<RealKey> = next
        .reals
        .keys()
        .filter(|k| !wanted_reals.contains_key(k) && !next.orphans.contains_key(k))
        .copied()
        .collect();
    for key in gone {
        if let Some((id, old)) = next.reals.remove(&key) {
            writes.push(MapWrite::Real {
                id,
                real: Real {
                    gen: old.gen,
                    ..Real::default()
                },
            });
            report.real_servers_removed += 1;
        }
    }

    Decision {
        writes,
        next,
        report,
    }
}

/// `w`'s maglev ring: each slot the id (in `state`) of its real server.
fn ring(w: &Want, state: &State, ring_size: u32) -> Result<Vec<u32>, XdpError> {
    let endpoints: Vec<kubelvs_maglev::Endpoint> = w
        .reals
        .iter()
        .map(|((a, p), weight)| {
            let mut id = match a {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            id.extend_from_slice(&p.to_be_bytes());
            kubelvs_maglev::Endpoint::new(id, *weight)
        })
        .collect();
    let table =
        kubelvs_maglev::build(&endpoints, ring_size).map_err(|source| XdpError::Maglev {
            service: w.service,
            source,
        })?;
    let ids: Vec<u32> = w.reals.iter().map(|(rk, _)| state.reals[rk].0).collect();
    Ok(table
        .slots()
        .iter()
        .map(|&slot| ids.get(slot as usize).copied().unwrap_or(REAL_NONE))
        .collect())
}

/// What a clean decision was made from, for [`decide_weights`]: each XDP service's
/// [`fingerprint`] by key, and the neighbours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decided {
    pub services: HashMap<ServiceKey, u64>,
    pub neighbours: Neighbours,
}

impl Decided {
    /// What `decision` was made from, if it is clean: nothing skipped, draining or
    /// unresolved (the only decisions [`decide_weights`] builds on).
    pub fn of<S: std::borrow::Borrow<Service>>(
        decision: &ApplyReport,
        services: &[S],
        neighbours: &Neighbours,
    ) -> Option<Self> {
        let clean = decision.skipped.is_empty()
            && decision.draining.is_empty()
            && decision.unresolved.is_empty();
        clean.then(|| Self {
            services: services
                .iter()
                .map(|s| s.borrow())
                .filter(|s| s.dataplane == DataplaneKind::Xdp)
                .map(|s| (s.key, fingerprint(s)))
                .collect(),
            neighbours: neighbours.clone(),
        })
    }
}

/// What of a service its decision depends on (everything `desired` reads), hashed.
pub fn fingerprint(s: &Service) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = foldhash::fast::FixedState::with_seed(0x6b75_6265_6c76_7304).build_hasher();
    (s.key, s.forwarding, s.scheduler, s.persistence, s.dataplane).hash(&mut h);
    for r in &s.real_servers {
        (r.address, r.port, r.weight).hash(&mut h);
    }
    h.finish()
}

/// What [`decide_weights`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightsDecision {
    /// The rings to write, in the order [`decide`] writes them.
    pub writes: Vec<MapWrite>,
    /// Each rewritten ring's input, for [`State::ring_inputs`].
    pub ring_inputs: Vec<(AnyVipKey, Vec<(RealKey, u32)>)>,
    /// The changed services' new fingerprints.
    pub fingerprints: Vec<(ServiceKey, u64)>,
}

/// The usual edit, decided without going through every service: the XDP services of
/// the `last` clean decision, of which some changed only their real servers' weights,
/// with the same neighbours and nothing draining or adopted. Then [`decide`] would
/// rewrite those services' rings and nothing else, and so does this. `None` when the
/// edit is not of that kind.
pub fn decide_weights<S: std::borrow::Borrow<Service>>(
    state: &State,
    opts: &DirectorOptions,
    services: &[S],
    neighbours: &Neighbours,
    last: &Decided,
) -> Option<WeightsDecision> {
    let settled = state.draining.is_empty()
        && state.orphans.is_empty()
        && !state.adopted
        && state.stray.is_empty();
    if !settled || *neighbours != last.neighbours {
        return None;
    }
    let mut changed = Vec::new();
    let mut count = 0;
    for s in services
        .iter()
        .map(|s| s.borrow())
        .filter(|s| s.dataplane == DataplaneKind::Xdp)
    {
        count += 1;
        let print = fingerprint(s);
        if *last.services.get(&s.key)? != print {
            changed.push((s, print));
        }
    }
    if count != last.services.len() {
        return None;
    }
    let mut rings = Vec::new();
    for &(s, _) in &changed {
        let (vk, w) = desired(s, opts.director_addr6.is_some(), opts.ring_size).ok()?;
        let unresolved = w.forwarding == FWD_DR
            && w.reals
                .iter()
                .any(|(rk, _)| !neighbours.contains_key(&rk.0));
        let meta = state.vips.get(&vk)?;
        let same_meta = *meta == w.meta(meta.vip_id);
        let previous = state.ring_inputs.get(&vk)?;
        let same_reals = previous.len() == w.reals.len()
            && previous.iter().zip(&w.reals).all(|(a, b)| a.0 == b.0);
        if unresolved || !same_meta || !same_reals {
            return None;
        }
        if *previous != w.reals {
            rings.push((vk, meta.vip_id, w));
        }
    }
    // [`decide`] writes rings in VIP key order.
    rings.sort_by_key(|(vk, ..)| *vk);
    let mut writes = Vec::with_capacity(rings.len());
    let mut inputs = Vec::with_capacity(rings.len());
    for (vk, vip_id, w) in rings {
        writes.push(MapWrite::Ring {
            vip_id,
            slots: ring(&w, state, opts.ring_size).ok()?,
        });
        inputs.push((vk, w.reals));
    }
    Some(WeightsDecision {
        writes,
        ring_inputs: inputs,
        fingerprints: changed.into_iter().map(|(s, p)| (s.key, p)).collect(),
    })
}

/// The state the maps describe: VIP entries (ids out of range set aside as stray),
/// every real server entry by id (live ones keyed by address, every generation
/// kept), and the config.
pub fn state_from_maps(
    vips: Vec<(AnyVipKey, VipMeta)>,
    reals: Vec<(u32, Real)>,
    config: Config,
    max_vips: u32,
) -> State {
    let mut s = State {
        config,
        ..State::default()
    };
    for (k, v) in vips {
        if v.vip_id < max_vips {
            s.vips.insert(k, v);
        } else {
            s.stray.push(k);
        }
    }
    for (id, r) in reals {
        s.gens.insert(id, r.gen);
        if r.flags & REAL_F_ALIVE != 0 {
            let addr = if r.flags & REAL_F_V6 != 0 {
                IpAddr::V6(r.addr6.into())
            } else {
                IpAddr::V4(r.addr.to_ne_bytes().into())
            };
            s.reals.insert((addr, u16::from_be(r.port)), (id, r));
            s.next_real = s.next_real.max(id);
        }
    }
    s
}
