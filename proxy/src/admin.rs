//! The admin server: `/live`, `/ready`, `/metrics`, `/config`, `/endpoints`,
//! `/app-health`, `/tap` (live requests, `crate::tap`) and `POST /shutdown`. Loopback by default; it reveals
//! topology and lets anyone who reaches it stop the proxy, so never expose
//! it publicly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Method, Response, StatusCode};

use crate::body::{Body, BoxBody, Req, Rsp};
use crate::discovery::Applier;
use crate::identity::MeshIdentity;
use crate::registration::AppProbe;
use crate::request_metrics::RequestMetrics;
use crate::shutdown::Shutdown;
use crate::state::MeshState;
use crate::tap::{Tap, TapFilter};

/// What the admin endpoints report on.
#[derive(Clone)]
pub struct Admin {
    state: Arc<ArcSwap<MeshState>>,
    metrics: RequestMetrics,
    applier: Applier,
    identity: Option<Arc<MeshIdentity>>,
    draining: Arc<AtomicBool>,
    app_probe: Option<AppProbe>,
    /// What `POST /shutdown` fires; without one it answers 404.
    shutdown: Option<Shutdown>,
    /// Live taps `GET /tap` opens; without one it answers 404.
    tap: Option<Tap>,
}

impl Admin {
    /// Admin over the proxy's state.
    pub fn new(
        state: Arc<ArcSwap<MeshState>>,
        metrics: RequestMetrics,
        applier: Applier,
        identity: Option<Arc<MeshIdentity>>,
        draining: Arc<AtomicBool>,
    ) -> Self {
        Self {
            state,
            metrics,
            applier,
            identity,
            draining,
            app_probe: None,
            shutdown: None,
            tap: None,
        }
    }

    /// Serves `/app-health` from `probe`.
    pub fn with_app_probe(mut self, probe: AppProbe) -> Self {
        self.app_probe = Some(probe);
        self
    }

    /// Lets `POST /shutdown` fire `shutdown` (a graceful drain, as SIGTERM).
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// Serves `GET /tap` from `tap` (the hub the observers publish to).
    pub fn with_tap(mut self, tap: Tap) -> Self {
        self.tap = Some(tap);
        self
    }

    /// Serves one admin request.
    pub async fn handle(&self, request: Req) -> Rsp {
        if request.uri().path() == "/shutdown" {
            return self.shutdown(request.method());
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "admin endpoints answer GET only\n",
            );
        }
        match request.uri().path() {
            "/live" => text(StatusCode::OK, "live\n"),
            "/ready" => self.ready(),
            "/metrics" => {
                let mut response = Response::new(Body::full(self.metrics.render()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            "/config" => self.config(),
            "/endpoints" => json(&self.endpoints()),
            "/app-health" => self.app_health().await,
            "/tap" => self.tap(request.uri().query().unwrap_or("")),
            _ => text(
                StatusCode::NOT_FOUND,
                "unknown admin path; try /live /ready /metrics /config /endpoints /app-health /tap /shutdown\n",
            ),
        }
    }

    /// `POST /shutdown`: starts the drain and answers at once; the drain
    /// itself takes up to the drain timeout.
    fn shutdown(&self, method: &Method) -> Rsp {
        let Some(shutdown) = &self.shutdown else {
            return text(StatusCode::NOT_FOUND, "shutdown is not available here\n");
        };
        if method != Method::POST {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "/shutdown answers POST only\n",
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        tracing::info!("POST /shutdown: stopping");
        shutdown.trigger("POST /shutdown");
        text(StatusCode::ACCEPTED, "shutting down: draining\n")
    }

    fn ready(&self) -> Rsp {
        if self.draining.load(Ordering::Acquire) {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining: shutting down\n")
        } else if !self.applier.loaded() {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no snapshot loaded yet\n",
            )
        } else if self.identity.as_ref().is_some_and(|i| !i.ready()) {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no valid mesh certificate (being issued, or expired; see the log)\n",
            )
        } else {
            text(StatusCode::OK, "ready\n")
        }
    }

    /// Probes the app now: 200 when healthy, 503 otherwise; the body says
    /// what was tried.
    async fn app_health(&self) -> Rsp {
        let Some(probe) = &self.app_probe else {
            return text(StatusCode::NOT_FOUND, "no app probe configured\n");
        };
        let health = probe.probe().await;
        let status = if health.healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let mut response = text(status, "");
        *response.body_mut() = Body::full(format!("{}\n", health.note));
        response
    }

    /// `GET /tap?service=&direction=&path_prefix=&headers=names&rate=`:
    /// sampled requests as newline-delimited JSON until the client leaves.
    fn tap(&self, query: &str) -> Rsp {
        let Some(tap) = &self.tap else {
            return text(StatusCode::NOT_FOUND, "tap is not available here\n");
        };
        let filter = match TapFilter::parse(query) {
            Ok(filter) => filter,
            Err(problem) => {
                let mut response = text(StatusCode::BAD_REQUEST, "");
                *response.body_mut() = Body::full(format!("{problem}\n"));
                return response;
            }
        };
        match tap.subscribe(filter) {
            Ok(stream) => {
                let mut response = Response::new(Body::Boxed(BoxBody::new(stream)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-ndjson"),
                );
                response
            }
            Err(error) => {
                let mut response = text(StatusCode::TOO_MANY_REQUESTS, "");
                *response.body_mut() = Body::full(format!("{error}\n"));
                response
            }
        }
    }

    /// The snapshot in force, plus the identity (never the key).
    fn config(&self) -> Rsp {
        let mut value = self.state.load().source.to_json();
        if let (Some(object), Some(identity)) = (value.as_object_mut(), &self.identity) {
            object.insert("identity".to_owned(), identity.describe());
        }
        json(&value)
    }

    fn endpoints(&self) -> serde_json::Value {
        let state = self.state.load();
        let services: serde_json::Map<String, serde_json::Value> = state
            .services
            .iter()
            .map(|(name, service)| {
                let endpoints: Vec<_> = service
                    .endpoints
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "address": e.address(),
                            "weight": e.weight(),
                            "in_flight": e.in_flight(),
                            "rtt_estimate_ms": e.rtt_estimate().as_secs_f64() * 1e3,
                            "ejected": e.is_ejected(),
                        })
                    })
                    .collect();
                (name.clone(), serde_json::json!({ "endpoints": endpoints }))
            })
            .collect();
        serde_json::json!({ "version": state.version(), "services": services })
    }
}

fn text(status: StatusCode, body: &'static str) -> Rsp {
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json<T: serde::Serialize>(value: &T) -> Rsp {
    match serde_json::to_vec_pretty(value) {
        Ok(bytes) => {
            let mut response = Response::new(Body::full(bytes));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode JSON\n"),
    }
}
