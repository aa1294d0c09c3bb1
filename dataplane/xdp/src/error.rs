//! The crate's error type: each variant names the map, program, interface or
//! option it is about.

use std::io;
use std::path::PathBuf;

use kubelvs_model::ServiceKey;

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("loading BPF object {object}: {source}")]
    Load {
        object: &'static str,
        #[source]
        source: aya::EbpfError,
    },
    #[error("BPF program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching {program} to interface {ifname}: {source}")]
    Attach {
        program: &'static str,
        ifname: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("BPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("BPF map {map} is missing from the object")]
    MissingMap { map: &'static str },
    #[error("pinned map {map} has {found} entries (key, value, max) but this loader wants {wanted}: keep the options or remove {pin_dir}")]
    PinnedMapMismatch {
        map: &'static str,
        found: MapShape,
        wanted: MapShape,
        pin_dir: PathBuf,
    },
    #[error("pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pinning link at {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mapping BPF map rings into memory: {0}")]
    Mmap(#[source] io::Error),
    #[error("DirectorOptions::{field}: {reason}")]
    InvalidOptions { field: &'static str, reason: String },
    #[error("all {max} VIP ids are in use (raise DirectorOptions::max_vips)")]
    TooManyVips { max: u32 },
    #[error("all {max} real server ids are in use (raise DirectorOptions::max_reals)")]
    TooManyReals { max: u32 },
    #[error("maglev ring of {service}: {source}")]
    Maglev {
        service: ServiceKey,
        #[source]
        source: kubelvs_maglev::MaglevError,
    },
}

pub type Result<T, E = XdpError> = std::result::Result<T, E>;

/// Key size, value size and capacity of a map: what must agree between a
/// pinned map and the program about to use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapShape {
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl std::fmt::Display for MapShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "({}, {}, {})",
            self.key_size, self.value_size, self.max_entries
        )
    }
}
