//! Shared by the integration tests: a tiny HTTP client, free ports, polling
//! with a deadline, a real Consul dev agent and the real `tether-control`.
// Each test file uses a different part of this module.
#![allow(dead_code)]

pub mod consul;
pub mod control;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// Polls `check` every 20 ms until it holds or `within` runs out.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fails the test with `message` unless `check` holds within `within`.
#[macro_export]
macro_rules! assert_eventually {
    ($within:expr, $check:expr, $($message:tt)+) => {
        assert!($crate::support::eventually($within, $check).await, $($message)+)
    };
}

/// An HTTP/1 client for loopback test traffic.
#[derive(Clone)]
pub struct Http(Client<HttpConnector, Full<Bytes>>);

impl Default for Http {
    fn default() -> Self {
        Self(Client::builder(TokioExecutor::new()).build_http())
    }
}

/// An answer: status and body text.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Body as text.
    pub body: String,
}

impl Http {
    /// Sends a request; `Err` when no connection could be made.
    pub async fn send(
        &self,
        method: Method,
        addr: SocketAddr,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<Reply, String> {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .body(Full::new(body.into()))
            .map_err(|e| e.to_string())?;
        let response = self.0.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Reply {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// `GET`, panicking when nothing answers.
    pub async fn get(&self, addr: SocketAddr, path: &str) -> Reply {
        self.send(Method::GET, addr, path, Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
    }
}
