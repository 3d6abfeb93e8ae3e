//! The outbound path: the local app's requests out to the mesh.
//!
//! ```text
//! accept (transport::server: HTTP/1.1 or h2c, header limits)
//!   → route     authority → service; route rules; traffic split  (route.rs)
//!   → timeout   whole request, over queue and all tries           (timeout.rs)
//!   → limit     per-service max_requests + max_pending            (limit.rs)
//!   → retry     budget, backoff, bounded replay buffer            (retry.rs)
//!   → forward   balancer pick, per-try timeout, outlier record    (endpoint.rs)
//!   → pool      pooled connection to the endpoint                 (transport::client)
//! ```
//!
//! `route` runs in [`Outbound::handle`], which also records metrics and turns
//! errors into responses. The layers below it are plain async functions,
//! each in its own file, composed in [`serve`] outermost first: one future
//! per request, no boxed future per layer (measured: boxing and moving
//! those futures cost ~13 % of the instructions of a request).

mod endpoint;
mod limit;
mod retry;
pub(crate) mod route;
mod target;
mod timeout;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::body::Body;
use crate::errors::ProxyError;
use crate::metrics::UNKNOWN_SERVICE;
use crate::observe::Observer;
use crate::state::MeshState;

pub use target::Target;

/// A request inside the proxy.
pub type Req = http::Request<Body>;
/// A response inside the proxy.
pub type Rsp = http::Response<Body>;

/// The outbound path, ready to handle requests from the local app.
#[derive(Clone)]
pub struct Outbound {
    state: Arc<ArcSwap<MeshState>>,
    observer: Observer,
}

impl Outbound {
    /// Builds the outbound stack over the (swappable) mesh state.
    pub fn new(state: Arc<ArcSwap<MeshState>>, observer: Observer) -> Self {
        Self { state, observer }
    }

    /// Handles one request from the app; never fails: errors become responses
    /// with `tether-error`.
    pub async fn handle(&self, mut request: Req) -> Rsp {
        let state = self.state.load();
        let target = match route::resolve(&state, &request) {
            Ok(target) => target,
            Err(error) => {
                tracing::debug!(%error, "not routed");
                let observation = self.observer.begin(&mut request, UNKNOWN_SERVICE, None);
                state.unknown_metrics.proxy_error(error.reason());
                let response = error.into_response();
                self.observer.end(
                    observation,
                    &response,
                    &state.unknown_metrics,
                    UNKNOWN_SERVICE,
                    None,
                );
                return response;
            }
        };
        drop(state);
        let service = Arc::clone(&target.service);
        let observation = self.observer.begin(&mut request, &service.name, None);
        let response = match serve(&target, request).await {
            Ok(response) => response,
            Err(error) => {
                service.metrics.proxy_error(error.reason());
                error.into_response()
            }
        };
        self.observer.end(
            observation,
            &response,
            &service.metrics,
            &service.name,
            None,
        );
        response
    }
}

/// The layers below `route`, outermost first; each is a plain async fn.
fn serve<'a>(
    target: &'a Target,
    request: Req,
) -> impl std::future::Future<Output = Result<Rsp, ProxyError>> + 'a {
    timeout::within(
        target.timeout, // whole request: queue + all tries
        limit::hold(&target.service, || {
            // per-service in-flight + pending limits, then
            retry::retry(target, request) // budget, backoff, replay buffer; each try:
        }), // endpoint::forward: balancer pick, per-try timeout, outlier detection
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Direction, Metrics};

    /// The request's future is moved a few times (into hyper's dispatcher,
    /// among others): every KiB it grows costs every request. Wrapping a
    /// future in an `async fn`/`async` block that awaits it doubles it; this
    /// catches that (it was 11.5 KiB before the layers took closures).
    #[test]
    fn the_request_future_stays_small() {
        let metrics = Metrics::new();
        let state = Arc::new(ArcSwap::from_pointee(MeshState::empty(
            crate::discovery::build::unknown_metrics(&metrics),
        )));
        let telemetry = crate::telemetry::Telemetry::new(
            crate::telemetry::Identity {
                service: "web".into(),
                instance: "web-1".into(),
            },
            metrics,
        );
        let outbound = Outbound::new(state, Observer::new(telemetry, None, Direction::Outbound));
        let future = outbound.handle(http::Request::new(crate::body::Body::Empty));
        let size = std::mem::size_of_val(&future);
        assert!(
            size <= 5 * 1024,
            "the outbound request future is {size} bytes"
        );
    }
}
