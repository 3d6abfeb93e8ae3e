//! Downstream acceptor: binds, accepts, optionally terminates mTLS (and
//! reads the caller's SPIFFE ID), hands opaque TCP streams (ALPN
//! `tether-tcp`, or the plaintext preamble) to a [`StreamHandler`], serves
//! HTTP/1.1 and HTTP/2 (detected per connection), and drains gracefully.

mod preface;
mod sniff;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::preamble::{self, Detected};
use super::stream::{ByteCounters, Counted, Downstream, MeshStream, Rewind};
use super::ListenerMetrics;
use crate::body::Body;
use crate::original_dst::{self, OriginalDst};
use crate::request_metrics::Direction;
use sniff::Sniffed;

/// Limits applied to every downstream connection of a listener.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    /// HTTP/1 request headers must arrive within this long; also closes
    /// keep-alive connections idle for this long.
    pub header_read_timeout: Duration,
    /// Largest request head (HTTP/1 buffer, HTTP/2 header list) accepted.
    pub max_header_bytes: usize,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
}

/// mTLS on a listener.
#[derive(Clone)]
pub struct InboundTls {
    /// Terminates TLS with our identity; verifies the caller's chain.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Also accept plaintext (migration mode). Visible in metrics.
    pub permissive: bool,
    /// Longest a TLS handshake may take.
    pub handshake_timeout: Duration,
}

/// Serves the connections of a listener that carry an opaque TCP stream
/// instead of HTTP: ALPN `tether-tcp` after the TLS handshake, or the
/// plaintext preamble (consumed before the stream is handed over).
pub trait StreamHandler: Send + Sync + 'static {
    /// Serves one stream until it ends. `peer` is the authenticated caller
    /// (`None`: plaintext or no client certificate).
    fn serve(
        &self,
        stream: Downstream,
        peer: Option<Arc<Peer>>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;

    /// Serves a plaintext stream taken for opaque TCP because it sent
    /// nothing within the detection wait (a server-first client): the
    /// same, but it may be closed sooner when nothing moves at all.
    fn serve_silent(
        &self,
        stream: Downstream,
        peer: Option<Arc<Peer>>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        self.serve(stream, peer)
    }
}

/// Serves the connections that nat rules redirected to the outbound
/// listener (transparent capture) and that are not HTTP: by their original
/// destination.
pub trait CapturedHandler: Send + Sync + 'static {
    /// Serves one captured stream (its first bytes replayed) until it ends.
    /// `original` is the address the app connected to.
    fn serve(
        &self,
        stream: Downstream,
        original: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;

    /// Whether connections to `original` are declared opaque (an endpoint
    /// of a `tcp` service): served at once, without waiting for the first
    /// bytes, so server-first protocols are not held back.
    fn is_declared_opaque(&self, _original: SocketAddr) -> bool {
        false
    }
}

/// Kernel send buffer of an admin connection (bytes; Linux doubles it):
/// room for any admin answer in a few writes, and a bound on what a tap
/// that stops reading holds (autotuning would let it grow to megabytes).
const ADMIN_SEND_BUFFER: usize = 64 * 1024;

/// How one listener treats its connections.
#[derive(Clone)]
pub struct ListenerOptions {
    /// Which path it serves (labels metrics); `None` for admin, whose
    /// connections and bytes are not counted.
    pub direction: Option<Direction>,
    /// Connection limits and timeouts.
    pub settings: ServerSettings,
    /// mTLS, or `None` for plaintext.
    pub tls: Option<InboundTls>,
    /// Takes opaque TCP streams; `None`: every connection is HTTP.
    pub streams: Option<Arc<dyn StreamHandler>>,
    /// Takes captured connections (an original destination other than the
    /// listener's address) that are not HTTP; captured HTTP requests carry
    /// an [`OriginalDst`] extension. `None`: no capture detection.
    pub captured: Option<Arc<dyn CapturedHandler>>,
}

/// The caller's mesh identity, put in each request's extensions by the
/// acceptor: `None` for plaintext (permissive mode) or no client cert.
/// Resolved once per connection; each request clones an `Arc`.
#[derive(Clone, Debug, Default)]
pub struct PeerIdentity(pub Option<Arc<Peer>>);

/// An authenticated caller.
#[derive(Debug)]
pub struct Peer {
    /// Its SPIFFE ID.
    pub id: tether_certs::SpiffeId,
    /// The same, as text for logs and spans.
    pub text: String,
}

/// The next connection on `listener`. A failed accept (out of file
/// descriptors and friends) is logged and retried after a short pause
/// instead of spinning.
pub async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Binds a listener, with an error that names the address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|error| {
        std::io::Error::new(error.kind(), format!("cannot listen on {addr}: {error}"))
    })
}

/// The running accept loops; `drain` stops them and waits for connections.
pub struct Servers {
    tasks: JoinSet<GracefulShutdown>,
    stop: watch::Sender<bool>,
}

impl Default for Servers {
    fn default() -> Self {
        Self {
            tasks: JoinSet::new(),
            stop: watch::channel(false).0,
        }
    }
}

impl Servers {
    /// Starts serving `listener` with `handler` on a task of its own.
    pub fn spawn<H, F>(
        &mut self,
        listener: TcpListener,
        options: ListenerOptions,
        metrics: ListenerMetrics,
        handler: H,
    ) where
        H: Fn(Request<Body>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let stop = self.stop.subscribe();
        let name = options.direction.map_or("admin", Direction::as_str);
        let span = tracing::info_span!("listener", %name, addr = ?listener.local_addr().ok());
        self.tasks
            .spawn(accept_loop(listener, options, metrics, handler, stop).instrument(span));
    }

    /// Stops accepting everywhere and waits up to `deadline` for open
    /// connections to finish their requests. Returns whether all finished.
    pub async fn drain(mut self, deadline: Duration) -> bool {
        let _ = self.stop.send(true);
        let mut graceful = Vec::new();
        while let Some(done) = self.tasks.join_next().await {
            if let Ok(g) = done {
                graceful.push(g);
            }
        }
        let all =
            futures_util::future::join_all(graceful.into_iter().map(GracefulShutdown::shutdown));
        tokio::time::timeout(deadline, all).await.is_ok()
    }
}

async fn accept_loop<H, F>(
    listener: TcpListener,
    options: ListenerOptions,
    metrics: ListenerMetrics,
    handler: H,
    mut stop: watch::Receiver<bool>,
) -> GracefulShutdown
where
    H: Fn(Request<Body>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let ListenerOptions {
        direction,
        settings,
        tls,
        streams,
        captured,
    } = options;
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let bytes = direction.map_or_else(ByteCounters::detached, |d| metrics.bytes(d));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    if direction == Some(Direction::Outbound) {
        // WebSocket over HTTP/2 from the app (RFC 8441): `upgrade.rs`.
        builder.http2().enable_connect_protocol();
    }
    let builders = Arc::new(Builders {
        h2: builder.clone().http2_only(),
        either: builder,
    });
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => break,
            accepted = accept(&listener) => accepted,
        };
        let _ = stream.set_nodelay(true);
        if direction.is_none() {
            // Admin: a bounded send buffer, so what a slow reader of a
            // stream (`/tap`) costs stays small and its events are dropped
            // at the tap, not piled up in the kernel.
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(ADMIN_SEND_BUFFER);
        }
        // One getsockopt per connection, only where capture is handled.
        let original = captured.as_ref().and_then(|_| original_dst::of(&stream));
        let guard = direction.map(|d| metrics.connection_opened(d));
        let handler = handler.clone();
        let builders = Arc::clone(&builders);
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let streams = streams.clone();
        let captured = captured.clone();
        let metrics = metrics.clone();
        let bytes = bytes.clone();
        let span = tracing::debug_span!("connection", %peer, original = ?original);
        tokio::spawn(
            async move {
                let Some((stream, identity)) = secure(stream, tls.as_ref(), &metrics).await else {
                    return;
                };
                let peer = identity.map(|id| {
                    Arc::new(Peer {
                        text: id.to_string(),
                        id,
                    })
                });
                let mut stream = Counted::new(stream, bytes);
                let prefix = match (&captured, original, &streams) {
                    (Some(captured), Some(original), _) if captured.is_declared_opaque(original) => {
                        captured.serve(Rewind::new(Bytes::new(), stream), original).await;
                        drop((watcher, guard, permit));
                        return;
                    }
                    (Some(captured), Some(original), _) => {
                        let sniffed = sniff::sniff(&mut stream).await;
                        if let Ok(Sniffed::Silent(_)) = &sniffed {
                            metrics.detect_timeouts.with_label_values(&["outbound"]).inc();
                        }
                        match sniffed {
                            Ok(Sniffed::Http(prefix)) => prefix,
                            Ok(Sniffed::Opaque(prefix) | Sniffed::Silent(prefix)) => {
                                let stream = Rewind::new(prefix, stream);
                                captured.serve(stream, original).await;
                                drop((watcher, guard, permit));
                                return;
                            }
                            Err(error) => {
                                tracing::debug!(%error, "captured connection closed before its first bytes");
                                return;
                            }
                        }
                    }
                    (_, _, None) => Bytes::new(),
                    (_, _, Some(streams)) => {
                        let timeout = settings.header_read_timeout;
                        let class = classify(&mut stream, timeout).await;
                        if let Some(Class::Silent) = class {
                            metrics.detect_timeouts.with_label_values(&["inbound"]).inc();
                        }
                        match class {
                            Some(Class::Http(prefix)) => prefix,
                            Some(class @ (Class::Tcp | Class::Silent)) => {
                                let stream = Rewind::new(Bytes::new(), stream);
                                // Holding the watcher makes a drain wait for the stream.
                                match class {
                                    Class::Silent => streams.serve_silent(stream, peer).await,
                                    _ => streams.serve(stream, peer).await,
                                }
                                drop((watcher, guard, permit));
                                return;
                            }
                            None => return,
                        }
                    }
                };
                // ALPN `h2` (a mesh hop) promises HTTP/2: no detection, so
                // a bad preface is an HTTP/2 connection error. Otherwise a
                // request line of another version closes (see `preface`).
                let h2_only = stream.get_ref().alpn() == Some(ALPN_H2);
                let prefix = if h2_only {
                    prefix
                } else {
                    let Some(prefix) = opening(&mut stream, prefix, settings).await else {
                        return;
                    };
                    prefix
                };
                let identity = PeerIdentity(peer);
                let original = original.map(OriginalDst);
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let mut request = request.map(Body::from);
                    if let Some(original) = original {
                        request.extensions_mut().insert(original);
                    }
                    // Absent means no identity: no extensions map to allocate
                    // for plaintext callers (every outbound request).
                    if identity.0.is_some() {
                        request.extensions_mut().insert(identity.clone());
                    }
                    // `map`, not `async move { Ok(fut.await) }`: an async block
                    // that captures a future stores it twice.
                    handler(request).map(Ok::<_, Infallible>)
                });
                let stream = TokioIo::new(Rewind::new(prefix, stream));
                // HTTP/1.1 connections can be upgraded (`upgrade.rs`): once
                // the 101 is written, hyper hands the connection over and
                // this future ends; the relay holds it from then on.
                let served = if h2_only {
                    watcher.watch(builders.h2.serve_connection(stream, service)).await
                } else {
                    let connection = builders.either.serve_connection_with_upgrades(stream, service);
                    watcher.watch(connection).await
                };
                if let Err(error) = served {
                    tracing::debug!(%error, "connection closed with error");
                }
                drop(guard);
                drop(permit);
            }
            .instrument(span),
        );
    }
    graceful
}

/// How connections are served: by HTTP/2 only when ALPN settled it,
/// else HTTP/1.1 or HTTP/2 as the first bytes say.
struct Builders {
    h2: auto::Builder<TokioExecutor>,
    either: auto::Builder<TokioExecutor>,
}

/// The ALPN protocol id of HTTP/2 over TLS.
const ALPN_H2: &[u8] = b"h2";

/// Reads the first line (after `prefix`, already read) within the
/// header-read timeout. Returns the bytes to replay to hyper, or `None` to
/// close: a request line of a version other than HTTP/1 that is not the
/// HTTP/2 preface, or the read failed, or nothing at all arrived within the
/// timeout. A client that sent part of its first line is handed to hyper
/// with what it sent (hyper's own header-read timeout then bounds it).
///
/// A connection that sends nothing is closed at the timeout: hyper's
/// timeout starts only once it sees bytes, so such a connection would
/// otherwise hold one of `--max-connections` forever, and 10,000 of them
/// lock every new caller out (found by the chaos suite).
async fn opening(
    stream: &mut Counted<MeshStream>,
    prefix: Bytes,
    settings: ServerSettings,
) -> Option<Bytes> {
    let mut received = BytesMut::from(prefix);
    let read = preface::read_opening(stream, &mut received, settings.max_header_bytes);
    match tokio::time::timeout(settings.header_read_timeout, read).await {
        Err(_) if received.is_empty() => {
            tracing::debug!("nothing sent within the header-read timeout; closing");
            None
        }
        Ok(Ok(true)) | Err(_) => Some(received.freeze()),
        Ok(Ok(false)) => {
            tracing::debug!("not an HTTP/1 request line nor the HTTP/2 preface; closing");
            None
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, "connection failed before its first line");
            None
        }
    }
}

/// What a connection on a listener that takes TCP streams carries.
enum Class {
    /// HTTP, with the bytes read while detecting it.
    Http(Bytes),
    /// An opaque TCP stream (preamble consumed).
    Tcp,
    /// Plaintext and silent for the detection wait: an opaque TCP stream
    /// from a server-first client.
    Silent,
}

/// TLS: the negotiated ALPN decides. Plaintext: the preamble, read as it
/// arrives, within the inbound detection wait (500 ms, or `timeout` if
/// shorter).
/// `None`: closed or failed first.
async fn classify(stream: &mut Counted<MeshStream>, timeout: Duration) -> Option<Class> {
    if !stream.get_ref().is_plain() {
        return Some(
            if stream.get_ref().alpn() == Some(tether_certs::MESH_TCP_ALPN) {
                Class::Tcp
            } else {
                Class::Http(Bytes::new())
            },
        );
    }
    // A sidecar writes the preamble or its request at once; a caller that
    // stays silent (a server-first protocol, plaintext: permissive mode or
    // a plaintext mesh) is taken for opaque TCP after the detection wait.
    let wait = sniff::INBOUND_DETECT_TIMEOUT.min(timeout);
    match tokio::time::timeout(wait, preamble::detect(stream)).await {
        Ok(Ok(Detected::Tcp)) => Some(Class::Tcp),
        Ok(Ok(Detected::Other(prefix))) => Some(Class::Http(prefix)),
        Ok(Err(error)) => {
            tracing::debug!(%error, "connection failed before its first bytes");
            None
        }
        Err(_) => {
            tracing::debug!(
                ?wait,
                "no first bytes within the detection timeout: opaque TCP"
            );
            Some(Class::Silent)
        }
    }
}

/// Terminates TLS when configured. Permissive mode lets plaintext through
/// (a TLS record starts with 0x16). Returns `None` for a failed handshake.
async fn secure(
    stream: tokio::net::TcpStream,
    tls: Option<&InboundTls>,
    metrics: &ListenerMetrics,
) -> Option<(MeshStream, Option<tether_certs::SpiffeId>)> {
    let Some(tls) = tls else {
        return Some((MeshStream::Plain(stream), None));
    };
    // A TLS record starts with 0x16. Peeked in strict mode too, so that a
    // caller without a sidecar (plaintext, e.g. redirected to this
    // listener by transparent capture) is counted as `not-tls`, not as a
    // failed handshake.
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(tls.handshake_timeout, stream.peek(&mut first)).await;
    let plaintext = !matches!(peeked, Ok(Ok(1))) || first[0] != 0x16;
    if plaintext && tls.permissive {
        metrics.inbound_plaintext.inc();
        return Some((MeshStream::Plain(stream), None));
    }
    if matches!(peeked, Ok(Ok(1))) && plaintext {
        metrics
            .tls_handshake_errors
            .with_label_values(&["inbound", "not-tls"])
            .inc();
        tracing::debug!("plaintext on the mTLS inbound listener refused (not permissive)");
        return None;
    }
    match tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| tether_certs::peer_spiffe_id(certs).ok());
            Some((MeshStream::Server(Box::new(stream)), identity))
        }
        Ok(Err(error)) => {
            metrics
                .tls_handshake_errors
                .with_label_values(&["inbound", "handshake"])
                .inc();
            tracing::debug!(%error, "inbound TLS handshake failed");
            None
        }
        Err(_) => {
            metrics
                .tls_handshake_errors
                .with_label_values(&["inbound", "timeout"])
                .inc();
            None
        }
    }
}
