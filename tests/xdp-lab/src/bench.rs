//! Datapath throughput: a generator in the client ([`crate::generator`]: live frames,
//! or an AF_PACKET socket where the kernel refuses them) sends UDP to the VIP; real
//! servers count (and drop) what reaches them with an XDP counter.
//!
//! The same lab, generator and counters serve every director under test, so the
//! ratio of two measurements made one after the other in one run compares the
//! directors, not the machines.

use std::time::{Duration, Instant};

use kubelvs_model::{Forwarding, Protocol, Tunnel};
use kubelvs_xdp::{DirectorOptions, XdpDirector};

use crate::actor::NsActor;
use crate::bpf::{Attached, GenConfig, BENCH_PORT};
use crate::director::neighbours;
use crate::generator::{GeneratorChoice, TrafficGenerator};
use crate::nft::{self, L4};
use crate::packet::{udp_headers, MIN_FRAME};
use crate::plan::service;
use crate::topology::{Lab, LabConfig};
use crate::{LabError, Result};

/// Frames per generator call: long enough to amortise the syscall, short enough to
/// stop close to the requested duration.
const FRAMES_PER_RUN: u32 = 8_192;
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

/// How the lab's bridge namespace moves frames between client, director and real
/// servers during the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// The kernel bridge alone: every frame becomes an skb twice (in and out of the
    /// director), which costs more than either director and hides their difference.
    Bridge,
    /// An XDP fast path on the client's and director's bridge ports redirects frames
    /// for the director's and real servers' MACs straight to their port; the rest
    /// (ARP, broadcast) still goes through the bridge. Hosts that receive redirected
    /// frames run XDP themselves (director: its program or XDP_PASS; real servers:
    /// the counter), as hosts behind a NIC would.
    Xdp,
}

/// A lab wired for throughput: each real server counts benchmark packets.
#[derive(Debug)]
pub struct BenchLab {
    // Dropped before the lab: programs detach while their interfaces still exist.
    counters: Vec<Attached>,
    _ports: Vec<Attached>,
    pub generator: TrafficGenerator,
    pub switch: Switch,
    pub lab: Lab,
}

impl BenchLab {
    /// `flows` distinct UDP flows (source ports), frames of `frame_len` bytes, sent by
    /// the generator `choice` gives.
    pub fn build(
        flows: u16,
        frame_len: usize,
        switch: Switch,
        choice: GeneratorChoice,
    ) -> Result<Self> {
        let lab = Lab::build(LabConfig::default())?;
        // Frames sent with XDP (the generator's, the director's XDP_TX) are received
        // by a veth peer only if that peer runs an XDP program.
        let mut ports = Vec::new();
        for host in [&lab.client, &lab.director] {
            match switch {
                Switch::Bridge => ports.push(Attached::attach(
                    &lab.bridge,
                    &host.bridge_port,
                    "xdp_pass",
                )?),
                Switch::Xdp => {
                    let mut fdb = Vec::new();
                    for h in std::iter::once(&lab.director).chain(&lab.real_servers) {
                        fdb.push((h.mac, lab.bridge.ifindex(&h.bridge_port)?));
                    }
                    let mut port = Attached::attach(&lab.bridge, &host.bridge_port, "xdp_switch")?;
                    port.set_fdb(&fdb)?;
                    ports.push(port);
                }
            }
        }
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
        let generator = TrafficGenerator::new(
            choice,
            config,
            frame_len.max(MIN_FRAME),
            &lab.client.netns,
            lab.client.ifindex,
        )?;
        Ok(Self {
            counters,
            _ports: ports,
            generator,
            switch,
            lab,
        })
    }

    fn counts(&self) -> Result<Vec<u64>> {
        self.counters.iter().map(Attached::rx_count).collect()
    }

    /// The counters once frames still queued on the way (a veth ring, a deferred
    /// softirq) have arrived: two reads 10 ms apart agree, or 1 s has passed.
    fn settled_counts(&self) -> Result<Vec<u64>> {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut last = self.counts()?;
        loop {
            std::thread::sleep(Duration::from_millis(10));
            let now = self.counts()?;
            if now == last || Instant::now() > deadline {
                return Ok(now);
            }
            last = now;
        }
    }

    /// Generates for `duration` and counts what the real servers received.
    pub fn measure(&self, duration: Duration) -> Result<Throughput> {
        let before = self.counts()?;
        let sent_before = self.generator.sent()?;
        let generator = &self.generator;
        let seconds = self.lab.client.netns.run(|| -> Result<f64> {
            let start = Instant::now();
            while start.elapsed() < duration {
                generator.send(FRAMES_PER_RUN)?;
            }
            Ok(start.elapsed().as_secs_f64())
        })??;
        let after = self.settled_counts()?;
        Ok(Throughput {
            seconds,
            sent: self.generator.sent()? - sent_before,
            per_real_server: after.iter().zip(&before).map(|(a, b)| a - b).collect(),
        })
    }
}

/// The directors the benchmark compares, on the same lab and generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Director {
    /// nftables `dnat to numgen inc mod 3 map {...}` in the director's kernel.
    NftDnat,
    /// The XDP director (kubelvs-xdp), forwarding `dr`, maglev over 3 real servers.
    XdpDr,
    /// The XDP director, forwarding `nat` (destination rewritten, checksums fixed).
    XdpNat,
    /// The XDP director, forwarding `tun` (IPIP; the real servers' counter looks
    /// inside instead of decapsulating).
    XdpTun,
    /// Not a load balancer: the least an XDP DR director does (parse, pick a real
    /// server by source port, rewrite the MACs, XDP_TX). The cost of the path
    /// around the director.
    Floor,
}

impl Director {
    pub fn name(self) -> &'static str {
        match self {
            Self::NftDnat => "nftables DNAT (numgen)",
            Self::XdpDr => "XDP director, DR",
            Self::XdpNat => "XDP director, NAT",
            Self::XdpTun => "XDP director, TUN",
            Self::Floor => "floor (XDP MAC rewrite)",
        }
    }
}

impl BenchLab {
    /// Sets `director` up on the director host, generates for `warmup` (ARP,
    /// conntrack and connection-table entries), measures for `duration`, and
    /// removes the director again so the next measurement starts clean.
    pub fn measure_director(
        &self,
        director: Director,
        warmup: Duration,
        duration: Duration,
    ) -> Result<Throughput> {
        let lab = &self.lab;
        match director {
            Director::NftDnat => {
                // Redirected frames reach the director only if it runs XDP.
                let _pass = match self.switch {
                    Switch::Xdp => Some(Attached::attach(
                        &lab.director.netns,
                        &lab.director.ifname,
                        "xdp_pass",
                    )?),
                    Switch::Bridge => None,
                };
                let rs: Vec<_> = lab.real_servers.iter().map(|r| r.addr).collect();
                nft::install_dnat(&lab.director.netns, lab.vip, BENCH_PORT, L4::Udp, &rs)?;
                let t = self.measure(warmup).and_then(|_| self.measure(duration));
                nft::remove(&lab.director.netns)?;
                t
            }
            Director::XdpDr | Director::XdpNat | Director::XdpTun => {
                let forwarding = match director {
                    Director::XdpNat => Forwarding::Nat,
                    Director::XdpTun => Forwarding::Tun(Tunnel::Ipip),
                    _ => Forwarding::Dr,
                };
                let ifname = lab.director.ifname.clone();
                let mut opts = DirectorOptions::new(lab.director.addr);
                // Not pinned: the program detaches when the loader object drops.
                opts.pin_dir = None;
                opts.max_vips = 4;
                let xdp = NsActor::start(&lab.director.netns, "XDP director", move || {
                    XdpDirector::attach_with(&ifname, opts).map_err(|e| e.to_string())
                })?;
                let weights = vec![1; lab.real_servers.len()];
                let services = vec![service(
                    lab,
                    BENCH_PORT,
                    Protocol::Udp,
                    forwarding,
                    &weights,
                    BENCH_PORT,
                )];
                let neighbours = neighbours(lab);
                xdp.call(move |d| d.apply(&services, &neighbours).map_err(|e| e.to_string()))?
                    .map_err(|detail| LabError::Bpf {
                        what: "apply the benchmark service".into(),
                        detail,
                    })?;
                let t = self.measure(warmup).and_then(|_| self.measure(duration));
                drop(xdp);
                t
            }
            Director::Floor => {
                let mut fwd =
                    Attached::attach(&lab.director.netns, &lab.director.ifname, "xdp_mac_forward")?;
                let mac = |i: usize| lab.real_servers[i % lab.real_servers.len()].mac;
                fwd.set_forward_macs(std::array::from_fn(mac))?;
                let t = self.measure(warmup).and_then(|_| self.measure(duration));
                drop(fwd);
                t
            }
        }
    }
}
