//! The outbound path: the local app's requests out to the mesh.
//!
//! ```text
//! accept (transport::server: HTTP/1.1 or h2c, header limits)
//!   → route     authority → service; route rules; traffic split  (route.rs)
//!   → traffic   injected faults, this caller's rate limit    (crate::traffic)
//!   → timeout   whole request, over queue and all tries           (timeout.rs)
//!   → limit     per-service max_requests + max_pending            (resilience::hold)
//!   → retry     budget, backoff, bounded replay buffer            (retry.rs)
//!   → try       balancer pick, per-try timeout, outlier record    (endpoint.rs)
//!   → pool      pooled connection to the endpoint                 (transport::pool)
//! ```
//!
//! An upgrade request (`Upgrade: websocket`, hyper flagged it) takes
//! another way after `route`: upgrade.rs, then `crate::upgrade`.
//!
//! A captured request (transparent mode: it carries an
//! [`OriginalDst`]) whose authority is no mesh service is passed through
//! to that destination or refused, as `outbound_policy` says
//! (passthrough.rs).
//!
//! `route` runs in [`Outbound::handle`], which also records metrics and turns
//! errors into responses. The layers below it are plain async functions,
//! each in its own file, composed in [`serve`] outermost first: one future
//! per request, no boxed future per layer (measured: boxing and moving
//! those futures cost ~13 % of the instructions of a request).

mod endpoint;
pub mod mirror;
mod passthrough;
mod retry;
pub(crate) mod route;
mod target;
mod timeout;
mod upgrade;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::body::{Req, Rsp};
use crate::discovery::OnDemand;
use crate::errors::ProxyError;
use crate::observe::Observer;
use crate::original_dst::OriginalDst;
use crate::request_metrics::UNKNOWN_SERVICE;
use crate::resilience;
use crate::state::{MeshState, OutboundPolicy};
use crate::traffic::Verdict;
use crate::transport::ListenerMetrics;
use crate::upgrade::Upgrades;

pub use passthrough::Passthrough;
pub use target::Target;

/// The outbound path, ready to handle requests from the local app.
#[derive(Clone)]
pub struct Outbound {
    state: Arc<ArcSwap<MeshState>>,
    observer: Observer,
    /// Captured requests to destinations outside the mesh; `None`: not
    /// handled (every unknown authority is refused, as without capture).
    passthrough: Option<Arc<Passthrough>>,
    /// Relays HTTP/1.1 upgrades (`crate::upgrade`).
    upgrades: Upgrades,
    /// Waits for a service the snapshot does not hold yet (with a control
    /// plane; `None`: an unknown service is answered at once).
    on_demand: Option<Arc<OnDemand>>,
}

impl Outbound {
    /// Builds the outbound stack over the (swappable) mesh state.
    pub fn new(state: Arc<ArcSwap<MeshState>>, observer: Observer) -> Self {
        Self {
            state,
            observer,
            passthrough: None,
            upgrades: Upgrades::default(),
            on_demand: None,
        }
    }

    /// Waits for services the snapshot lacks with on-demand discovery.
    pub fn with_on_demand(mut self, on_demand: Option<Arc<OnDemand>>) -> Self {
        self.on_demand = on_demand;
        self
    }

    /// Relays HTTP/1.1 upgrades with `upgrades` (metrics, idle timeout, drain).
    pub fn with_upgrades(mut self, upgrades: Upgrades) -> Self {
        self.upgrades = upgrades;
        self
    }

    /// Handles captured requests whose authority is no mesh service as
    /// `outbound_policy` says, counted in `metrics`.
    pub fn with_passthrough(mut self, metrics: &ListenerMetrics) -> Self {
        self.passthrough = Some(Arc::new(Passthrough::new(metrics)));
        self
    }

    /// Handles one request from the app; never fails: errors become responses
    /// whose [`Outcome`](crate::errors::Outcome) the observer counts and
    /// renders as `tether-error`.
    ///
    /// Takes the `Arc` itself, so that the listener's handler returns this
    /// future as it is: a wrapping `async move { outbound.handle(r).await }`
    /// (needed to own the `Arc` with a `&self` method) moved the whole
    /// request future once more on its first poll (~400 instructions per
    /// request, measured).
    pub async fn handle(self: Arc<Self>, mut request: Req) -> Rsp {
        let state = self.state.load();
        let target = match route::resolve(&state, &request) {
            Ok(target) => target,
            Err(error) => {
                if self.on_demand.is_some() && self.may_discover(&request, &error) {
                    drop(state);
                    // Boxed: rare, and its future would enlarge every request's.
                    return Box::pin(self.discover_then_handle(error, request)).await;
                }
                tracing::debug!(%error, "not routed");
                let observation = self.observer.begin(&mut request, UNKNOWN_SERVICE, None);
                let grpc = observation.is_grpc();
                let metrics = state.unknown_metrics.clone();
                let original = request.extensions().get::<OriginalDst>().copied();
                let passthrough = match (&error, original, &self.passthrough) {
                    (ProxyError::UnknownService(_), Some(OriginalDst(original)), Some(p)) => {
                        match state.outbound_policy {
                            OutboundPolicy::AllowAny => Some((Arc::clone(p), original)),
                            OutboundPolicy::RegistryOnly => {
                                p.refused.inc();
                                None
                            }
                        }
                    }
                    _ => None,
                };
                drop(state);
                let mut response = match passthrough {
                    // Boxed: rare, and its future would enlarge every request's.
                    Some((p, original)) => Box::pin(p.send(request, original))
                        .await
                        .unwrap_or_else(|e| e.into_response_for(grpc)),
                    None => error.into_response_for(grpc),
                };
                self.observer
                    .end(observation, &mut response, &metrics, UNKNOWN_SERVICE, None);
                return response;
            }
        };
        drop(state);
        let mut target = target;
        let service = Arc::clone(&target.service);
        let observation = self.observer.begin(&mut request, &service.name, None);
        target.started = Some(observation.started());
        target.tapped = observation.is_tapped();
        if observation.is_grpc() {
            target.grpc_call(request.headers());
        }
        let grpc = target.grpc;
        // Faults and this caller's rate limit: one `Option` check for a
        // service that configures neither.
        let verdict = service
            .traffic
            .as_ref()
            .map(|t| t.check(&service.name, target.route, request.headers()));
        let result = match verdict {
            Some(Verdict {
                refuse: Some(error),
                delay: None,
            }) => Err(error),
            Some(Verdict {
                refuse: Some(error),
                delay: Some(_),
            }) if crate::upgrade::requested(&request) => Err(error),
            // Boxed: rare, and its future would enlarge every request's.
            _ if crate::upgrade::requested(&request) => {
                Box::pin(upgrade::send(&target, &self.upgrades, request)).await
            }
            // Boxed: only requests of services with faults get here.
            Some(Verdict {
                delay: Some(delay),
                refuse,
            }) => Box::pin(serve_delayed(&target, request, delay, refuse)).await,
            _ => {
                let mut slot = Some(request);
                // Awaited pinned where it is made: `.await` would move it.
                let serving = std::pin::pin!(serve(&target, &mut slot));
                serving.await
            }
        };
        // A failure for the upstream statistics: a proxy error or a 5xx.
        let failed = result
            .as_ref()
            .map_or(true, |r| r.status().is_server_error());
        let mut response = result.unwrap_or_else(|e| e.into_response_for(grpc));
        let elapsed = self.observer.end(
            observation,
            &mut response,
            &service.metrics,
            &service.name,
            None,
        );
        if let Some(stats) = target.endpoints.stats() {
            stats.record(failed, elapsed);
        }
        response
    }
}

/// Marks a request on-demand discovery was tried for: routed again, it is
/// answered as the snapshot then says, without another wait.
#[derive(Clone, Copy)]
struct DiscoveryTried;

impl Outbound {
    /// Whether a request for a service the snapshot lacks may wait for
    /// on-demand discovery: the routing error is an unknown service, the
    /// snapshot holds only some services, discovery was not tried for this
    /// request yet, and the request is an explicit one (the app named a
    /// mesh service) or a captured one the policy would refuse anyway
    /// (`registry-only`); under `allow-any` a captured request for an
    /// unknown name goes straight out to its original destination.
    fn may_discover(&self, request: &Req, error: &ProxyError) -> bool {
        let state = self.state.load();
        matches!(error, ProxyError::UnknownService(_))
            && state.partial
            && request.extensions().get::<DiscoveryTried>().is_none()
            && (request.extensions().get::<OriginalDst>().is_none()
                || state.outbound_policy == OutboundPolicy::RegistryOnly)
    }

    /// Asks the control plane for the service and handles `request` again
    /// with whatever snapshot is in force then.
    async fn discover_then_handle(self: Arc<Self>, error: ProxyError, mut request: Req) -> Rsp {
        if let (ProxyError::UnknownService(name), Some(on_demand)) = (&error, &self.on_demand) {
            on_demand.discover(name, &self.state).await;
        }
        request.extensions_mut().insert(DiscoveryTried);
        self.handle(request).await
    }
}

/// The layers below `route`, outermost first; each is a plain async fn.
///
/// The request stays in `slot` until the pool takes it for a connection
/// (each try's request goes back into it): passed by value, it was stored
/// in the future of every layer it went through (an async fn's arguments
/// stay in its future), and each outer future, made larger by it, was
/// moved once more per request.
fn serve<'a>(
    target: &'a Target,
    slot: &'a mut Option<Req>,
) -> impl std::future::Future<Output = Result<Rsp, ProxyError>> + 'a {
    timeout::within(target.timeout, || {
        // whole request: queue + all tries
        resilience::hold(&target.service.limiter, &target.service.name, || {
            // per-service in-flight + pending limits, then
            retry::retry(target, slot) // budget, backoff, replay buffer; each try:
        }) // endpoint::send_one_try: balancer pick, per-try timeout, outlier detection
    })
}

/// [`serve`] after an injected delay, which counts within the request's
/// timeout (a delay longer than the timeout answers `timeout`); then the
/// injected abort, if the request drew one too.
async fn serve_delayed(
    target: &Target,
    request: Req,
    delay: std::time::Duration,
    abort: Option<ProxyError>,
) -> Result<Rsp, ProxyError> {
    let delayed = async move {
        tokio::time::sleep(delay).await;
        if let Some(error) = abort {
            return Err(error);
        }
        let mut slot = Some(request);
        resilience::hold(&target.service.limiter, &target.service.name, || {
            retry::retry(target, &mut slot)
        })
        .await
    };
    timeout::within(target.timeout, || delayed).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request_metrics::Direction;

    /// An outbound path over an empty state with `policy`, its passthrough
    /// counters, and a server outside the mesh that answers one request.
    async fn captured(
        policy: OutboundPolicy,
    ) -> (Arc<Outbound>, ListenerMetrics, std::net::SocketAddr) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let metrics = crate::discovery::SnapshotMetrics::for_tests();
        let mut state = MeshState::empty(crate::discovery::build::unknown_metrics(&metrics));
        state.outbound_policy = policy;
        let telemetry = crate::telemetry::Telemetry::new(
            crate::telemetry::Identity {
                service: "web".into(),
                instance: "web-1".into(),
            },
            crate::telemetry::ExportCounters::register(metrics.requests().registry()),
        );
        let listeners = ListenerMetrics::register(&prometheus::Registry::new());
        let outbound = Outbound::new(
            Arc::new(ArcSwap::from_pointee(state)),
            Observer::new(telemetry, None, Direction::Outbound),
        )
        .with_passthrough(&listeners);
        let outside = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = outside.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = outside.accept().await.unwrap();
            let mut head = vec![0u8; 1024];
            let n = stream.read(&mut head).await.unwrap();
            let host = String::from_utf8_lossy(&head[..n]).contains("host: example.com");
            let answer =
                format!("HTTP/1.1 200 OK\r\nx-outside: {host}\r\ncontent-length: 0\r\n\r\n");
            stream.write_all(answer.as_bytes()).await.unwrap();
        });
        (Arc::new(outbound), listeners, addr)
    }

    fn request_to(host: &str, original: Option<std::net::SocketAddr>) -> Req {
        let mut request = http::Request::builder()
            .uri("/")
            .header(http::header::HOST, host)
            .body(crate::body::Body::Empty)
            .unwrap();
        if let Some(original) = original {
            request.extensions_mut().insert(OriginalDst(original));
        }
        request
    }

    #[tokio::test]
    async fn a_captured_request_outside_the_mesh_passes_through_with_its_host() {
        let (outbound, metrics, outside) = captured(OutboundPolicy::AllowAny).await;
        let response = outbound
            .handle(request_to("example.com", Some(outside)))
            .await;
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(response.headers()["x-outside"], "true");
        assert_eq!(metrics.passthrough.with_label_values(&["http"]).get(), 1);
    }

    #[tokio::test]
    async fn registry_only_and_explicit_requests_get_unknown_service() {
        let (outbound, metrics, outside) = captured(OutboundPolicy::RegistryOnly).await;
        let response = outbound
            .handle(request_to("example.com", Some(outside)))
            .await;
        assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            metrics.outbound_refused.with_label_values(&["http"]).get(),
            1
        );
        // Not captured (no original destination): refused as always, whatever the policy.
        let (outbound, metrics, _) = captured(OutboundPolicy::AllowAny).await;
        let response = Arc::clone(&outbound)
            .handle(request_to("example.com", None))
            .await;
        assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(metrics.passthrough.with_label_values(&["http"]).get(), 0);
    }

    /// The request's future is moved a few times (into hyper's dispatcher,
    /// among others): every KiB it grows costs every request. Wrapping a
    /// future in an `async fn`/`async` block that awaits it doubles it; this
    /// catches that (it was 11.5 KiB before the layers took closures, 5.0 KiB
    /// before the request waited in one slot, 3.7 KiB since; debug build;
    /// on-demand discovery's boxed await adds ~170 bytes).
    #[test]
    fn the_request_future_stays_small() {
        let metrics = crate::discovery::SnapshotMetrics::for_tests();
        let state = Arc::new(ArcSwap::from_pointee(MeshState::empty(
            crate::discovery::build::unknown_metrics(&metrics),
        )));
        let telemetry = crate::telemetry::Telemetry::new(
            crate::telemetry::Identity {
                service: "web".into(),
                instance: "web-1".into(),
            },
            crate::telemetry::ExportCounters::register(metrics.requests().registry()),
        );
        let outbound = Arc::new(Outbound::new(
            state,
            Observer::new(telemetry, None, Direction::Outbound),
        ));
        let future = outbound.handle(http::Request::new(crate::body::Body::Empty));
        let size = std::mem::size_of_val(&future);
        assert!(
            size <= 5 * 1024 + 256,
            "the outbound request future is {size} bytes"
        );
    }
}
