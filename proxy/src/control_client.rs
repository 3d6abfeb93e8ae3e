//! The typed client to the control plane: one method per call of the API
//! (`tether_api::control`), whose paths are the API's constants.
//!
//! `http://` is plaintext; `https://` is TLS 1.3 verified against the mesh
//! trust bundle, where the server must prove it is
//! `spiffe://<trust_domain>/service/tether-control`, and the proxy presents
//! its own mesh certificate once it holds one (the control plane serves a
//! service's snapshot only to that service's proxies). Requests go over the
//! same per-endpoint connection pool as the request path (HTTP/1.1), and
//! every answer is JSON, decoded with `serde_json`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use tether_api::{
    snapshot_delta_path, snapshot_path, CertificateRequest, CertificateResponse, ProxyReport,
    Snapshot, SnapshotUpdate, StatsReport, CERTIFICATE_PATH, PROXY_ID_HEADER, REPORT_PATH,
    STATS_PATH,
};
use tether_certs::{SpiffeId, CONTROL_PLANE_SERVICE};

use crate::body::Body;
use crate::identity::MeshIdentity;
use crate::transport::{ConnectionSettings, EndpointPool, PoolFactory, TlsTarget};

/// Connect timeout to the control plane: it may be across the network, but
/// a proxy that cannot connect within 2 s retries with backoff anyway.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the control-plane URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlClientError {
    /// Not `http://host:port` or `https://host:port` (or a comma-separated list of them).
    #[error("control-plane URL `{0}`: expected http://HOST:PORT or https://HOST:PORT, or several separated by commas")]
    Url(String),
    /// Some replicas `http://`, others `https://`.
    #[error("control-plane URLs `{0}`: every replica must be http:// or every one https://")]
    MixedSchemes(String),
    /// `https://` without a trust bundle to verify the server.
    #[error("control-plane URL `{0}` is https: pass --trust-bundle FILE (the mesh CA's ca.pem)")]
    NeedBundle(String),
    /// TLS settings could not be built.
    #[error("control-plane TLS: {0}")]
    Tls(#[source] tether_certs::Error),
}

/// Why one call to the control plane failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlCallError {
    /// No answer: connect, TLS, the connection broke, or the time ran out.
    #[error("request failed: {0}")]
    Transport(String),
    /// The control plane answered with an unexpected status.
    #[error("control plane answered {status}: {message}")]
    Status {
        /// The status.
        status: StatusCode,
        /// The answer's body, trimmed.
        message: String,
    },
    /// The answer is not the JSON document the API promises.
    #[error("the control plane's answer is not a valid {what}: {error}")]
    Decode {
        /// What was expected.
        what: &'static str,
        /// Where and why decoding failed.
        #[source]
        error: serde_json::Error,
    },
}

/// One control-plane replica: its address and its connection pool.
#[derive(Debug)]
struct Replica {
    authority: Authority,
    host: HeaderValue,
    pool: Arc<EndpointPool>,
}

/// A client to the control plane: one or several replicas serving the same
/// mesh. Calls go to the current replica; one that cannot be reached (no
/// connection, or `503` not ready) is passed over for the next within the
/// same call, and one whose answer breaks off (killed mid-poll) is passed
/// over for the next call. Each proxy starts at a random replica, so a
/// fleet spreads over them.
#[derive(Debug, Clone)]
pub struct ControlPlaneClient {
    replicas: Arc<[Replica]>,
    /// Index (modulo the number of replicas) of the replica calls go to.
    current: Arc<AtomicUsize>,
    tls: bool,
}

impl ControlPlaneClient {
    /// A client for `urls`: one URL, or several separated by commas (the
    /// replicas, all `http://` or all `https://`); `identity` is required
    /// for `https://`. A host name resolving to several addresses is also
    /// several replicas: each connect tries them in turn. Idle connections
    /// are kept `idle_timeout`.
    pub fn new(
        urls: &str,
        identity: Option<&MeshIdentity>,
        idle_timeout: Duration,
    ) -> Result<Self, ControlClientError> {
        let mut parsed = Vec::new();
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            parsed.push(parse_url(url)?);
        }
        let Some(&(tls, _)) = parsed.first() else {
            return Err(ControlClientError::Url(urls.to_owned()));
        };
        if parsed.iter().any(|(t, _)| *t != tls) {
            return Err(ControlClientError::MixedSchemes(urls.to_owned()));
        }
        let target = if tls {
            let identity =
                identity.ok_or_else(|| ControlClientError::NeedBundle(urls.to_owned()))?;
            Some(tls_target(identity)?)
        } else {
            None
        };
        let settings = ConnectionSettings {
            http2: false,
            connect_timeout: CONNECT_TIMEOUT,
            idle_timeout,
            expected_identity: None,
        };
        let factory = PoolFactory::with_tls(settings, target);
        let replicas: Vec<Replica> = parsed
            .into_iter()
            .map(|(_, authority)| Replica {
                host: HeaderValue::from_str(authority.as_str())
                    .unwrap_or_else(|_| HeaderValue::from_static("tether-control")),
                pool: factory.pool_for(&authority),
                authority,
            })
            .collect();
        let start = usize::from(rand::random::<u16>()) % replicas.len();
        Ok(Self {
            replicas: replicas.into(),
            current: Arc::new(AtomicUsize::new(start)),
            tls,
        })
    }

    /// Whether the control plane is reached over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// `host:port` of the replica calls currently go to.
    pub fn authority(&self) -> &Authority {
        &self.replica(self.current.load(Ordering::Relaxed)).authority
    }

    /// How many replicas this client knows.
    pub fn replicas(&self) -> usize {
        self.replicas.len()
    }

    fn replica(&self, index: usize) -> &Replica {
        // `replicas` is never empty (`new` refuses an empty list).
        &self.replicas[index % self.replicas.len()]
    }

    /// Moves calls off the replica at `index` to the next one, unless
    /// another call already did.
    fn pass_over(&self, index: usize) {
        if self.replicas.len() > 1 {
            let next = (index + 1) % self.replicas.len();
            if self
                .current
                .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                tracing::info!(
                    from = %self.replica(index).authority,
                    to = %self.replica(next).authority,
                    "switching control-plane replica"
                );
            }
        }
    }

    /// Long-polls for `service`'s snapshot: `Some` when the control plane's
    /// version differs from `current`, `None` when `wait` ran out first.
    /// The whole exchange is bounded by `wait` plus `grace`.
    ///
    /// `wanted`: services asked for on demand (comma-separated names).
    pub async fn snapshot(
        &self,
        service: &str,
        proxy_id: &str,
        current: u64,
        wait: Duration,
        grace: Duration,
        wanted: Option<&str>,
    ) -> Result<Option<Snapshot>, ControlCallError> {
        let path = snapshot_path(service, current, wait.as_secs());
        self.long_poll(path, proxy_id, wait + grace, wanted, "snapshot")
            .await
    }

    /// As [`Self::snapshot`], saying that this proxy merges deltas:
    /// `replica` is the replica that made the version `current` (from the
    /// last [`SnapshotUpdate`]; `0` asks for a full snapshot). The answer
    /// is a full snapshot or a delta from `current`.
    pub async fn snapshot_update(
        &self,
        service: &str,
        proxy_id: &str,
        (current, replica): (u64, u64),
        wait: Duration,
        grace: Duration,
        wanted: Option<&str>,
    ) -> Result<Option<SnapshotUpdate>, ControlCallError> {
        let path = snapshot_delta_path(service, current, wait.as_secs(), replica);
        self.long_poll(path, proxy_id, wait + grace, wanted, "snapshot update")
            .await
    }

    /// One long-poll at `path` (plus `&want=` names), bounded by
    /// `timeout`: the decoded answer, or `None` for `304`.
    async fn long_poll<T: DeserializeOwned>(
        &self,
        mut path: String,
        proxy_id: &str,
        timeout: Duration,
        wanted: Option<&str>,
        what: &'static str,
    ) -> Result<Option<T>, ControlCallError> {
        if let Some(names) = wanted {
            path.push_str("&want=");
            path.push_str(names);
        }
        let request = Request::get(path)
            .header(PROXY_ID_HEADER, proxy_id)
            .body(Bytes::new());
        let (status, body) = self.call(request, timeout).await?;
        match status {
            StatusCode::OK => decode(&body, what).map(Some),
            StatusCode::NOT_MODIFIED => Ok(None),
            status => Err(refused(status, &body)),
        }
    }

    /// Tells the control plane what this proxy applied or refused.
    pub async fn report(
        &self,
        report: &ProxyReport,
        timeout: Duration,
    ) -> Result<(), ControlCallError> {
        let (status, body) = self.post_json(REPORT_PATH, report, None, timeout).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(refused(status, &body))
        }
    }

    /// Posts this proxy's per-upstream statistics.
    pub async fn stats(
        &self,
        report: &StatsReport,
        timeout: Duration,
    ) -> Result<(), ControlCallError> {
        let (status, body) = self.post_json(STATS_PATH, report, None, timeout).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(refused(status, &body))
        }
    }

    /// Asks the control plane's CA to sign a CSR; `token` is the join token
    /// of a first issue (a renewal proves itself with the client
    /// certificate instead).
    pub async fn certificate(
        &self,
        request: &CertificateRequest,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<CertificateResponse, ControlCallError> {
        let (status, body) = self
            .post_json(CERTIFICATE_PATH, request, token, timeout)
            .await?;
        if status != StatusCode::OK {
            return Err(refused(status, &body));
        }
        decode(&body, "certificate response")
    }

    async fn post_json<T: serde::Serialize>(
        &self,
        path: &str,
        document: &T,
        bearer: Option<&str>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ControlCallError> {
        let body =
            serde_json::to_vec(document).map_err(|e| ControlCallError::Transport(e.to_string()))?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        self.call(request.body(Bytes::from(body)), timeout).await
    }

    /// Sends `request` (origin-form URI) and reads the whole answer, all
    /// within `timeout`: to the current replica, then (nothing having
    /// reached it, or it answering `503`) to each other replica in turn.
    async fn call(
        &self,
        request: http::Result<Request<Bytes>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ControlCallError> {
        let template = request.map_err(|e| ControlCallError::Transport(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + timeout;
        let first = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for attempt in 0..self.replicas.len() {
            let index = (first + attempt) % self.replicas.len();
            let replica = self.replica(index);
            let exchange = async {
                let response = replica
                    .pool
                    .send(copy(&template, &replica.host))
                    .await
                    .map_err(|e| (e.is_connect(), ControlCallError::Transport(error_chain(&e))))?;
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| {
                        let message = format!("the answer broke off: {e}");
                        (false, ControlCallError::Transport(message))
                    })?
                    .to_bytes();
                Ok((status, body))
            };
            let outcome = match tokio::time::timeout_at(deadline, exchange).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    let message = format!("no answer within {timeout:?}");
                    Err((false, ControlCallError::Transport(message)))
                }
            };
            match outcome {
                Ok((StatusCode::SERVICE_UNAVAILABLE, body)) if self.replicas.len() > 1 => {
                    self.pass_over(index);
                    last = Some(Ok((StatusCode::SERVICE_UNAVAILABLE, body)));
                }
                Ok(answer) => return Ok(answer),
                Err((unreached, error)) => {
                    self.pass_over(index);
                    if !unreached || tokio::time::Instant::now() >= deadline {
                        return Err(error);
                    }
                    last = Some(Err(error));
                }
            }
        }
        last.unwrap_or_else(|| {
            Err(ControlCallError::Transport(
                "no control-plane replica".into(),
            ))
        })
    }
}

/// A fresh request from `template` for one replica (bodies are small and
/// shared, `Bytes`).
fn copy(template: &Request<Bytes>, host: &HeaderValue) -> Request<Body> {
    let body = match template.body() {
        bytes if bytes.is_empty() => Body::Empty,
        bytes => Body::full(bytes.clone()),
    };
    let mut request = Request::new(body);
    *request.method_mut() = template.method().clone();
    *request.uri_mut() = template.uri().clone();
    *request.headers_mut() = template.headers().clone();
    request.headers_mut().insert(header::HOST, host.clone());
    request
}

/// `http(s)://host:port` → whether TLS, and the authority.
fn parse_url(url: &str) -> Result<(bool, Authority), ControlClientError> {
    let url = url.trim_end_matches('/');
    let bad = || ControlClientError::Url(url.to_owned());
    let (tls, rest) = match url.split_once("://") {
        Some(("http", rest)) => (false, rest),
        Some(("https", rest)) => (true, rest),
        _ => return Err(bad()),
    };
    let authority = rest.parse::<Authority>().map_err(|_| bad())?;
    if authority.port_u16().is_none() || authority.as_str() != rest {
        return Err(bad());
    }
    HeaderValue::from_str(authority.as_str()).map_err(|_| bad())?;
    Ok((tls, authority))
}

fn decode<T: DeserializeOwned>(body: &[u8], what: &'static str) -> Result<T, ControlCallError> {
    serde_json::from_slice(body).map_err(|error| ControlCallError::Decode { what, error })
}

fn refused(status: StatusCode, body: &[u8]) -> ControlCallError {
    ControlCallError::Status {
        status,
        message: String::from_utf8_lossy(body).trim().to_owned(),
    }
}

/// The error chain of a failed request, so a TLS refusal says why.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn tls_target(identity: &MeshIdentity) -> Result<TlsTarget, ControlClientError> {
    let expected = SpiffeId::service(identity.trust_domain(), CONTROL_PLANE_SERVICE)
        .map_err(ControlClientError::Tls)?;
    let shared = tether_certs::client_config(identity.store(), expected.clone())
        .map_err(ControlClientError::Tls)?;
    let mut config = (*shared).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsTarget {
        config: Arc::new(config),
        server_name: expected.server_name().map_err(ControlClientError::Tls)?,
        failures: identity.handshake_failures(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_a_scheme_a_host_and_a_port() {
        let idle = Duration::from_secs(1);
        for bad in [
            "127.0.0.1:15010",
            "ftp://x:1",
            "http://x",
            "http://x:1/path",
        ] {
            assert!(
                matches!(
                    ControlPlaneClient::new(bad, None, idle),
                    Err(ControlClientError::Url(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            ControlPlaneClient::new("https://127.0.0.1:15010", None, idle),
            Err(ControlClientError::NeedBundle(_))
        ));
        let plain = ControlPlaneClient::new("http://127.0.0.1:15010/", None, idle)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plain.authority().as_str(), "127.0.0.1:15010");
        assert!(!plain.is_tls());
    }

    /// A one-shot server on loopback answering `status` with `body`; hands
    /// back the request head it read.
    async fn answer_once(
        status: u16,
        body: &'static str,
    ) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let task = tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else {
                return String::new();
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
            String::from_utf8_lossy(&head).into_owned()
        });
        (format!("http://{addr}"), task)
    }

    #[tokio::test]
    async fn a_snapshot_is_polled_at_the_api_path_and_decoded_as_json() {
        let (url, server) = answer_once(200, r#"{"version":7,"services":{}}"#).await;
        let client = ControlPlaneClient::new(&url, None, Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("{e}"));
        let snapshot = client
            .snapshot(
                "web",
                "web-1",
                3,
                Duration::from_secs(30),
                Duration::from_secs(5),
                Some("billing,db"),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(snapshot.map(|s| s.version), Some(7));
        let head = server.await.unwrap_or_default().to_ascii_lowercase();
        assert!(
            head.starts_with("get /v1/snapshot/web?version=3&wait=30s&want=billing,db http/1.1"),
            "{head}"
        );
        assert!(head.contains("tether-proxy-id: web-1"), "{head}");
        assert!(
            head.contains(&format!("host: {}", client.authority())),
            "{head}"
        );
    }

    #[tokio::test]
    async fn not_modified_is_no_snapshot_and_yaml_is_not_json() {
        let (url, _server) = answer_once(304, "").await;
        let client = ControlPlaneClient::new(&url, None, Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("{e}"));
        let wait = Duration::from_secs(1);
        let polled = client.snapshot("web", "web-1", 3, wait, wait, None).await;
        assert!(matches!(polled, Ok(None)), "{polled:?}");

        let (url, _server) = answer_once(200, "version: 7\nservices: {}\n").await;
        let client = ControlPlaneClient::new(&url, None, Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("{e}"));
        let polled = client.snapshot("web", "web-1", 3, wait, wait, None).await;
        assert!(
            matches!(polled, Err(ControlCallError::Decode { .. })),
            "{polled:?}"
        );
    }

    #[tokio::test]
    async fn a_refused_report_carries_the_status_and_message() {
        let (url, server) = answer_once(403, "not your service\n").await;
        let client = ControlPlaneClient::new(&url, None, Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("{e}"));
        let report = ProxyReport {
            proxy_id: "web-1".into(),
            service: "web".into(),
            applied_version: 7,
            rejected_version: None,
            error: None,
        };
        let sent = client.report(&report, Duration::from_secs(5)).await;
        match sent {
            Err(ControlCallError::Status { status, message }) => {
                assert_eq!(status, StatusCode::FORBIDDEN);
                assert_eq!(message, "not your service");
            }
            other => panic!("{other:?}"),
        }
        let head = server.await.unwrap_or_default().to_ascii_lowercase();
        assert!(head.starts_with("post /v1/report http/1.1"), "{head}");
    }
    /// An address nothing listens on (bound, then closed).
    async fn closed_port() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        drop(listener);
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_replica_that_is_down_or_not_ready_is_passed_over() {
        let wait = Duration::from_secs(1);
        let idle = Duration::from_secs(1);
        // Down: the call goes on to the next replica and stays there.
        let down = closed_port().await;
        let (up, _server) = answer_once(200, r#"{"version":9,"services":{}}"#).await;
        let client = ControlPlaneClient::new(&format!("{down},{up}"), None, idle)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(client.replicas(), 2);
        client.current.store(0, Ordering::Relaxed);
        let polled = client.snapshot("web", "web-1", 3, wait, wait, None).await;
        assert_eq!(polled.ok().flatten().map(|s| s.version), Some(9));
        assert_eq!(format!("http://{}", client.authority()), up);
        // Not ready (503): the same.
        let (starting, _a) = answer_once(503, "not ready").await;
        let (ready, _b) = answer_once(200, r#"{"version":10,"services":{}}"#).await;
        let client = ControlPlaneClient::new(&format!("{starting}, {ready}"), None, idle)
            .unwrap_or_else(|e| panic!("{e}"));
        client.current.store(0, Ordering::Relaxed);
        let polled = client.snapshot("web", "web-1", 3, wait, wait, None).await;
        assert_eq!(polled.ok().flatten().map(|s| s.version), Some(10));
        // Every replica down: the error of the last one.
        let client = ControlPlaneClient::new(
            &format!("{},{}", closed_port().await, closed_port().await),
            None,
            idle,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let polled = client.snapshot("web", "web-1", 3, wait, wait, None).await;
        assert!(
            matches!(polled, Err(ControlCallError::Transport(_))),
            "{polled:?}"
        );
    }

    #[test]
    fn replicas_share_one_scheme() {
        let idle = Duration::from_secs(1);
        assert!(matches!(
            ControlPlaneClient::new("http://a:1,https://b:1", None, idle),
            Err(ControlClientError::MixedSchemes(_))
        ));
        assert!(matches!(
            ControlPlaneClient::new(" , ", None, idle),
            Err(ControlClientError::Url(_))
        ));
        let two = ControlPlaneClient::new("http://a:1, http://b:2/", None, idle)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(two.replicas(), 2);
    }
}
