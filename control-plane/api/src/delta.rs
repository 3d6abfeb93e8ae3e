//! Incremental snapshots: what changed since the version a proxy holds.
//!
//! A proxy that can merge deltas says so on its long-poll
//! ([`snapshot_delta_path`]: `&delta=<replica>`, the replica that made the
//! version it holds, or `0` for none). The control plane then answers a
//! [`SnapshotUpdate`]: a [`SnapshotDelta`] from the version the proxy
//! holds when that replica still remembers it, else the full
//! [`Snapshot`]. A proxy that does not ask gets a plain [`Snapshot`], as
//! before, so old and new proxies and control planes mix.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::control::SNAPSHOT_PATH_PREFIX;
use crate::snapshot::{Authorization, MeshSettings, ServiceSnapshot, Snapshot};
use crate::traffic::InboundRateLimit;

/// Query key of the long-poll by which a proxy says it merges deltas.
pub const DELTA_QUERY: &str = "delta";

/// The long-poll query of a proxy that merges deltas: as
/// [`crate::snapshot_path`], plus `delta=<replica>`, the replica that made
/// the version it holds (from [`SnapshotUpdate::replica`]; `0` asks for a
/// full snapshot).
pub fn snapshot_delta_path(service: &str, version: u64, wait_seconds: u64, replica: u64) -> String {
    format!(
        "{SNAPSHOT_PATH_PREFIX}{service}?version={version}&wait={wait_seconds}s&{DELTA_QUERY}={replica}"
    )
}

/// The answer to a long-poll that asked for deltas: which replica made it
/// (a delta is asked only of the replica whose versions the proxy holds:
/// two replicas number their versions independently) and either the full
/// snapshot or a delta. Exactly one of `full` and `delta` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotUpdate {
    /// The replica (one control-plane process) that made this version.
    pub replica: u64,
    /// The whole snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<Snapshot>,
    /// What changed since the version the proxy holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<SnapshotDelta>,
}

/// What changed between the snapshot of version `base` and the one of
/// `version`: the per-service header whole (it is small), the services
/// changed or added, and the names of the services removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotDelta {
    /// The version this delta makes.
    pub version: u64,
    /// The version it applies to: the proxy must hold exactly this one.
    pub base: u64,
    /// As [`Snapshot::service`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// As [`Snapshot::mesh`] (whole).
    #[serde(default)]
    pub mesh: MeshSettings,
    /// Services changed or added, whole.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSnapshot>,
    /// Services the proxy no longer holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// As [`Snapshot::authorization`] (whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    /// As [`Snapshot::inbound_rate_limit`] (whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_rate_limit: Option<InboundRateLimit>,
    /// As [`Snapshot::partial`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

/// Why a delta was not merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseMismatch {
    /// The delta's base.
    pub base: u64,
    /// The version held, if any.
    pub held: Option<u64>,
}

impl std::fmt::Display for BaseMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.held {
            Some(held) => write!(
                f,
                "a delta from version {} does not apply to the snapshot held (version {held})",
                self.base
            ),
            None => write!(
                f,
                "a delta from version {} arrived but no snapshot is held",
                self.base
            ),
        }
    }
}

impl std::error::Error for BaseMismatch {}

impl SnapshotDelta {
    /// The snapshot `self` makes of `held`, which must be of version
    /// [`Self::base`]; `held` is left as it was when it is not.
    pub fn merge_into(self, held: &mut Snapshot) -> Result<(), BaseMismatch> {
        if held.version != self.base {
            return Err(BaseMismatch {
                base: self.base,
                held: Some(held.version),
            });
        }
        held.version = self.version;
        held.service = self.service;
        held.mesh = self.mesh;
        held.authorization = self.authorization;
        held.inbound_rate_limit = self.inbound_rate_limit;
        held.partial = self.partial;
        for name in &self.removed {
            held.services.remove(name);
        }
        held.services.extend(self.services);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(port: u16) -> ServiceSnapshot {
        serde_json::from_str(&format!(
            r#"{{"endpoints":[{{"address":"127.0.0.1:{port}"}}]}}"#
        ))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn held() -> Snapshot {
        Snapshot {
            version: 5,
            service: Some("web".to_owned()),
            services: [("api", 1), ("db", 2), ("old", 3)]
                .into_iter()
                .map(|(n, p)| (n.to_owned(), service(p)))
                .collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_delta_changes_adds_and_removes_on_its_base_only() {
        let delta = SnapshotDelta {
            version: 9,
            base: 5,
            service: Some("web".to_owned()),
            services: [("api", 10), ("new", 11)]
                .into_iter()
                .map(|(n, p)| (n.to_owned(), service(p)))
                .collect(),
            removed: vec!["old".to_owned(), "never-held".to_owned()],
            ..SnapshotDelta::default()
        };
        let mut other = Snapshot {
            version: 4,
            ..held()
        };
        assert_eq!(
            delta.clone().merge_into(&mut other),
            Err(BaseMismatch {
                base: 5,
                held: Some(4)
            })
        );
        assert_eq!(
            other,
            Snapshot {
                version: 4,
                ..held()
            },
            "left as it was"
        );
        let mut snapshot = held();
        assert_eq!(delta.merge_into(&mut snapshot), Ok(()));
        assert_eq!(snapshot.version, 9);
        assert_eq!(
            snapshot.services.keys().collect::<Vec<_>>(),
            ["api", "db", "new"]
        );
        assert_eq!(snapshot.services["api"], service(10));
        assert_eq!(snapshot.services["db"], service(2), "untouched");
    }

    #[test]
    fn an_update_holds_a_full_snapshot_or_a_delta() {
        let full = r#"{"replica":7,"full":{"version":3,"services":{}}}"#;
        let update: SnapshotUpdate = serde_json::from_str(full).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(update.full.map(|s| s.version), Some(3));
        let delta = r#"{"replica":7,"delta":{"version":4,"base":3,"services":{},"removed":["x"]}}"#;
        let update: SnapshotUpdate = serde_json::from_str(delta).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(update.delta.map(|d| d.removed), Some(vec!["x".to_owned()]));
        assert!(serde_json::from_str::<SnapshotUpdate>(r#"{"replica":1,"ful":{}}"#).is_err());
        assert_eq!(
            snapshot_delta_path("web", 3, 30, 7),
            "/v1/snapshot/web?version=3&wait=30s&delta=7"
        );
    }
}
