//! Downstream acceptor: binds, accepts, serves HTTP/1.1 and HTTP/2 (prior
//! knowledge, detected per connection), and drains gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::body::Body;
use crate::metrics::{Direction, Metrics};

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
        direction: Option<Direction>,
        settings: ServerSettings,
        metrics: Metrics,
        handler: H,
    ) where
        H: Fn(Request<Body>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let stop = self.stop.subscribe();
        let name = direction.map_or("admin", Direction::as_str);
        let span = tracing::info_span!("listener", %name, addr = ?listener.local_addr().ok());
        self.tasks.spawn(
            accept_loop(listener, direction, settings, metrics, handler, stop).instrument(span),
        );
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
    direction: Option<Direction>,
    settings: ServerSettings,
    metrics: Metrics,
    handler: H,
    mut stop: watch::Receiver<bool>,
) -> GracefulShutdown
where
    H: Fn(Request<Body>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(settings.max_connections));
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
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let guard = direction.map(|d| metrics.connection_opened(d));
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let response = handler(request.map(Body::from));
            async move { Ok::<_, Infallible>(response.await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        let span = tracing::debug_span!("connection", %peer);
        tokio::spawn(
            async move {
                if let Err(error) = connection.await {
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
