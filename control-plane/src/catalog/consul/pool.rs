//! A strictly bounded set of HTTP/1.1 connections to one Consul agent.
//!
//! Consul refuses more than `limits.http_max_conns_per_client` (default
//! 200) connections from one client address and then simply closes new
//! ones. hyper-util's pooled client cannot promise a bound: it races a new
//! connection against an idle one being returned, and keeps the loser. Here
//! every connection holds a permit of a semaphore of `max` for as long as
//! its socket is open, and a request either reuses an idle connection or
//! opens one under such a permit, so the process never has more than `max`
//! sockets to Consul, whatever the load.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::metrics::ControlMetrics;

/// Boxed error of a connection or an exchange.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How connections are opened: plain TCP, or TLS verified against Consul's CA.
#[derive(Clone)]
pub enum Connector {
    /// `http://`.
    Plain(HttpConnector),
    /// `https://`.
    Tls(HttpsConnector<HttpConnector>),
}

/// A failed exchange.
#[derive(Debug)]
pub enum PoolError {
    /// No answer (headers and body) within the time given.
    Timeout,
    /// No connection, or it broke.
    Transport(BoxError),
}

/// An answer: status, headers, whole body.
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// At most `max` connections to one agent, reused while they stay open.
pub struct Pool {
    connector: Connector,
    /// The agent (`scheme://host:port`), what connections are opened to.
    base: Uri,
    /// The `Host` header of every request.
    host: HeaderValue,
    /// One permit per open connection, held until its socket closes.
    connections: Arc<Semaphore>,
    /// One permit per exchange in flight: never more than connections.
    exchanges: Semaphore,
    idle: Mutex<Vec<SendRequest<Empty<Bytes>>>>,
    metrics: ControlMetrics,
}

impl Pool {
    /// A pool of at most `max` (at least 1) connections to `base`.
    pub fn new(connector: Connector, base: Uri, max: usize, metrics: ControlMetrics) -> Self {
        let host = base
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .unwrap_or_else(|| HeaderValue::from_static("consul"));
        let max = max.max(1);
        Self {
            connector,
            base,
            host,
            connections: Arc::new(Semaphore::new(max)),
            exchanges: Semaphore::new(max),
            idle: Mutex::new(Vec::new()),
            metrics,
        }
    }

    /// `GET path_and_query` with `headers`, answered in full within `timeout`.
    pub async fn get(
        &self,
        path_and_query: &str,
        headers: &HeaderMap,
        timeout: Duration,
    ) -> Result<Answer, PoolError> {
        // Never closed: an error here cannot happen, but is not a panic.
        let _exchange = self
            .exchanges
            .acquire()
            .await
            .map_err(|e| PoolError::Transport(Box::new(e)))?;
        self.metrics.consul_requests_in_flight.inc();
        let _in_flight = DecOnDrop(&self.metrics.consul_requests_in_flight);
        tokio::time::timeout(timeout, self.exchange(path_and_query, headers))
            .await
            .map_err(|_| PoolError::Timeout)?
    }

    async fn exchange(
        &self,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Result<Answer, PoolError> {
        // An idle connection the agent closed meanwhile fails at once (before
        // any answer): that is no failure of Consul, so try the next one,
        // then a fresh connection, whose failure is reported.
        while let Some(sender) = self.take_idle() {
            if let Ok(answer) = self.send(sender, path_and_query, headers).await {
                return Ok(answer);
            }
        }
        let sender = self.connect().await.map_err(PoolError::Transport)?;
        self.send(sender, path_and_query, headers)
            .await
            .map_err(PoolError::Transport)
    }

    fn take_idle(&self) -> Option<SendRequest<Empty<Bytes>>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    async fn send(
        &self,
        mut sender: SendRequest<Empty<Bytes>>,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Result<Answer, BoxError> {
        sender.ready().await?;
        let mut request = http::Request::get(path_and_query).body(Empty::new())?;
        *request.headers_mut() = headers.clone();
        request
            .headers_mut()
            .insert(http::header::HOST, self.host.clone());
        let response = sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(sender);
        }
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Opens a connection under a permit that its task holds until the
    /// socket is closed (the sender dropped, or the agent closed it).
    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>, BoxError> {
        let permit = Arc::clone(&self.connections).acquire_owned().await?;
        let gauge = self.metrics.consul_connections.clone();
        let sender = match &self.connector {
            Connector::Plain(connector) => {
                let io = connector.clone().oneshot(self.base.clone()).await?;
                spawn_connection(io, permit, gauge).await?
            }
            Connector::Tls(connector) => {
                let io = connector.clone().oneshot(self.base.clone()).await?;
                spawn_connection(io, permit, gauge).await?
            }
        };
        Ok(sender)
    }
}

/// Decrements a gauge when dropped (a cancelled exchange included).
struct DecOnDrop<'a>(&'a prometheus::IntGauge);

impl Drop for DecOnDrop<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// HTTP/1.1 over `io`: the connection runs in its own task, which holds
/// `permit` and counts itself in `gauge` until the socket closes.
async fn spawn_connection<IO>(
    io: IO,
    permit: tokio::sync::OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
) -> Result<SendRequest<Empty<Bytes>>, BoxError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(io).await?;
    gauge.inc();
    tokio::spawn(async move {
        let _ = connection.await;
        gauge.dec();
        drop(permit);
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// An HTTP/1.1 server that answers `[]` to every request after 10 ms,
    /// counting the connections it accepted and the most open at once.
    async fn server() -> (Uri, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        let (accepted, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let open = Arc::new(AtomicUsize::new(0));
        let (a, m) = (Arc::clone(&accepted), Arc::clone(&most));
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                let open = Arc::clone(&open);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]";
                            if socket.write_all(answer).await.is_err() {
                                break;
                            }
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        let base = format!("http://127.0.0.1:{port}")
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        (base, accepted, most)
    }

    #[tokio::test]
    async fn never_more_connections_than_the_bound_and_they_are_reused() {
        let (base, accepted, most) = server().await;
        let metrics = ControlMetrics::new();
        let pool = Arc::new(Pool::new(
            Connector::Plain(HttpConnector::new()),
            base,
            3,
            metrics.clone(),
        ));
        let mut tasks = Vec::new();
        for _ in 0..60 {
            let pool = Arc::clone(&pool);
            tasks.push(tokio::spawn(async move {
                pool.get("/v1/x", &HeaderMap::new(), Duration::from_secs(10))
                    .await
                    .map(|a| (a.status, a.body))
            }));
        }
        for task in tasks {
            let answer = task.await.unwrap_or_else(|e| panic!("{e}"));
            assert!(
                matches!(&answer, Ok((status, body)) if *status == StatusCode::OK && &body[..] == b"[]"),
                "{:?}",
                answer.map(|a| a.0)
            );
        }
        assert!(
            most.load(Ordering::SeqCst) <= 3,
            "{} connections open at once",
            most.load(Ordering::SeqCst)
        );
        assert!(
            accepted.load(Ordering::SeqCst) <= 3,
            "{} connections opened for 60 requests: not reused",
            accepted.load(Ordering::SeqCst)
        );
        assert!((1..=3).contains(&metrics.consul_connections.get()));
        assert_eq!(metrics.consul_requests_in_flight.get(), 0);
    }
}
