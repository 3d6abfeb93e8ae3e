//! `tether-control explain`: what the mesh would do with one request from
//! `--from` to `--to`, computed by the proxy's own code (`tether_proxy::
//! explain`) on the snapshots the control plane would send: the caller's
//! (routing, split, policy, traffic features) and the called service's
//! (its authorization). From a mesh.yaml ([`offline`]) or a running control
//! plane's current snapshots ([`fetch`]).
//!
//! Authorization rules and routes are named by their position in mesh.yaml
//! (`FILE:LINE`, [`Positions`]) when the file is at hand.

mod render;

use std::path::{Path, PathBuf};

use serde::Serialize;
use tether_api::{
    FaultInjection, InboundRateLimit, Mirror, RateLimit, RolloutList, RolloutPhase, Snapshot,
};
use tether_certs::SpiffeId;
use tether_proxy::explain::{AuthzExplanation, RouteExplanation};

use crate::catalog::CatalogState;
use crate::config::{CatalogConfig, MeshConfig};
use crate::locate::locate;
use crate::status::{StatusError, StatusTls};

pub use render::render;

/// The request to explain.
#[derive(Debug, Clone)]
pub struct Query {
    /// The calling service (its sidecar routes the request).
    pub from: String,
    /// The called service (the request's authority).
    pub to: String,
    /// Method.
    pub method: http::Method,
    /// Path.
    pub path: String,
    /// Request headers (`--header k=v`).
    pub headers: Vec<(String, String)>,
    /// The caller's zone (`tether-proxy --zone`), for locality.
    pub zone: Option<String>,
}

/// Why nothing could be explained (exit 2: nothing was decided).
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// mesh.yaml is invalid.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigErrors),
    /// The control plane did not answer as expected.
    #[error(transparent)]
    Control(#[from] StatusError),
    /// The control plane has no snapshot for the service.
    #[error("{url}: no snapshot for `{service}` ({status}): is it a service of the mesh?")]
    NoSnapshot {
        /// The URL asked.
        url: String,
        /// The service.
        service: String,
        /// The answer.
        status: http::StatusCode,
    },
    /// The answer was not a snapshot.
    #[error("{url}: not a snapshot: {reason}")]
    NotSnapshot {
        /// The URL asked.
        url: String,
        /// Why.
        reason: String,
    },
    /// A proxy would refuse this snapshot.
    #[error("a proxy of `{service}` would refuse its snapshot:\n  {}", .problems.join("\n  "))]
    Refused {
        /// The service.
        service: String,
        /// Every problem.
        problems: Vec<String>,
    },
    /// A bad argument.
    #[error("{0}")]
    Usage(String),
}

/// The snapshots a request depends on and where they came from.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The caller's snapshot: how its sidecar routes.
    pub from: Snapshot,
    /// The called service's snapshot: who may call it.
    pub to: Snapshot,
    /// Where they came from (for the output).
    pub source: String,
    /// Endpoints come from Consul at run time (offline: none known).
    pub consul: bool,
    /// The rollout holding `to`'s split, if the control plane has one.
    pub rollout: Option<RolloutView>,
}

/// Snapshots as the control plane would compute them from `config`, with
/// its static catalog (a Consul catalog's endpoints are known only at run
/// time: none here).
pub fn offline(config: &MeshConfig, path: &Path, query: &Query) -> Inputs {
    let (catalog, consul) = match &config.catalog {
        CatalogConfig::Static { services } => (CatalogState::synced(services.clone()), false),
        CatalogConfig::Consul(_) => (CatalogState::synced(Default::default()), true),
    };
    let services = crate::snapshot::compute_services(config, &catalog);
    let snapshot = |service: &str| Snapshot {
        services: services.clone(),
        ..crate::snapshot::header(config, service)
    };
    Inputs {
        from: snapshot(&query.from),
        to: snapshot(&query.to),
        source: path.display().to_string(),
        consul,
        rollout: None,
    }
}

/// The current snapshots of `query`'s services (and `to`'s rollout) from
/// the control plane at `base` (plain `http://`: its TLS API asks for a
/// proxy's client certificate).
pub async fn fetch(base: &str, query: &Query) -> Result<Inputs, ExplainError> {
    if !base.starts_with("http://") {
        return Err(ExplainError::Usage(format!(
            "--control {base}: explain reads snapshots over plain http:// (the TLS API asks for a proxy's client certificate); point it at a plaintext listener or use --config"
        )));
    }
    let from = snapshot(base, &query.from).await?;
    let to = snapshot(base, &query.to).await?;
    let tls = StatusTls::default();
    let rollout = match crate::status::request(
        base,
        &tls,
        http::Method::GET,
        tether_api::ROLLOUTS_PATH,
        None,
    )
    .await
    {
        Ok((_, status, body)) if status.is_success() => {
            serde_json::from_slice::<RolloutList>(&body)
                .ok()
                .and_then(|list| {
                    list.rollouts
                        .into_iter()
                        .find(|r| r.request.service == query.to)
                })
                .filter(|r| r.phase != RolloutPhase::Superseded)
                .map(|r| RolloutView {
                    from: r.request.from,
                    to: r.request.to,
                    phase: r.phase.as_str(),
                    percent: r.percent,
                })
        }
        _ => None,
    };
    Ok(Inputs {
        from,
        to,
        source: base.to_owned(),
        consul: false,
        rollout,
    })
}

async fn snapshot(base: &str, service: &str) -> Result<Snapshot, ExplainError> {
    let path = format!("/v1/snapshot/{service}");
    let (url, status, body) =
        crate::status::request(base, &StatusTls::default(), http::Method::GET, &path, None).await?;
    if !status.is_success() {
        return Err(ExplainError::NoSnapshot {
            url,
            service: service.to_owned(),
            status,
        });
    }
    serde_json::from_slice(&body).map_err(|e| ExplainError::NotSnapshot {
        url,
        reason: e.to_string(),
    })
}

/// Where mesh.yaml's authorization rules and routes are (`FILE:LINE`).
#[derive(Debug, Clone)]
pub struct Positions {
    path: PathBuf,
    text: String,
    config: MeshConfig,
}

impl Positions {
    /// Positions in `config`, read from `text` at `path`.
    pub fn new(path: &Path, text: String, config: MeshConfig) -> Self {
        Self {
            path: path.to_owned(),
            text,
            config,
        }
    }

    /// The configuration read.
    pub fn config(&self) -> &MeshConfig {
        &self.config
    }

    fn at(&self, keys: &[&str]) -> String {
        let (line, _) = locate(&self.text, keys);
        format!("{}:{line}", self.path.display())
    }

    /// The `index`-th rule of `service`'s snapshot (the rules whose `to` is
    /// it or `*`, in order) as mesh.yaml's `authorization.rules[i]` and its
    /// position; `None` if the file has no such rule (it differs from the
    /// snapshot's).
    fn rule(&self, service: &str, index: usize) -> Option<(usize, String)> {
        let rules = &self.config.authorization.as_ref()?.rules;
        let (i, _) = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.to == service || r.to == "*")
            .nth(index)?;
        let item = format!("[{i}]");
        Some((i, self.at(&["authorization", "rules", &item])))
    }

    fn route(&self, service: &str, index: usize) -> Option<String> {
        let routes = &self.config.services.get(service)?.routes;
        routes.get(index)?;
        let item = format!("[{index}]");
        Some(self.at(&["services", service, "routes", &item]))
    }
}

/// A rollout holding the split of the called service.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutView {
    /// Subset it moves from.
    pub from: String,
    /// Subset it moves to.
    pub to: String,
    /// Phase (`active`, `promoted`, ...).
    pub phase: &'static str,
    /// Share of `to` now, in percent.
    pub percent: u32,
}

/// The whole answer (`--json` prints it as is).
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// Caller.
    pub from: String,
    /// Called service.
    pub to: String,
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Where the snapshots came from (a file, or the control plane's URL).
    pub source: String,
    /// Versions of the caller's and the called service's snapshots.
    pub versions: [u64; 2],
    /// Whether the caller's sidecar would route it (and to endpoints).
    pub routed: bool,
    /// Whether the called sidecar would let it in.
    pub allowed: bool,
    /// Why it is not routed: the `tether-error` reason and message the
    /// caller would get (`tcp-service`: not an HTTP service, not explained).
    pub error: Option<ErrorView>,
    /// How it is routed.
    pub route: Option<RouteView>,
    /// Policy in force (timeouts, retries, circuit breaker, balancer,
    /// locality), as the snapshot carries it.
    pub policy: Option<serde_json::Value>,
    /// Traffic features in force for it.
    pub traffic: TrafficView,
    /// The called service's authorization decision.
    pub authorization: AuthzView,
    /// Endpoints come from Consul at run time (offline: not known).
    pub endpoints_from_consul: bool,
}

/// An error the caller's sidecar would answer.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorView {
    /// `tether-error` reason.
    pub reason: &'static str,
    /// What it says.
    pub message: String,
}

/// The routing decision with its position in mesh.yaml.
#[derive(Debug, Clone, Serialize)]
pub struct RouteView {
    /// The proxy's explanation.
    #[serde(flatten)]
    pub decision: RouteExplanation,
    /// The matching route's `match` as written.
    pub matches: Option<serde_json::Value>,
    /// The matching route's position (`FILE:LINE`).
    pub position: Option<String>,
}

/// Fault injection, rate limits, mirroring and rollouts in force.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrafficView {
    /// Faults injected by the caller's sidecar (the route's, else the
    /// service's).
    pub fault: Option<FaultInjection>,
    /// The caller's outbound rate limit to the service.
    pub rate_limit: Option<RateLimit>,
    /// The called service's inbound rate limit.
    pub inbound_rate_limit: Option<InboundRateLimit>,
    /// Copies sent elsewhere (the route's, else the service's).
    pub mirror: Option<Mirror>,
    /// The rollout overriding the default split, if any.
    pub rollout: Option<RolloutView>,
}

/// The authorization decision with the rule's position.
#[derive(Debug, Clone, Serialize)]
pub struct AuthzView {
    /// The proxy's decision.
    #[serde(flatten)]
    pub decision: AuthzExplanation,
    /// The allowing rule as the snapshot has it.
    pub rule_text: Option<serde_json::Value>,
    /// Its index in mesh.yaml's `authorization.rules`.
    pub config_index: Option<usize>,
    /// Its position (`FILE:LINE`).
    pub position: Option<String>,
}

impl Explanation {
    /// Allowed and routed: exit 0; otherwise 1.
    pub fn ok(&self) -> bool {
        self.routed && self.allowed
    }
}

/// Explains `query` on `inputs` with the proxy's own code.
pub fn explain(
    query: &Query,
    inputs: &Inputs,
    positions: Option<&Positions>,
) -> Result<Explanation, ExplainError> {
    let refused = |service: &str, problems| ExplainError::Refused {
        service: service.to_owned(),
        problems,
    };
    let from_state = tether_proxy::explain::state_for(inputs.from.clone(), query.zone.as_deref())
        .map_err(|p| refused(&query.from, p))?;
    let to_state = tether_proxy::explain::state_for(inputs.to.clone(), None)
        .map_err(|p| refused(&query.to, p))?;
    let request = request(query)?;
    let routed = tether_proxy::explain::route(&from_state, &inputs.from, &request);
    let spec = inputs.from.services.get(&query.to);
    let (route, error) = match routed {
        Ok(decision) => {
            let wire_route = decision
                .route
                .and_then(|i| spec.and_then(|s| s.routes.get(i)));
            let view = RouteView {
                matches: wire_route.and_then(|r| serde_json::to_value(&r.matches).ok()),
                position: decision
                    .route
                    .and_then(|i| positions.and_then(|p| p.route(&query.to, i))),
                decision,
            };
            let no_endpoints = !inputs.consul
                && view
                    .decision
                    .split
                    .iter()
                    .all(|s| s.percent == 0.0 || s.endpoints.is_empty());
            let error = no_endpoints.then(|| ErrorView {
                reason: "no-endpoints",
                message: format!("no endpoints available for service {}", query.to),
            });
            (Some(view), error)
        }
        // An opaque TCP service is routed by port, not by authority.
        Err(_) if spec.is_some_and(|s| s.protocol == tether_api::Protocol::Tcp) => (
            None,
            Some(ErrorView {
                reason: "tcp-service",
                message: format!(
                    "`{}` is an opaque TCP service (the app connects to local port {}): explain covers HTTP requests; its authorization is by caller identity alone (rules without methods or paths)",
                    query.to,
                    spec.and_then(|s| s.outbound_port).unwrap_or_default()
                ),
            }),
        ),
        Err(error) => (
            None,
            Some(ErrorView {
                reason: error.reason().as_str(),
                message: error.to_string(),
            }),
        ),
    };
    let wire_route = route
        .as_ref()
        .and_then(|r| r.decision.route)
        .and_then(|i| spec.and_then(|s| s.routes.get(i)));
    let traffic = TrafficView {
        fault: wire_route
            .and_then(|r| r.fault.clone())
            .or_else(|| spec.and_then(|s| s.fault.clone())),
        rate_limit: spec.and_then(|s| s.rate_limit.clone()),
        inbound_rate_limit: inputs.to.inbound_rate_limit.clone(),
        mirror: wire_route
            .and_then(|r| r.mirror.clone())
            .or_else(|| spec.and_then(|s| s.mirror.clone())),
        rollout: inputs.rollout.clone(),
    };
    let caller = SpiffeId::service(&inputs.to.mesh.trust_domain, &query.from)
        .map_err(|e| ExplainError::Usage(format!("--from {}: {e}", query.from)))?;
    let decision =
        tether_proxy::explain::authorize(&to_state, Some(&caller), &query.method, &query.path);
    let rule_text = decision.rule.and_then(|i| {
        let rule = inputs.to.authorization.as_ref()?.rules.get(i)?;
        serde_json::to_value(rule).ok()
    });
    let located = decision
        .rule
        .and_then(|i| positions.and_then(|p| p.rule(&query.to, i)));
    let authorization = AuthzView {
        rule_text,
        config_index: located.as_ref().map(|(i, _)| *i),
        position: located.map(|(_, at)| at),
        decision,
    };
    Ok(Explanation {
        from: query.from.clone(),
        to: query.to.clone(),
        method: query.method.to_string(),
        path: query.path.clone(),
        source: inputs.source.clone(),
        versions: [inputs.from.version, inputs.to.version],
        routed: route.is_some() && error.is_none(),
        allowed: authorization.decision.allowed,
        error,
        route,
        policy: spec.and_then(|s| serde_json::to_value(&s.policy).ok()),
        traffic,
        authorization,
        endpoints_from_consul: inputs.consul,
    })
}

/// The synthetic request: `Host: <to>`, the path, the headers.
fn request(query: &Query) -> Result<http::Request<()>, ExplainError> {
    let mut builder = http::Request::builder()
        .method(query.method.clone())
        .uri(&query.path)
        .header(http::header::HOST, &query.to);
    for (name, value) in &query.headers {
        builder = builder.header(name, value);
    }
    builder.body(()).map_err(|e| {
        ExplainError::Usage(format!(
            "not a request: {e} (check --path and --header NAME=VALUE)"
        ))
    })
}

#[cfg(test)]
mod tests;
