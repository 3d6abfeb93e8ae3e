//! Traffic management applied by the sidecar itself: fault injection and
//! local rate limits (outbound: a caller's own requests to a service;
//! inbound: what the fronted service admits), and how a retry honours an
//! upstream's `Retry-After`.
//!
//! Free when unused: a service that configures neither faults nor an
//! outbound limit has `UpstreamService::traffic` `None`, the one check its
//! requests pay; a proxy whose service has no inbound limit has
//! `MeshState::inbound_rate_limit` `None`. The domain types here are built
//! from the wire types in `discovery`.

mod fault;
mod metrics;
pub mod mirror;
mod rate_limit;
pub mod retry_after;

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

pub use fault::{Abort, Fault, FaultCounters, Share};
pub use metrics::{MirrorMetrics, TrafficFamilies};
pub use rate_limit::{InboundLimit, OutboundLimit, Refused, TokenBucket, MAX_CALLER_BUCKETS};

use crate::errors::ProxyError;

/// A service's outbound traffic management: its faults (by route) and the
/// caller's limit on requests to it.
#[derive(Debug)]
pub struct OutboundTraffic {
    /// Faults of requests that match no route.
    pub fault: Option<Arc<Fault>>,
    /// The fault in force for each route (by index): the route's own, else
    /// the service's.
    pub route_faults: Vec<Option<Arc<Fault>>>,
    /// The limit on this sidecar's requests to the service.
    pub limit: Option<Arc<OutboundLimit>>,
}

/// What traffic management does to one request.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Hold the request this long first (within its timeout).
    pub delay: Option<Duration>,
    /// Then answer with this error instead of sending it on.
    pub refuse: Option<ProxyError>,
}

impl OutboundTraffic {
    /// Whether there is anything to do (else the service carries `None`).
    pub fn is_empty(&self) -> bool {
        self.fault.is_none()
            && self.limit.is_none()
            && self.route_faults.iter().all(Option::is_none)
    }

    /// The verdict for a request to `service` that matched `route`: an
    /// injected abort first (it never leaves, so it takes no token; it may
    /// be delayed too), then the rate limit (a refusal is answered at
    /// once), then an injected delay.
    pub fn check(&self, service: &str, route: Option<usize>, headers: &HeaderMap) -> Verdict {
        let fault = match route {
            Some(i) => self.route_faults.get(i).and_then(Option::as_deref),
            None => self.fault.as_deref(),
        }
        .filter(|f| f.eligible(headers));
        if let Some(abort) = fault.and_then(Fault::draw_abort) {
            return Verdict {
                delay: fault.and_then(Fault::draw_delay),
                refuse: Some(ProxyError::InjectedFault {
                    status: abort.status,
                    grpc: abort.grpc,
                }),
            };
        }
        if let Some(limit) = &self.limit {
            if let Err(refused) = limit.bucket.try_acquire() {
                limit.refused.inc();
                return Verdict {
                    delay: None,
                    refuse: Some(ProxyError::RateLimited {
                        service: service.to_owned(),
                        direction: "outbound",
                        retry_after: refused.retry_after_secs(),
                    }),
                };
            }
        }
        Verdict {
            delay: fault.and_then(Fault::draw_delay),
            refuse: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::IntCounter;

    fn counter() -> IntCounter {
        IntCounter::new("c", "c").unwrap_or_else(|e| panic!("{e}"))
    }

    fn fault(delay: f64, abort: f64) -> Arc<Fault> {
        Arc::new(Fault {
            header: None,
            delay: Some((Duration::from_millis(7), Share::from_percent(delay))),
            abort: Some((
                Abort::http(http::StatusCode::SERVICE_UNAVAILABLE),
                Share::from_percent(abort),
            )),
            counters: FaultCounters {
                delays: counter(),
                aborts: counter(),
            },
        })
    }

    fn limited(burst: u32) -> Option<Arc<OutboundLimit>> {
        Some(Arc::new(OutboundLimit {
            bucket: TokenBucket::new(0.001, burst),
            refused: counter(),
        }))
    }

    #[test]
    fn an_abort_takes_no_token_and_a_refusal_is_not_delayed() {
        let traffic = OutboundTraffic {
            fault: Some(fault(100.0, 0.0)),
            // Route 0 aborts everything (its own fault); route 1 has the service's.
            route_faults: vec![Some(fault(0.0, 100.0)), Some(fault(100.0, 0.0))],
            limit: limited(1),
        };
        let headers = HeaderMap::new();
        for _ in 0..3 {
            let aborted = traffic.check("api", Some(0), &headers);
            assert!(matches!(
                aborted.refuse,
                Some(ProxyError::InjectedFault { .. })
            ));
            assert_eq!(aborted.delay, None);
        }
        let passed = traffic.check("api", None, &headers);
        assert!(passed.refuse.is_none(), "the one token is still there");
        assert_eq!(passed.delay, Some(Duration::from_millis(7)));
        let refused = traffic.check("api", Some(1), &headers);
        assert!(matches!(
            refused.refuse,
            Some(ProxyError::RateLimited { retry_after, .. }) if retry_after >= 1
        ));
        assert_eq!(refused.delay, None, "a refusal is answered at once");
        assert_eq!(traffic.limit.as_ref().map(|l| l.refused.get()), Some(1));
    }

    #[test]
    fn an_empty_traffic_is_empty() {
        let empty = OutboundTraffic {
            fault: None,
            route_faults: vec![None, None],
            limit: None,
        };
        assert!(empty.is_empty());
        let verdict = empty.check("api", Some(1), &HeaderMap::new());
        assert!(verdict.delay.is_none() && verdict.refuse.is_none());
    }
}
