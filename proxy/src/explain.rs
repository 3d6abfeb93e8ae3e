//! What the proxy would do with a request, explained: which route matches,
//! which split and subsets, the timeout, the endpoints it would choose
//! from, and which authorization rule lets it in. For `tether-control
//! explain`, computed by the request path's own code on the proxy's own
//! state built from a snapshot ([`state_for`]): route matching is
//! `outbound::route::matched` (what `route::resolve` runs), authorization is
//! [`AuthzPolicy::decide`] (what `AuthzPolicy::allows` runs).
//!
//! Only the naming of subsets (the proxy's state has no names) and the
//! settings shown come from the wire snapshot.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request};
use serde::Serialize;
use tether_api::{ServiceSnapshot, Snapshot, SubsetSelector};
use tether_certs::SpiffeId;

use crate::balance::EndpointSet;
use crate::discovery::build::{build_in_zone, unknown_metrics};
use crate::discovery::SnapshotMetrics;
use crate::errors::ProxyError;
use crate::request_metrics::RequestMetrics;
use crate::state::{AuthzDecision, AuthzPolicy, MeshState};
use crate::tcp_metrics::TcpFamilies;

/// The proxy's state for `snapshot`, as a proxy in `zone` would build it
/// (with metrics of its own, registered nowhere), or every problem a proxy
/// would refuse the snapshot for.
pub fn state_for(snapshot: Snapshot, zone: Option<&str>) -> Result<MeshState, Vec<String>> {
    let requests = RequestMetrics::new();
    let tcp = TcpFamilies::register(requests.registry());
    let metrics = SnapshotMetrics::register(&requests, tcp);
    let empty = MeshState::empty(unknown_metrics(&metrics));
    build_in_zone(Arc::new(snapshot), &empty, &metrics, None, zone)
}

/// How a request is routed.
#[derive(Debug, Clone, Serialize)]
pub struct RouteExplanation {
    /// The service the authority names.
    pub service: String,
    /// The index of the route rule that matched (`routes[i]` of the
    /// service), `None` for the default split.
    pub route: Option<usize>,
    /// Whole-request timeout in force (the route's or the service's).
    #[serde(with = "humantime_ms")]
    pub timeout: Duration,
    /// Where requests are drawn to, by weight.
    pub split: Vec<SplitShare>,
}

/// One target of the split in force.
#[derive(Debug, Clone, Serialize)]
pub struct SplitShare {
    /// The subset (`None`: every endpoint of the service).
    pub subset: Option<String>,
    /// Its weight.
    pub weight: u32,
    /// Its share of the requests, in percent.
    pub percent: f64,
    /// The endpoints a request drawn to it is balanced among.
    pub endpoints: Vec<String>,
    /// With locality-aware balancing: the endpoints in the proxy's zone it
    /// prefers while they are healthy (`None`: not configured).
    pub local_endpoints: Option<Vec<String>>,
    /// Why it gets no requests (weight 0, no endpoints), when it gets none.
    pub note: Option<String>,
}

/// The route the request path would take for `request` on `state` (built
/// from `wire`, whose subset names label the sets), or the error it would
/// answer with (`unknown-service`, ...).
pub fn route<B>(
    state: &MeshState,
    wire: &Snapshot,
    request: &Request<B>,
) -> Result<RouteExplanation, ProxyError> {
    let (service, route) = crate::outbound::route::matched(state, request)?;
    let rule = route.and_then(|i| service.routes.get(i));
    let split = rule.map_or(&service.default_split, |r| &r.split);
    let spec = wire.services.get(&service.name).or_else(|| {
        wire.services
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&service.name))
            .map(|(_, spec)| spec)
    });
    let wire_split = spec
        .map(|s| match route.and_then(|i| s.routes.get(i)) {
            Some(r) if !r.split.is_empty() => r.split.clone(),
            _ => s.split.clone(),
        })
        .unwrap_or_default();
    let total: u64 = split.targets().map(|(_, w)| u64::from(w)).sum();
    let mut shares = Vec::new();
    let mut named = Vec::new();
    for (set, weight) in split.targets() {
        let subset = spec.and_then(|spec| {
            wire_split
                .iter()
                .filter(|t| !named.contains(&t.subset))
                .find(|t| same_members(set, spec, spec.subsets.get(&t.subset)))
                .map(|t| t.subset.clone())
        });
        if let Some(name) = &subset {
            named.push(name.clone());
        }
        let percent = if total == 0 {
            100.0
        } else {
            f64::from(weight) * 100.0 / total as f64
        };
        let local = set.localized();
        shares.push(SplitShare {
            subset,
            weight,
            percent,
            endpoints: addresses(set),
            local_endpoints: (!Arc::ptr_eq(local, set)).then(|| addresses(local)),
            note: None,
        });
    }
    for target in wire_split.iter().filter(|t| !named.contains(&t.subset)) {
        let note = if target.weight == 0 {
            "weight 0"
        } else {
            "no endpoints: its share goes to the others"
        };
        shares.push(SplitShare {
            subset: Some(target.subset.clone()),
            weight: target.weight,
            percent: 0.0,
            endpoints: Vec::new(),
            local_endpoints: None,
            note: Some(note.to_owned()),
        });
    }
    Ok(RouteExplanation {
        service: service.name.clone(),
        route,
        timeout: rule.and_then(|r| r.timeout).unwrap_or(service.timeout),
        split: shares,
    })
}

fn addresses(set: &EndpointSet) -> Vec<String> {
    set.endpoints()
        .iter()
        .map(|e| e.address().to_owned())
        .collect()
}

/// Whether `set` holds exactly the endpoints `selector` picks from `spec`.
fn same_members(
    set: &EndpointSet,
    spec: &ServiceSnapshot,
    selector: Option<&SubsetSelector>,
) -> bool {
    let Some(selector) = selector else {
        return false;
    };
    let members: Vec<&str> = spec
        .endpoints
        .iter()
        .filter(|e| crate::discovery::build::selects(selector, e))
        .map(|e| e.address.as_str())
        .collect();
    members.len() == set.endpoints().len()
        && set
            .endpoints()
            .iter()
            .zip(&members)
            .all(|(e, m)| e.address() == *m)
}

/// How an authorization check went.
#[derive(Debug, Clone, Serialize)]
pub struct AuthzExplanation {
    /// Whether the request is let in.
    pub allowed: bool,
    /// The index of the allowing rule among the called service's rules in
    /// its snapshot (those whose `to` is it or `*`, in mesh.yaml's order).
    pub rule: Option<usize>,
    /// `None` when a rule decided; otherwise `default: allow|deny`, or
    /// `no authorization configured` (everyone is let in).
    pub default: Option<&'static str>,
}

/// The inbound check `caller` would face calling the service whose state
/// is `state` (its own snapshot's authorization).
pub fn authorize(
    state: &MeshState,
    caller: Option<&SpiffeId>,
    method: &Method,
    path: &str,
) -> AuthzExplanation {
    let Some(policy) = state.authorization.as_deref() else {
        return AuthzExplanation {
            allowed: true,
            rule: None,
            default: Some("no authorization configured"),
        };
    };
    explain_decision(policy, policy.decide(caller, method, path))
}

fn explain_decision(policy: &AuthzPolicy, decision: AuthzDecision) -> AuthzExplanation {
    match decision {
        AuthzDecision::Rule(index) => AuthzExplanation {
            allowed: true,
            rule: Some(index),
            default: None,
        },
        AuthzDecision::Default { allow, .. } => AuthzExplanation {
            allowed: allow,
            rule: None,
            default: Some(if policy.allows_by_default() {
                "default: allow"
            } else {
                "default: deny"
            }),
        },
    }
}

/// Durations as milliseconds in JSON.
mod humantime_ms {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1e3)
    }
}

#[cfg(test)]
mod tests;
