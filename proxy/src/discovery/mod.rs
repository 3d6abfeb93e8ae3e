//! Discovery: where snapshots come from and how they become [`MeshState`].
//!
//! This is the only module of the request side that reads `tether-api`'s
//! wire types: `compile.rs` and `authz.rs` turn them into the proxy's domain
//! types, `build.rs` assembles the state. A source (a snapshot file, watched,
//! or the control plane, long-polled) produces snapshots one after another;
//! [`Applier::apply`] validates each (every problem at once), builds the
//! domain state and swaps it in. A snapshot that fails leaves the last good
//! one in force.

mod authz;
pub mod build;
mod compile;
mod control_plane;
mod delta;
pub(crate) mod file;
mod mirror_locality;
pub mod on_demand;
mod snapshot_metrics;
#[cfg(test)]
mod tcp_tests;
mod traffic;
#[cfg(test)]
mod traffic_tests;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tether_api::Snapshot;

use crate::identity::MeshIdentity;
use crate::state::MeshState;
use crate::tcp::TcpListeners;
use crate::telemetry::{Telemetry, TracingSettings};

pub use authz::compile as compile_authorization;
pub use build::{build, build_in_zone};
pub use control_plane::{restore, subscribe, ControlPlaneSettings, CONTROL_PLANE_IDLE_TIMEOUT};
pub use file::{load_file, watch_file, SnapshotError};
pub use on_demand::OnDemand;
pub use snapshot_metrics::SnapshotMetrics;

/// Applies snapshots to the shared state.
#[derive(Clone)]
pub struct Applier {
    state: Arc<ArcSwap<MeshState>>,
    metrics: SnapshotMetrics,
    telemetry: Arc<Telemetry>,
    identity: Option<Arc<MeshIdentity>>,
    /// This proxy's zone (`--zone`), for locality-aware balancing.
    zone: Option<Arc<str>>,
    tcp: Option<Arc<TcpListeners>>,
    loaded: Arc<AtomicBool>,
    sequence: Arc<AtomicU64>,
    /// On-demand discovery (with a control plane and `--discovery-wait`).
    on_demand: Option<Arc<OnDemand>>,
}

impl Applier {
    /// An applier over `state`.
    pub fn new(
        state: Arc<ArcSwap<MeshState>>,
        metrics: SnapshotMetrics,
        telemetry: Arc<Telemetry>,
        identity: Option<Arc<MeshIdentity>>,
    ) -> Self {
        Self {
            state,
            metrics,
            telemetry,
            identity,
            zone: None,
            tcp: None,
            loaded: Arc::new(AtomicBool::new(false)),
            sequence: Arc::new(AtomicU64::new(0)),
            on_demand: None,
        }
    }

    /// Tells `on_demand`'s waiting requests of every applied snapshot.
    pub fn with_on_demand(mut self, on_demand: Option<Arc<OnDemand>>) -> Self {
        self.on_demand = on_demand;
        self
    }

    /// On-demand discovery, if on.
    pub fn on_demand(&self) -> Option<&Arc<OnDemand>> {
        self.on_demand.as_ref()
    }

    /// Also keeps `tcp`'s listeners in step with the snapshots applied.
    pub fn with_tcp(mut self, tcp: Arc<TcpListeners>) -> Self {
        self.tcp = Some(tcp);
        self
    }

    /// Builds states for a proxy in `zone` (`--zone`).
    pub fn with_zone(mut self, zone: Option<&str>) -> Self {
        self.zone = zone.map(Arc::from);
        self
    }

    /// Version in force (0 before the first snapshot).
    pub fn version(&self) -> u64 {
        self.state.load().version()
    }

    /// Whether a snapshot has been applied.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Validates and applies `snapshot`. A snapshot without a version (0)
    /// gets the next local sequence number, so `/config` always tells
    /// successive hand-written files apart. The ports of new tcp services
    /// are bound before the state is swapped: one that cannot be bound
    /// refuses the snapshot. Errors are not counted here: see
    /// [`Applier::refused`].
    pub fn apply(&self, mut snapshot: Snapshot) -> Result<u64, SnapshotError> {
        if snapshot.version == 0 {
            snapshot.version = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        }
        let tracing = snapshot.mesh.tracing.as_ref().map(TracingSettings::from);
        let previous = self.state.load();
        let next = build_in_zone(
            Arc::new(snapshot),
            &previous,
            &self.metrics,
            self.identity.as_deref(),
            self.zone.as_deref(),
        )
        .map_err(SnapshotError::Invalid)?;
        let listeners = match &self.tcp {
            Some(tcp) => Some(tcp.reconcile(&next)?),
            None => None,
        };
        let version = next.version();
        self.telemetry.configure(tracing.as_ref());
        self.state.store(Arc::new(next));
        if let Some(listeners) = listeners {
            listeners.commit();
        }
        self.metrics
            .config_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        self.loaded.store(true, Ordering::Release);
        if let Some(on_demand) = &self.on_demand {
            on_demand.applied();
        }
        tracing::info!(version, "snapshot applied");
        Ok(version)
    }

    /// Counts and logs a snapshot that was refused: unreadable, or not
    /// applied (every caller of [`Applier::apply`] that goes on serving
    /// reports its errors here, so each refusal counts once).
    pub fn refused(&self, error: &SnapshotError) {
        self.metrics.config_errors.inc();
        tracing::error!(%error, "snapshot refused; keeping the last good one");
    }
}
