//! Wire types shared by `tether-proxy` and `tether-control`.
//!
//! This crate is serde only: no runtime, no network, no TLS. It holds the
//! wire types (snapshot, policy, the control plane's requests and
//! responses) and the one set of policy rules ([`TrafficPolicy::problems`])
//! that the control plane and the proxy both apply. In the proxy only the
//! `discovery` module (which compiles snapshots into domain state) and the
//! control-plane clients read these types. Every struct denies unknown
//! fields so that a typo in a hand-written snapshot file is an error, not a
//! silently ignored key.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod control;
mod delta;
mod policy;
mod rollout;
mod snapshot;
mod stats;
mod topology;
mod traffic;
mod validate;

pub use control::snapshot_path;
pub use control::{
    CertificateRequest, CertificateResponse, ProxyReport, ProxyStatus, StatusResponse,
    CERTIFICATE_PATH, PROXY_ID_HEADER, REPORT_PATH, SNAPSHOT_PATH_PREFIX, STATUS_PATH,
};
pub use delta::{snapshot_delta_path, BaseMismatch, SnapshotDelta, SnapshotUpdate, DELTA_QUERY};
pub use policy::{
    default_grpc_retry_on, is_default_retry_on, Backoff, CircuitBreaker, LoadBalancer, RetryBudget,
    RetryOn, RetryPolicy, TrafficPolicy, GRPC_CODE_NAMES,
};
pub use rollout::{
    Gates, RolloutList, RolloutPhase, RolloutRequest, RolloutStatus, SubsetFigures,
    DEFAULT_MAX_P99, DEFAULT_MAX_P99_RATIO, DEFAULT_MAX_SUCCESS_DROP, DEFAULT_MIN_REQUESTS,
    DEFAULT_MIN_SUCCESS_RATE, ROLLOUTS_PATH,
};
pub use snapshot::{
    Authorization, AuthorizationDefault, AuthorizationRule, Endpoint, MeshSettings, OtlpProtocol,
    OutboundPolicy, Protocol, Route, RouteMatch, ServiceSnapshot, Snapshot, SplitTarget,
    SubsetSelector, TracingSettings,
};
pub use stats::{
    EndpointHealth, StatsReport, UpstreamCounters, LATENCY_BUCKETS_US, LATENCY_BUCKET_COUNT,
    STATS_PATH,
};
pub use topology::{
    EdgeView, InstanceView, Problem, ProblemKind, ProxyView, ServiceView, Topology, TrafficFigures,
    TOPOLOGY_PATH,
};
pub use traffic::{
    grpc_code, FaultAbort, FaultDelay, FaultInjection, InboundRateLimit, Locality, Mirror,
    RateLimit, RateLimits, DEFAULT_MIN_LOCAL_HEALTHY_PERCENT, DEFAULT_MIRROR_MAX_IN_FLIGHT,
    MAX_REQUESTS_PER_SECOND,
};
pub use validate::{
    PolicyProblem, MAX_BUDGET_MIN_PER_SECOND, MAX_BUDGET_RATIO, MAX_BUDGET_TTL, MIN_BUDGET_TTL,
};

/// Whether `name` is spelled as the mesh's service names are (lowercase
/// letters, digits, `-` and `_`, 1 to 63 bytes): what a proxy may ask for
/// on demand, and what the control plane takes from such a request.
pub fn is_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}
