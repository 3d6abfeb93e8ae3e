//! Connections to one endpoint, kept with the endpoint (the balancer has
//! already picked it, so nothing is looked up by key per request).
//!
//! - HTTP/2: one connection, shared: each request clones its sender. A
//!   closed connection is replaced by one new connect at a time.
//! - HTTP/1.1: idle connections on a stack, one lent per request and taken
//!   back when the response body has been read to the end (the response
//!   body carries a [`PoolSlot`]). A body dropped early closes its
//!   connection instead. Idle connections beyond
//!   [`MAX_IDLE_PER_ENDPOINT`] are closed at once; those idle for the idle
//!   timeout are closed then by the pool's reaper, a task that runs only
//!   while the pool holds idle connections (started by the first one put
//!   back, ended when none is left), so a quiet endpoint does not keep
//!   sockets open and nothing is added per request.
//!
//! Why not hyper-util's pooled client: it hashes the scheme and authority
//! on every checkout and return, races a connect against every checkout and
//! spawns a task per HTTP/1.1 request to return the connection; measured,
//! that was ~7.8k of ~43k instructions per proxied request.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response, Uri};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tower::Service;
use tracing::Instrument;

use super::connector::MeshConnector;
use super::stream::UpstreamIo;
use crate::body::{Body, ConnectionPool, PoolSlot};

/// Idle HTTP/1.1 connections kept per endpoint: enough for the concurrency
/// of a busy app, few enough that a burst does not pin memory for long.
pub const MAX_IDLE_PER_ENDPOINT: usize = 64;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// [`EndpointPool::send_from`] was handed an empty slot (a bug of its
/// caller; answered as an error, never a panic).
const NO_REQUEST: &str = "no request to send";

/// Why a request to an endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made (TCP connect, TLS, or HTTP handshake).
    #[error("{0}")]
    Connect(#[source] BoxError),
    /// The connection closed with the request still queued, twice: it was
    /// never written, so nothing reached the endpoint.
    #[error("the connection closed before the request was sent: {0}")]
    NotSent(#[source] hyper::Error),
    /// The connection failed before response headers arrived.
    #[error("{0}")]
    Request(#[source] hyper::Error),
}

impl ClientError {
    /// Whether nothing reached the endpoint (safe to retry any method).
    pub fn is_connect(&self) -> bool {
        matches!(self, ClientError::Connect(_) | ClientError::NotSent(_))
    }
}

/// How connections to an endpoint are made; one per pool factory.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Which factory made the pool (a pool is rebuilt when it changes).
    pub factory_id: u64,
    /// TCP connect (+ TLS) to endpoints.
    pub connector: MeshConnector,
    /// HTTP/2 (one shared connection) or HTTP/1.1 (a stack of idle ones).
    pub http2: bool,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
}

/// The connections to one endpoint.
#[derive(Debug)]
pub struct EndpointPool {
    settings: PoolSettings,
    uri: Uri,
    idle: Mutex<IdleList>,
    shared: Mutex<Option<http2::SendRequest<Body>>>,
    connecting: tokio::sync::Mutex<()>,
}

/// Idle HTTP/1.1 connections, oldest first, and whether a reaper watches them.
#[derive(Debug, Default)]
struct IdleList {
    connections: Vec<Idle>,
    reaper_running: bool,
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

impl EndpointPool {
    /// An empty pool for the endpoint at `authority`.
    pub fn new(authority: &Authority, settings: PoolSettings) -> Arc<Self> {
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .unwrap_or_default();
        Arc::new(Self {
            settings,
            uri,
            idle: Mutex::new(IdleList::default()),
            shared: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    /// The factory this pool was made by.
    pub fn factory_id(&self) -> u64 {
        self.settings.factory_id
    }

    /// Whether the connections are mTLS to a verified mesh identity, so an
    /// answer comes from an authenticated peer sidecar.
    pub fn is_mtls(&self) -> bool {
        self.settings.connector.is_mtls()
    }

    /// Whether requests go out as HTTP/2 (absolute URI) or HTTP/1.1
    /// (origin form): see `hop::to_upstream`.
    pub fn is_http2(&self) -> bool {
        self.settings.http2
    }

    /// Sends `request` (URI in the form the protocol wants: origin-form for
    /// HTTP/1.1, absolute for HTTP/2) on a pooled or new connection.
    ///
    /// A connection that closes while the request waits to be written (an
    /// idle timeout, the endpoint's GOAWAY or close, racing this request)
    /// hands the request back unsent; it then goes once more on another
    /// connection, whatever its method: nothing reached the endpoint.
    pub async fn send(
        self: &Arc<Self>,
        request: Request<Body>,
    ) -> Result<Response<Body>, ClientError> {
        self.send_from(&mut Some(request)).await
    }

    /// [`send`](Self::send) for the request in `slot`, taken from it only
    /// once a connection is ready: the request path keeps its request in
    /// one slot instead of in the future of every layer. A request not sent
    /// (no connection could be had) is left in the slot.
    pub async fn send_from(
        self: &Arc<Self>,
        slot: &mut Option<Request<Body>>,
    ) -> Result<Response<Body>, ClientError> {
        let mut resent = false;
        loop {
            let mut error = if self.settings.http2 {
                let mut sender = self.http2_sender().await?;
                let Some(request) = slot.take() else {
                    return Err(ClientError::Connect(NO_REQUEST.into()));
                };
                match sender.try_send_request(request).await {
                    Ok(response) => return Ok(response.map(Body::from)),
                    Err(error) => error,
                }
            } else {
                let mut sender = self.http1_sender().await?;
                let Some(request) = slot.take() else {
                    return Err(ClientError::Connect(NO_REQUEST.into()));
                };
                match sender.try_send_request(request).await {
                    Ok(response) => {
                        let pool: Weak<EndpointPool> = Arc::downgrade(self);
                        let slot = PoolSlot::new(pool, sender);
                        return Ok(response.map(|body| Body::pooled(body, slot)));
                    }
                    Err(error) => error,
                }
            };
            *slot = match error.take_message() {
                Some(unsent) if !resent => Some(unsent),
                Some(_) => return Err(ClientError::NotSent(error.into_error())),
                None => return Err(ClientError::Request(error.into_error())),
            };
            resent = true;
            self.forget_closed_http2();
            tracing::debug!(endpoint = %self.uri, "connection closed before the request was written; sending it on another");
        }
    }

    /// A new HTTP/1.1 connection of its own, never pooled, for one upgrade
    /// request (`Upgrade`, its `Connection` and `Upgrade` headers kept):
    /// after a `101` the connection is the upgraded stream
    /// ([`hyper::upgrade::on`] the response); after any other answer it
    /// closes once the body is read. Always HTTP/1.1, whatever the pool
    /// speaks: over mTLS it offers ALPN `http/1.1` instead of `h2`.
    pub async fn connect_upgrade(&self) -> Result<http1::SendRequest<Body>, ClientError> {
        let io = self
            .settings
            .connector
            .for_http1()
            .call(self.uri.clone())
            .await
            .map_err(ClientError::Connect)?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| ClientError::Connect(e.into()))?;
        drive(connection.with_upgrades(), "HTTP/1.1 upgrade");
        Ok(sender)
    }

    /// Drops the shared HTTP/2 connection if it has closed.
    fn forget_closed_http2(&self) {
        if let Ok(mut shared) = self.shared.lock() {
            if shared.as_ref().is_some_and(http2::SendRequest::is_closed) {
                *shared = None;
            }
        }
    }

    async fn http2_sender(&self) -> Result<http2::SendRequest<Body>, ClientError> {
        for _ in 0..2 {
            let mut sender = match self.shared_sender() {
                Some(sender) => sender,
                // Boxed: the handshake's future is large and rarely needed;
                // inline it would enlarge every request's future.
                None => Box::pin(self.connect_http2()).await?,
            };
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
            // The connection went away between the check and now: forget it.
            self.forget_closed_http2();
        }
        Err(ClientError::Connect(
            "the HTTP/2 connection closed as it was used".into(),
        ))
    }

    /// The shared HTTP/2 connection, if one is open.
    fn shared_sender(&self) -> Option<http2::SendRequest<Body>> {
        let shared = self.shared.lock().ok()?;
        shared.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    async fn connect_http2(&self) -> Result<http2::SendRequest<Body>, ClientError> {
        // One connect at a time; whoever waited uses what the first made.
        let _connecting = self.connecting.lock().await;
        if let Some(sender) = self.shared_sender() {
            return Ok(sender);
        }
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(self.open().await?)
            .await
            .map_err(|e| ClientError::Connect(e.into()))?;
        drive(connection, "HTTP/2");
        if let Ok(mut shared) = self.shared.lock() {
            *shared = Some(sender.clone());
        }
        Ok(sender)
    }

    async fn http1_sender(&self) -> Result<http1::SendRequest<Body>, ClientError> {
        while let Some(mut sender) = self.take_idle() {
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        // Boxed for the same reason as the HTTP/2 connect.
        Box::pin(self.connect_http1()).await
    }

    async fn connect_http1(&self) -> Result<http1::SendRequest<Body>, ClientError> {
        let (sender, connection) = http1::Builder::new()
            .handshake(self.open().await?)
            .await
            .map_err(|e| ClientError::Connect(e.into()))?;
        drive(connection, "HTTP/1.1");
        Ok(sender)
    }

    /// A new TCP (+ TLS) connection to the endpoint.
    async fn open(&self) -> Result<UpstreamIo, ClientError> {
        self.settings
            .connector
            .clone()
            .call(self.uri.clone())
            .await
            .map_err(ClientError::Connect)
    }

    /// The most recently returned idle connection still worth using.
    fn take_idle(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(Idle { sender, since }) = idle.connections.pop() {
            if !sender.is_closed() && since.elapsed() < self.settings.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    fn give_back(self: &Arc<Self>, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        if idle.connections.len() >= MAX_IDLE_PER_ENDPOINT {
            // The oldest goes: it is the one least likely to be reused.
            idle.connections.remove(0);
        }
        idle.connections.push(Idle {
            sender,
            since: Instant::now(),
        });
        if !idle.reaper_running {
            // Outside a runtime (never on the request path) the pop-time
            // check in `take_idle` still refuses expired connections.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                idle.reaper_running = true;
                let span = tracing::debug_span!("idle_reaper", endpoint = %self.uri);
                runtime.spawn(reap(Arc::downgrade(self)).instrument(span));
            }
        }
    }

    /// Closes the idle connections whose idle timeout has passed (and those
    /// the endpoint closed); returns when the next one is due, or `None`
    /// (and the reaper stops) when none is left.
    fn close_expired(&self, now: Instant) -> Option<Instant> {
        let timeout = self.settings.idle_timeout;
        let mut idle = self.idle.lock().ok()?;
        // Dropping a connection's only sender closes it.
        idle.connections
            .retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < timeout);
        let next = idle
            .connections
            .first()
            .map(|oldest| oldest.since + timeout);
        if next.is_none() {
            idle.reaper_running = false;
        }
        next
    }

    /// Idle HTTP/1.1 connections held now (tests and `/endpoints`).
    pub fn idle_connections(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.connections.len())
    }
}

/// The reaper of one pool: sleeps until its oldest idle connection is due,
/// closes what is due, and ends when the pool holds no idle connection or
/// is gone.
async fn reap(pool: Weak<EndpointPool>) {
    let mut due = Instant::now();
    loop {
        tokio::time::sleep_until(due).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        match pool.close_expired(Instant::now()) {
            Some(next) => due = next,
            None => return,
        }
    }
}

/// Runs a client connection's I/O on a task of its own until it closes.
fn drive<C>(connection: C, protocol: &'static str)
where
    C: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, protocol, "upstream connection ended");
        }
    });
}

impl ConnectionPool for EndpointPool {
    fn give_back(self: Arc<Self>, sender: http1::SendRequest<Body>) {
        EndpointPool::give_back(&self, sender);
    }
}

#[cfg(test)]
mod tests;
