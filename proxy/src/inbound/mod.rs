//! The inbound path: requests from the mesh to the local app.
//!
//! ```text
//! accept (transport::server)   mTLS: verify the caller's chain, read its SPIFFE ID
//!   → authorize  caller identity, method, path against the snapshot's policy (state::AuthzPolicy)
//!   → rate limit the service's inbound limit, per caller or shared (crate::traffic)
//!   → limit      concurrency limit for the local app (resilience::hold)
//!   → send       to the app, over a pooled connection
//! ```
//!
//! An authorized upgrade request (`Upgrade: websocket`) skips the limit and
//! goes to the app on a connection of its own (`crate::upgrade`).
//!
//! When the app cannot be reached the answer is `502 tether-error:
//! app-connect`: nothing was processed, and a calling sidecar that
//! authenticated this one by mTLS retries it on another endpoint. An app's
//! own `502` claiming `app-connect` has that header removed. A gRPC call
//! gets its errors as gRPC errors (HTTP 200, `grpc-status`), `app-connect`
//! included, which a calling sidecar recognises the same way.

use std::sync::Arc;

use http::uri::Authority;

use crate::errors::{strip_app_connect, strip_grpc_app_connect, ProxyError};
use crate::hop::{from_upstream, to_upstream};
use arc_swap::ArcSwap;
use prometheus::IntCounter;

use crate::body::{Req, Rsp};
use crate::observe::Observer;
use crate::request_metrics::{RequestMetrics, ServiceMetrics};
use crate::resilience::{self, ConcurrencyLimiter};
use crate::state::MeshState;
use crate::transport::PoolFactory;
use crate::transport::{EndpointPool, Peer, PeerIdentity};
use crate::upgrade::Upgrades;

/// Settings of the inbound path.
#[derive(Clone)]
pub struct InboundSettings {
    /// The service this sidecar fronts (span and log label).
    pub service: String,
    /// The local app, `host:port`.
    pub app: Authority,
    /// Requests in flight to the app at once.
    pub max_requests: u32,
    /// Requests queued beyond `max_requests` before fast 503s.
    pub max_pending: u32,
    /// Relays HTTP/1.1 upgrades (metrics, idle timeout, drain).
    pub upgrades: Upgrades,
}

/// The inbound path, ready to handle requests from other sidecars.
#[derive(Clone)]
pub struct Inbound {
    inner: Arc<Inner>,
}

struct Inner {
    state: Arc<ArcSwap<MeshState>>,
    denied: IntCounter,
    service: String,
    observer: Observer,
    app: Authority,
    /// Connections to the app (its one endpoint).
    app_pool: Arc<EndpointPool>,
    limiter: ConcurrencyLimiter,
    metrics: ServiceMetrics,
    upgrades: Upgrades,
}

impl Inbound {
    /// The inbound path to the local app.
    pub fn new(
        settings: InboundSettings,
        client: PoolFactory,
        metrics: ServiceMetrics,
        observer: Observer,
        state: Arc<ArcSwap<MeshState>>,
        all_metrics: &RequestMetrics,
    ) -> Self {
        let denied = all_metrics
            .authz_denied
            .with_label_values(&[&settings.service]);
        let limiter = ConcurrencyLimiter::new(settings.max_requests, settings.max_pending);
        let inner = Inner {
            state,
            denied,
            service: settings.service,
            observer,
            app_pool: client.pool_for(&settings.app),
            app: settings.app,
            limiter,
            metrics,
            upgrades: settings.upgrades,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Handles one request from the mesh; errors become responses.
    pub async fn handle(&self, mut request: Req) -> Rsp {
        let inner = &self.inner;
        let peer = request
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|p| p.0.clone());
        let peer_text = peer.as_ref().map(|p| p.text.as_str());
        let observation = inner
            .observer
            .begin(&mut request, &inner.service, peer_text);
        let grpc = observation.is_grpc();
        let tapped = observation.is_tapped();
        let checked = if crate::authority::has_duplicate_host(&request) {
            Err(ProxyError::BadRequest("more than one Host header".into()))
        } else {
            self.authorize(peer.as_deref(), &request)
        };
        let result = match checked {
            // Authorized like any request; then relayed, outside the
            // app's request limit (an upgraded stream is long lived).
            Ok(()) if crate::upgrade::requested(&request) => {
                Box::pin(self.upgrade_to_app(request)).await
            }
            Ok(()) => self.send_to_app(request, grpc).await,
            Err(error) => Err(error),
        };
        let mut response = match result {
            Ok(mut response) => {
                if tapped {
                    let upstream = crate::tap::TapUpstream(inner.app.to_string());
                    response.extensions_mut().insert(upstream);
                }
                response
            }
            Err(error) => {
                tracing::debug!(%error, "inbound request failed");
                error.into_response_for(grpc)
            }
        };
        inner.observer.end(
            observation,
            &mut response,
            &inner.metrics,
            &inner.service,
            peer_text,
        );
        response
    }

    /// Authorization, then the service's rate limit (one `Option` check
    /// each when unset).
    fn authorize(&self, peer: Option<&Peer>, request: &Req) -> Result<(), ProxyError> {
        let state = self.inner.state.load();
        if let Some(policy) = &state.authorization {
            if !policy.allows(peer.map(|p| &p.id), request.method(), request.uri().path()) {
                self.inner.denied.inc();
                return Err(ProxyError::Unauthorized {
                    caller: peer.map_or_else(|| "unauthenticated".to_owned(), |p| p.text.clone()),
                    service: self.inner.service.clone(),
                });
            }
        }
        if let Some(limit) = &state.inbound_rate_limit {
            // Per caller: the service name of its SPIFFE ID.
            let caller = peer.map(|p| p.id.service_name());
            if let Err(refused) = limit.admit(caller) {
                return Err(ProxyError::RateLimited {
                    service: self.inner.service.clone(),
                    direction: "inbound",
                    retry_after: refused.retry_after_secs(),
                });
            }
        }
        Ok(())
    }

    async fn upgrade_to_app(&self, request: Req) -> Result<Rsp, ProxyError> {
        let inner = &self.inner;
        let app = &inner.app;
        let connection =
            inner
                .app_pool
                .connect_upgrade()
                .await
                .map_err(|source| ProxyError::AppConnect {
                    endpoint: app.to_string(),
                    source,
                })?;
        let forwarded = inner.upgrades.forward(
            crate::request_metrics::Direction::Inbound,
            &inner.service,
            connection,
            app,
            request,
            |source| ProxyError::UpstreamReset {
                endpoint: app.to_string(),
                source,
            },
        );
        let mut response = forwarded.await?;
        strip_app_connect(&mut response);
        Ok(response)
    }

    async fn send_to_app(&self, request: Req, grpc: bool) -> Result<Rsp, ProxyError> {
        let inner = &self.inner;
        resilience::hold(&inner.limiter, "local app", || async move {
            let request = to_upstream(request, &inner.app, inner.app_pool.is_http2())?;
            match inner.app_pool.send(request).await {
                Ok(mut response) => {
                    // Only this sidecar may say its app was unreachable.
                    if grpc {
                        strip_grpc_app_connect(&mut response);
                    } else {
                        strip_app_connect(&mut response);
                    }
                    Ok(from_upstream(response))
                }
                // Nothing reached the app: the calling sidecar (when it
                // authenticated us by mTLS) retries it elsewhere.
                Err(source) if source.is_connect() => Err(ProxyError::AppConnect {
                    endpoint: inner.app.to_string(),
                    source,
                }),
                Err(source) => Err(ProxyError::UpstreamReset {
                    endpoint: inner.app.to_string(),
                    source,
                }),
            }
        })
        .await
    }
}
