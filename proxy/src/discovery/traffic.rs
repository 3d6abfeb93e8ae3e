//! Fault injection and rate limits from their wire types into the
//! domain's (`crate::traffic`), checked by tether-api's rules, with the
//! token buckets of unchanged limits carried over from the previous state.

use std::sync::Arc;

use http::{HeaderName, StatusCode};
use tether_api::{FaultInjection, PolicyProblem, ServiceSnapshot, Snapshot};

use crate::grpc;
use crate::request_metrics::{Direction, UNKNOWN_SERVICE};
use crate::state::{MeshState, UpstreamService};
use crate::traffic::{
    Abort, Fault, InboundLimit, OutboundLimit, OutboundTraffic, Share, TokenBucket, TrafficFamilies,
};

/// The outbound traffic management of service `name`, `None` when it
/// configures none (the request path then pays one `Option` check).
pub fn outbound(
    name: &str,
    spec: &ServiceSnapshot,
    previous: Option<&Arc<UpstreamService>>,
    families: &TrafficFamilies,
    problems: &mut Vec<String>,
) -> Option<Arc<OutboundTraffic>> {
    let has_route_fault = spec.routes.iter().any(|r| r.fault.is_some());
    if spec.fault.is_none() && spec.rate_limit.is_none() && !has_route_fault {
        return None;
    }
    let counters = || families.faults(name);
    let fault = spec.fault.as_ref().and_then(|f| {
        compile_fault(f, counters(), &format!("services.{name}.fault"), problems).map(Arc::new)
    });
    let route_faults = spec
        .routes
        .iter()
        .enumerate()
        .map(|(i, route)| match &route.fault {
            Some(f) => {
                let at = format!("services.{name}.routes[{i}].fault");
                compile_fault(f, counters(), &at, problems).map(Arc::new)
            }
            None => fault.clone(),
        })
        .collect();
    let limit = spec.rate_limit.as_ref().and_then(|limit| {
        let found = limit.problems();
        if !found.is_empty() {
            report(&format!("services.{name}.rate_limit"), found, problems);
            return None;
        }
        let (rate, burst) = (limit.requests_per_second, limit.burst_or_default());
        let kept = previous
            .and_then(|p| p.traffic.as_ref())
            .and_then(|t| t.limit.as_ref())
            .filter(|l| l.bucket.is(rate, burst));
        Some(match kept {
            Some(kept) => Arc::clone(kept),
            None => Arc::new(OutboundLimit {
                bucket: TokenBucket::new(rate, burst),
                refused: families.rate_limited(Direction::Outbound, name),
            }),
        })
    });
    let traffic = OutboundTraffic {
        fault,
        route_faults,
        limit,
    };
    (!traffic.is_empty()).then(|| Arc::new(traffic))
}

/// The limit of the service this proxy fronts, `None` without one.
pub fn inbound(
    snapshot: &Snapshot,
    previous: &MeshState,
    families: &TrafficFamilies,
    problems: &mut Vec<String>,
) -> Option<Arc<InboundLimit>> {
    let limit = snapshot.inbound_rate_limit.as_ref()?;
    let found = limit.problems();
    if !found.is_empty() {
        report("inbound_rate_limit", found, problems);
        return None;
    }
    let (rate, burst) = (limit.requests_per_second, limit.burst_or_default());
    if let Some(kept) = previous
        .inbound_rate_limit
        .as_ref()
        .filter(|l| l.is(rate, burst, limit.per_caller))
    {
        return Some(Arc::clone(kept));
    }
    let service = snapshot.service.as_deref().unwrap_or(UNKNOWN_SERVICE);
    let refused = families.rate_limited(Direction::Inbound, service);
    Some(Arc::new(InboundLimit::new(
        rate,
        burst,
        limit.per_caller,
        refused,
    )))
}

fn compile_fault(
    spec: &FaultInjection,
    counters: crate::traffic::FaultCounters,
    at: &str,
    problems: &mut Vec<String>,
) -> Option<Fault> {
    let found = spec.problems();
    if !found.is_empty() {
        report(at, found, problems);
        return None;
    }
    let header = match &spec.header {
        None => None,
        Some(name) => match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => Some(name),
            Err(_) => {
                problems.push(format!("{at}.header: `{name}` is not a header name"));
                return None;
            }
        },
    };
    let abort = match &spec.abort {
        None => None,
        Some(abort) => {
            let what = match (abort.status, &abort.grpc_status) {
                (Some(status), _) => StatusCode::from_u16(status).ok().map(Abort::http),
                (None, Some(name)) => grpc::Code::from_name(name).map(Abort::grpc),
                (None, None) => None,
            };
            let Some(what) = what else {
                problems.push(format!("{at}.abort: not a status the proxy can answer"));
                return None;
            };
            Some((what, Share::from_percent(abort.percent)))
        }
    };
    Some(Fault {
        header,
        delay: spec
            .delay
            .as_ref()
            .map(|d| (d.duration, Share::from_percent(d.percent))),
        abort,
        counters,
    })
}

/// Each problem as `AT.message` (or `AT message` for the whole key).
fn report(at: &str, found: Vec<PolicyProblem>, problems: &mut Vec<String>) {
    for problem in found {
        if problem.path.is_empty() {
            let rest = problem
                .message
                .split_once(' ')
                .map_or(problem.message.as_str(), |(_, rest)| rest);
            problems.push(format!("{at} {rest}"));
        } else {
            problems.push(format!("{at}.{}", problem.message));
        }
    }
}
