//! `GET {TOPOLOGY_PATH}`: the mesh as the proxies measure it, for the
//! topology page (`/ui`) and tools. Services are nodes, edges are "the
//! proxies of `from` sent requests to `to`", with the figures of a recent
//! window computed from the proxies' statistics reports
//! ([`crate::StatsReport`]); instances come from the catalog, ejections
//! from the calling proxies, versions from the proxies' reports.

use serde::{Deserialize, Serialize};

/// Path of the topology endpoint (admin listener and API).
pub const TOPOLOGY_PATH: &str = "/v1/topology";

/// The whole answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// The window the figures cover, seconds (each proxy's span within it
    /// is its oldest and newest report in the window).
    pub window_seconds: u64,
    /// When this was computed, Unix milliseconds.
    pub generated_unix_ms: u64,
    /// Every service: in the snapshots (mesh.yaml or catalog) or reported.
    pub services: Vec<ServiceView>,
    /// Caller → callee pairs with traffic in the window.
    pub edges: Vec<EdgeView>,
    /// Every proxy heard from (reports, polls or statistics).
    pub proxies: Vec<ProxyView>,
    /// What needs a look, most serious first.
    pub problems: Vec<Problem>,
}

/// Requests of a window: rate, success, latency.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficFigures {
    /// Requests counted in the window.
    pub requests: u64,
    /// Failures among them (5xx or proxy error).
    pub failures: u64,
    /// Requests per second over the window.
    pub rps: f64,
    /// `1 - failures / requests` (1 without requests).
    pub success_rate: f64,
    /// p99 latency, ms: the upper bound of the histogram bucket holding it
    /// (`None`: no requests, or slower than the last bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

/// One service (a node).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceView {
    /// The name.
    pub name: String,
    /// Column in the layered layout: 0 for services nothing in the mesh
    /// calls, else one more than its deepest caller (cycles broken).
    pub depth: u32,
    /// What its callers' proxies measured sending to it (`None`: no
    /// measured caller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<TrafficFigures>,
    /// What its own proxies measured sending to their upstreams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<TrafficFigures>,
    /// Its instances: the catalog's healthy endpoints, plus any endpoint a
    /// caller still reports.
    pub instances: Vec<InstanceView>,
    /// Ids of the proxies fronting it.
    pub proxies: Vec<String>,
    /// Whether something about it needs a look (low success rate, an
    /// ejected instance, a proxy with a refused config or an expiring
    /// certificate).
    pub problem: bool,
}

/// One instance (endpoint) of a service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceView {
    /// `host:port`.
    pub address: String,
    /// Whether the catalog lists it as healthy (only healthy instances are
    /// served to proxies).
    pub healthy: bool,
    /// How many calling proxies have it ejected right now.
    pub ejected_by: u32,
    /// How many calling proxies reported on it.
    pub observed_by: u32,
    /// The proxy fronting it, when one reports this inbound address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_id: Option<String>,
    /// That proxy's build version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_version: Option<String>,
    /// The snapshot version that proxy applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<u64>,
}

/// A calling service → a called service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeView {
    /// The caller.
    pub from: String,
    /// The callee.
    pub to: String,
    /// What the caller's proxies measured.
    pub figures: TrafficFigures,
}

/// One proxy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyView {
    /// Its id.
    pub proxy_id: String,
    /// The service it fronts.
    pub service: String,
    /// Build version, from its statistics (newer proxies only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_version: Option<String>,
    /// Snapshot version in force (0: none yet).
    pub applied_version: u64,
    /// The version it refused last, if the latest it received was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_version: Option<u64>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether its long-poll is open now.
    pub connected: bool,
    /// Last contact (poll, report or statistics), Unix seconds.
    pub last_contact_unix: u64,
    /// Its inbound address as reported (the instance it fronts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_address: Option<String>,
    /// End of its certificate's validity, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_not_after_unix: Option<u64>,
    /// How long ago its latest statistics report arrived, milliseconds
    /// (`None`: none kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_age_ms: Option<u64>,
}

/// Kinds of [`Problem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A proxy refused the latest snapshot.
    RefusedConfig,
    /// A proxy's certificate has expired or expires soon.
    CertificateExpiring,
    /// An edge's success rate is under the threshold.
    LowSuccessRate,
    /// A calling proxy ejected an instance.
    EjectedInstance,
}

/// Something that needs a look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// The service concerned.
    pub service: String,
    /// The proxy, edge (`from → to`) or instance concerned.
    pub subject: String,
    /// For a person.
    pub message: String,
}
