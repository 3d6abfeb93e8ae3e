//! Every metric family of the proxy, each registered by the module that
//! owns it, in one registry (the one `/metrics` renders).

use prometheus::IntCounter;

use crate::access_log::AccessLog;
use crate::discovery::SnapshotMetrics;
use crate::identity::IdentityMetrics;
use crate::request_metrics::RequestMetrics;
use crate::tcp::TcpFamilies;
use crate::telemetry::ExportCounters;
use crate::transport::ListenerMetrics;

/// The families, handed to the parts of the proxy as they are built.
pub(super) struct Families {
    /// The registry and the request families shared by the HTTP paths.
    pub requests: RequestMetrics,
    /// Downstream connections, bytes and TLS handshakes.
    pub listeners: ListenerMetrics,
    /// Opaque TCP streams.
    pub tcp: TcpFamilies,
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
        let snapshots = SnapshotMetrics::register(&requests, tcp.clone());
        let identity = IdentityMetrics::register(registry, listeners.tls_handshake_errors.clone());
        let export = ExportCounters::register(registry);
        let access_log_dropped = AccessLog::dropped_counter(registry);
        Self {
            requests,
            listeners,
            tcp,
            snapshots,
            identity,
            export,
            access_log_dropped,
        }
    }
}
