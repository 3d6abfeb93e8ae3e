//! Wire types shared by `tether-proxy` and `tether-control`.
//!
//! This crate is serde only: no runtime, no network, no TLS. The proxy's
//! `discovery` module is the only proxy code that reads these types; it turns
//! them into domain state. Every struct denies unknown fields so that a typo in
//! a hand-written snapshot file is an error, not a silently ignored key.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod control;
mod policy;
mod snapshot;

pub use control::snapshot_path;
pub use control::{
    CertificateRequest, CertificateResponse, ProxyReport, ProxyStatus, StatusResponse,
    CERTIFICATE_PATH, PROXY_ID_HEADER, REPORT_PATH, SNAPSHOT_PATH_PREFIX, STATUS_PATH,
};
pub use policy::{
    Backoff, CircuitBreaker, LoadBalancer, RetryBudget, RetryOn, RetryPolicy, TrafficPolicy,
};
pub use snapshot::{
    Authorization, AuthorizationDefault, AuthorizationRule, Endpoint, MeshSettings, OtlpProtocol,
    Protocol, Route, RouteMatch, ServiceSnapshot, Snapshot, SplitTarget, SubsetSelector,
    TracingSettings,
};
