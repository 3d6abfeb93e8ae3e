//! Incremental snapshots on the proxy side: the control plane sends what
//! changed since the version this proxy holds (`tether_api::SnapshotDelta`),
//! and [`Held`] merges it onto the last full snapshot received, so the
//! rest of discovery sees a whole [`Snapshot`] as before (same
//! [`super::Applier`] path, same save and report).
//!
//! A delta whose base is not the snapshot held is not merged: the next
//! poll asks for a full snapshot (`delta=0`).

use prometheus::IntCounterVec;
use tether_api::{Snapshot, SnapshotUpdate};

/// The last full snapshot received from the control plane (applied or
/// refused: the control plane's next delta starts from it) and the replica
/// that made it.
#[derive(Debug, Default)]
pub struct Held {
    snapshot: Option<Snapshot>,
    replica: u64,
}

/// What a poll says it holds.
pub type PollFrom = (u64, u64);

impl Held {
    /// `(version, replica)` to poll with: the version offered last and the
    /// replica that made it, or replica `0` (a full snapshot, please) when
    /// no snapshot of that version is held.
    pub fn poll_from(&self, seen: u64) -> PollFrom {
        match &self.snapshot {
            Some(held) if held.version == seen => (seen, self.replica),
            _ => (seen, 0),
        }
    }

    /// The full snapshot `update` makes, now held. `None` when it is a
    /// delta whose base is not the snapshot held (logged and counted as
    /// `refused`): nothing is held any more, so the next poll asks for a
    /// full snapshot.
    pub fn resolve(&mut self, update: SnapshotUpdate, deltas: &IntCounterVec) -> Option<&Snapshot> {
        match (update.full, update.delta) {
            (Some(full), _) => {
                self.snapshot = Some(full);
            }
            (None, Some(delta)) => {
                let (base, version) = (delta.base, delta.version);
                let merged = match self.snapshot.as_mut() {
                    Some(held) => delta.merge_into(held),
                    None => Err(tether_api::BaseMismatch { base, held: None }),
                };
                if let Err(error) = merged {
                    deltas.with_label_values(&["refused"]).inc();
                    tracing::warn!(%error, version, "snapshot delta not applied; asking the control plane for a full snapshot");
                    self.snapshot = None;
                    return None;
                }
                deltas.with_label_values(&["applied"]).inc();
            }
            (None, None) => {
                deltas.with_label_values(&["refused"]).inc();
                tracing::warn!("snapshot update with neither a snapshot nor a delta; asking for a full snapshot");
                self.snapshot = None;
                return None;
            }
        }
        self.replica = update.replica;
        self.snapshot.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_api::{ServiceSnapshot, SnapshotDelta};

    fn service(port: u16) -> ServiceSnapshot {
        serde_json::from_str(&format!(
            r#"{{"endpoints":[{{"address":"127.0.0.1:{port}"}}]}}"#
        ))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn full(version: u64) -> SnapshotUpdate {
        SnapshotUpdate {
            replica: 7,
            full: Some(Snapshot {
                version,
                services: [
                    ("api".to_owned(), service(1)),
                    ("db".to_owned(), service(2)),
                ]
                .into(),
                ..Snapshot::default()
            }),
            delta: None,
        }
    }

    fn delta(base: u64, version: u64) -> SnapshotUpdate {
        SnapshotUpdate {
            replica: 7,
            full: None,
            delta: Some(SnapshotDelta {
                version,
                base,
                services: [("api".to_owned(), service(10))].into(),
                removed: vec!["db".to_owned()],
                ..SnapshotDelta::default()
            }),
        }
    }

    fn counted(deltas: &IntCounterVec, result: &str) -> u64 {
        deltas.with_label_values(&[result]).get()
    }

    fn deltas() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("d", "d"), &["result"])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_delta_on_the_snapshot_held_makes_the_next_full_snapshot() {
        let (mut held, deltas) = (Held::default(), deltas());
        assert_eq!(held.poll_from(0), (0, 0), "holds nothing: full please");
        let first = held.resolve(full(3), &deltas);
        assert_eq!(first.map(|s| s.version), Some(3));
        assert_eq!(
            held.poll_from(3),
            (3, 7),
            "deltas from 3, made by replica 7"
        );
        let next = held
            .resolve(delta(3, 5), &deltas)
            .cloned()
            .unwrap_or_else(|| panic!("merged"));
        assert_eq!(next.version, 5);
        assert_eq!(next.services.keys().collect::<Vec<_>>(), ["api"]);
        assert_eq!(next.services["api"], service(10));
        assert_eq!(counted(&deltas, "applied"), 1);
        assert_eq!(held.poll_from(5), (5, 7));
    }

    #[test]
    fn a_delta_on_another_base_is_refused_and_a_full_snapshot_asked_for() {
        let (mut held, deltas) = (Held::default(), deltas());
        assert!(
            held.resolve(delta(3, 5), &deltas).is_none(),
            "holds nothing"
        );
        held.resolve(full(3), &deltas);
        assert!(held.resolve(delta(4, 5), &deltas).is_none(), "holds 3");
        assert_eq!(counted(&deltas, "refused"), 2);
        assert_eq!(held.poll_from(3), (3, 0), "full please");
        assert_eq!(
            held.resolve(full(6), &deltas).map(|s| s.version),
            Some(6),
            "a full snapshot is taken whatever is held"
        );
    }
}
