//! Captured HTTP requests (transparent mode) whose authority is not a mesh
//! service: sent untouched to the address the app connected to
//! (`outbound_policy: allow-any`), or refused with the answer an unknown
//! service gets on the explicit listener, `503 tether-error:
//! unknown-service` (`registry-only`). Counted either way:
//! `tether_passthrough_total{protocol="http"}`,
//! `tether_outbound_refused_total{protocol="http"}`.

use std::net::SocketAddr;
use std::time::Duration;

use http::uri::Authority;
use prometheus::IntCounter;

use super::{Req, Rsp};
use crate::errors::ProxyError;
use crate::hop::{from_upstream, to_upstream};
use crate::transport::{ConnectionSettings, ListenerMetrics, PoolFactory};

/// Connect timeout to an original destination outside the mesh.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections to original destinations: each request has its own
/// pool, so this only bounds a connection the response still holds.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Plaintext HTTP/1.1 to original destinations, and the counters.
#[derive(Debug, Clone)]
pub struct Passthrough {
    client: PoolFactory,
    /// Requests passed through.
    pub passed: IntCounter,
    /// Requests refused.
    pub refused: IntCounter,
}

impl Passthrough {
    /// Counting in the listener families.
    pub fn new(metrics: &ListenerMetrics) -> Self {
        Self {
            client: PoolFactory::new(ConnectionSettings {
                http2: false,
                connect_timeout: CONNECT_TIMEOUT,
                idle_timeout: IDLE_TIMEOUT,
                expected_identity: None,
            }),
            passed: metrics.passthrough.with_label_values(&["http"]),
            refused: metrics.outbound_refused.with_label_values(&["http"]),
        }
    }

    /// Sends `request` to `original` over HTTP/1.1, its `Host` kept.
    pub async fn send(&self, request: Req, original: SocketAddr) -> Result<Rsp, ProxyError> {
        self.passed.inc();
        let endpoint = original.to_string();
        let authority = Authority::try_from(endpoint.as_str())
            .map_err(|e| ProxyError::BadRequest(format!("original destination {endpoint}: {e}")))?;
        let pool = self.client.pool_for(&authority);
        let request = to_upstream(request, &authority, false)?;
        match pool.send(request).await {
            Ok(response) => Ok(from_upstream(response)),
            Err(source) if source.is_connect() => {
                Err(ProxyError::UpstreamConnect { endpoint, source })
            }
            Err(source) => Err(ProxyError::UpstreamReset { endpoint, source }),
        }
    }
}
