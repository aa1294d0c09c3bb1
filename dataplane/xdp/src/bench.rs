//! Benchmark support: the director wrapped so that `BPF_PROG_TEST_RUN` with
//! repeat > 1 sees the original packet on every run (see `dataplane/bpf/bench.c`).

use std::os::fd::BorrowedFd;

use aya::maps::MapData;

use crate::*;

/// `struct klvs_bench_cfg`: iteration n runs flow `base + (n % count) * stride`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BenchCfg {
    pub base: u32,
    pub count: u32,
    pub stride: u32,
    /// Non-zero: the frame is IPv6.
    pub ipv6: u32,
}

#[allow(unsafe_code)]
// SAFETY: repr(C), four u32, no padding.
unsafe impl aya::Pod for BenchCfg {}

const WRAPPED: &str = "klvs_bench_director";
const EMPTY: &str = "klvs_bench_empty";

/// The wrapped director (its maps driven like [`XdpDirector`]'s) and the
/// wrapper around nothing, whose cost is subtracted.
#[derive(Debug)]
pub struct BenchDirector {
    pub director: XdpDirector,
}

impl BenchDirector {
    pub fn load(opts: DirectorOptions) -> Result<Self> {
        let mut director = XdpDirector::load_object(opts, BENCH_OBJ, "bench.o", WRAPPED)?;
        program(&mut director.ebpf, EMPTY)?
            .load()
            .map_err(|source| XdpError::Program {
                program: EMPTY,
                source,
            })?;
        Ok(Self { director })
    }

    /// Chooses the flows the next runs use.
    pub fn set_flows(&mut self, cfg: BenchCfg) -> Result<()> {
        let map = self
            .director
            .ebpf
            .map_mut("bench_cfg")
            .ok_or(XdpError::MissingMap { map: "bench_cfg" })?;
        let mut arr: aya::maps::Array<&mut MapData, BenchCfg> =
            aya::maps::Array::try_from(map).map_err(map_err("bench_cfg"))?;
        arr.set(0, cfg, 0).map_err(map_err("bench_cfg"))
    }

    pub fn director_fd(&self) -> BorrowedFd<'_> {
        self.director.program_fd()
    }

    pub fn empty_fd(&self) -> BorrowedFd<'_> {
        prog_fd(&self.director.ebpf, EMPTY)
    }
}
