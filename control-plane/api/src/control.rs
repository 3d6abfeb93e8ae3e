//! The proxy ↔ control-plane API: paths, reports and status.
//!
//! - `GET {SNAPSHOT_PATH_PREFIX}<service>?version=N&wait=30s` answers `200` with a
//!   [`crate::Snapshot`] as soon as the current version is newer than `N`, or
//!   `304` when `wait` runs out first. `version=0` (or none) answers at once.
//!   Versions are derived from the wall clock (`max(previous + 1, unix
//!   millis)`), so they keep growing across control-plane restarts, and `N`
//!   moves the replica's clock past it, so they stay ordered across replicas
//!   (a version more than 60 s ahead of the replica's clock is replaced, not
//!   waited out). `&want=a,b` names services a proxy holding only some asks for.
//!   With `&delta=<replica>` ([`crate::snapshot_delta_path`]) the answer is a
//!   [`crate::SnapshotUpdate`]: a delta from `N` or the full snapshot.
//! - Each snapshot request carries the proxy's id in the `tether-proxy-id` header.
//! - `POST {REPORT_PATH}` takes a [`ProxyReport`]: what a proxy applied or refused.
//! - `POST {crate::STATS_PATH}` takes a [`crate::StatsReport`]: per-upstream counters (same
//!   certificate rule as reports).
//! - `/v1/rollouts` lists, starts and aborts rollouts ([`crate::RolloutRequest`]).
//! - `GET {STATUS_PATH}` answers a [`StatusResponse`].
//! - `POST {CERTIFICATE_PATH}` takes a [`CertificateRequest`] and answers a
//!   [`CertificateResponse`] (only when the control plane runs a CA and
//!   serves over TLS). The caller proves which service it is either with a
//!   join token (`Authorization: Bearer <token>`, first issue) or with its
//!   current mesh certificate as the TLS client certificate (renewal).
//!
//! Over TLS, snapshot and report requests must come with a client
//! certificate of the service they are about; status, metrics and health
//! are open to any caller.

use serde::{Deserialize, Serialize};

/// Path prefix of the long-poll snapshot endpoint.
pub const SNAPSHOT_PATH_PREFIX: &str = "/v1/snapshot/";

/// Header carrying the polling proxy's id on snapshot requests.
pub const PROXY_ID_HEADER: &str = "tether-proxy-id";

/// Path of the certificate-signing endpoint.
pub const CERTIFICATE_PATH: &str = "/v1/certificate";

/// Path of the endpoint proxies report what they applied to.
pub const REPORT_PATH: &str = "/v1/report";

/// Path of the status endpoint.
pub const STATUS_PATH: &str = "/v1/status";

/// The long-poll snapshot query: `version` is the one the proxy holds,
/// `wait` how long the control plane may hold the request (whole seconds).
pub fn snapshot_path(service: &str, version: u64, wait_seconds: u64) -> String {
    format!("{SNAPSHOT_PATH_PREFIX}{service}?version={version}&wait={wait_seconds}s")
}

/// `POST /v1/certificate`: a CSR for the caller's own identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRequest {
    /// PEM `CERTIFICATE REQUEST` whose only SAN is the caller's SPIFFE ID
    /// (`spiffe://<trust_domain>/service/<name>`), signed by a P-256 key the
    /// caller generated and keeps.
    pub csr_pem: String,
}

/// The answer to a [`CertificateRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateResponse {
    /// PEM chain: the leaf, then the root that signed it.
    pub chain_pem: String,
    /// The SPIFFE ID the leaf carries.
    pub spiffe_id: String,
    /// End of the leaf's validity, seconds since the Unix epoch.
    pub not_after_unix: u64,
}

/// What a proxy tells the control plane after each snapshot it receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyReport {
    /// Stable id of the proxy instance (e.g. `web-1a2b3c`).
    pub proxy_id: String,
    /// Service the proxy fronts.
    pub service: String,
    /// Version now in force in the proxy (0 if none).
    pub applied_version: u64,
    /// Version the proxy refused, if the last one it received was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_version: Option<u64>,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One proxy as the control plane last heard from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyStatus {
    /// The proxy's last report.
    #[serde(flatten)]
    pub report: ProxyReport,
    /// Seconds since the Unix epoch of the last contact (poll or report).
    pub last_contact_unix: u64,
    /// Whether a long-poll from this proxy is open right now.
    pub connected: bool,
}

/// `GET /v1/status`: every proxy the control plane knows about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusResponse {
    /// Current snapshot version per service.
    pub versions: std::collections::BTreeMap<String, u64>,
    /// Every proxy heard from.
    pub proxies: Vec<ProxyStatus>,
}
