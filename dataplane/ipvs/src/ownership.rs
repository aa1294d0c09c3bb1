//! Which IPVS services this agent created. Kernel IPVS has no tags, so we keep the
//! list in a small state file (one [`ServiceId`] per line), written before a create
//! so that a crash between the two never leaves a service we created unowned.
//! Services created by other tools (ipvsadm, keepalived) are never in it.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::table::ServiceId;

/// Default location: tmpfs, so a reboot (which empties the kernel table) also forgets.
pub const DEFAULT_STATE_PATH: &str = "/run/kube-lvs/ipvs-owned-services";

/// The owned-service set and the file it is kept in.
#[derive(Debug, Clone)]
pub struct OwnedServices {
    path: PathBuf,
    ids: BTreeSet<ServiceId>,
}

impl OwnedServices {
    /// Loads the file; a missing file is an empty set.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, Error> {
        let path = path.into();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(Error::State { path, source }),
        };
        let ids = parse(&text).map_err(|(line, text)| Error::StateParse {
            path: path.clone(),
            line,
            text,
        })?;
        Ok(Self { path, ids })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn ids(&self) -> &BTreeSet<ServiceId> {
        &self.ids
    }

    /// Replaces the set and writes it (atomically: temporary file + rename).
    pub fn store(&mut self, ids: BTreeSet<ServiceId>) -> Result<(), Error> {
        if ids == self.ids && self.path.exists() {
            return Ok(());
        }
        let err = |source| Error::State {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(err)?;
            }
        }
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(render(&ids).as_bytes()).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        self.ids = ids;
        Ok(())
    }
}

/// The file format: a comment line, then one service per line.
pub fn render(ids: &BTreeSet<ServiceId>) -> String {
    let mut s = String::from("# IPVS services created by kube-lvs; others are never touched\n");
    for id in ids {
        s.push_str(&id.to_string());
        s.push('\n');
    }
    s
}

/// Parses the file format; the error is (1-based line, text).
pub fn parse(text: &str) -> Result<BTreeSet<ServiceId>, (usize, String)> {
    let mut out = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.insert(line.parse().map_err(|_| (i + 1, line.to_owned()))?);
    }
    Ok(out)
}
