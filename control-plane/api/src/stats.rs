//! Per-upstream request statistics that proxies report to the control
//! plane (`POST {STATS_PATH}`): what this proxy's app sent to each
//! upstream service and subset, as cumulative counters since
//! `counters_since_unix_ms`. The control plane turns successive reports
//! into windowed rates (rollout gates, later the topology page).

use serde::{Deserialize, Serialize};

/// Path of the endpoint proxies post their [`StatsReport`] to.
pub const STATS_PATH: &str = "/v1/stats";

/// Upper bounds (inclusive, microseconds) of the latency histogram buckets,
/// fixed so that every proxy's buckets add up. A last, open bucket counts
/// everything slower than the final bound. Dense between 1 ms and 1 s,
/// where rollout gates are set.
pub const LATENCY_BUCKETS_US: [u64; 18] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 200_000, 300_000, 500_000,
    750_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000, 30_000_000,
];

/// Number of histogram buckets on the wire: the bounded ones plus the open one.
pub const LATENCY_BUCKET_COUNT: usize = LATENCY_BUCKETS_US.len() + 1;

/// One proxy's statistics, outbound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsReport {
    /// The reporting proxy's id (as in [`crate::ProxyReport`]).
    pub proxy_id: String,
    /// The service the proxy fronts (the caller).
    pub service: String,
    /// When the counters started (the proxy's start), Unix milliseconds: a
    /// report whose counters started after a window opened counts in full.
    pub counters_since_unix_ms: u64,
    /// One entry per upstream service and subset that received requests.
    pub upstreams: Vec<UpstreamCounters>,
    /// The proxy's build version (`tether-proxy --version`), for the
    /// topology page; absent from older proxies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_version: Option<String>,
    /// The proxy's inbound listener as bound (`0.0.0.0:15006`: the control
    /// plane substitutes the address the report came from), to tell which
    /// catalog instance this proxy fronts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_address: Option<String>,
    /// End of the mesh certificate's validity (Unix seconds), when the
    /// proxy has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_not_after_unix: Option<u64>,
    /// The endpoints of the upstream services in `upstreams`, as this proxy
    /// sees them (ejected by its outlier detection or not), read when the
    /// report is made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointHealth>,
}

/// One upstream endpoint as a calling proxy sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointHealth {
    /// The upstream service.
    pub service: String,
    /// The endpoint's `host:port`.
    pub address: String,
    /// Whether the proxy's outlier detection has ejected it right now.
    pub ejected: bool,
}

/// Cumulative counters of requests to one upstream subset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamCounters {
    /// The upstream service.
    pub service: String,
    /// The subset the request was routed to; `None` for the service's
    /// whole endpoint list (no split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Requests answered (by the upstream or by the proxy).
    pub requests: u64,
    /// Of those, failures: a 5xx status, or a proxy error (`tether-error`).
    pub failures: u64,
    /// Requests per latency bucket ([`LATENCY_BUCKETS_US`], then the open
    /// bucket); not cumulative across buckets.
    pub latency_buckets: Vec<u64>,
}
