//! Traffic mirroring: a copy of a share of a service's requests goes to a
//! subset of the same service or to another mesh service, fire and forget.
//!
//! - `route` draws, per request, whether it is mirrored ([`Mirror::draw`]:
//!   a service without a mirror pays one `Option` check) and where to: the
//!   subset's set, or the other service as it is in the state in force.
//! - `retry`, which buffers bodies for replay, hands the copy over
//!   ([`MirrorPlan::send`]): a request without a body, or whose body was
//!   buffered, is copied; one whose body streams is not (`skipped`).
//! - The copy is sent from a task of its own, within its own timeout (the
//!   mirror's `timeout`, else the mirrored service's), and its response is
//!   read to the end and discarded. The original request neither waits for
//!   it nor shares its fate: no retry, no outlier detection, no limiter.
//! - At most `max_in_flight` copies of one service are in flight; a copy
//!   beyond that is `dropped` at once, never queued.
//!
//! A copy keeps the original's Host (the shadow app sees the request it
//! would have seen) and carries `tether-mirror: 1`, by which the shadow
//! side tells it from real traffic. (Envoy instead appends `-shadow` to the
//! Host; in a mesh the Host names the service routed to, so Tether leaves
//! it alone.) Trace headers are copied as they are, so the shadow's spans
//! join the caller's trace.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request};
use http_body_util::BodyExt;
use rand::Rng;

use super::Req;
use crate::balance::EndpointSet;
use crate::body::Body;
use crate::hop::to_upstream;
use crate::state::{MeshState, UpstreamService};
use crate::traffic::MirrorMetrics;

/// The header every mirrored copy carries.
pub const MIRROR_HEADER: HeaderName = HeaderName::from_static("tether-mirror");

/// Sampling resolution: parts per million, so `percent: 0.01` is honoured.
const PER_MILLION: u32 = 1_000_000;

/// Where a mirror's copies go.
#[derive(Debug)]
pub enum MirrorTarget {
    /// A subset of the mirrored service itself.
    Subset(Arc<EndpointSet>),
    /// Another mesh service, by its (lowercase) name: found in the state
    /// in force when a request is drawn, so its endpoints and pool are
    /// always current and two services may mirror each other.
    Service(String),
}

/// One service's (or route's) mirror.
#[derive(Debug)]
pub struct Mirror {
    target: MirrorTarget,
    /// Requests copied, in parts per million.
    per_million: u32,
    max_in_flight: usize,
    /// Copies in flight, shared by every mirror of the service.
    in_flight: Arc<AtomicUsize>,
    /// The copy's timeout; `None`: the mirrored service's.
    timeout: Option<Duration>,
    metrics: MirrorMetrics,
}

impl Mirror {
    /// A mirror copying `percent` % of requests to `target`, at most
    /// `max_in_flight` (at least 1) of them at once, counted in `in_flight`
    /// (one counter per service).
    pub fn new(
        target: MirrorTarget,
        percent: f64,
        max_in_flight: u32,
        in_flight: Arc<AtomicUsize>,
        timeout: Option<Duration>,
        metrics: MirrorMetrics,
    ) -> Self {
        Self {
            target,
            per_million: per_million(percent),
            max_in_flight: (max_in_flight as usize).max(1),
            in_flight,
            timeout,
            metrics,
        }
    }

    /// The service's count of copies in flight (carried to the next
    /// snapshot's mirrors, so the bound holds across an update).
    pub fn in_flight(&self) -> &Arc<AtomicUsize> {
        &self.in_flight
    }

    /// Whether this request is mirrored and, if so, where its copy goes.
    /// `service` is the service routed to; `state` the state it came from.
    pub fn draw(
        self: &Arc<Self>,
        service: &Arc<UpstreamService>,
        state: &MeshState,
    ) -> Option<MirrorPlan> {
        if !sampled(self.per_million, &mut rand::thread_rng()) {
            return None;
        }
        let (service, endpoints) = match &self.target {
            MirrorTarget::Subset(set) => (Arc::clone(service), Arc::clone(set)),
            MirrorTarget::Service(name) => {
                let Some(target) = state.services.get(name) else {
                    // Validated when the snapshot was built: cannot happen.
                    self.metrics.failed.inc();
                    return None;
                };
                let Some(set) = target.default_split.choose() else {
                    self.metrics.failed.inc();
                    return None;
                };
                (Arc::clone(target), Arc::clone(set))
            }
        };
        Some(MirrorPlan {
            mirror: Arc::clone(self),
            service,
            endpoints,
        })
    }
}

/// `percent` (0 to 100) in parts per million.
fn per_million(percent: f64) -> u32 {
    if percent.is_nan() {
        return 0;
    }
    (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32
}

/// One draw: true with probability `per_million` / 1,000,000.
fn sampled(per_million: u32, rng: &mut impl Rng) -> bool {
    per_million >= PER_MILLION || (per_million > 0 && rng.gen_range(0..PER_MILLION) < per_million)
}

/// A request drawn for mirroring: where its copy goes.
#[derive(Debug, Clone)]
pub struct MirrorPlan {
    mirror: Arc<Mirror>,
    /// The service whose pool and timeout the copy uses.
    service: Arc<UpstreamService>,
    /// The endpoints the copy picks from.
    endpoints: Arc<EndpointSet>,
}

impl MirrorPlan {
    /// Sends `copy` in a task of its own and returns at once; `None` (the
    /// body could not be copied) is counted as skipped.
    pub fn send(&self, copy: Option<Req>) {
        let mirror = &self.mirror;
        let Some(mut request) = copy else {
            mirror.metrics.skipped.inc();
            return;
        };
        let Some(slot) = Slot::take(&mirror.in_flight, mirror.max_in_flight) else {
            mirror.metrics.dropped.inc();
            return;
        };
        request
            .headers_mut()
            .insert(MIRROR_HEADER, HeaderValue::from_static("1"));
        let timeout = mirror.timeout.unwrap_or(self.service.timeout);
        let plan = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let answered = tokio::time::timeout(timeout, plan.deliver(request))
                .await
                .unwrap_or(false);
            let metrics = &plan.mirror.metrics;
            if answered {
                metrics.sent.inc();
            } else {
                metrics.failed.inc();
            }
        });
    }

    /// Sends the copy to one endpoint and reads its response to the end;
    /// whether it was answered below 500.
    async fn deliver(&self, request: Req) -> bool {
        let Ok(endpoint) = self.endpoints.pick() else {
            return false;
        };
        let _in_flight = endpoint.start();
        let pool = endpoint.connections(&self.service.client);
        let Ok(request) = to_upstream(request, endpoint.authority(), pool.is_http2()) else {
            return false;
        };
        match pool.send(request).await {
            Ok(response) => {
                let answered = !response.status().is_server_error();
                let mut body = response.into_body();
                while let Some(frame) = body.frame().await {
                    if frame.is_err() {
                        return false;
                    }
                }
                answered
            }
            Err(error) => {
                tracing::debug!(endpoint = endpoint.address(), %error, "mirrored copy failed");
                false
            }
        }
    }
}

/// A copy of a request that has no body (and so can always be mirrored);
/// `None` when it has one.
pub fn bodiless_copy(request: &Req) -> Option<Req> {
    if !http_body::Body::is_end_stream(request.body()) {
        return None;
    }
    let mut copy = Request::new(Body::Empty);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// One of a service's in-flight copies; given back when dropped.
#[derive(Debug)]
struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// A slot, if fewer than `max` are taken.
    fn take(in_flight: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(in_flight)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn percent_becomes_parts_per_million() {
        assert_eq!(per_million(100.0), PER_MILLION);
        assert_eq!(per_million(150.0), PER_MILLION);
        assert_eq!(per_million(10.0), 100_000);
        assert_eq!(per_million(0.01), 100);
        assert_eq!(per_million(-1.0), 0);
        assert_eq!(per_million(f64::NAN), 0);
    }

    #[test]
    fn sampling_draws_the_configured_share() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        let drawn = (0..100_000)
            .filter(|_| sampled(per_million(10.0), &mut rng))
            .count();
        assert!((9_000..11_000).contains(&drawn), "10 % drew {drawn}");
        assert!((0..1000).all(|_| sampled(PER_MILLION, &mut rng)));
        assert!((0..1000).all(|_| !sampled(0, &mut rng)));
    }

    #[test]
    fn in_flight_slots_are_bounded_and_given_back() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let first = Slot::take(&in_flight, 2);
        let second = Slot::take(&in_flight, 2);
        assert!(first.is_some() && second.is_some());
        assert!(
            Slot::take(&in_flight, 2).is_none(),
            "the third is over the bound"
        );
        drop(first);
        assert_eq!(in_flight.load(Ordering::Acquire), 1);
        assert!(
            Slot::take(&in_flight, 2).is_some(),
            "a slot given back is taken again"
        );
    }

    #[test]
    fn only_bodiless_requests_are_copied_without_a_buffer() {
        let get = Request::builder()
            .method("GET")
            .uri("/x?y=1")
            .header("x-a", "1")
            .body(Body::Empty)
            .unwrap_or_default();
        let copy = bodiless_copy(&get).unwrap_or_default();
        assert_eq!(copy.uri(), "/x?y=1");
        assert_eq!(copy.headers()["x-a"], "1");
        let post = Request::builder()
            .method("POST")
            .body(Body::full("abc"))
            .unwrap_or_default();
        assert!(bodiless_copy(&post).is_none());
    }
}
