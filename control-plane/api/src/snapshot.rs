//! The snapshot: everything one proxy needs to route, in one versioned document.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::TrafficPolicy;
use crate::traffic::Mirror;
use crate::traffic::{FaultInjection, InboundRateLimit, RateLimit};

/// Everything one proxy needs: mesh settings, its upstream services (HTTP and
/// opaque TCP) with their endpoints, routes and policy, and who may call the
/// service it fronts. A snapshot replaces the previous one whole; versions
/// from the control plane only grow (a file may leave it 0, and the proxy
/// then numbers snapshots itself).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Monotonic version assigned by the control plane (or the file's author).
    #[serde(default)]
    pub version: u64,
    /// The service this proxy fronts, if any (inbound side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Mesh-wide settings.
    #[serde(default)]
    pub mesh: MeshSettings,
    /// Upstream services by name, as the app addresses them (`Host: api`).
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSnapshot>,
    /// Who may call this proxy's service (inbound). `None`: everyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    /// How many requests this proxy's service admits (inbound), from
    /// mesh.yaml `services.<this>.rate_limit.inbound`. `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_rate_limit: Option<InboundRateLimit>,
    /// `services` holds only what this proxy calls (`upstreams`,
    /// `upstream_scope`): a request for another service asks the control
    /// plane for it (on-demand discovery) instead of failing at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

/// Inbound authorization for the service a proxy fronts: the rules of
/// mesh.yaml whose `to` is this service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// What happens to a request no rule allows.
    #[serde(default)]
    pub default: AuthorizationDefault,
    /// Allow rules; a request allowed by any rule passes.
    #[serde(default)]
    pub rules: Vec<AuthorizationRule>,
}

/// The verdict for requests no rule matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthorizationDefault {
    /// Refuse (403, `tether-error: unauthorized`).
    #[default]
    Deny,
    /// Let through.
    Allow,
}

/// One allow rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRule {
    /// Caller service names (from their SPIFFE identity); `*` is any
    /// authenticated caller.
    pub from: Vec<String>,
    /// HTTP methods; empty means any (and the rule then also allows L4).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Paths: exact (`/health`), prefix (`/v1/*`) or `*`; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// Mesh-wide settings carried in every snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshSettings {
    /// SPIFFE trust domain, e.g. `tether.local`.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Tracing export settings; `None` disables tracing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSettings>,
    /// What a sidecar with transparent capture does with outbound traffic
    /// to a destination that is not in the mesh.
    #[serde(default)]
    pub outbound_policy: OutboundPolicy,
}

/// What a sidecar does with a captured outbound connection (or HTTP
/// request) whose destination is not a mesh service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutboundPolicy {
    /// Pass it through to its original destination, untouched (counted).
    #[default]
    AllowAny,
    /// Refuse it (counted): only mesh services can be reached.
    RegistryOnly,
}

fn default_trust_domain() -> String {
    "tether.local".to_owned()
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self {
            trust_domain: default_trust_domain(),
            tracing: None,
            outbound_policy: OutboundPolicy::AllowAny,
        }
    }
}

/// Where and how much to trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSettings {
    /// OTLP collector endpoint, e.g. `http://127.0.0.1:4317`.
    pub otlp_endpoint: String,
    /// Fraction of new traces sampled, 0.0 to 1.0. A caller's sampling
    /// decision, when it sends one, wins (parent-based sampling).
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// OTLP transport: `grpc` (port 4317) or `http/protobuf` (port 4318).
    #[serde(default)]
    pub protocol: OtlpProtocol,
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    /// OTLP over gRPC.
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies.
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

fn default_sample_ratio() -> f64 {
    1.0
}

/// Application protocol spoken to a service's endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// HTTP/1.1 to the endpoint.
    #[default]
    Http,
    /// HTTP/2 (prior knowledge) to the endpoint.
    Http2,
    /// gRPC: HTTP/2 to the endpoint.
    Grpc,
    /// Opaque TCP: bytes copied both ways, sidecar to sidecar; authorized
    /// by caller identity alone (L4). Needs `outbound_port`.
    Tcp,
}

/// One upstream service as a proxy sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSnapshot {
    /// Protocol spoken to the endpoints.
    #[serde(default)]
    pub protocol: Protocol,
    /// `tcp` only: the local port on which every sidecar accepts the app's
    /// connections for this service (on its outbound listener's IP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_port: Option<u16>,
    /// Timeouts, retries, balancing and circuit breaking (nested, not
    /// flattened: serde cannot deny unknown keys through `flatten`).
    #[serde(default)]
    pub policy: TrafficPolicy,
    /// Healthy endpoints (already filtered by the catalog's health).
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Named subsets of the endpoints, selected by tags and metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subsets: BTreeMap<String, SubsetSelector>,
    /// Default traffic split over subsets; empty means all endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<SplitTarget>,
    /// Route rules, first match wins; a request matching none uses `split`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Faults the caller's sidecar injects into requests to this service
    /// (a matching route's own `fault` replaces it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultInjection>,
    /// How many requests each caller's sidecar sends to this service
    /// (mesh.yaml `rate_limit.outbound`). `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Copies of a share of the requests sent elsewhere (a route's own
    /// `mirror` replaces it for the requests the route matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
}

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `host:port` the proxy connects to (the peer sidecar's inbound port,
    /// or the app itself in a plaintext mesh).
    pub address: String,
    /// Relative weight for the `weighted` balancer (Consul `Weights.Passing`).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Catalog tags, used by subset selectors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Catalog metadata, used by subset selectors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// The zone (locality) the instance runs in, for locality-aware
    /// balancing; `None`: unknown (never local).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

fn default_weight() -> u32 {
    1
}

/// Selects the endpoints that carry all the given tags and metadata.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsetSelector {
    /// Every tag listed must be present on the endpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Every key must be present with the given value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

/// A share of traffic sent to one subset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitTarget {
    /// Subset name (a key of `subsets`).
    pub subset: String,
    /// Relative weight of this share.
    pub weight: u32,
}

/// A route rule: requests that match go to the rule's split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// What a request must look like.
    #[serde(rename = "match", default)]
    pub matches: RouteMatch,
    /// Where matching requests go.
    pub split: Vec<SplitTarget>,
    /// Whole-request timeout for matching requests, overriding the service's.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Faults injected into matching requests, replacing the service's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultInjection>,
    /// Mirror for matching requests, replacing the service's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
}

/// Request matching: all given conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// The path starts with this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Each header is present with exactly this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_port_is_optional_and_round_trips() {
        let tcp: ServiceSnapshot =
            serde_json::from_str(r#"{"protocol": "tcp", "outbound_port": 15306}"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tcp.protocol, Protocol::Tcp);
        assert_eq!(tcp.outbound_port, Some(15306));
        let json = serde_json::to_string(&tcp).unwrap_or_default();
        assert!(json.contains(r#""outbound_port":15306"#), "{json}");
        let http: ServiceSnapshot = serde_json::from_str("{}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(http.outbound_port, None);
        let json = serde_json::to_string(&http).unwrap_or_default();
        assert!(!json.contains("outbound_port"), "absent when unset: {json}");
        let bad = serde_json::from_str::<ServiceSnapshot>(r#"{"outbound_port": 70000}"#);
        assert!(bad.is_err(), "a port is a u16");
    }
}
