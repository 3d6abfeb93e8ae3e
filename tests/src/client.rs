//! A small HTTP client for tests (HTTP/1.1, or HTTP/2 prior knowledge).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client as Legacy};
use hyper_util::rt::TokioExecutor;

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body as text.
    pub body: String,
}

impl Reply {
    /// A header's value as text ("" if absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// A pooled client.
#[derive(Clone)]
pub struct Client {
    inner: Legacy<HttpConnector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Self::http1()
    }
}

impl Client {
    /// HTTP/1.1 with keep-alive.
    pub fn http1() -> Self {
        Self {
            inner: Legacy::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// HTTP/2 with prior knowledge (h2c): one connection, many streams.
    pub fn http2() -> Self {
        Self {
            inner: Legacy::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    /// `GET http://{addr}{path}` with `Host: {host}`.
    pub async fn get(&self, addr: SocketAddr, host: &str, path: &str) -> Reply {
        self.send(Method::GET, addr, host, path, Bytes::new(), &[])
            .await
    }

    /// Sends a request; panics only if the connection itself fails.
    pub async fn send(
        &self,
        method: Method,
        addr: SocketAddr,
        host: &str,
        path: &str,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.try_send(method, addr, host, path, body, headers)
            .await
            .unwrap_or_else(|e| panic!("request to {addr}{path} failed: {e}"))
    }

    /// Sends a request, returning connection errors.
    pub async fn try_send(
        &self,
        method: Method,
        addr: SocketAddr,
        host: &str,
        path: &str,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        request = request.header("host", host);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        let response = self
            .inner
            .request(request)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// One raw HTTP/2 (h2c) connection, so a test controls `:authority` and
/// knows every stream shares the same connection.
#[derive(Clone)]
pub struct H2Connection {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2Connection {
    /// Connects with prior knowledge.
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let (sender, connection) = hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap_or_else(|e| panic!("h2 handshake: {e}"));
        tokio::spawn(connection);
        Self { sender }
    }

    /// `GET http://{authority}{path}` on this connection.
    pub async fn get(&self, authority: &str, path: &str) -> Reply {
        let request = Request::get(format!("http://{authority}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap_or_else(|e| panic!("request: {e}"));
        let response = self
            .sender
            .clone()
            .send_request(request)
            .await
            .unwrap_or_else(|e| panic!("h2 request: {e}"));
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}
