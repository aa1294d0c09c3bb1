//! The lab's own BPF programs (bpf/lab.bpf.c): pass, count, generate.

use std::os::fd::AsFd;

use aya::maps::{Array, HashMap, PerCpuArray};
use aya::programs::{Xdp, XdpMode};
use aya::Ebpf;

use crate::netns::Netns;
use crate::prog_run;
use crate::{LabError, Result};

/// UDP destination port of benchmark traffic (`LAB_BENCH_PORT` in bpf/lab.h).
pub const BENCH_PORT: u16 = 9;
/// `LAB_FWD_MACS`: real servers the floor program spreads flows over.
pub const FWD_MACS: usize = 3;
/// `LAB_GEN_HEADERS`: Ethernet + IPv4 + UDP.
pub const GEN_HEADERS: usize = 42;

static LAB_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lab.bpf.o"));

/// Mirror of `struct lab_gen_config` (bpf/lab.h). aya checks the map's value size
/// against this type when the map is opened.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GenConfig {
    pub headers: [u8; GEN_HEADERS],
    pub first_source_port: u16,
    pub flows: u16,
    pub _pad: u16,
}

// SAFETY: repr(C), only integers, explicit padding: every bit pattern is valid.
#[allow(unsafe_code)]
unsafe impl aya::Pod for GenConfig {}

/// Mirror of `struct lab_mac` (bpf/lab.h), the key of `lab_fdb`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LabMac {
    pub addr: [u8; 6],
    pub _pad: u16,
}

// SAFETY: repr(C), only integers, explicit padding: every bit pattern is valid.
#[allow(unsafe_code)]
unsafe impl aya::Pod for LabMac {}

fn bpf_err(what: impl Into<String>, e: impl std::fmt::Display) -> LabError {
    LabError::Bpf {
        what: what.into(),
        detail: e.to_string(),
    }
}

/// A lab program attached to an interface; dropping it detaches it.
#[derive(Debug)]
pub struct Attached {
    ebpf: Ebpf,
    what: String,
}

impl Attached {
    /// Loads `program` and attaches it (native mode) to `ifname` in `netns`.
    pub fn attach(netns: &Netns, ifname: &str, program: &str) -> Result<Self> {
        let what = format!("{program} on {ifname} in {}", netns.name());
        let ifname = ifname.to_owned();
        let w = what.clone();
        let ebpf = netns.run(move || -> Result<Ebpf> {
            let mut ebpf = Ebpf::load(LAB_OBJ).map_err(|e| bpf_err(format!("load {w}"), e))?;
            let prog: &mut Xdp = ebpf
                .program_mut(program_name(&w))
                .ok_or_else(|| bpf_err(&w, "no such program"))?
                .try_into()
                .map_err(|e| bpf_err(&w, e))?;
            prog.load().map_err(|e| bpf_err(format!("verify {w}"), e))?;
            prog.attach(&ifname, XdpMode::Driver)
                .map_err(|e| bpf_err(format!("attach {w}"), e))?;
            Ok(ebpf)
        })??;
        Ok(Self { ebpf, what })
    }

    /// Fills `lab_fdb` (for `xdp_switch`): frames to `mac` go to bridge port `ifindex`.
    pub fn set_fdb(&mut self, entries: &[([u8; 6], u32)]) -> Result<()> {
        let map = self
            .ebpf
            .map_mut("lab_fdb")
            .ok_or_else(|| bpf_err(&self.what, "no map lab_fdb"))?;
        let mut fdb: HashMap<_, LabMac, u32> =
            HashMap::try_from(map).map_err(|e| bpf_err(&self.what, e))?;
        for (mac, ifindex) in entries {
            let key = LabMac {
                addr: *mac,
                _pad: 0,
            };
            fdb.insert(key, ifindex, 0)
                .map_err(|e| bpf_err(format!("lab_fdb of {}", self.what), e))?;
        }
        Ok(())
    }

    /// Sets `lab_fwd_mac` (for `xdp_mac_forward`): flow (source port) `p` goes to
    /// `macs[p % FWD_MACS]`.
    pub fn set_forward_macs(&mut self, macs: [[u8; 6]; FWD_MACS]) -> Result<()> {
        let map = self
            .ebpf
            .map_mut("lab_fwd_mac")
            .ok_or_else(|| bpf_err(&self.what, "no map lab_fwd_mac"))?;
        let mut fwd: Array<_, LabMac> = Array::try_from(map).map_err(|e| bpf_err(&self.what, e))?;
        for (i, mac) in (0u32..).zip(macs) {
            fwd.set(i, LabMac { addr: mac, _pad: 0 }, 0)
                .map_err(|e| bpf_err(format!("lab_fwd_mac of {}", self.what), e))?;
        }
        Ok(())
    }

    /// Sum over CPUs of `lab_rx_count` (for `xdp_count`).
    pub fn rx_count(&self) -> Result<u64> {
        let map = self
            .ebpf
            .map("lab_rx_count")
            .ok_or_else(|| bpf_err(&self.what, "no map lab_rx_count"))?;
        let counts: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|e| bpf_err(&self.what, e))?;
        let values = counts.get(&0, 0).map_err(|e| bpf_err(&self.what, e))?;
        Ok(values.iter().sum())
    }
}

/// The program name is the first word of `what` (see [`Attached::attach`]).
fn program_name(what: &str) -> &str {
    what.split(' ').next().unwrap_or(what)
}

/// The live-frames traffic generator (`xdp_generate`), loaded but not attached.
#[derive(Debug)]
pub struct LiveFramesGenerator {
    ebpf: Ebpf,
    frame: Vec<u8>,
}

impl LiveFramesGenerator {
    /// Loads the generator for frames whose headers are `config.headers`, padded with
    /// zeros to `frame_len` bytes.
    pub fn load(config: GenConfig, frame_len: usize) -> Result<Self> {
        let mut ebpf = Ebpf::load(LAB_OBJ).map_err(|e| bpf_err("load generator", e))?;
        {
            let map = ebpf
                .map_mut("lab_gen_config")
                .ok_or_else(|| bpf_err("generator", "no map lab_gen_config"))?;
            let mut cfg: Array<_, GenConfig> =
                Array::try_from(map).map_err(|e| bpf_err("lab_gen_config", e))?;
            cfg.set(0, config, 0)
                .map_err(|e| bpf_err("lab_gen_config", e))?;
        }
        let prog: &mut Xdp = ebpf
            .program_mut("xdp_generate")
            .ok_or_else(|| bpf_err("generator", "no program xdp_generate"))?
            .try_into()
            .map_err(|e| bpf_err("xdp_generate", e))?;
        prog.load().map_err(|e| bpf_err("verify xdp_generate", e))?;
        let mut frame = config.headers.to_vec();
        frame.resize(frame_len.max(GEN_HEADERS), 0);
        Ok(Self { ebpf, frame })
    }

    /// Sends `repeat` frames out of `ifindex`. Call it from a thread inside the
    /// interface's namespace. The outer error is the lab's, the inner one what
    /// BPF_PROG_RUN answered (a kernel may refuse live frames: see
    /// [`crate::generator`]).
    pub fn send(&self, ifindex: u32, repeat: u32) -> Result<std::io::Result<()>> {
        let prog: &Xdp = self
            .ebpf
            .program("xdp_generate")
            .ok_or_else(|| bpf_err("generator", "no program xdp_generate"))?
            .try_into()
            .map_err(|e| bpf_err("xdp_generate", e))?;
        let fd = prog.fd().map_err(|e| bpf_err("xdp_generate", e))?;
        Ok(prog_run::run_live_frames(
            fd.as_fd(),
            ifindex,
            &self.frame,
            repeat,
            0,
        ))
    }

    /// Frames the program handed to the kernel for transmission so far.
    pub fn sent(&self) -> Result<u64> {
        let map = self
            .ebpf
            .map("lab_gen_sent")
            .ok_or_else(|| bpf_err("generator", "no map lab_gen_sent"))?;
        let sent: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|e| bpf_err("lab_gen_sent", e))?;
        let values = sent.get(&0, 0).map_err(|e| bpf_err("lab_gen_sent", e))?;
        Ok(values.iter().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rust mirrors have the sizes the compiled object's maps declare (from
    /// bpf/lab.h), checked without loading anything into the kernel.
    #[test]
    fn mirrors_match_the_maps_of_the_object() {
        let obj = aya_obj::Object::parse(LAB_OBJ).unwrap();
        let map = |name: &str| {
            obj.maps
                .get(name)
                .unwrap_or_else(|| panic!("map {name} in lab.bpf.o"))
        };
        let size = |n: usize| u32::try_from(n).unwrap();
        assert_eq!(
            map("lab_gen_config").value_size(),
            size(std::mem::size_of::<GenConfig>())
        );
        assert_eq!(
            map("lab_fdb").key_size(),
            size(std::mem::size_of::<LabMac>())
        );
        assert_eq!(
            map("lab_fwd_mac").value_size(),
            size(std::mem::size_of::<LabMac>())
        );
        for counter in ["lab_gen_sent", "lab_rx_count"] {
            assert_eq!(map(counter).value_size(), 8, "{counter}");
        }
        assert_eq!(std::mem::size_of::<GenConfig>(), GEN_HEADERS + 6);
    }
}
