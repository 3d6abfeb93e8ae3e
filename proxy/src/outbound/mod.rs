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
//! errors into responses; the rest is a tower stack, outermost first.

mod endpoint;
mod limit;
mod retry;
mod route;
mod step;
mod target;
mod timeout;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tower::ServiceExt;

use crate::body::Body;
use crate::errors::ProxyError;
use crate::metrics::UNKNOWN_SERVICE;
use crate::observe::Observer;
use crate::state::MeshState;

pub use endpoint::Forward;
pub use step::Step;
pub use target::Target;

/// A request inside the proxy.
pub type Req = http::Request<Body>;
/// A response inside the proxy.
pub type Rsp = http::Response<Body>;
/// The future every outbound layer returns.
pub type BoxFuture = Pin<Box<dyn Future<Output = Result<Rsp, ProxyError>> + Send>>;

/// The outbound path, ready to handle requests from the local app.
#[derive(Clone)]
pub struct Outbound {
    state: Arc<ArcSwap<MeshState>>,
    stack: Stack,
    observer: Observer,
}

/// The layers below `route`. Every layer is a zero-sized struct, so cloning
/// the stack per request costs nothing (a boxed service would allocate).
type Stack = Step<Step<Step<Forward>>>;

impl Outbound {
    /// Builds the outbound stack over the (swappable) mesh state.
    pub fn new(state: Arc<ArcSwap<MeshState>>, observer: Observer) -> Self {
        // Built innermost first: a request meets these bottom to top.
        let stack = Forward; // balancer pick, per-try timeout, outlier detection
        let stack = Step::new(retry::run, stack); // budget, backoff, replay buffer
        let stack = Step::new(limit::run, stack); // per-service in-flight + pending limits
        let stack = Step::new(timeout::run, stack); // whole request: queue + all tries
        Self {
            state,
            stack,
            observer,
        }
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
        request.extensions_mut().insert(target);
        let response = match self.stack.clone().oneshot(request).await {
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
