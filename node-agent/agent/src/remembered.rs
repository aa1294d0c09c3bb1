//! What the agent knew about real servers' health, kept across edits of a check's
//! timing and across agent restarts, so that neither sends new connections to a real
//! server known to be down for fall x interval.
//!
//! A probe's identity for this purpose is [`ProbeId`]: address, port and what is
//! sent and expected, without interval, timeout, rise and fall. The agent keeps the
//! unhealthy ones in a file of its state directory (`health-down`, both modes: the
//! watches do not keep RealServers' status, and the file is there before any watch
//! has listed), rewritten on each transition, read once at start.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::health::{State, Target};

/// A probe without its timing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProbeId {
    pub address: IpAddr,
    pub port: u16,
    pub probe: String,
}

impl Target {
    pub fn id(&self) -> ProbeId {
        ProbeId {
            address: self.address,
            port: self.port,
            probe: self.check.probe.clone(),
        }
    }
}

/// The state a new target starts from: that of a target with the same [`ProbeId`]
/// that is going away (the check's timing was edited), else the one remembered from
/// before a restart (down), else the default (healthy until proven otherwise).
pub fn initial_state(
    target: &Target,
    going: &BTreeMap<ProbeId, State>,
    down_before_restart: &BTreeSet<ProbeId>,
) -> State {
    let id = target.id();
    if let Some(s) = going.get(&id) {
        // The count towards the next transition restarts under the new rise/fall.
        return State {
            streak: 0,
            ..s.clone()
        };
    }
    if down_before_restart.contains(&id) {
        return State {
            healthy: false,
            message: "down when the agent last ran".into(),
            ..State::default()
        };
    }
    State::default()
}

/// The file's content: the probes that were down.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct DownFile {
    down: BTreeSet<ProbeId>,
}

/// The `health-down` file of a state directory.
#[derive(Debug, Clone)]
pub struct DownStore {
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a health state file: {source}")]
    Format {
        path: String,
        source: serde_json::Error,
    },
}

impl DownStore {
    pub fn in_dir(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(crate::state_files::HEALTH_DOWN),
        }
    }

    /// The probes that were down; none if the file does not exist.
    pub fn load(&self) -> Result<BTreeSet<ProbeId>, StoreError> {
        let path = self.path.display().to_string();
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice::<DownFile>(&bytes)
                .map(|f| f.down)
                .map_err(|source| StoreError::Format { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Replaces the file with `down` (written aside, then renamed: a crash leaves the
    /// old file or the new one).
    pub fn save(&self, down: &BTreeSet<ProbeId>) -> Result<(), StoreError> {
        let path = self.path.display().to_string();
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_vec(&DownFile { down: down.clone() }).expect("plain data");
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

/// The probes among `states` that are down.
pub fn down(states: &BTreeMap<Target, State>) -> BTreeSet<ProbeId> {
    states
        .iter()
        .filter(|(_, s)| !s.healthy)
        .map(|(t, _)| t.id())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::CheckKey;

    fn target(addr: &str, interval_ms: u32, probe: &str) -> Target {
        Target {
            address: addr.parse().unwrap(),
            port: 80,
            check: CheckKey {
                probe: probe.into(),
                interval_ms,
                timeout_ms: 1000,
                rise: 2,
                fall: 3,
            },
        }
    }

    fn down_state() -> State {
        State {
            healthy: false,
            streak: 1,
            message: "connection refused".into(),
            ..State::default()
        }
    }

    #[test]
    fn a_timing_edit_keeps_the_health_view() {
        let old = target("192.0.2.11", 1000, "tcp");
        let edited = target("192.0.2.11", 5000, "tcp");
        let going = BTreeMap::from([(old.id(), down_state())]);
        let s = initial_state(&edited, &going, &BTreeSet::new());
        assert!(!s.healthy);
        assert_eq!(s.streak, 0);
        assert_eq!(s.message, "connection refused");
        // Another probe (what is sent changed) or another real server starts afresh.
        for other in [
            target("192.0.2.11", 5000, "http GET / -> 200"),
            target("192.0.2.12", 1000, "tcp"),
        ] {
            assert!(initial_state(&other, &going, &BTreeSet::new()).healthy);
        }
    }

    #[test]
    fn a_restart_starts_from_what_was_down() {
        let t = target("192.0.2.11", 1000, "tcp");
        let remembered = BTreeSet::from([t.id()]);
        let s = initial_state(
            &target("192.0.2.11", 2000, "tcp"),
            &BTreeMap::new(),
            &remembered,
        );
        assert!(!s.healthy);
        assert!(
            initial_state(
                &target("192.0.2.12", 1000, "tcp"),
                &BTreeMap::new(),
                &remembered
            )
            .healthy
        );
        // A going target's live state wins over the file.
        let up = BTreeMap::from([(t.id(), State::default())]);
        assert!(initial_state(&t, &up, &remembered).healthy);
    }

    #[test]
    fn the_store_round_trips_and_names_a_bad_file() {
        let dir = std::env::temp_dir().join(format!("kubelvs-remembered-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = DownStore::in_dir(&dir);
        let _ = std::fs::remove_file(&store.path);
        assert!(store.load().unwrap().is_empty(), "no file: nothing down");
        let states = BTreeMap::from([
            (target("192.0.2.11", 1000, "tcp"), down_state()),
            (target("192.0.2.12", 1000, "tcp"), State::default()),
        ]);
        let d = down(&states);
        assert_eq!(d.len(), 1);
        store.save(&d).unwrap();
        assert_eq!(store.load().unwrap(), d);
        std::fs::write(&store.path, "{not json").unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(
            e.contains("health-down") && e.contains("not a health state file"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
