//! The real server's programs: IPIP (and IPv6-in-IPv6) decapsulation for TUN real
//! servers whose kernel has no ipip module, and an XDP_PASS program (a veth receives
//! frames its peer sends with XDP_TX only when it runs XDP itself).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::BorrowedFd;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::programs::XdpMode;
use aya::Ebpf;

use crate::maps::*;
use crate::{
    map_err, prog_fd, program, typed, Result, XdpError, DECAP_OBJ, DECAP_PROG, PASS_OBJ, PASS_PROG,
};

/// The real-server IPIP decapsulation program on one interface (not pinned:
/// it holds no state worth keeping; dropping this detaches it).
pub struct XdpDecap {
    ebpf: Ebpf,
    vips: BpfHashMap<MapData, u32, u32>,
    vips6: BpfHashMap<MapData, Decap6Key, u32>,
    counters: PerCpuArray<MapData, u64>,
}

/// Attaches the decapsulation program to `ifname` (native mode) for `vips`.
pub fn attach_decap(ifname: &str, vips: &[Ipv4Addr]) -> Result<XdpDecap> {
    let mut d = XdpDecap::load(vips)?;
    let prog = program(&mut d.ebpf, DECAP_PROG)?;
    prog.attach(ifname, XdpMode::Driver)
        .map_err(|source| XdpError::Attach {
            program: DECAP_PROG,
            ifname: ifname.to_owned(),
            source,
        })?;
    Ok(d)
}

impl std::fmt::Debug for XdpDecap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpDecap").finish_non_exhaustive()
    }
}

impl XdpDecap {
    /// Loads without attaching (for BPF_PROG_TEST_RUN).
    pub fn load(vips: &[Ipv4Addr]) -> Result<Self> {
        let mut ebpf = Ebpf::load(DECAP_OBJ).map_err(|source| XdpError::Load {
            object: "decap.o",
            source,
        })?;
        program(&mut ebpf, DECAP_PROG)?
            .load()
            .map_err(|source| XdpError::Program {
                program: DECAP_PROG,
                source,
            })?;
        let mut d = Self {
            vips: typed(&mut ebpf, "decap_vips")?,
            vips6: typed(&mut ebpf, "decap_vips6")?,
            counters: typed(&mut ebpf, "decap_counters")?,
            ebpf,
        };
        d.set_vips(vips)?;
        Ok(d)
    }

    /// Replaces the set of VIPs decapsulated for.
    pub fn set_vips(&mut self, vips: &[Ipv4Addr]) -> Result<()> {
        let want: std::collections::HashSet<u32> = vips
            .iter()
            .map(|v| u32::from_ne_bytes(v.octets()))
            .collect();
        let have: Vec<u32> = self.vips.keys().filter_map(|k| k.ok()).collect();
        for k in have.iter().filter(|k| !want.contains(k)) {
            match self.vips.remove(k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("decap_vips")(e)),
            }
        }
        for k in want.iter().filter(|k| !have.contains(k)) {
            self.vips.insert(k, 1, 0).map_err(map_err("decap_vips"))?;
        }
        Ok(())
    }

    /// Replaces the set of IPv6 VIPs decapsulated for (IPv6-in-IPv6).
    pub fn set_vips6(&mut self, vips: &[Ipv6Addr]) -> Result<()> {
        let want: std::collections::HashSet<Decap6Key> = vips
            .iter()
            .map(|v| Decap6Key { addr: v.octets() })
            .collect();
        let have: Vec<Decap6Key> = self.vips6.keys().filter_map(|k| k.ok()).collect();
        for k in have.iter().filter(|k| !want.contains(k)) {
            match self.vips6.remove(k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("decap_vips6")(e)),
            }
        }
        for k in want.iter().filter(|k| !have.contains(k)) {
            self.vips6.insert(k, 1, 0).map_err(map_err("decap_vips6"))?;
        }
        Ok(())
    }

    /// Sets both families at once from mixed addresses.
    pub fn set_vip_addrs(&mut self, vips: &[IpAddr]) -> Result<()> {
        let v4: Vec<Ipv4Addr> = vips
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            })
            .collect();
        let v6: Vec<Ipv6Addr> = vips
            .iter()
            .filter_map(|a| match a {
                IpAddr::V6(a) => Some(*a),
                IpAddr::V4(_) => None,
            })
            .collect();
        self.set_vips(&v4)?;
        self.set_vips6(&v6)
    }

    /// Packets decapsulated so far (all CPUs).
    pub fn decapsulated(&self) -> Result<u64> {
        Ok(self
            .counters
            .get(&(Counter::Decap as u32), 0)
            .map_err(map_err("decap_counters"))?
            .iter()
            .sum())
    }

    pub fn program_fd(&self) -> BorrowedFd<'_> {
        prog_fd(&self.ebpf, DECAP_PROG)
    }
}

/// An XDP_PASS program on one interface; dropping it detaches.
#[derive(Debug)]
pub struct XdpPass {
    ebpf: Ebpf,
}

/// Attaches XDP_PASS to `ifname` (native mode): a veth receives frames its peer
/// sends with XDP_TX/redirect only when it runs an XDP program itself.
pub fn attach_pass(ifname: &str) -> Result<XdpPass> {
    let mut p = XdpPass::load()?;
    program(&mut p.ebpf, PASS_PROG)?
        .attach(ifname, XdpMode::Driver)
        .map_err(|source| XdpError::Attach {
            program: PASS_PROG,
            ifname: ifname.to_owned(),
            source,
        })?;
    Ok(p)
}

impl XdpPass {
    /// Loads without attaching: the empty program the benchmark subtracts.
    pub fn load() -> Result<Self> {
        let mut ebpf = Ebpf::load(PASS_OBJ).map_err(|source| XdpError::Load {
            object: "pass.o",
            source,
        })?;
        program(&mut ebpf, PASS_PROG)?
            .load()
            .map_err(|source| XdpError::Program {
                program: PASS_PROG,
                source,
            })?;
        Ok(Self { ebpf })
    }

    pub fn program_fd(&self) -> BorrowedFd<'_> {
        prog_fd(&self.ebpf, PASS_PROG)
    }
}

/// The TUN real-server role where the kernel has no ipip module: while the plan has
/// IPIP real-server VIPs, the decapsulation program runs on the interface with
/// exactly those VIPs; with none, it is detached. Netconf (with `xdp_decap`) puts
/// the VIPs on lo with ARP suppressed; this strips the tunnel.
#[derive(Debug)]
pub struct DecapDataplane {
    ifname: String,
    attached: Option<XdpDecap>,
    vips: Vec<IpAddr>,
}

impl DecapDataplane {
    pub fn new(ifname: &str) -> Self {
        Self {
            ifname: ifname.to_owned(),
            attached: None,
            vips: Vec::new(),
        }
    }

    /// Packets stripped so far (0 when detached).
    pub fn decapsulated(&self) -> Result<u64> {
        self.attached.as_ref().map_or(Ok(0), XdpDecap::decapsulated)
    }

    fn program(&mut self, vips: &[IpAddr]) -> Result<u64> {
        let mut writes = 0;
        if self.attached.is_none() {
            self.attached = Some(attach_decap(&self.ifname, &[])?);
            self.vips.clear();
            writes += 1;
        }
        if self.vips != vips {
            let decap = self.attached.as_mut().expect("attached above");
            decap.set_vip_addrs(vips)?;
            self.vips = vips.to_vec();
            writes += 1;
        }
        Ok(writes)
    }
}

impl kubelvs_model::Dataplane for DecapDataplane {
    fn name(&self) -> &'static str {
        "xdp-decap"
    }

    fn apply(
        &mut self,
        plan: &kubelvs_model::NodePlan,
        _ctx: &kubelvs_model::ApplyContext,
    ) -> kubelvs_model::DataplaneReport {
        use kubelvs_model::{Outcome, Reason, TunnelKind, VipOutcome};
        let mut report = kubelvs_model::DataplaneReport::new(self.name());
        let wanted: Vec<&kubelvs_model::RealServerVip> = plan
            .real_server_vips
            .iter()
            .filter(|v| v.tunnel == Some(TunnelKind::Ipip))
            .collect();
        if wanted.is_empty() {
            if self.attached.take().is_some() {
                report.writes += 1;
            }
            self.vips.clear();
            return report;
        }
        let vips: Vec<IpAddr> = wanted.iter().map(|v| v.vip).collect();
        let result = self.program(&vips);
        for v in wanted {
            let outcome = match &result {
                Ok(_) => Outcome::Programmed,
                Err(e) => Outcome::Failed(Reason::new(
                    &v.source(),
                    "",
                    format!("XDP decapsulation on {}: {e}", self.ifname),
                )),
            };
            report.vips.push(VipOutcome {
                vip: v.vip,
                outcome,
            });
        }
        if let Ok(n) = result {
            report.writes += n;
        }
        report
    }
}
