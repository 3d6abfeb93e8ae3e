//! The proxy-facing API (contract in `tether_api::control`):
//! `GET /v1/snapshot/<service>?version=N&wait=30s` (long-poll),
//! `POST /v1/report`, `POST /v1/stats`, `GET|POST /v1/rollouts`,
//! `POST /v1/certificate` (with a CA), `GET /v1/status`,
//! `GET /v1/topology` and the topology page `/ui` ([`ui`]),
//! `/metrics`, `/live`, `/ready`.
//!
//! With a CA the API is served over TLS: the caller's client certificate
//! ([`caller::Caller`]) decides which service's snapshot it may read and
//! report for, and authenticates certificate renewals.

mod body;
mod caller;
mod certificate;
mod rollouts;
mod ui;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tether_api::{
    ProxyReport, ProxyStatus, StatusResponse, CERTIFICATE_PATH, PROXY_ID_HEADER, REPORT_PATH,
    SNAPSHOT_PATH_PREFIX, STATUS_PATH,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use self::body::Chunks;
pub use self::caller::Caller;
use self::caller::{accept, Accepted};
use crate::issuer::Issuer;
use crate::metrics::ControlMetrics;
use crate::snapshot::{Kind, Snapshots};

/// Longest a long-poll is held, whatever `wait` asks for.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Body of `503`s before the first snapshots exist.
const NOT_SYNCED: &str =
    "not ready: the catalog has not been read in full yet (is Consul reachable?); retry\n";
/// Pause after a failed accept (e.g. `EMFILE`), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Largest report body accepted.
const MAX_REPORT_BYTES: usize = 64 * 1024;

/// What the API serves from.
#[derive(Clone)]
pub struct Api {
    snapshots: Arc<Snapshots>,
    metrics: ControlMetrics,
    proxies: Arc<Mutex<BTreeMap<String, Tracked>>>,
    issuer: Option<Arc<Issuer>>,
    /// Rollouts and the proxies' statistics (`None`: not served).
    rollouts: Option<Arc<crate::rollout::Rollouts>>,
}

/// The peer address of the connection a request came on.
#[derive(Debug, Clone, Copy)]
struct Peer(std::net::SocketAddr);

#[derive(Clone)]
struct Tracked {
    report: ProxyReport,
    last_contact: u64,
    open_polls: u32,
}

type Rsp = Response<Chunks>;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Rsp {
    let mut response = Response::new(Chunks::from(body.into()));
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
            let mut response = Response::new(Chunks::from(Bytes::from(bytes)));
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

/// Reads a JSON body of at most `max` bytes; a `400` naming `what` was
/// expected otherwise.
async fn read_json<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
    max: usize,
    what: &str,
) -> Result<T, Rsp> {
    let body = Limited::new(request.into_body(), max)
        .collect()
        .await
        .map_err(|e| {
            text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body (at most {max} bytes): {e}\n"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| text(StatusCode::BAD_REQUEST, format!("expected {what}: {e}\n")))
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
            issuer: None,
            rollouts: None,
        }
    }

    /// Serves rollouts (`/v1/rollouts`) and takes proxies' statistics
    /// (`POST /v1/stats`) into `rollouts`' store.
    pub fn with_rollouts(mut self, rollouts: Arc<crate::rollout::Rollouts>) -> Self {
        self.rollouts = Some(rollouts);
        self
    }

    /// Signs proxies' certificates with `issuer` (`POST /v1/certificate`).
    pub fn with_issuer(mut self, issuer: Arc<Issuer>) -> Self {
        self.issuer = Some(issuer);
        self
    }

    /// Serves `listener` until the future is dropped; over TLS when `tls`
    /// is set (client certificates optional, verified when presented).
    pub async fn serve(self, listener: TcpListener, tls: Option<TlsAcceptor>) {
        self.accept_loop(listener, Some(tls)).await;
    }

    /// Serves the plaintext admin listener: `/live`, `/ready`, `/metrics`,
    /// `/v1/status`, `/v1/rollouts`, `/v1/topology` and `/ui` only, for
    /// probes, Prometheus and operators (the TLS API's
    /// certificate carries a SPIFFE ID, not a DNS name a scraper could check).
    pub async fn serve_admin(self, listener: TcpListener) {
        self.accept_loop(listener, None).await;
    }

    /// `api`: `Some(tls)` for the API (TLS when set), `None` for admin.
    async fn accept_loop(self, listener: TcpListener, api: Option<Option<TlsAcceptor>>) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // E.g. out of file descriptors: pause instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let server = self.clone();
            let api = api.clone();
            tokio::spawn(async move {
                let accepted = match &api {
                    Some(tls) => accept(stream, tls.as_ref(), &server.metrics).await,
                    None => Some((Accepted::Plain(stream), Caller::Admin)),
                };
                let Some((connection, caller)) = accepted else {
                    return;
                };
                match connection {
                    Accepted::Plain(io) => server.serve_connection(io, caller, peer).await,
                    Accepted::Tls(io) => server.serve_connection(*io, caller, peer).await,
                }
            });
        }
    }

    async fn serve_connection<S>(self, io: S, caller: Caller, peer: std::net::SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(Peer(peer));
            let api = self.clone();
            let caller = caller.clone();
            async move { Ok::<_, Infallible>(api.handle(request, &caller).await) }
        });
        let _ = auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(io), service)
            .await;
    }

    async fn handle(&self, request: Request<Incoming>, caller: &Caller) -> Rsp {
        let path = request.uri().path().to_owned();
        let read_only = request.method() == Method::GET
            && (matches!(path.as_str(), "/live" | "/ready" | "/metrics")
                || path == STATUS_PATH
                || path == tether_api::ROLLOUTS_PATH
                || ui::serves(&path));
        if matches!(caller, Caller::Admin) && !read_only {
            return text(
                StatusCode::NOT_FOUND,
                "the admin listener serves GET /live /ready /metrics /v1/status /v1/rollouts /v1/topology /ui only\n",
            );
        }
        match (request.method(), path.as_str()) {
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") if self.snapshots.is_ready() => {
                text(StatusCode::OK, "ready\n")
            }
            (&Method::GET, "/ready") => text(StatusCode::SERVICE_UNAVAILABLE, NOT_SYNCED),
            (&Method::GET, "/metrics") => text(StatusCode::OK, self.metrics.render()),
            (&Method::GET, STATUS_PATH) => json(&self.status()),
            (&Method::GET, p) if ui::serves(p) => self.ui(p, request.uri().query()),
            (&Method::POST, REPORT_PATH) => self.report(request, caller).await,
            (&Method::POST, CERTIFICATE_PATH) => self.certificate(request, caller).await,
            (&Method::POST, tether_api::STATS_PATH) => self.stats(request, caller).await,
            (_, p) if p == tether_api::ROLLOUTS_PATH || p.starts_with("/v1/rollouts/") => {
                self.rollouts(request).await
            }
            (&Method::GET, p) if p.starts_with(SNAPSHOT_PATH_PREFIX) => {
                let service = &p[SNAPSHOT_PATH_PREFIX.len()..];
                if let Err(refusal) = caller.may_act_for(service) {
                    return self.unauthorized("snapshot", refusal);
                }
                let proxy = request
                    .headers()
                    .get(PROXY_ID_HEADER)
                    .and_then(|v| v.to_str().ok());
                self.snapshot(service, request.uri().query(), proxy).await
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "unknown path; see /v1/snapshot/<service>, /v1/report, /v1/stats, /v1/rollouts, /v1/certificate, /v1/status, /v1/topology, /ui, /metrics\n",
            ),
        }
    }

    fn unauthorized(&self, path: &'static str, (status, message): (StatusCode, String)) -> Rsp {
        self.metrics
            .api_unauthorized
            .with_label_values(&[path])
            .inc();
        tracing::warn!(path, %status, message = message.trim_end(), "API request refused");
        text(status, message)
    }

    /// The long-poll: answers at once when the current version is newer
    /// than `version=` ([`Snapshots::newer_than`]: higher, or the proxy's is
    /// from a clock far ahead), else when it changes, else `304` once
    /// `wait=` runs out. The proxy's version advances this replica's
    /// version clock ([`Snapshots::observe`]), so versions stay ordered
    /// across replicas. With `delta=<replica>` the answer is a
    /// `tether_api::SnapshotUpdate`: a delta from `version=` when this
    /// replica made it and remembers it ([`Snapshots::update_wire`]), else
    /// the full snapshot.
    async fn snapshot(&self, service: &str, params: Option<&str>, proxy: Option<&str>) -> Rsp {
        let have: u64 = query(params, "version")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let wait = query(params, "wait")
            .and_then(|w| humantime::parse_duration(w).ok())
            .unwrap_or(Duration::ZERO)
            .min(MAX_WAIT);
        // `delta=<replica>`: the proxy merges deltas (`tether_api::SnapshotUpdate`).
        let delta_from: Option<u64> =
            query(params, tether_api::DELTA_QUERY).and_then(|r| r.parse().ok());
        if !self.snapshots.is_ready() {
            return text(StatusCode::SERVICE_UNAVAILABLE, NOT_SYNCED);
        }
        let _poll = proxy.map(|id| self.poll_opened(id, service));
        self.snapshots.observe(have);
        if let Some(names) = query(params, "want") {
            self.snapshots.wants().add(service, names);
        }
        let mut changed = self.snapshots.subscribe_service(service);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let Some(current) = self.snapshots.get(service) else {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("unknown service `{service}`: not in mesh.yaml nor in the catalog\n"),
                );
            };
            if Snapshots::newer_than(current.version(), have) {
                self.metrics.snapshots_served.inc();
                let (kind, wire) = match delta_from {
                    Some(replica) => self.snapshots.update_wire(&current, have, replica),
                    None => (Kind::Full, current.legacy_wire()),
                };
                let bytes: usize = wire.iter().map(|chunk| chunk.len()).sum();
                let kind = [kind.as_str()];
                self.metrics
                    .snapshot_responses
                    .with_label_values(&kind)
                    .inc();
                self.metrics
                    .snapshot_bytes
                    .with_label_values(&kind)
                    .inc_by(bytes as u64);
                let mut response = Response::new(Chunks::new(wire));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                return response;
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

    async fn report(&self, request: Request<Incoming>, caller: &Caller) -> Rsp {
        let report: ProxyReport = match read_json(request, MAX_REPORT_BYTES, "a report").await {
            Ok(report) => report,
            Err(refusal) => return refusal,
        };
        if let Err(refusal) = caller.may_act_for(&report.service) {
            return self.unauthorized("report", refusal);
        }
        self.record_report(report)
    }

    /// Records a report body (tests; the API goes through `report`).
    #[cfg(test)]
    fn record(&self, body: &[u8]) -> Rsp {
        match serde_json::from_slice(body) {
            Ok(report) => self.record_report(report),
            Err(e) => text(StatusCode::BAD_REQUEST, format!("not a report: {e}\n")),
        }
    }

    /// Records a report; a refused version is kept apart from the applied
    /// one, so it can never be shown as applied.
    fn record_report(&self, report: ProxyReport) -> Rsp {
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

#[cfg(test)]
mod tests;
