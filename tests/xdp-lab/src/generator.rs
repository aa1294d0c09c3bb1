//! The throughput lab's traffic generator, of one of two kinds: BPF_PROG_RUN in
//! live-frames mode (XDP frames out of the client's veth, the cheapest), or an
//! AF_PACKET socket (skbs). Some kernels refuse live frames: a locked-down one
//! answers EPERM, one older than 5.18 EINVAL. [`GeneratorChoice::Auto`] tries live
//! frames once and falls back to the packet socket, saying why, so a measurement
//! always names the generator that made it.

use std::fmt;
use std::sync::Mutex;

use crate::bpf::{GenConfig, LiveFramesGenerator};
use crate::netns::Netns;
use crate::packet_socket::PacketSocketGenerator;
use crate::{LabError, Result};

/// Which generator a lab should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeneratorChoice {
    /// Live frames where the kernel runs them, else the packet socket.
    Auto,
    LiveFrames,
    PacketSocket,
}

impl GeneratorChoice {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "live-frames" => Some(Self::LiveFrames),
            "packet-socket" => Some(Self::PacketSocket),
            _ => None,
        }
    }
}

/// The kind of a generator, as measurements report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeneratorKind {
    LiveFrames,
    PacketSocket,
}

impl fmt::Display for GeneratorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::LiveFrames => "BPF_PROG_RUN live frames",
            Self::PacketSocket => "AF_PACKET sendmmsg",
        })
    }
}

/// A generator sending from one interface of one namespace.
#[derive(Debug)]
pub struct TrafficGenerator {
    inner: Inner,
    ifindex: u32,
    /// Why live frames were not used, when [`GeneratorChoice::Auto`] fell back.
    pub fallback_reason: Option<String>,
}

#[derive(Debug)]
enum Inner {
    LiveFrames(LiveFramesGenerator),
    PacketSocket(Mutex<PacketSocketGenerator>),
}

/// Whether an error of BPF_PROG_RUN means "this kernel does not run live frames"
/// rather than a mistake of ours: EPERM (lockdown or a security module), EINVAL (no
/// such flag before 5.18), ENOTSUPP/EOPNOTSUPP.
fn refused_by_kernel(e: &std::io::Error) -> bool {
    const ENOTSUPP: i32 = 524; // the kernel-internal errno BPF commands may return
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM | libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

impl TrafficGenerator {
    /// A generator of `config`'s flows in frames of `frame_len` bytes, sending out of
    /// `ifindex` in `netns`. With `Auto`, one live frame is sent to find out whether
    /// the kernel runs them.
    pub fn new(
        choice: GeneratorChoice,
        config: GenConfig,
        frame_len: usize,
        netns: &Netns,
        ifindex: u32,
    ) -> Result<Self> {
        let packet_socket = |reason: Option<String>| -> Result<Self> {
            let mut frame = config.headers.to_vec();
            frame.resize(frame_len.max(config.headers.len()), 0);
            let (first, flows) = (config.first_source_port, config.flows);
            let socket = netns
                .run(move || PacketSocketGenerator::open(ifindex, &frame, first, flows))?
                .map_err(|source| LabError::Io {
                    what: format!(
                        "AF_PACKET generator on ifindex {ifindex} in {}",
                        netns.name()
                    ),
                    source,
                })?;
            Ok(Self {
                inner: Inner::PacketSocket(Mutex::new(socket)),
                ifindex,
                fallback_reason: reason,
            })
        };
        if choice == GeneratorChoice::PacketSocket {
            return packet_socket(None);
        }
        let live = LiveFramesGenerator::load(config, frame_len)?;
        if choice == GeneratorChoice::Auto {
            let probe = netns.run(|| live.send(ifindex, 1))??;
            if let Err(e) = probe {
                if refused_by_kernel(&e) {
                    return packet_socket(Some(format!("BPF_PROG_RUN live frames: {e}")));
                }
                return Err(live_frames_error(ifindex, e));
            }
        }
        Ok(Self {
            inner: Inner::LiveFrames(live),
            ifindex,
            fallback_reason: None,
        })
    }

    pub fn kind(&self) -> GeneratorKind {
        match self.inner {
            Inner::LiveFrames(_) => GeneratorKind::LiveFrames,
            Inner::PacketSocket(_) => GeneratorKind::PacketSocket,
        }
    }

    /// Sends `count` frames. Call it from a thread inside the generator's namespace.
    pub fn send(&self, count: u32) -> Result<()> {
        match &self.inner {
            Inner::LiveFrames(g) => g
                .send(self.ifindex, count)?
                .map_err(|e| live_frames_error(self.ifindex, e)),
            Inner::PacketSocket(g) => lock(g).send(count).map_err(|source| LabError::Io {
                what: format!("AF_PACKET generator on ifindex {}", self.ifindex),
                source,
            }),
        }
    }

    /// Frames handed to the kernel so far.
    pub fn sent(&self) -> Result<u64> {
        match &self.inner {
            Inner::LiveFrames(g) => g.sent(),
            Inner::PacketSocket(g) => Ok(lock(g).sent()),
        }
    }
}

fn lock(g: &Mutex<PacketSocketGenerator>) -> std::sync::MutexGuard<'_, PacketSocketGenerator> {
    g.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn live_frames_error(ifindex: u32, e: std::io::Error) -> LabError {
    LabError::Bpf {
        what: format!("BPF_PROG_RUN live frames on ifindex {ifindex}"),
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_refusals_are_told_from_our_mistakes() {
        for errno in [libc::EPERM, libc::EINVAL, libc::EOPNOTSUPP, 524] {
            assert!(refused_by_kernel(&std::io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ENODEV, libc::EBADF, libc::EFAULT, libc::E2BIG] {
            assert!(!refused_by_kernel(&std::io::Error::from_raw_os_error(
                errno
            )));
        }
    }

    #[test]
    fn choices_parse_from_their_flag_values() {
        assert_eq!(GeneratorChoice::parse("auto"), Some(GeneratorChoice::Auto));
        assert_eq!(
            GeneratorChoice::parse("live-frames"),
            Some(GeneratorChoice::LiveFrames)
        );
        assert_eq!(
            GeneratorChoice::parse("packet-socket"),
            Some(GeneratorChoice::PacketSocket)
        );
        assert_eq!(GeneratorChoice::parse("pktgen"), None);
    }
}
