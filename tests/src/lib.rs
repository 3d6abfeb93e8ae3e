//! Building blocks for Tether's end-to-end tests: real HTTP backends on
//! loopback, the real `tether-proxy` binary, a small client, and polling
//! helpers so tests wait on conditions rather than sleeps.

pub mod backend;
pub mod client;
pub mod consul;
pub mod control;
pub mod echo;
pub mod jaeger;
pub mod mesh_tls;
pub mod pki;
pub mod proxy;

use std::future::Future;
use std::time::Duration;

pub use backend::{Backend, Behavior};
pub use client::{Client, H2Connection, Reply};
pub use pki::TestPki;
pub use proxy::{Proxy, ProxyBuilder};

/// Polls `check` every 20 ms until it returns true or `within` passes.
/// Returns whether it became true.
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

/// Asserts that `check` becomes true within `within`, with a message.
#[macro_export]
macro_rules! assert_eventually {
    ($within:expr, $check:expr, $($msg:tt)+) => {
        assert!($crate::eventually($within, $check).await, $($msg)+)
    };
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// The value of one Prometheus series in `text`, by its exact name and
/// labels as rendered (e.g. `tether_retries_total{service="api"}`).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}
