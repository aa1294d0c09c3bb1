//! The crate's error type: each variant names the object it is about.

use std::io;
use std::path::PathBuf;

use crate::codec::Command;
use crate::nl::DecodeError;
use crate::table::PlanError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink socket: {op}: {source}")]
    Socket {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "generic netlink family {0:?} not found (for IPVS: ip_vs not loaded or not available)"
    )]
    FamilyNotFound(String),
    #[error("IPVS {cmd} {object}: {}", io::Error::from_raw_os_error(*errno))]
    Kernel {
        cmd: Command,
        /// The service (and destination) the command was about.
        object: String,
        /// Positive errno.
        errno: i32,
    },
    #[error("decoding the reply to {context}: {source}")]
    Decode {
        context: String,
        #[source]
        source: DecodeError,
    },
    #[error("netlink reply with sequence {got}, expected {expected}")]
    Sequence { expected: u32, got: u32 },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("ownership state file {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("ownership state file {path}, line {line}: cannot parse {text:?}")]
    StateParse {
        path: PathBuf,
        line: usize,
        text: String,
    },
    #[error("sysctl {path}: {source}")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("nft -f - (table {table}): {detail}")]
    Nft { table: &'static str, detail: String },
}

/// What an IPVS errno means (IPVS.md A.6), for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelError {
    /// EEXIST: the service, destination or sync daemon already exists.
    Exists,
    /// ESRCH: no such service (or sync daemon).
    NoSuchService,
    /// ENOENT: no such destination, scheduler or persistence engine (or family).
    NotFound,
    /// EINVAL: missing or invalid attributes, bad address, bad netmask.
    Invalid,
    /// ERANGE: negative weight, lower threshold above upper.
    Range,
    /// EAFNOSUPPORT: address family not supported (IPv6 disabled).
    FamilyNotSupported,
    /// EPERM: no CAP_NET_ADMIN in the initial user namespace.
    Permission,
    /// EOPNOTSUPP: wrong do/dump flavour.
    NotSupported,
    /// ENODEV: unknown sync daemon interface.
    NoDevice,
    Other(i32),
}

impl KernelError {
    pub fn from_errno(errno: i32) -> Self {
        match errno {
            libc::EEXIST => Self::Exists,
            libc::ESRCH => Self::NoSuchService,
            libc::ENOENT => Self::NotFound,
            libc::EINVAL => Self::Invalid,
            libc::ERANGE => Self::Range,
            libc::EAFNOSUPPORT => Self::FamilyNotSupported,
            libc::EPERM => Self::Permission,
            libc::EOPNOTSUPP => Self::NotSupported,
            libc::ENODEV => Self::NoDevice,
            other => Self::Other(other),
        }
    }
}

impl Error {
    /// The meaning of the kernel's answer, for [`Error::Kernel`].
    pub fn kernel_error(&self) -> Option<KernelError> {
        self.errno().map(KernelError::from_errno)
    }

    /// The kernel's errno, for [`Error::Kernel`].
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// The object already exists (EEXIST): convergence for an add.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The service (ESRCH) or destination (ENOENT) does not exist: convergence for a delete.
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Some(libc::ESRCH) | Some(libc::ENOENT))
    }
}
