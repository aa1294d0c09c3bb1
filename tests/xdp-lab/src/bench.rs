//! Datapath throughput: a live-frames generator in the client sends UDP to the VIP;
//! real servers count (and drop) what reaches them with an XDP counter.
//!
//! The same lab, generator and counters serve every director under test, so the
//! ratio of two measurements made one after the other in one run compares the
//! directors, not the machines.

use std::time::{Duration, Instant};

use crate::bpf::{Attached, GenConfig, Generator, BENCH_PORT};
use crate::packet::{udp_headers, MIN_FRAME};
use crate::topology::{Lab, LabConfig};
use crate::Result;

/// Frames per BPF_PROG_RUN call: long enough to amortise the syscall, short enough to
/// stop close to the requested duration.
const FRAMES_PER_RUN: u32 = 65_536;
/// First UDP source port of the generated flows.
const FIRST_SOURCE_PORT: u16 = 10_000;

/// One measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Throughput {
    pub seconds: f64,
    /// Frames the generator handed to the kernel.
    pub sent: u64,
    /// Benchmark packets counted by each real server.
    pub per_real_server: Vec<u64>,
}

impl Throughput {
    pub fn delivered(&self) -> u64 {
        self.per_real_server.iter().sum()
    }

    /// Packets per second delivered to the real servers.
    pub fn delivered_pps(&self) -> f64 {
        self.delivered() as f64 / self.seconds
    }

    pub fn sent_pps(&self) -> f64 {
        self.sent as f64 / self.seconds
    }
}

/// A lab wired for throughput: the bridge-side veth peers of client and director
/// accept XDP frames, each real server counts benchmark packets.
#[derive(Debug)]
pub struct BenchLab {
    // Dropped before the lab: programs detach while their interfaces still exist.
    counters: Vec<Attached>,
    _pass: Vec<Attached>,
    generator: Generator,
    pub lab: Lab,
}

impl BenchLab {
    /// `flows` distinct UDP flows (source ports), frames of `frame_len` bytes.
    pub fn build(flows: u16, frame_len: usize) -> Result<Self> {
        let lab = Lab::build(LabConfig::default())?;
        // Frames sent with XDP (the generator's, the director's XDP_TX) are received
        // by a veth peer only if that peer runs an XDP program.
        let pass = [&lab.client, &lab.director]
            .iter()
            .map(|h| Attached::attach(&lab.bridge, &h.bridge_port, "xdp_pass"))
            .collect::<Result<Vec<_>>>()?;
        let counters = lab
            .real_servers
            .iter()
            .map(|rs| Attached::attach(&rs.netns, &rs.ifname, "xdp_count"))
            .collect::<Result<Vec<_>>>()?;
        let config = GenConfig {
            headers: udp_headers(
                lab.client.mac,
                lab.director.mac,
                lab.client.addr,
                lab.vip,
                FIRST_SOURCE_PORT,
                BENCH_PORT,
                frame_len.max(MIN_FRAME),
            ),
            first_source_port: FIRST_SOURCE_PORT,
            flows: flows.max(1),
            _pad: 0,
        };
        let generator = Generator::load(config, frame_len.max(MIN_FRAME))?;
        Ok(Self {
            counters,
            _pass: pass,
            generator,
            lab,
        })
    }

    fn counts(&self) -> Result<Vec<u64>> {
        self.counters.iter().map(Attached::rx_count).collect()
    }

    /// Generates for `duration` and counts what the real servers received.
    pub fn measure(&self, duration: Duration) -> Result<Throughput> {
        let before = self.counts()?;
        let sent_before = self.generator.sent()?;
        let ifindex = self.lab.client.ifindex;
        let generator = &self.generator;
        let seconds = self.lab.client.netns.run(|| -> Result<f64> {
            let start = Instant::now();
            while start.elapsed() < duration {
                generator.send(ifindex, FRAMES_PER_RUN)?;
            }
            Ok(start.elapsed().as_secs_f64())
        })??;
        let after = self.counts()?;
        Ok(Throughput {
            seconds,
            sent: self.generator.sent()? - sent_before,
            per_real_server: after.iter().zip(&before).map(|(a, b)| a - b).collect(),
        })
    }
}
