//! Metrics of discovery: the snapshot in force, refusals and the control
//! plane's connection; and the per-service handles resolved when a snapshot
//! is built.

use prometheus::{IntCounter, IntCounterVec, IntGauge};

use crate::request_metrics::{
    counter, counter_vec, gauge, Direction, RequestMetrics, ServiceMetrics,
};
use crate::tcp_metrics::TcpFamilies;
use crate::traffic::TrafficFamilies;

/// What discovery counts and the families it resolves per service.
#[derive(Clone)]
pub struct SnapshotMetrics {
    /// The request families, resolved per HTTP service.
    requests: RequestMetrics,
    /// The opaque-TCP families, resolved per tcp service.
    pub tcp: TcpFamilies,
    /// Version of the snapshot in force.
    pub config_version: IntGauge,
    /// Snapshots refused (bad file, bad content).
    pub config_errors: IntCounter,
    /// 1 while connected to the control plane.
    pub control_plane_connected: IntGauge,
    /// Fault injection, rate limits, mirroring and locality families.
    pub traffic: TrafficFamilies,
    /// Per-upstream, per-subset counters reported to the control plane
    /// (off unless one is configured); handles are resolved at build.
    pub upstream_stats: std::sync::Arc<crate::upstream_stats::UpstreamStats>,
    /// Snapshot deltas from the control plane, by result (`applied`, `refused`).
    pub control_plane_deltas: IntCounterVec,
}

impl SnapshotMetrics {
    /// Registers discovery's families in `requests`' registry; services'
    /// handles come from `requests` and `tcp`.
    pub fn register(requests: &RequestMetrics, tcp: TcpFamilies) -> Self {
        let registry = requests.registry();
        Self {
            config_version: gauge(
                registry,
                "tether_config_version",
                "Version of the snapshot in force.",
            ),
            config_errors: counter(
                registry,
                "tether_config_errors_total",
                "Snapshots refused because they could not be read or applied.",
            ),
            control_plane_connected: gauge(
                registry,
                "tether_control_plane_connected",
                "1 while the proxy holds a working connection to the control plane.",
            ),
            traffic: TrafficFamilies::register(registry),
            requests: requests.clone(),
            tcp,
            upstream_stats: std::sync::Arc::default(),
            control_plane_deltas: counter_vec(
                registry,
                "tether_control_plane_deltas_total",
                "Snapshot deltas from the control plane: applied (merged onto the snapshot held) or refused (its base is not the snapshot held; a full snapshot is asked for next).",
                &["result"],
            ),
        }
    }

    /// Request handles of one HTTP service (see [`RequestMetrics::service`]).
    pub fn service(&self, direction: Direction, service: &str) -> ServiceMetrics {
        self.requests.service(direction, service)
    }

    /// The request families and registry (for `/metrics` in tests).
    pub fn requests(&self) -> &RequestMetrics {
        &self.requests
    }

    /// Fresh families in a registry of their own, for tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        let requests = RequestMetrics::new();
        let tcp = TcpFamilies::register(requests.registry());
        Self::register(&requests, tcp)
    }
}
