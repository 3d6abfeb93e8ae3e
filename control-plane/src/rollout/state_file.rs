//! The rollouts' state file: every rollout the control plane holds, as
//! JSON, written atomically (a temporary file beside it, mode 0600, then a
//! rename) after every change, and read at start.

use std::path::{Path, PathBuf};

use tether_api::RolloutList;

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a rollout list.
    #[error("{}: not a rollout state file: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Reads the state; an absent file is an empty list.
pub fn load(path: &Path) -> Result<RolloutList, StateFileError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RolloutList::default()),
        Err(source) => {
            return Err(StateFileError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes).map_err(|source| StateFileError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Writes the state: temporary file (0600), fsync, rename over `path`.
pub fn save(path: &Path, list: &RolloutList) -> Result<(), StateFileError> {
    let io = |source| StateFileError::Io {
        path: path.to_owned(),
        source,
    };
    let json = serde_json::to_vec_pretty(list).map_err(|e| io(std::io::Error::other(e)))?;
    crate::private_file::write_atomic(path, &json).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;
    use tether_api::{Gates, RolloutPhase, RolloutRequest, RolloutStatus, SubsetFigures};

    #[test]
    fn round_trips_atomically_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rollouts.json");
        assert_eq!(
            load(&path).unwrap(),
            RolloutList::default(),
            "absent: empty"
        );
        let list = RolloutList {
            rollouts: vec![RolloutStatus {
                request: RolloutRequest {
                    service: "api".into(),
                    from: "v1".into(),
                    to: "v2".into(),
                    steps: vec![5, 50, 100],
                    interval: Duration::from_secs(30),
                    gates: Gates {
                        min_success_rate: 0.99,
                        max_p99: Duration::from_millis(500),
                        max_success_drop: 0.01,
                        max_p99_ratio: 2.0,
                        min_requests: 100,
                        max_wait: Duration::from_secs(300),
                    },
                },
                phase: RolloutPhase::Active,
                step: 1,
                percent: 50,
                step_started_unix_ms: 10,
                started_unix_ms: 5,
                finished_unix_ms: None,
                from_figures: SubsetFigures::default(),
                to_figures: SubsetFigures {
                    requests: 3,
                    failures: 1,
                    success_rate: 0.5,
                    p99_ms: Some(2.5),
                },
                reason: Some("waiting".into()),
                config_split: vec![],
            }],
        };
        save(&path, &list).unwrap();
        assert_eq!(load(&path).unwrap(), list);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!dir.path().join("rollouts.json.tmp").exists());
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(load(&path), Err(StateFileError::Parse { .. })));
    }
}
