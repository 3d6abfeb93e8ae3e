//! The domain state the request path reads: services, their endpoint sets,
//! routes and policy, and who may call us. Built by `discovery` from a
//! snapshot (the only module that knows the wire types) and swapped whole
//! behind an `ArcSwap`; the request path never locks it.

mod authz;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use rand::Rng;
use tower::retry::budget::TpsBudget;

use crate::balance::{EndpointSet, EndpointState, OutlierDetector};
use crate::request_metrics::ServiceMetrics;
use crate::resilience::{ConcurrencyLimiter, RetryPolicy};
use crate::tcp_metrics::TcpMetrics;
use crate::traffic::mirror::Mirror;
use crate::traffic::{InboundLimit, OutboundTraffic};
use crate::transport::{PoolFactory, TlsTarget};

pub use authz::{AuthzDecision, AuthzPolicy, AuthzRule, PathPattern};

/// Everything the proxy routes by, from one snapshot.
#[derive(Debug)]
pub struct MeshState {
    /// Version of the snapshot this state was built from (0: none yet).
    pub version: u64,
    /// The document this state was built from, for `/config` only.
    pub source: SourceDocument,
    /// Upstream services by name.
    pub services: HashMap<String, Arc<UpstreamService>>,
    /// `services` holds only what this proxy calls: others may be asked
    /// for on demand.
    pub partial: bool,
    /// Metrics for requests to names that are not services.
    pub unknown_metrics: ServiceMetrics,
    /// Who may call this proxy's service; `None` lets everyone in.
    pub authorization: Option<Arc<AuthzPolicy>>,
    /// Opaque TCP services by their outbound port.
    pub tcp: HashMap<u16, Arc<TcpService>>,
    /// Opaque TCP services by the address of each of their endpoints: where
    /// a captured (transparent) connection to that address goes.
    pub tcp_endpoints: HashMap<SocketAddr, Arc<TcpService>>,
    /// What captured outbound traffic to a destination outside the mesh
    /// gets.
    pub outbound_policy: OutboundPolicy,
    /// The rate limit of the service this proxy fronts; `None`: no limit.
    pub inbound_rate_limit: Option<Arc<InboundLimit>>,
}

/// What a captured outbound connection or request whose destination is not
/// a mesh service gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutboundPolicy {
    /// Passed through to its original destination, untouched.
    #[default]
    AllowAny,
    /// Refused.
    RegistryOnly,
}

impl OutboundPolicy {
    /// The name used in mesh.yaml, metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            OutboundPolicy::AllowAny => "allow-any",
            OutboundPolicy::RegistryOnly => "registry-only",
        }
    }
}

impl MeshState {
    /// State before any snapshot: routes nothing.
    pub fn empty(unknown_metrics: ServiceMetrics) -> Self {
        Self {
            version: 0,
            source: SourceDocument::none(),
            services: HashMap::new(),
            partial: false,
            unknown_metrics,
            authorization: None,
            tcp: HashMap::new(),
            tcp_endpoints: HashMap::new(),
            outbound_policy: OutboundPolicy::AllowAny,
            inbound_rate_limit: None,
        }
    }

    /// Version of the snapshot in force (0 before the first).
    pub fn version(&self) -> u64 {
        self.version
    }
}

/// The document a state was built from, opaque to the proxy: rendered as
/// JSON only when `/config` asks, so no request pays for it.
#[derive(Clone)]
pub struct SourceDocument(Arc<dyn Fn() -> serde_json::Value + Send + Sync>);

impl SourceDocument {
    /// A document rendered by `render`.
    pub fn new(render: impl Fn() -> serde_json::Value + Send + Sync + 'static) -> Self {
        Self(Arc::new(render))
    }

    /// No document yet: `{"version": 0}`.
    pub fn none() -> Self {
        Self::new(|| serde_json::json!({ "version": 0 }))
    }

    /// The document as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        (self.0)()
    }
}

impl fmt::Debug for SourceDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SourceDocument")
    }
}

/// One upstream HTTP service, ready to route to: its endpoints, routes,
/// policy and the live state shared by its requests (pool, limiter,
/// budget, ejections).
#[derive(Debug)]
pub struct UpstreamService {
    /// Service name.
    pub name: String,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Retry policy.
    pub retries: RetryPolicy,
    /// Retry budget shared by every request to the service.
    pub budget: Arc<TpsBudget>,
    /// Concurrency and pending limits.
    pub limiter: Arc<ConcurrencyLimiter>,
    /// Connection pool to the endpoints.
    pub client: PoolFactory,
    /// Ejection bookkeeping.
    pub outliers: Arc<OutlierDetector>,
    /// Every endpoint, for the admin API.
    pub endpoints: Vec<Arc<EndpointState>>,
    /// Where requests go when no route matches.
    pub default_split: Split,
    /// Route rules, first match wins.
    pub routes: Vec<RouteRule>,
    /// Metric handles.
    pub metrics: ServiceMetrics,
    /// Fault injection and this caller's rate limit; `None` (the common
    /// case) when the service configures neither.
    pub traffic: Option<Arc<OutboundTraffic>>,
    /// Copies of requests that match no route (`mirror`); `None`: none.
    pub mirror: Option<Arc<Mirror>>,
}

/// An opaque TCP service: its endpoints, balancing, outlier detection,
/// retry policy and budget come from `service` (whose HTTP parts, the pool,
/// routes and limiter, are unused); the rest is how streams reach it.
#[derive(Debug)]
pub struct TcpService {
    /// Endpoints, default split, outliers, retries, budget, metrics.
    pub service: Arc<UpstreamService>,
    /// The local port the app connects to.
    pub port: u16,
    /// TCP connect (and TLS handshake) timeout for one endpoint.
    pub connect_timeout: Duration,
    /// A stream that carries no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// mTLS to the endpoints (ALPN `tether-tcp`), or `None` for plaintext
    /// (the preamble is sent instead).
    pub tls: Option<TlsTarget>,
    /// Stream metrics (outbound).
    pub metrics: TcpMetrics,
}

/// A weighted choice among endpoint sets (subsets).
#[derive(Debug, Clone)]
pub struct Split {
    targets: Vec<(Arc<EndpointSet>, u32)>,
    /// Sum of the weights, in u64: two u32 weights can overflow a u32.
    total: u64,
}

impl Split {
    /// A split over `targets` with their weights. Zero-weight targets never
    /// receive traffic; a split whose weights sum to zero sends to the first.
    ///
    /// A target with no endpoints (a subset whose only instance is
    /// restarting) is left out, so its share goes to the others in
    /// proportion to their weights instead of failing with `no-endpoints`;
    /// only when no weighted target has an endpoint do requests fail. Sets
    /// are fixed per snapshot, so this costs nothing per request.
    pub fn new(targets: Vec<(Arc<EndpointSet>, u32)>) -> Self {
        let live: Vec<_> = targets
            .iter()
            .filter(|(set, weight)| *weight > 0 && !set.endpoints().is_empty())
            .cloned()
            .collect();
        let targets = if live.is_empty() { targets } else { live };
        let total = targets.iter().map(|(_, w)| u64::from(*w)).sum();
        Self { targets, total }
    }

    /// The sets requests are drawn among, with their weights (targets of
    /// weight zero or without endpoints already left out).
    pub fn targets(&self) -> impl Iterator<Item = (&Arc<EndpointSet>, u32)> {
        self.targets.iter().map(|(set, weight)| (set, *weight))
    }

    /// Draws a set in proportion to the weights.
    pub fn choose(&self) -> Option<&Arc<EndpointSet>> {
        if self.targets.len() <= 1 || self.total == 0 {
            return self.targets.first().map(|(set, _)| set);
        }
        let mut point = rand::thread_rng().gen_range(0..self.total);
        for (set, weight) in &self.targets {
            let weight = u64::from(*weight);
            if point < weight {
                return Some(set);
            }
            point -= weight;
        }
        self.targets.last().map(|(set, _)| set)
    }

    /// Draws, by weight, a set other than `exclude` that has endpoints (a
    /// subset to fall back to when `exclude` cannot serve); `None` if there
    /// is none.
    pub fn choose_other(&self, exclude: &Arc<EndpointSet>) -> Option<&Arc<EndpointSet>> {
        let usable = |(set, weight): &&(Arc<EndpointSet>, u32)| {
            *weight > 0 && !Arc::ptr_eq(set, exclude) && !set.endpoints().is_empty()
        };
        let total: u64 = self
            .targets
            .iter()
            .filter(usable)
            .map(|(_, w)| u64::from(*w))
            .sum();
        if total == 0 {
            return None;
        }
        let mut point = rand::thread_rng().gen_range(0..total);
        for (set, weight) in self.targets.iter().filter(usable) {
            let weight = u64::from(*weight);
            if point < weight {
                return Some(set);
            }
            point -= weight;
        }
        None
    }
}

/// One route rule.
#[derive(Debug, Clone)]
pub struct RouteRule {
    /// Required path prefix.
    pub path_prefix: Option<String>,
    /// Required headers with exact values.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Where matching requests go.
    pub split: Split,
    /// Timeout override.
    pub timeout: Option<Duration>,
    /// Copies of matching requests: the route's mirror, else the
    /// service's (resolved when the snapshot is built).
    pub mirror: Option<Arc<Mirror>>,
}

impl RouteRule {
    /// Whether a request matches this rule.
    pub fn matches(&self, path: &str, headers: &http::HeaderMap) -> bool {
        self.path_prefix
            .as_deref()
            .is_none_or(|p| path.starts_with(p))
            && self
                .headers
                .iter()
                .all(|(name, value)| headers.get(name) == Some(value))
    }
}
