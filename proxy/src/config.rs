//! The proxy's own settings (listeners, limits, lifecycle). Built by the CLI;
//! everything below takes this struct, never flags or the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery};

use crate::transport::ServerSettings;

/// Where snapshots come from.
#[derive(Debug, Clone)]
pub enum SnapshotSource {
    /// A YAML or JSON file, polled for edits.
    File {
        /// The file.
        path: PathBuf,
        /// How often to look for edits.
        poll_interval: Duration,
    },
    /// The control plane's long-poll API.
    ControlPlane(crate::discovery::ControlPlaneSettings),
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where snapshots come from.
    pub source: SnapshotSource,
    /// The service this proxy fronts (labels inbound metrics).
    pub service: Option<String>,
    /// Admin listener.
    pub admin_addr: SocketAddr,
    /// Outbound listener (the app sends here).
    pub outbound_addr: SocketAddr,
    /// Inbound listener (other sidecars send here).
    pub inbound_addr: SocketAddr,
    /// The local app behind the inbound listener.
    pub app: Authority,
    /// Speak HTTP/2 to the local app.
    pub app_http2: bool,
    /// Limits on downstream connections.
    pub server: ServerSettings,
    /// Requests in flight to the local app at once.
    pub inbound_max_requests: u32,
    /// Requests queued for the local app beyond that.
    pub inbound_max_pending: u32,
    /// Where the mesh identity comes from; `None` runs without mTLS.
    pub identity: Option<crate::identity::IdentitySource>,
    /// With an identity: also accept plaintext inbound (migration only).
    pub inbound_permissive: bool,
    /// Write one JSON access log line per request to stdout.
    pub access_log: bool,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// Upgraded connections idle this long (no byte either way) are closed.
    pub upgrade_idle_timeout: Duration,
    /// The zone this proxy runs in (`--zone`), for locality-aware balancing.
    pub zone: Option<String>,
    /// The app's health path, probed with `GET` (2xx is healthy); `None`
    /// probes with a TCP connect. Behind `/app-health` and the Consul check.
    pub app_health_path: Option<PathAndQuery>,
    /// Probe the app with a gRPC health check (`grpc.health.v1`) of this
    /// service (empty: the server as a whole) instead, over HTTP/2.
    pub app_health_grpc_service: Option<String>,
    /// Register this instance with a local Consul agent.
    pub registration: Option<crate::registration::RegistrationSettings>,
}
