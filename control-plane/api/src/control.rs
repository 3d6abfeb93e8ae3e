//! The proxy ↔ control-plane API: paths, reports and status.
//!
//! - `GET {SNAPSHOT_PATH_PREFIX}<service>?version=N&wait=30s` answers `200` with a
//!   [`crate::Snapshot`] as soon as the current version differs from `N`, or `304`
//!   when `wait` runs out first. `version=0` (or none) answers at once. Versions
//!   are derived from the wall clock (`max(previous + 1, unix millis)`), so they
//!   keep growing across control-plane restarts; a proxy still treats any
//!   *different* version as news, never only a larger one.
//! - Each snapshot request carries the proxy's id in the `tether-proxy-id` header.
//! - `POST /v1/report` takes a [`ProxyReport`]: what a proxy applied or refused.
//! - `GET /v1/status` answers a [`StatusResponse`].

use serde::{Deserialize, Serialize};

/// Path prefix of the long-poll snapshot endpoint.
pub const SNAPSHOT_PATH_PREFIX: &str = "/v1/snapshot/";

/// Header carrying the polling proxy's id on snapshot requests.
pub const PROXY_ID_HEADER: &str = "tether-proxy-id";

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
