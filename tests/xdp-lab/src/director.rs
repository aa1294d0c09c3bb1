//! The XDP director (crate kubelvs-xdp) in the lab: attached to the director's
//! interface, its state pinned under a bpffs directory unique to the lab.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use std::time::Instant;

use kubelvs_model::{ApplyContext, Dataplane, DataplaneReport, NodePlan, Protocol, Service};
use kubelvs_xdp::maps::FlowKey;
use kubelvs_xdp::{
    ApplyReport, DirectorOptions, DirectorStats, Neighbours, StaticNeighbours, XdpDataplane,
    XdpDecap, XdpDirector,
};

use crate::actor::NsActor;
use crate::bpf::Attached;
use crate::topology::{Lab, LabConfig};
use crate::{LabError, Result};

/// Where bpffs is mounted on the host.
const BPFFS: &str = "/sys/fs/bpf";

/// A pin directory on bpffs, removed (with every pin in it) on drop.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// `name` under bpffs. Pins left there by a killed run of a process with our
    /// pid (names carry the pid) are removed: the loader would adopt them.
    pub fn new(name: &str) -> Self {
        let pin = Self {
            path: Path::new(BPFFS).join(name),
        };
        pin.remove();
        pin
    }

    fn remove(&self) {
        if self.path.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                eprintln!("xdp-lab: cleanup {}: {e}", self.path.display());
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The MAC of every lab host by address: what the agent reads from the neighbour table.
pub fn neighbours(lab: &Lab) -> Neighbours {
    lab.hosts()
        .flat_map(|h| {
            std::iter::once((IpAddr::V4(h.addr), h.mac))
                .chain(h.addr6.map(|a| (IpAddr::V6(a), h.mac)))
        })
        .collect::<HashMap<_, _>>()
}

/// A lab whose director runs the XDP director program.
#[derive(Debug)]
pub struct XdpLab {
    // Field order is drop order: programs go before their pins and interfaces.
    director: Option<NsActor<XdpDataplane<StaticNeighbours>>>,
    decaps: Vec<NsActor<XdpDecap>>,
    _pass: Vec<Attached>,
    pub pin: PinDir,
    pub lab: Lab,
}

impl XdpLab {
    /// Builds the lab and attaches the director (no services yet).
    pub fn build(config: LabConfig) -> Result<Self> {
        let lab = Lab::build(config)?;
        // The director's XDP_TX frames reach the bridge only if its veth peer runs XDP.
        let pass = vec![Attached::attach(
            &lab.bridge,
            &lab.director.bridge_port,
            "xdp_pass",
        )?];
        let pin = PinDir::new(&format!(
            "{}-director",
            lab.bridge.name().trim_end_matches("-br")
        ));
        let mut x = Self {
            director: None,
            decaps: Vec::new(),
            _pass: pass,
            pin,
            lab,
        };
        x.attach_director()?;
        Ok(x)
    }

    /// Attaches the director: the first time from scratch, later from the pinned state
    /// (what an agent restart does).
    pub fn attach_director(&mut self) -> Result<()> {
        let ifname = self.lab.director.ifname.clone();
        let mut opts = DirectorOptions::new(self.lab.director.addr);
        opts.director_addr6 = self.lab.director.addr6;
        opts.pin_dir = Some(self.pin.path().to_path_buf());
        // A lab needs few VIPs; the default (64 rings of 65537 slots) is 16 MiB.
        opts.max_vips = 4;
        opts.conns_per_cpu = 16_384;
        self.director = Some(NsActor::start(
            &self.lab.director.netns,
            "XDP director",
            move || {
                XdpDirector::attach_with(&ifname, opts)
                    .map(|d| XdpDataplane::new(d, StaticNeighbours::default()))
                    .map_err(|e| e.to_string())
            },
        )?);
        Ok(())
    }

    /// Drops the loader object, as a stopping agent does: the program stays attached
    /// and the maps stay pinned.
    pub fn drop_director(&mut self) {
        self.director = None;
    }

    fn director(&self) -> Result<&NsActor<XdpDataplane<StaticNeighbours>>> {
        self.director.as_ref().ok_or_else(|| LabError::Bpf {
            what: "XDP director".into(),
            detail: "not attached".into(),
        })
    }

    /// `XdpDirector::apply` with the lab's neighbours.
    pub fn apply(&self, services: Vec<Service>) -> Result<ApplyReport> {
        self.apply_at(services, Instant::now())
    }

    /// `XdpDirector::apply_at` with the lab's neighbours (`now` drives drains).
    pub fn apply_at(&self, services: Vec<Service>, now: Instant) -> Result<ApplyReport> {
        let neighbours = neighbours(&self.lab);
        self.director()?
            .call(move |d| {
                d.director()
                    .apply_at(&services, &neighbours, now)
                    .map_err(|e| e.to_string())
            })?
            .map_err(|e| LabError::Bpf {
                what: "apply".into(),
                detail: e,
            })
    }

    /// The plan through the `Dataplane` trait, as the agent applies it, with the
    /// lab's hosts as the known neighbours.
    pub fn apply_plan(&self, plan: NodePlan, now: Instant) -> Result<DataplaneReport> {
        let known = neighbours(&self.lab);
        self.director()?.call(move |d| {
            d.neighbours().known = known;
            Dataplane::apply(d, &plan, &ApplyContext::at(now))
        })
    }

    pub fn stats(&self) -> Result<DirectorStats> {
        self.director()?
            .call(|d| d.director().stats().map_err(|e| e.to_string()))?
            .map_err(|e| LabError::Bpf {
                what: "stats".into(),
                detail: e,
            })
    }

    /// The real server the director's connection table binds the TCP flow
    /// `client -> vip` to, if it has the flow.
    pub fn connection(
        &self,
        client: SocketAddrV4,
        vip: SocketAddrV4,
    ) -> Result<Option<SocketAddr>> {
        // Addresses and ports as they sit in the packet (network byte order).
        let flow = FlowKey {
            src: u32::from_ne_bytes(client.ip().octets()),
            dst: u32::from_ne_bytes(vip.ip().octets()),
            sport: client.port().to_be(),
            dport: vip.port().to_be(),
            proto: Protocol::Tcp.number(),
            pad: [0; 3],
        };
        self.director()?
            .call(move |d| d.director().connection(&flow).map_err(|e| e.to_string()))?
            .map_err(|e| LabError::Bpf {
                what: "connection table".into(),
                detail: e,
            })
    }

    /// Attaches the IPIP decapsulation program, for the lab's VIP, to every real server.
    pub fn attach_decap(&mut self) -> Result<()> {
        let vip = self.lab.vip;
        let vip6 = self.lab.config.ipv6.then_some(crate::topology::VIP6);
        for rs in &self.lab.real_servers {
            let ifname = rs.ifname.clone();
            self.decaps.push(NsActor::start(
                &rs.netns,
                &format!("decap on {}", rs.role),
                move || {
                    let mut decap =
                        kubelvs_xdp::attach_decap(&ifname, &[vip]).map_err(|e| e.to_string())?;
                    if let Some(v6) = vip6 {
                        decap.set_vips6(&[v6]).map_err(|e| e.to_string())?;
                    }
                    Ok::<_, String>(decap)
                },
            )?);
        }
        Ok(())
    }

    /// Packets each real server's decap program stripped, in real server order.
    pub fn decapsulated(&self) -> Result<Vec<u64>> {
        self.decaps
            .iter()
            .map(|d| {
                d.call(|d| d.decapsulated().map_err(|e| e.to_string()))?
                    .map_err(|e| LabError::Bpf {
                        what: "decap counters".into(),
                        detail: e,
                    })
            })
            .collect()
    }
}
