//! Every metric family of the proxy, each registered by the module that
//! owns it, in one registry (the one `/metrics` renders).

use prometheus::IntCounter;

use crate::access_log::AccessLog;
use crate::discovery::SnapshotMetrics;
use crate::identity::IdentityMetrics;
use crate::request_metrics::RequestMetrics;
use crate::tcp_metrics::TcpFamilies;
use crate::telemetry::ExportCounters;
use crate::transport::ListenerMetrics;
use crate::upgrade::UpgradeFamilies;

/// The families, handed to the parts of the proxy as they are built.
pub(super) struct Families {
    /// The registry and the request families shared by the HTTP paths.
    pub requests: RequestMetrics,
    /// Downstream connections, bytes and TLS handshakes.
    pub listeners: ListenerMetrics,
    /// Opaque TCP streams.
    pub tcp: TcpFamilies,
    /// Upgraded HTTP/1.1 connections (WebSocket).
    pub upgrades: UpgradeFamilies,
    /// The snapshot in force and the control plane's connection.
    pub snapshots: SnapshotMetrics,
    /// The certificate in force and requests for new ones.
    pub identity: IdentityMetrics,
    /// The trace exporter.
    pub export: ExportCounters,
    /// Access log lines dropped.
    pub access_log_dropped: IntCounter,
}

impl Families {
    /// Registers every family in a fresh registry.
    pub fn register() -> Self {
        let requests = RequestMetrics::new();
        let registry = requests.registry();
        let listeners = ListenerMetrics::register(registry);
        let tcp = TcpFamilies::register(registry);
        let upgrades = UpgradeFamilies::register(registry);
        let snapshots = SnapshotMetrics::register(&requests, tcp.clone());
        let identity = IdentityMetrics::register(registry, listeners.tls_handshake_errors.clone());
        let export = ExportCounters::register(registry);
        let access_log_dropped = AccessLog::dropped_counter(registry);
        Self {
            requests,
            listeners,
            tcp,
            upgrades,
            snapshots,
            identity,
            export,
            access_log_dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each module registers its own families; all end up in the one
    /// registry `/metrics` renders (a name registered twice would panic).
    #[test]
    fn every_module_s_families_render_from_the_one_registry() {
        let families = Families::register();
        families.snapshots.config_version.set(7);
        families.identity.expiry.set(42);
        families.listeners.inbound_permissive.set(1);
        families.export.dropped.inc();
        families.access_log_dropped.inc();
        let text = String::from_utf8(families.requests.render()).unwrap_or_default();
        for line in [
            "tether_config_version 7",
            "tether_identity_expiry_timestamp_seconds 42",
            "tether_inbound_permissive 1",
            "tether_trace_spans_dropped_total 1",
            "tether_access_log_dropped_total 1",
            "tether_control_plane_connected 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
