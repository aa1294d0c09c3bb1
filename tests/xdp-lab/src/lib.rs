//! Network-namespace lab for the XDP dataplane.
//!
//! A [`Lab`] is a small LVS cluster made of network namespaces: a bridge in its own
//! namespace, a client, a director and real servers, each attached to the bridge by
//! a veth pair. Nothing touches the host's namespace. Every namespace is removed when
//! the [`Lab`] is dropped, also when a test panics.
//!
//! On top of it: real TCP servers that answer with their identity ([`server`]), a
//! client that records which real server answered ([`client`]), the nftables DNAT load
//! balancer LVS is compared with ([`nft`]), the XDP director of `kubelvs-xdp` attached
//! to the director host ([`director`]), and a datapath throughput harness
//! ([`mod@bench`]): a traffic generator ([`generator`]: live frames through
//! [`prog_run`] and BPF in `bpf/lab.bpf.c`, or an AF_PACKET socket where the kernel
//! refuses live frames) and XDP counters on the real servers.
//!
//! A network namespace belongs to a thread: everything that must run inside one goes
//! through [`Netns::run`], [`Netns::spawn`] or an [`actor::NsActor`].
//!
//! Tests: `tests/lab.rs` (the lab itself, nftables DNAT), `tests/xdp_director.rs`
//! (real TCP through the XDP director), `tests/throughput.rs` (the harness); all
//! `#[ignore]`d as privileged. The benchmark: `cargo run --release -p
//! kubelvs-xdp-lab --bin xdp-throughput` (see BENCHMARKS.md).

pub mod actor;
pub mod arp;
pub mod bench;
pub mod bpf;
pub mod client;
pub mod cmd;
pub mod director;
pub mod generator;
pub mod netns;
pub mod nft;
pub mod packet;
pub mod packet_socket;
pub mod plan;
pub mod prog_run;
pub mod server;
pub mod sock;
pub mod topology;

pub use client::{Conn, Spread};
pub use netns::Netns;
pub use server::TcpServer;
pub use topology::{Host, Lab, LabConfig, ReturnPath};

use std::io;

/// Everything that can go wrong while building or driving a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("cannot run `{command}`: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("network namespace {netns}: {what}: {source}")]
    Netns {
        netns: String,
        what: &'static str,
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("timed out after {after_ms} ms: {what}")]
    Timeout { what: String, after_ms: u128 },
    #[error("unexpected output of `{command}`: {detail}")]
    Parse { command: String, detail: String },
    #[error("BPF: {what}: {detail}")]
    Bpf { what: String, detail: String },
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;
