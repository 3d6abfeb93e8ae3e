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
mod rate_limit;
pub mod retry_after;

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

pub use fault::{Abort, Fault, FaultCounters, Injected, Share};
pub use metrics::TrafficFamilies;
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
    /// injected abort first (it never leaves, so it takes no token), then
    /// the rate limit, then an injected delay.
    pub fn check(&self, service: &str, route: Option<usize>, headers: &HeaderMap) -> Verdict {
        let fault = match route {
            Some(i) => self.route_faults.get(i).and_then(Option::as_ref),
            None => self.fault.as_ref(),
        };
        let injected = fault.map(|f| f.inject(headers)).unwrap_or_default();
        let refuse = match (injected.abort, &self.limit) {
            (Some(abort), _) => Some(ProxyError::InjectedFault {
                status: abort.status,
                grpc: abort.grpc,
            }),
            (None, Some(limit)) => match limit.bucket.try_acquire() {
                Ok(()) => None,
                Err(refused) => {
                    limit.refused.inc();
                    Some(ProxyError::RateLimited {
                        service: service.to_owned(),
                        direction: "outbound",
                        retry_after: refused.retry_after_secs(),
                    })
                }
            },
            (None, None) => None,
        };
        Verdict {
            delay: injected.delay,
            refuse,
        }
    }
}
