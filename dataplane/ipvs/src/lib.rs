//! Kernel IPVS over generic netlink: our own codec, a thin client, and a diff-based apply.
//!
//! Layers, from pure to I/O:
//! - [`nl`] and [`codec`]: netlink/genetlink framing and every IPVS message
//!   ([`IpvsMessage`]), encode and decode. Pure; decoders never panic.
//! - [`table`] and [`mod@diff`]: the IPVS table as plain data and the pure decision
//!   [`diff::diff`] (kernel table + desired + owned + drain bookkeeping + `now` -> ops).
//! - [`client`]: [`IpvsClient`], one NETLINK_GENERIC socket used serially.
//! - [`apply`]: [`IpvsDataplane::apply`], dump once, diff, send only the changes
//!   ([`IpvsDataplane::apply_incremental`] skips the dump between full applies).
//!   [`IpvsKernel`] is the seam: [`IpvsClient`] or, for tests, the in-memory `FakeIpvs`.
//! - [`sysctl`] and [`fullnat`]: director sysctls ([`director_sysctls_for`]) and
//!   FullNAT via nftables.
//! - `selftest` (feature `testing`): real-kernel checks of every command (it flushes
//!   the table), for the microVM harness. `fake` (same feature): `FakeIpvs`,
//!   `FaultyIpvs`, `FakeHost`. The binaries ship neither.
//!
//! See `docs/ipvs.md` for the decisions and what was verified on a real kernel.
//!
//! # Stable API (the VM harness codes against this; changes are additive only)
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use kubelvs_ipvs::{IpvsClient, IpvsDataplane, director_sysctls, apply_sysctls, fullnat_ruleset};
//!
//! # fn plan() -> Vec<kubelvs_model::Service> { vec![] }
//! # fn main() -> Result<(), kubelvs_ipvs::Error> {
//! // Low level: read the table (services with their destinations).
//! let mut client = IpvsClient::new()?;
//! let table: Vec<kubelvs_ipvs::KernelService> = client.dump()?;
//! let _ = (table, client.writes(), client.family_id());
//!
//! // The dataplane: ownership is kept in a state file; other tools' services are never touched.
//! let mut dp = IpvsDataplane::new("/run/kube-lvs/ipvs-owned-services")?;
//! dp.set_drain_timeout(Duration::from_secs(30));
//! apply_sysctls(&director_sysctls())?; // after IpvsDataplane::new: ip_vs is loaded then
//! let services = plan();
//! let report = dp.apply(&services, Instant::now())?;
//! println!("{} writes, {} errors", report.writes, report.errors.len());
//! let again = dp.apply(&services, Instant::now())?;
//! assert_eq!(again.writes, 0);
//!
//! // FullNAT: an nft script replacing only table inet kubelvs_fullnat.
//! let script: String = fullnat_ruleset(&services);
//! kubelvs_ipvs::apply_fullnat(&services)?;
//! # let _ = script; Ok(()) }
//! ```

pub mod apply;
pub mod client;
pub mod codec;
pub mod diff;
pub mod director;
pub mod error;
#[cfg(feature = "testing")]
pub mod fake;
pub mod fullnat;
pub mod guard;
pub mod nl;
pub mod ownership;
#[cfg(feature = "testing")]
pub mod selftest;
pub mod sysctl;
pub mod table;

pub use apply::{
    ApplyReport, IpvsDataplane, IpvsKernel, DEFAULT_DRAIN_TIMEOUT, VERIFY_MIN, VERIFY_ROUNDS,
};
pub use client::IpvsClient;
pub use codec::{
    Command, DaemonAttrs, DestAttrs, Flags, Info, IpvsMessage, Netmask, ServiceAttrs, Stats,
    Timeouts,
};
pub use diff::{diff, Diff, Draining, Op, OpKind};
pub use director::{DirectorHost, IpvsDirector, SystemHost};
pub use error::{Error, KernelError};
#[cfg(feature = "testing")]
pub use fake::{FakeHost, FakeIpvs, Fault, FaultyIpvs};
pub use fullnat::{apply_fullnat, fullnat_ruleset, FULLNAT_TABLE};
pub use nl::DecodeError;
pub use ownership::{OwnedServices, DEFAULT_STATE_PATH};
pub use sysctl::{apply_sysctls, director_sysctls, director_sysctls_for, Sysctl};
pub use table::{
    DesiredDest, DesiredService, DestConfig, DestId, KernelDest, KernelService, PlanError,
    ServiceConfig, ServiceId,
};

/// Feeds `bytes` to every parser (netlink framing, genl controller, IPVS messages,
/// plain-data conversions, the state file). Parsers must return, never panic: the
/// proptest fuzz property and the cargo-fuzz target (`dataplane/ipvs/fuzz`) call this.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub fn fuzz_all_parsers(bytes: &[u8]) {
    for m in nl::messages(bytes) {
        let Ok(m) = m else { break };
        let _ = m.kind();
        let _ = nl::parse_family(m.payload);
        let _ = IpvsMessage::decode(m.payload);
    }
    let _ = nl::NlHeader::parse(bytes);
    let _ = nl::split_genl(bytes);
    let _ = nl::parse_family(bytes);
    for a in nl::attrs(bytes, "fuzz").flatten() {
        let _ = a.string("fuzz");
        let _ = a.counter("fuzz");
        let _ = a.be16("fuzz");
    }
    if let Ok(m) = IpvsMessage::decode(bytes) {
        if let Some(s) = &m.service {
            let _ = KernelService::from_attrs(s);
            let _ = ServiceId::from_attrs(s);
        }
        if let Some(d) = &m.dest {
            let _ = KernelDest::from_attrs(d);
        }
        let _ = client::describe(&m);
        // Whatever decodes re-encodes.
        let _ = m.encode(0x24, m.request_flags(), 1);
    }
    let af = bytes.first().map_or(codec::AF_INET, |b| u16::from(*b));
    let _ = IpvsMessage::decode_with_service_af(bytes, af);
    let _ = ownership::parse(&String::from_utf8_lossy(bytes));
}
