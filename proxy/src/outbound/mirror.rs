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

use std::sync::Arc;

use http::{HeaderValue, Request};
use http_body_util::BodyExt;

use super::Req;
use crate::balance::EndpointSet;
use crate::body::Body;
use crate::headers::MIRROR_HEADER;
use crate::hop::to_upstream;
use crate::state::{MeshState, UpstreamService};
use crate::traffic::mirror::{Mirror, MirrorTarget, Slot};

/// Whether this request is mirrored and, if so, where its copy goes.
/// `service` is the service routed to; `state` the state it came from.
pub fn draw(
    mirror: &Arc<Mirror>,
    service: &Arc<UpstreamService>,
    state: &MeshState,
) -> Option<MirrorPlan> {
    if !mirror.sampled() {
        return None;
    }
    let (service, endpoints) = match &mirror.target {
        MirrorTarget::Subset(set) => (Arc::clone(service), Arc::clone(set)),
        MirrorTarget::Service(name) => {
            let Some(target) = state.services.get(name) else {
                // Validated when the snapshot was built: cannot happen.
                mirror.metrics.failed.inc();
                return None;
            };
            let Some(set) = target.default_split.choose() else {
                mirror.metrics.failed.inc();
                return None;
            };
            (Arc::clone(target), Arc::clone(set))
        }
    };
    Some(MirrorPlan {
        mirror: Arc::clone(mirror),
        service,
        endpoints,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

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
