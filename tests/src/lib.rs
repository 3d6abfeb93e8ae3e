//! Building blocks for Tether's end-to-end tests: real HTTP backends on
//! loopback, the real `tether-proxy` binary, a small client, and polling
//! helpers so tests wait on conditions rather than sleeps.

pub mod backend;
pub mod chaos;
pub mod client;
pub mod consul;
pub mod consul_cluster;
pub mod consul_secure;
pub mod control;
pub mod docker;
pub mod echo;
pub mod h2spec;
pub mod jaeger;
pub mod mesh_tls;
pub mod netns;
pub mod pki;
pub mod proxy;
pub mod sockets;
pub mod tls_relay;
pub mod tokens;

use std::future::Future;
use std::time::Duration;

pub use backend::{Backend, Behavior};
pub use client::{Client, H2Connection, Reply};
pub use pki::TestPki;
pub use proxy::{Proxy, ProxyBuilder};

/// A tool the suite needs, built or found by its install script: `$ENV_VAR`
/// if set, else the path `deploy/scripts/SCRIPT` prints last on stdout. The
/// script's log goes to stderr. A missing tool fails the test.
pub fn installed_binary(env_var: &str, script: &str) -> std::path::PathBuf {
    use std::path::PathBuf;
    use std::process::{Command, Stdio};
    if let Some(path) = std::env::var_os(env_var) {
        return PathBuf::from(path);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/scripts")
        .join(script);
    let output = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e} (or set {env_var})", script.display()));
    assert!(
        output.status.success(),
        "{} failed: this test needs what it installs (or set {env_var})",
        script.display()
    );
    let path = String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    assert!(!path.is_empty(), "{} printed no path", script.display());
    PathBuf::from(path)
}

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

/// First port [`free_port`] hands out, and how many it cycles through:
/// below Linux's ephemeral range (32768 and up), so no outgoing connection
/// can take a port between the check and the test's bind, and above the
/// fixed ports of the quickstart and benchmarks (15000-18999).
const TEST_PORTS: std::ops::Range<u32> = 20_000..32_000;

/// A loopback port nothing listens on, for a process the test starts.
///
/// Ports come from [`TEST_PORTS`] in turn (a counter shared by the tests of
/// one binary, which run in parallel threads; binaries run one after
/// another), each checked by binding it. Binding port 0 instead would hand
/// out ephemeral ports that outgoing connections also use, and a proxy
/// started a moment later could find its port taken.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = TEST_PORTS.end - TEST_PORTS.start;
    let offset = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = TEST_PORTS.start + (offset + n) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {TEST_PORTS:?}")
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
