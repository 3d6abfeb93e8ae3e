//! HTTP/1.1 upgrades (`Upgrade: websocket` and any other protocol): the
//! upgrade request crosses the hop like any request (routed, authorized),
//! but on an HTTP/1.1 connection of its own that keeps `Connection:
//! upgrade` and `Upgrade`; when the far side answers `101`, that answer goes
//! back unchanged and both connections become one byte stream, relayed
//! here until both directions end.
//!
//! ```text
//! downstream (HTTP/1.1, hyper with upgrades) ──101──► relay ◄──101── upstream
//!                                                     (new HTTP/1.1 connection,
//!                                                      never pooled; mTLS ALPN http/1.1)
//! ```
//!
//! Only a request that hyper flagged as an upgrade (it carries an
//! [`OnUpgrade`], put there for HTTP/1.1 requests with an `Upgrade` header
//! or `CONNECT`) and that has an `Upgrade` header takes this path:
//! [`requested`] is one look at the request's extensions (absent for most
//! requests), so other requests pay nothing.
//!
//! Upgraded streams are counted (`tether_upgraded_*`), closed after
//! [`Upgrades::idle_timeout`] without a byte either way, outlive snapshot
//! changes (they hold nothing of the state), and get the drain deadline on
//! shutdown ([`Upgrades::drain`]), like opaque TCP streams.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Method, StatusCode};
use hyper::client::conn::http1;
use hyper::ext::Protocol;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::access_log::{timestamp, AccessLog, TcpEntry};
use crate::body::{Body, Req, Rsp};
use crate::errors::{ProxyError, Reason};
use crate::hop::{from_upstream, to_upstream};
use crate::request_metrics::{counter_vec, gauge_vec, Direction};
#[cfg(doc)]
use crate::transport::EndpointPool;
use crate::transport::{copy_until_idle, Counted};
use crate::transport::{ByteCounters, ClientError, PeerIdentity};

/// Default of `--upgrade-idle-timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Whether `request` asks for an upgrade this proxy relays: an HTTP/1.1
/// upgrade, or an HTTP/2 extended CONNECT (RFC 8441, `:protocol`). Cheap:
/// HTTP/1.1 looks at the extensions (absent for most requests) before the
/// header; HTTP/2 compares the method first.
#[inline]
pub fn requested(request: &Req) -> bool {
    match request.version() {
        http::Version::HTTP_11 => {
            request.extensions().get::<OnUpgrade>().is_some()
                && request.headers().contains_key(header::UPGRADE)
        }
        http::Version::HTTP_2 => {
            request.method() == Method::CONNECT && request.extensions().get::<Protocol>().is_some()
        }
        _ => false,
    }
}

/// The metric families of upgraded connections.
#[derive(Clone)]
pub struct UpgradeFamilies {
    connections: IntCounterVec,
    open: IntGaugeVec,
    bytes: IntCounterVec,
    idle_closed: IntCounterVec,
}

impl UpgradeFamilies {
    /// Registers the families in `registry`.
    pub fn register(registry: &Registry) -> Self {
        Self {
            connections: counter_vec(
                registry,
                "tether_upgraded_connections_total",
                "Upgraded HTTP/1.1 connections (101 Switching Protocols, e.g. WebSocket), by direction and service.",
                &["direction", "service"],
            ),
            open: gauge_vec(
                registry,
                "tether_upgraded_connections_open",
                "Upgraded HTTP/1.1 connections open now, by direction and service.",
                &["direction", "service"],
            ),
            bytes: counter_vec(
                registry,
                "tether_upgraded_bytes_total",
                "Bytes of upgraded connections after the 101, by direction, service and flow (received from or sent to the client).",
                &["direction", "service", "flow"],
            ),
            idle_closed: counter_vec(
                registry,
                "tether_upgraded_idle_closed_total",
                "Upgraded connections closed by the proxy after --upgrade-idle-timeout without a byte either way.",
                &["direction", "service"],
            ),
        }
    }
}

/// Relays upgraded connections: their metrics, idle timeout and drain.
#[derive(Clone)]
pub struct Upgrades {
    shared: Arc<Shared>,
}

struct Shared {
    families: UpgradeFamilies,
    idle_timeout: Duration,
    /// Every relay holds a receiver; the drain waits for none to be left.
    open: watch::Sender<()>,
    /// One line per upgraded connection when it closes, when on.
    access_log: Option<AccessLog>,
}

impl Default for Upgrades {
    /// Counted in a registry nobody renders (tests), default idle timeout.
    fn default() -> Self {
        Self::new(
            UpgradeFamilies::register(&Registry::new()),
            DEFAULT_IDLE_TIMEOUT,
        )
    }
}

impl Upgrades {
    /// Relays counted in `families`, closed after `idle_timeout` idle.
    pub fn new(families: UpgradeFamilies, idle_timeout: Duration) -> Self {
        Self::with_access_log(families, idle_timeout, None)
    }

    /// The same, each upgraded connection also logged to `access_log` when
    /// it closes.
    pub fn with_access_log(
        families: UpgradeFamilies,
        idle_timeout: Duration,
        access_log: Option<AccessLog>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                families,
                idle_timeout,
                open: watch::Sender::new(()),
                access_log,
            }),
        }
    }

    /// How long an upgraded connection may stay without a byte either way.
    pub fn idle_timeout(&self) -> Duration {
        self.shared.idle_timeout
    }

    /// Upgraded connections being relayed now.
    pub fn open(&self) -> usize {
        self.shared.open.receiver_count()
    }

    /// Waits up to `deadline` for every upgraded connection to end; returns
    /// whether all did (those still open are dropped with the process).
    pub async fn drain(&self, deadline: Duration) -> bool {
        tokio::time::timeout(deadline, self.shared.open.closed())
            .await
            .is_ok()
    }

    /// Sends the upgrade `request` on `connection` (to `endpoint`, from
    /// [`EndpointPool::connect_upgrade`]) and returns the answer. A `101`
    /// goes back unchanged (its `Connection` and `Upgrade` headers included)
    /// and both sides are relayed on a task of their own once the downstream
    /// side has it; any other answer is an ordinary response, cleaned for
    /// the hop. A failed send becomes the error `failed` makes of it.
    pub async fn forward(
        &self,
        direction: Direction,
        service: &str,
        mut connection: http1::SendRequest<Body>,
        endpoint: &Authority,
        mut request: Req,
        failed: impl FnOnce(ClientError) -> ProxyError,
    ) -> Result<Rsp, ProxyError> {
        let downstream = hyper::upgrade::on(&mut request);
        let log = self.shared.access_log.clone().map(|log| StreamLog {
            log,
            arrived: SystemTime::now(),
            started: Instant::now(),
            direction: direction.as_str(),
            protocol: protocol_of(&request),
            service: service.to_owned(),
            peer_identity: request
                .extensions()
                .get::<PeerIdentity>()
                .and_then(|p| p.0.as_ref())
                .map(|p| p.text.clone()),
            endpoint: (direction == Direction::Outbound).then(|| endpoint.to_string()),
        });
        let extended_connect = request.version() == http::Version::HTTP_2;
        let request = if extended_connect {
            from_extended_connect(request)?
        } else {
            request
        };
        let request = for_upstream(request, endpoint)?;
        let mut response = connection
            .send_request(request)
            .await
            .map_err(|e| failed(ClientError::Request(e)))?
            .map(Body::from);
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(from_upstream(response));
        }
        let upstream = hyper::upgrade::on(&mut response);
        let response = if extended_connect {
            to_extended_connect(response)
        } else {
            response
        };
        let mut stream = self.opened(direction, service);
        stream.log = log;
        let span = tracing::debug_span!("upgraded", direction = direction.as_str(), %service);
        tokio::spawn(
            async move {
                match tokio::try_join!(downstream, upstream) {
                    Ok((client, server)) => stream.relay(client, server).await,
                    Err(error) => tracing::debug!(%error, "upgrade did not complete"),
                }
            }
            .instrument(span),
        );
        Ok(response)
    }

    /// Counts a stream opened; what the relay needs to count and close it.
    fn opened(&self, direction: Direction, service: &str) -> Stream {
        let families = &self.shared.families;
        let d = direction.as_str();
        families.connections.with_label_values(&[d, service]).inc();
        let open = families.open.with_label_values(&[d, service]);
        open.inc();
        Stream {
            open: OpenGauge(open),
            bytes: ByteCounters {
                received: families.bytes.with_label_values(&[d, service, "received"]),
                sent: families.bytes.with_label_values(&[d, service, "sent"]),
            },
            idle_closed: families.idle_closed.with_label_values(&[d, service]),
            idle_timeout: self.shared.idle_timeout,
            log: None,
            _held: self.shared.open.subscribe(),
        }
    }
}

/// The upgrade request as it goes to the next hop: HTTP/1.1, origin form,
/// `Host` kept, hop-by-hop headers removed but for the upgrade's own.
fn for_upstream(request: Req, endpoint: &Authority) -> Result<Req, ProxyError> {
    let protocols: Vec<HeaderValue> = request
        .headers()
        .get_all(header::UPGRADE)
        .iter()
        .cloned()
        .collect();
    let mut request = to_upstream(request, endpoint, false)?;
    let headers = request.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    for protocol in protocols {
        headers.append(header::UPGRADE, protocol);
    }
    Ok(request)
}

/// An HTTP/2 extended CONNECT (RFC 8441 §4) as the HTTP/1.1 upgrade it
/// stands for: `GET` with `Upgrade: <:protocol>`, and for WebSocket a fresh
/// `Sec-WebSocket-Key` (HTTP/2 carries none; RFC 6455 §4.1 wants one).
fn from_extended_connect(request: Req) -> Result<Req, ProxyError> {
    let (mut parts, body) = request.into_parts();
    let protocol = parts
        .extensions
        .remove::<Protocol>()
        .ok_or_else(|| ProxyError::BadRequest("CONNECT without :protocol".into()))?;
    let upgrade = HeaderValue::from_str(protocol.as_str())
        .map_err(|_| ProxyError::BadRequest("unusable :protocol".into()))?;
    if protocol.as_str().eq_ignore_ascii_case("websocket") {
        use base64::Engine as _;
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        let key = HeaderValue::from_str(&key)
            .map_err(|_| ProxyError::BadRequest("cannot make a WebSocket key".into()))?;
        parts.headers.insert(header::SEC_WEBSOCKET_KEY, key);
    }
    parts.headers.insert(header::UPGRADE, upgrade);
    parts.method = Method::GET;
    Ok(Req::from_parts(parts, body))
}

/// The upstream's `101` as the answer to an extended CONNECT: `200` with
/// its headers but those of the HTTP/1.1 handshake (RFC 8441 §5).
fn to_extended_connect(response: Rsp) -> Rsp {
    let (mut parts, _) = response.into_parts();
    parts.status = StatusCode::OK;
    for name in [
        header::CONNECTION,
        header::UPGRADE,
        header::SEC_WEBSOCKET_ACCEPT,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ] {
        parts.headers.remove(name);
    }
    Rsp::from_parts(parts, Body::Empty)
}

/// One upgraded stream being relayed.
struct Stream {
    open: OpenGauge,
    bytes: ByteCounters,
    idle_closed: IntCounter,
    idle_timeout: Duration,
    /// Its access-log line, when the log is on.
    log: Option<StreamLog>,
    /// Dropped when the relay ends: the drain waits for that.
    _held: watch::Receiver<()>,
}

/// What the access-log line of an upgraded connection says besides its end.
struct StreamLog {
    log: AccessLog,
    arrived: SystemTime,
    started: Instant,
    direction: &'static str,
    protocol: &'static str,
    service: String,
    peer_identity: Option<String>,
    endpoint: Option<String>,
}

/// The access log's `protocol` of an upgrade: `websocket` (over HTTP/1.1
/// or HTTP/2), else `upgrade` (the token is the client's, unbounded).
fn protocol_of(request: &Req) -> &'static str {
    let websocket = match request.extensions().get::<Protocol>() {
        Some(protocol) => protocol.as_str().eq_ignore_ascii_case("websocket"),
        None => request
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket")),
    };
    if websocket {
        "websocket"
    } else {
        "upgrade"
    }
}

/// Decrements the open-connections gauge when dropped.
struct OpenGauge(IntGauge);

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Stream {
    /// Copies both ways until both directions end (an end of stream on one
    /// side is passed on as a half-close, the other direction keeps
    /// flowing), or nothing moved for the idle timeout.
    async fn relay(self, client: Upgraded, server: Upgraded) {
        let mut client = Counted::new(TokioIo::new(client), self.bytes.clone());
        let mut server = TokioIo::new(server);
        let error = match copy_until_idle(&mut client, &mut server, self.idle_timeout).await {
            Some(Ok((received, sent))) => {
                tracing::debug!(received, sent, "upgraded connection ended");
                None
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "upgraded connection ended with an error");
                Some(Reason::Reset.as_str())
            }
            None => {
                self.idle_closed.inc();
                tracing::debug!(idle_timeout = ?self.idle_timeout, "upgraded connection idle: closed");
                Some(Reason::IdleTimeout.as_str())
            }
        };
        let (received, sent) = client.totals();
        drop(self.open);
        if let Some(line) = self.log {
            line.log.log_tcp(TcpEntry {
                timestamp: timestamp(line.arrived),
                direction: line.direction,
                protocol: line.protocol,
                service: line.service,
                peer_identity: line.peer_identity,
                endpoint: line.endpoint,
                bytes_received: received,
                bytes_sent: sent,
                duration_ms: line.started.elapsed().as_secs_f64() * 1000.0,
                error,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_flagged_request_with_an_upgrade_header_is_an_upgrade() {
        let plain = http::Request::builder()
            .header("upgrade", "websocket")
            .body(Body::Empty)
            .unwrap_or_default();
        assert!(!requested(&plain), "not flagged by hyper: no upgrade");
        let endpoint: Authority = "127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}"));
        let request = http::Request::builder()
            .uri("http://api/chat")
            .header("host", "api")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("keep-alive", "timeout=5")
            .body(Body::Empty)
            .unwrap_or_default();
        let out = for_upstream(request, &endpoint).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.uri(), "/chat");
        assert_eq!(out.version(), http::Version::HTTP_11);
        assert_eq!(out.headers()["connection"], "upgrade");
        assert_eq!(out.headers()["upgrade"], "websocket");
        assert_eq!(out.headers()["host"], "api");
        assert_eq!(
            out.headers()["sec-websocket-key"],
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        assert!(out.headers().get("keep-alive").is_none());
    }

    #[test]
    fn an_extended_connect_becomes_an_http1_websocket_upgrade_and_back() {
        let mut request = http::Request::builder()
            .method(Method::CONNECT)
            .version(http::Version::HTTP_2)
            .uri("http://api/chat?room=1")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-protocol", "chat")
            .body(Body::Empty)
            .unwrap_or_default();
        request
            .extensions_mut()
            .insert(Protocol::from_static("websocket"));
        assert!(requested(&request));
        let endpoint: Authority = "127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}"));
        let out = from_extended_connect(request).unwrap_or_else(|e| panic!("{e}"));
        let out = for_upstream(out, &endpoint).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.method(), Method::GET);
        assert_eq!(out.version(), http::Version::HTTP_11);
        assert_eq!(out.uri(), "/chat?room=1");
        assert_eq!(out.headers()["host"], "api");
        assert_eq!(out.headers()["upgrade"], "websocket");
        assert_eq!(out.headers()["connection"], "upgrade");
        assert_eq!(out.headers()["sec-websocket-protocol"], "chat");
        let key = out.headers()["sec-websocket-key"].as_bytes();
        assert_eq!(key.len(), 24, "16 bytes in base64");
        let switching = http::Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .header("sec-websocket-protocol", "chat")
            .body(Body::Empty)
            .unwrap_or_default();
        let answer = to_extended_connect(switching);
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.headers()["sec-websocket-protocol"], "chat");
        for gone in ["connection", "upgrade", "sec-websocket-accept"] {
            assert!(answer.headers().get(gone).is_none(), "{gone}");
        }
        // A plain HTTP/2 CONNECT (no :protocol) is no upgrade.
        let tunnel = http::Request::builder()
            .method(Method::CONNECT)
            .version(http::Version::HTTP_2)
            .uri("http://api:443")
            .body(Body::Empty)
            .unwrap_or_default();
        assert!(!requested(&tunnel));
    }
}
