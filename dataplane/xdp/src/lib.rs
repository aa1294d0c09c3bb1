//! The XDP director dataplane: kube-lvs's own L4 load balancer in BPF.
//!
//! The BPF programs are C in `dataplane/bpf/` (built by this crate's `build.rs`
//! with clang and embedded); this crate loads, attaches and drives them with aya.
//! The design follows Katran: the expensive part (the Maglev ring of every VIP)
//! is built in userspace by `kubelvs-maglev`; the XDP program only looks up.
//! See `docs/xdp.md` for the maps, the packet paths and the restart story.
//!
//! # Director
//!
//! ```no_run
//! # fn main() -> Result<(), kubelvs_xdp::XdpError> {
//! use kubelvs_xdp::XdpDirector;
//! let mut director = XdpDirector::attach("eth0", "/sys/fs/bpf/kubelvs", "192.0.2.1".parse().unwrap())?;
//! let services: Vec<kubelvs_model::Service> = Vec::new(); // from the node plan
//! let neighbours = kubelvs_xdp::read_neighbours(Some("eth0")).unwrap_or_default();
//! let report = director.apply(&services, &neighbours)?;
//! let stats = director.stats()?;
//! # let _ = (report, stats); Ok(()) }
//! ```
//!
//! - [`XdpDirector::attach`] loads the director program, attaches it natively to
//!   the interface and pins maps and the link under the pin directory. Run again
//!   after a restart, it reuses the pinned maps (connection table included) and
//!   atomically swaps the program behind the pinned link: no detach, no lost flows.
//! - [`XdpDirector::apply`] takes the plan's services (those whose dataplane is
//!   `Xdp`; others are ignored), builds maglev rings and writes only the map
//!   entries that differ. DR needs each real server's MAC: pass the neighbour
//!   table (see [`read_neighbours`], [`watch_neighbours`]); TUN and NAT use a
//!   given MAC as the next hop (no lookup) and otherwise ask `bpf_fib_lookup`
//!   (which answers only where IP forwarding is on).
//! - [`XdpDirector::stats`] sums the per-CPU counters per VIP and real server.
//! - [`attach_decap`] attaches the real-server IPIP (and IPv6-in-IPv6)
//!   decapsulation program;
//!   [`attach_pass`] attaches an XDP_PASS program (veth peers receive XDP_TX
//!   frames only when they run XDP themselves).
//! - With the `testing` feature only: `test_run` wraps `BPF_PROG_TEST_RUN` (also
//!   live-frames mode) for fixtures, benchmarks and traffic generators, and
//!   `bench` loads the director inside wrappers that restore the packet each run.
//!
//! Supported: IPv4 and IPv6 VIPs, TCP and UDP, forwarding `dr`, `tun` (IPIP,
//! IPv6-in-IPv6 for IPv6 VIPs) and `nat`; the scheduler is always Maglev
//! (persistence hashes the masked client address).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuValues};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::Xdp;
/// How an XDP program attaches: the driver's native hook or the kernel's generic one.
pub use aya::programs::XdpMode;
use aya::{Ebpf, EbpfLoader};
use kubelvs_model::{Service, ServiceKey};

pub mod backend;
#[cfg(feature = "testing")]
pub mod bench;
pub mod dataplane;
mod decap;
pub mod decide;
mod error;
#[cfg(feature = "testing")]
pub mod fake;
pub mod maps;
mod neigh;
mod pins;
mod plan;
pub mod preflight;
pub mod sys;
#[cfg(feature = "testing")]
mod test_run;

pub use neigh::{parse_messages, read_neighbours, watch_neighbours, NeighMessage};
pub use pins::{ensure_pin_dir, remove_director_pins};
use pins::{remove_pin, replace_pinned};
pub use sys::{enter_netns, ifindex};
#[cfg(feature = "testing")]
pub use test_run::{test_run, TestRun, TestRunResult, XdpMd, TEST_XDP_LIVE_FRAMES};

pub use backend::{AyaMaps, DirectorMaps, DirectorTable};
#[cfg(feature = "testing")]
pub use dataplane::StaticNeighbours;
pub use dataplane::{KernelNeighbours, NeighbourProvider, XdpApply, XdpDataplane};
pub use decap::{attach_decap, attach_pass, DecapDataplane, XdpDecap, XdpPass};
pub use error::{MapShape, Result, XdpError};
#[cfg(feature = "testing")]
pub use fake::{FakeMaps, FaultyMaps, MapFault};
use maps::*;
pub use plan::{AnyVipKey, Skipped};

/// An Ethernet address.
pub type MacAddr = [u8; 6];

/// Next-hop MACs by real server address: DR needs them; TUN and NAT use them
/// instead of a route lookup (so give them only for on-link real servers).
pub type Neighbours = HashMap<IpAddr, MacAddr>;

/// The compiled BPF objects, embedded.
pub static DIRECTOR_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/director.o"));
pub static DECAP_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/decap.o"));
pub static PASS_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pass.o"));
/// The director plus benchmark wrappers that restore the packet between runs.
#[cfg(feature = "testing")]
pub static BENCH_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench.o"));

/// XDP verdicts, as `TestRunResult::retval` carries them.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub(crate) const DIRECTOR_PROG: &str = "klvs_director";
pub(crate) const DECAP_PROG: &str = "klvs_decap";
pub(crate) const PASS_PROG: &str = "klvs_pass";

/// Every map of the director object, pinned under the pin directory by these names.
pub const DIRECTOR_MAPS: [&str; 14] = [
    "vips",
    "vips6",
    "vip_addrs",
    "vip_addrs6",
    "rings",
    "reals",
    "conns",
    "conns6",
    "nat_rev",
    "nat_rev6",
    "vip_stats",
    "real_stats",
    "counters",
    "config",
];

/// How many flows the connection table holds: `per_cpu` on each of `cpus` CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnCapacity {
    pub per_cpu: u32,
    pub cpus: u32,
}

/// Possible CPUs (what per-CPU maps and per-CPU LRU lists are sized by).
fn possible_cpus() -> Result<u32> {
    aya::util::nr_cpus()
        .map(|n| n as u32)
        .map_err(|(path, e)| XdpError::InvalidOptions {
            field: "conns_per_cpu",
            reason: format!("reading {path}: {e}"),
        })
}

pub(crate) fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> XdpError {
    move |source| XdpError::Map { map, source }
}

/// How the director is loaded. [`DirectorOptions::new`] gives the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectorOptions {
    /// Where maps and the program link are pinned (on bpffs, mounted if needed).
    /// `None` pins nothing: for tests and benchmarks that do not attach.
    pub pin_dir: Option<PathBuf>,
    /// Outer source address of IPIP packets (tun forwarding).
    pub director_addr: Ipv4Addr,
    /// Outer source address of IPv6-in-IPv6 packets: tun forwarding of IPv6
    /// VIPs needs it (apply skips them otherwise).
    pub director_addr6: Option<Ipv6Addr>,
    /// Maglev ring size per VIP, a prime.
    pub ring_size: u32,
    pub max_vips: u32,
    pub max_reals: u32,
    /// Flows each CPU's connection table holds (the NAT reply table likewise).
    /// The tables are LRU hashes with per-CPU LRU lists (`BPF_F_NO_COMMON_LRU`): a
    /// flow's entry is taken from the list of the CPU its packet arrived on and
    /// evicted only by that CPU, so capacity is per CPU. The maps are created with
    /// `conns_per_cpu` x possible CPUs entries ([`XdpDirector::conn_capacity`]).
    pub conns_per_cpu: u32,
    /// How long a real server removed from a service keeps its open flows (it gets
    /// no new ones) before it is deleted, as IPVS drains.
    pub drain_timeout: Duration,
    /// Native (driver) mode unless told otherwise.
    pub mode: XdpMode,
}

impl DirectorOptions {
    pub fn new(director_addr: Ipv4Addr) -> Self {
        Self {
            pin_dir: None,
            director_addr,
            director_addr6: None,
            ring_size: kubelvs_maglev::DEFAULT_TABLE_SIZE,
            max_vips: 64,
            max_reals: 4096,
            conns_per_cpu: 65_536,
            drain_timeout: Duration::from_secs(300),
            mode: XdpMode::Driver,
        }
    }
}

/// Packet, byte, new-connection and drop counts (summed over CPUs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
    pub new_conns: u64,
    pub drops: u64,
}

impl From<&PerCpuValues<Stats>> for Counts {
    fn from(v: &PerCpuValues<Stats>) -> Self {
        v.iter().fold(Self::default(), |a, s| Self {
            packets: a.packets + s.packets,
            bytes: a.bytes + s.bytes,
            new_conns: a.new_conns + s.new_conns,
            drops: a.drops + s.drops,
        })
    }
}

/// Global event counters of the director program (see `enum klvs_counter`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlobalCounters {
    pub passed: u64,
    pub malformed: u64,
    pub no_real_server: u64,
    pub no_neighbour: u64,
    pub no_route: u64,
    pub nat_replies: u64,
    pub encap_failed: u64,
    /// ICMP "fragmentation needed" about VIP flows forwarded to their real server.
    pub icmp_to_real: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectorStats {
    pub vips: BTreeMap<ServiceKey, Counts>,
    /// Per real server address:port (shared by every VIP that uses it).
    pub real_servers: BTreeMap<SocketAddr, Counts>,
    pub counters: GlobalCounters,
}

/// What [`XdpDirector::apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub vips_added: usize,
    pub vips_updated: usize,
    pub vips_removed: usize,
    pub real_servers_added: usize,
    pub real_servers_updated: usize,
    pub real_servers_removed: usize,
    /// Maglev ring slots whose real server changed.
    pub ring_slots_written: usize,
    /// Whether the global config entry was written.
    pub config_written: bool,
    /// Services for the XDP dataplane that it cannot program, with the reason.
    pub skipped: Vec<(ServiceKey, Skipped)>,
    /// Real servers removed from a service, draining (weight 0) until their deadline.
    pub draining: Vec<(ServiceKey, SocketAddr)>,
    /// DR real servers without a neighbour MAC: no new flows go to them yet.
    pub unresolved: Vec<(ServiceKey, SocketAddr)>,
}

impl ApplyReport {
    /// True when apply touched no map entry.
    pub fn is_noop(&self) -> bool {
        self.writes() == 0
    }

    /// Map entries written (ring slots counted one by one).
    pub fn writes(&self) -> u64 {
        (self.vips_added
            + self.vips_updated
            + self.vips_removed
            + self.real_servers_added
            + self.real_servers_updated
            + self.real_servers_removed
            + self.ring_slots_written
            + usize::from(self.config_written)) as u64
    }
}

/// The director program, loaded (and usually attached), with its maps.
pub struct XdpDirector {
    ebpf: Ebpf,
    /// VIPs, real servers and rings: the maps apply writes.
    table: DirectorTable<AyaMaps>,
    conns: BpfHashMap<MapData, FlowKey, Conn>,
    conns6: BpfHashMap<MapData, Flow6Key, Conn>,
    nat_rev: BpfHashMap<MapData, FlowKey, NatRev>,
    counters: PerCpuArray<MapData, u64>,
    link: Option<PinnedLink>,
    ifname: Option<String>,
    prog_name: &'static str,
}

impl std::fmt::Debug for XdpDirector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpDirector")
            .field("ifname", &self.ifname)
            .field("opts", self.table.options())
            .field("vips", &self.table.state().vips.len())
            .field("real_servers", &self.table.state().reals.len())
            .finish_non_exhaustive()
    }
}

impl XdpDirector {
    /// Loads the director, attaches it natively to `ifname` and pins maps and link
    /// under `pin_dir`, with default capacities. See [`XdpDirector::attach_with`].
    pub fn attach(
        ifname: &str,
        pin_dir: impl AsRef<Path>,
        director_addr: Ipv4Addr,
    ) -> Result<Self> {
        let mut opts = DirectorOptions::new(director_addr);
        opts.pin_dir = Some(pin_dir.as_ref().to_path_buf());
        Self::attach_with(ifname, opts)
    }

    /// Loads and attaches with the given options. If a link for `ifname` is already
    /// pinned (a previous run), the new program replaces the old one behind it
    /// atomically and the pinned maps, connection table included, carry on.
    pub fn attach_with(ifname: &str, opts: DirectorOptions) -> Result<Self> {
        let mut d = Self::load(opts)?;
        d.attach_to(ifname)?;
        Ok(d)
    }

    /// Loads the program and its maps (pinned if `opts.pin_dir` is set) without
    /// attaching it: for BPF_PROG_TEST_RUN.
    pub fn load(opts: DirectorOptions) -> Result<Self> {
        Self::load_object(opts, DIRECTOR_OBJ, "director.o", DIRECTOR_PROG)
    }

    fn load_object(
        opts: DirectorOptions,
        obj: &[u8],
        obj_name: &'static str,
        prog_name: &'static str,
    ) -> Result<Self> {
        if !kubelvs_maglev::is_prime(opts.ring_size)
            || opts.ring_size > kubelvs_maglev::MAX_TABLE_SIZE
        {
            return Err(XdpError::InvalidOptions {
                field: "ring_size",
                reason: format!(
                    "{} is not a prime up to {}",
                    opts.ring_size,
                    kubelvs_maglev::MAX_TABLE_SIZE
                ),
            });
        }
        for (field, v) in [
            ("max_vips", opts.max_vips),
            ("max_reals", opts.max_reals),
            ("conns_per_cpu", opts.conns_per_cpu),
        ] {
            if v == 0 {
                return Err(XdpError::InvalidOptions {
                    field,
                    reason: "must not be 0".into(),
                });
            }
        }
        let rings_len =
            opts.max_vips
                .checked_mul(opts.ring_size)
                .ok_or(XdpError::InvalidOptions {
                    field: "max_vips",
                    reason: "max_vips * ring_size overflows u32".into(),
                })?;
        fn shape<K, V>(max_entries: u32) -> MapShape {
            MapShape {
                key_size: std::mem::size_of::<K>() as u32,
                value_size: std::mem::size_of::<V>() as u32,
                max_entries,
            }
        }
        let conns =
            opts.conns_per_cpu
                .checked_mul(possible_cpus()?)
                .ok_or(XdpError::InvalidOptions {
                    field: "conns_per_cpu",
                    reason: "conns_per_cpu * possible CPUs overflows u32".into(),
                })?;
        let wanted: [(&'static str, MapShape); 14] = [
            ("vips", shape::<VipKey, VipMeta>(opts.max_vips)),
            ("vips6", shape::<Vip6Key, VipMeta>(opts.max_vips)),
            ("vip_addrs", shape::<u32, u32>(opts.max_vips)),
            ("vip_addrs6", shape::<[u8; 16], u32>(opts.max_vips)),
            ("rings", shape::<u32, u32>(rings_len)),
            ("reals", shape::<u32, Real>(opts.max_reals)),
            ("conns", shape::<FlowKey, Conn>(conns)),
            ("conns6", shape::<Flow6Key, Conn>(conns)),
            ("nat_rev", shape::<FlowKey, NatRev>(conns)),
            ("nat_rev6", shape::<Flow6Key, NatRev6>(conns)),
            ("vip_stats", shape::<u32, Stats>(opts.max_vips)),
            ("real_stats", shape::<u32, Stats>(opts.max_reals)),
            ("counters", shape::<u32, u64>(COUNTER_MAX)),
            ("config", shape::<u32, Config>(1)),
        ];
        let mut loader = EbpfLoader::new();
        for (name, shape) in wanted {
            if name != "counters" {
                loader.map_max_entries(name, shape.max_entries);
            }
        }
        if let Some(dir) = &opts.pin_dir {
            ensure_pin_dir(dir)?;
            for name in DIRECTOR_MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(obj).map_err(|source| XdpError::Load {
            object: obj_name,
            source,
        })?;
        // A pinned map from an earlier run keeps its shape whatever we asked for
        // (and an older layout must not be reinterpreted).
        if let Some(dir) = &opts.pin_dir {
            for (name, wanted) in wanted {
                let map = ebpf
                    .map(name)
                    .and_then(map_data)
                    .ok_or(XdpError::MissingMap { map: name })?;
                let info = map.info().map_err(map_err(name))?;
                let found = MapShape {
                    key_size: info.key_size(),
                    value_size: info.value_size(),
                    max_entries: info.max_entries(),
                };
                if found != wanted {
                    return Err(XdpError::PinnedMapMismatch {
                        map: name,
                        found,
                        wanted,
                        pin_dir: dir.clone(),
                    });
                }
            }
        }
        let prog: &mut Xdp = program(&mut ebpf, prog_name)?;
        prog.load().map_err(|source| XdpError::Program {
            program: prog_name,
            source,
        })?;

        let rings_map = match take(&mut ebpf, "rings")? {
            Map::Array(m) => m,
            _ => return Err(XdpError::MissingMap { map: "rings" }),
        };
        // Fails here (not at the first write) if the map cannot be mapped.
        sys::MmapU32::new(rings_map.fd().as_fd(), 0, 1).map_err(XdpError::Mmap)?;
        let maps = AyaMaps {
            vips: typed(&mut ebpf, "vips")?,
            vips6: typed(&mut ebpf, "vips6")?,
            reals: typed(&mut ebpf, "reals")?,
            rings: rings_map,
            rings_len: rings_len as usize,
            vip_stats: typed(&mut ebpf, "vip_stats")?,
            real_stats: typed(&mut ebpf, "real_stats")?,
            config: typed(&mut ebpf, "config")?,
            vip_addrs: typed(&mut ebpf, "vip_addrs")?,
            vip_addrs6: typed(&mut ebpf, "vip_addrs6")?,
            ring_size: opts.ring_size,
            max_reals: opts.max_reals,
        };
        Ok(Self {
            conns: typed(&mut ebpf, "conns")?,
            conns6: typed(&mut ebpf, "conns6")?,
            nat_rev: typed(&mut ebpf, "nat_rev")?,
            counters: typed(&mut ebpf, "counters")?,
            // Adopts what pinned maps hold: a previous run's plan.
            table: DirectorTable::new(maps, opts)?,
            ebpf,
            link: None,
            ifname: None,
            prog_name,
        })
    }

    fn attach_to(&mut self, ifname: &str) -> Result<()> {
        let mode = self.table.options().mode;
        let link_path = self
            .table
            .options()
            .pin_dir
            .as_ref()
            .map(|d| d.join(format!("link_{ifname}")));
        let attach_err = |source| XdpError::Attach {
            program: DIRECTOR_PROG,
            ifname: ifname.to_owned(),
            source,
        };
        let prog: &mut Xdp = program(&mut self.ebpf, DIRECTOR_PROG)?;
        let Some(path) = &link_path else {
            // Not pinned: the link lives in the program and detaches on drop.
            prog.attach(ifname, mode).map_err(attach_err)?;
            self.ifname = Some(ifname.to_owned());
            return Ok(());
        };
        if path.exists() {
            match replace_pinned(prog, path) {
                Ok(()) => {
                    self.ifname = Some(ifname.to_owned());
                    return Ok(());
                }
                // A link whose interface went away is defunct (ENOLINK): start afresh.
                Err(_) => remove_pin(path)?,
            }
        }
        let id = prog.attach(ifname, mode).map_err(attach_err)?;
        let link = prog.take_link(id).map_err(attach_err)?;
        let fd_link = FdLink::try_from(link).map_err(|source| XdpError::Link {
            path: path.clone(),
            source,
        })?;
        let pinned = fd_link.pin(path).map_err(|source| XdpError::Pin {
            path: path.clone(),
            source,
        })?;
        self.link = Some(pinned);
        self.ifname = Some(ifname.to_owned());
        Ok(())
    }

    /// Detaches the program and removes every pin (maps and link): the
    /// connection table is gone afterwards. Dropping the director instead
    /// leaves it attached when pinned.
    pub fn detach(mut self) -> Result<()> {
        let pin_dir = self.table.options().pin_dir.clone();
        if let Some(link) = self.link.take() {
            let _ = link.unpin();
        }
        if let (Some(dir), Some(ifname)) = (&pin_dir, &self.ifname) {
            remove_pin(&dir.join(format!("link_{ifname}")))?;
        }
        if let Some(dir) = &pin_dir {
            for name in DIRECTOR_MAPS {
                remove_pin(&dir.join(name))?;
            }
            let _ = std::fs::remove_dir(dir);
        }
        drop(self);
        Ok(())
    }

    /// The loaded director program (for BPF_PROG_TEST_RUN).
    pub fn program_fd(&self) -> BorrowedFd<'_> {
        prog_fd(&self.ebpf, self.prog_name)
    }

    pub fn options(&self) -> &DirectorOptions {
        self.table.options()
    }

    /// The connection table's real capacity: flows per CPU, and possible CPUs.
    pub fn conn_capacity(&self) -> Result<ConnCapacity> {
        Ok(ConnCapacity {
            per_cpu: self.table.options().conns_per_cpu,
            cpus: possible_cpus()?,
        })
    }

    /// Programs `services` (those whose dataplane is XDP) into the maps, writing
    /// only entries that differ from what the maps hold. `neighbours` gives the
    /// MAC of each real server (required for DR). See [`XdpDirector::apply_at`].
    pub fn apply<S: std::borrow::Borrow<Service>>(
        &mut self,
        services: &[S],
        neighbours: &Neighbours,
    ) -> Result<ApplyReport> {
        self.apply_at(services, neighbours, Instant::now())
    }

    /// [`XdpDirector::apply`] at `now`, which drives drain deadlines.
    ///
    /// A service the director cannot take (unsupported forwarding, no VIP or real
    /// server id left) is reported in [`ApplyReport::skipped`] and the others are
    /// still programmed; a service that was programmed before keeps its previous
    /// state then. A real server removed from a service drains: it keeps its open
    /// flows but owns no ring slot (weight 0) until `drain_timeout` passes. A DR real
    /// server without a neighbour MAC gets no ring slot either until it resolves
    /// ([`ApplyReport::unresolved`]). An `Err` is a map the kernel would not write.
    pub fn apply_at<S: std::borrow::Borrow<Service>>(
        &mut self,
        services: &[S],
        neighbours: &Neighbours,
        now: Instant,
    ) -> Result<ApplyReport> {
        self.table.apply_at(services, neighbours, now)
    }

    /// Per-VIP and per-real-server counters, summed over CPUs.
    pub fn stats(&self) -> Result<DirectorStats> {
        let mut out = DirectorStats::default();
        let maps = self.table.maps();
        for (vk, meta) in &self.table.state().vips {
            let v = maps
                .vip_stats
                .get(&meta.vip_id, 0)
                .map_err(map_err("vip_stats"))?;
            if let Some(key) = vk.service_key() {
                out.vips.insert(key, Counts::from(&v));
            }
        }
        for ((addr, port), (id, _)) in &self.table.state().reals {
            let v = maps.real_stats.get(id, 0).map_err(map_err("real_stats"))?;
            out.real_servers
                .insert(SocketAddr::new(*addr, *port), Counts::from(&v));
        }
        let c = |i: Counter| -> Result<u64> {
            Ok(self
                .counters
                .get(&(i as u32), 0)
                .map_err(map_err("counters"))?
                .iter()
                .sum())
        };
        out.counters = GlobalCounters {
            passed: c(Counter::Pass)?,
            malformed: c(Counter::Malformed)?,
            no_real_server: c(Counter::NoReal)?,
            no_neighbour: c(Counter::NoNeigh)?,
            no_route: c(Counter::FibFail)?,
            nat_replies: c(Counter::NatReply)?,
            encap_failed: c(Counter::EncapFail)?,
            icmp_to_real: c(Counter::IcmpToReal)?,
        };
        Ok(out)
    }

    /// The real server an established flow is bound to, if the connection table has it.
    pub fn connection(&self, flow: &FlowKey) -> Result<Option<SocketAddr>> {
        match self.conns.get(flow, 0) {
            Ok(c) => Ok(self.real_addr(c.real_id)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err("conns")(e)),
        }
    }

    /// [`XdpDirector::connection`] for an IPv6 flow.
    pub fn connection6(&self, flow: &Flow6Key) -> Result<Option<SocketAddr>> {
        match self.conns6.get(flow, 0) {
            Ok(c) => Ok(self.real_addr(c.real_id)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err("conns6")(e)),
        }
    }

    fn real_addr(&self, real_id: u32) -> Option<SocketAddr> {
        self.table.real_addr(real_id)
    }

    /// Number of entries in the connection table (walks it: O(n) syscalls).
    pub fn connection_count(&self) -> usize {
        self.conns.keys().filter(|k| k.is_ok()).count()
    }

    /// Inserts a connection-table entry directly: for state sync between
    /// directors and for benchmarks that need a full table.
    pub fn insert_connection(&mut self, flow: &FlowKey, conn: &Conn) -> Result<()> {
        self.conns.insert(flow, conn, 0).map_err(map_err("conns"))
    }

    /// [`XdpDirector::insert_connection`] for an IPv6 flow.
    pub fn insert_connection6(&mut self, flow: &Flow6Key, conn: &Conn) -> Result<()> {
        self.conns6.insert(flow, conn, 0).map_err(map_err("conns6"))
    }

    /// The VIP id apply gave a service, if it is programmed (indexes rings and vip_stats).
    pub fn vip_id(&self, key: &ServiceKey) -> Option<u32> {
        self.table.vip_id(key)
    }

    /// The generation of real server id `id`, if programmed: what a connection
    /// bound to it must carry ([`XdpDirector::insert_connection`]).
    pub fn real_gen(&self, id: u32) -> Option<u32> {
        self.table.real_gen(id)
    }

    /// The real server id of `addr:port`, if programmed.
    pub fn real_id(&self, addr: impl Into<IpAddr>, port: u16) -> Option<u32> {
        self.table.real_id(addr, port)
    }

    /// A NAT reply-state entry, for tests and debugging.
    pub fn nat_reply_state(&self, reply: &FlowKey) -> Result<Option<NatRev>> {
        match self.nat_rev.get(reply, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err("nat_rev")(e)),
        }
    }
}

fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m) => Some(m),
        _ => None,
    }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map> {
    ebpf.take_map(name)
        .ok_or(XdpError::MissingMap { map: name })
}

pub(crate) fn typed<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    T::try_from(take(ebpf, name)?).map_err(map_err(name))
}

pub(crate) fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or(XdpError::Program {
            program: name,
            source: aya::programs::ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| XdpError::Program {
            program: name,
            source,
        })
}

pub(crate) fn prog_fd<'a>(ebpf: &'a Ebpf, name: &str) -> BorrowedFd<'a> {
    let prog: &Xdp = ebpf
        .program(name)
        .and_then(|p| p.try_into().ok())
        .expect("program present since load");
    prog.fd().expect("program loaded").as_fd()
}
