//! The proxy-facing API (contract in `tether_api::control`):
//! `GET /v1/snapshot/<service>?version=N&wait=30s` (long-poll),
//! `POST /v1/report`, `GET /v1/status`, `/metrics`, `/live`, `/ready`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tether_api::{ProxyReport, ProxyStatus, StatusResponse, PROXY_ID_HEADER, SNAPSHOT_PATH_PREFIX};
use tokio::net::TcpListener;

use crate::metrics::ControlMetrics;
use crate::snapshot::Snapshots;

/// Longest a long-poll is held, whatever `wait` asks for.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Largest report body accepted.
const MAX_REPORT_BYTES: usize = 64 * 1024;

/// What the API serves from.
#[derive(Clone)]
pub struct Api {
    snapshots: Arc<Snapshots>,
    metrics: ControlMetrics,
    proxies: Arc<Mutex<BTreeMap<String, Tracked>>>,
}

#[derive(Clone)]
struct Tracked {
    report: ProxyReport,
    last_contact: u64,
    open_polls: u32,
}

type Rsp = Response<Full<Bytes>>;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Rsp {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json<T: serde::Serialize>(value: &T) -> Rsp {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut response = Response::new(Full::new(Bytes::from(bytes)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode: {e}\n"),
        ),
    }
}

fn query<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

impl Api {
    /// The API over the snapshot store.
    pub fn new(snapshots: Arc<Snapshots>, metrics: ControlMetrics) -> Self {
        Self {
            snapshots,
            metrics,
            proxies: Arc::default(),
        }
    }

    /// Serves `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let api = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(api.handle(request).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Rsp {
        let path = request.uri().path().to_owned();
        match (request.method(), path.as_str()) {
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") => text(StatusCode::OK, "ready\n"),
            (&Method::GET, "/metrics") => text(StatusCode::OK, self.metrics.render()),
            (&Method::GET, "/v1/status") => json(&self.status()),
            (&Method::POST, "/v1/report") => self.report(request).await,
            (&Method::GET, p) if p.starts_with(SNAPSHOT_PATH_PREFIX) => {
                let service = p[SNAPSHOT_PATH_PREFIX.len()..].to_owned();
                self.snapshot(&service, &request).await
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "unknown path; see /v1/snapshot/<service>, /v1/report, /v1/status, /metrics\n",
            ),
        }
    }

    async fn snapshot(&self, service: &str, request: &Request<Incoming>) -> Rsp {
        let have: u64 = query(request.uri().query(), "version")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let wait = query(request.uri().query(), "wait")
            .and_then(|w| humantime::parse_duration(w).ok())
            .unwrap_or(Duration::ZERO)
            .min(MAX_WAIT);
        let proxy = request
            .headers()
            .get(PROXY_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let _poll = proxy.as_deref().map(|id| self.poll_opened(id, service));
        let mut changed = self.snapshots.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let Some(current) = self.snapshots.get(service) else {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("unknown service `{service}`: not in mesh.yaml nor in the catalog\n"),
                );
            };
            if current.version != have {
                self.metrics.snapshots_served.inc();
                return json(&*current);
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return text(StatusCode::NOT_MODIFIED, "");
            }
        }
    }

    fn poll_opened(&self, id: &str, service: &str) -> PollGuard {
        self.metrics.subscribers.inc();
        if let Ok(mut proxies) = self.proxies.lock() {
            let entry = proxies.entry(id.to_owned()).or_insert_with(|| Tracked {
                report: ProxyReport {
                    proxy_id: id.to_owned(),
                    service: service.to_owned(),
                    applied_version: 0,
                    rejected_version: None,
                    error: None,
                },
                last_contact: 0,
                open_polls: 0,
            });
            entry.last_contact = now();
            entry.open_polls += 1;
        }
        PollGuard {
            api: self.clone(),
            id: id.to_owned(),
        }
    }

    async fn report(&self, request: Request<Incoming>) -> Rsp {
        let body = match Limited::new(request.into_body(), MAX_REPORT_BYTES)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read report: {e}\n"),
                )
            }
        };
        let report: ProxyReport = match serde_json::from_slice(&body) {
            Ok(report) => report,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("not a report: {e}\n")),
        };
        if let Some(rejected) = report.rejected_version {
            self.metrics.proxy_rejections.inc();
            tracing::warn!(proxy = %report.proxy_id, service = %report.service, rejected, error = ?report.error, "a proxy refused a snapshot");
        }
        if let Ok(mut proxies) = self.proxies.lock() {
            let entry = proxies
                .entry(report.proxy_id.clone())
                .or_insert_with(|| Tracked {
                    report: report.clone(),
                    last_contact: 0,
                    open_polls: 0,
                });
            entry.report = report;
            entry.last_contact = now();
        }
        text(StatusCode::NO_CONTENT, "")
    }

    fn status(&self) -> StatusResponse {
        let proxies = self
            .proxies
            .lock()
            .map(|p| {
                p.values()
                    .map(|t| ProxyStatus {
                        report: t.report.clone(),
                        last_contact_unix: t.last_contact,
                        connected: t.open_polls > 0,
                    })
                    .collect()
            })
            .unwrap_or_default();
        StatusResponse {
            versions: self.snapshots.versions(),
            proxies,
        }
    }
}

/// Marks a long-poll closed when the request ends (answered or dropped).
struct PollGuard {
    api: Api,
    id: String,
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        self.api.metrics.subscribers.dec();
        if let Ok(mut proxies) = self.api.proxies.lock() {
            if let Some(entry) = proxies.get_mut(&self.id) {
                entry.open_polls = entry.open_polls.saturating_sub(1);
                entry.last_contact = now();
            }
        }
    }
}
