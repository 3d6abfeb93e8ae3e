//! The factory of per-endpoint connection pools: one per upstream service
//! (and one for the local app, one for the control plane), holding how
//! connections are made (protocol, TLS target, timeouts). Pools live with
//! their endpoints ([`EndpointPool`]); nothing here is on the request path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use hyper_util::client::legacy::connect::HttpConnector;

use super::connector::{MeshConnector, TlsTarget};
use super::pool::{EndpointPool, PoolSettings};

/// Source of factory ids, so a pool can tell which factory made it.
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// What a connection pool is built with; equal settings share a pool across
/// snapshots so an update drops no pooled connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// Speak HTTP/2 (prior knowledge, or ALPN `h2` over TLS).
    pub http2: bool,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Idle pooled connections close after this long.
    pub idle_timeout: Duration,
    /// The SPIFFE ID the endpoints must prove (mTLS), or `None` for plaintext.
    pub expected_identity: Option<String>,
}

/// Makes the connection pools to the endpoints of one service.
#[derive(Debug, Clone)]
pub struct PoolFactory {
    settings: ConnectionSettings,
    id: u64,
    connector: MeshConnector,
}

impl PoolFactory {
    /// A new plaintext pool.
    pub fn new(settings: ConnectionSettings) -> Self {
        Self::with_tls(settings, None)
    }

    /// A new pool; with `tls`, every connection is mTLS to the target identity.
    pub fn with_tls(settings: ConnectionSettings, tls: Option<TlsTarget>) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_nodelay(true);
        Self {
            settings,
            id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
            connector: MeshConnector::new(http, tls),
        }
    }

    /// This factory's id; pools it made carry it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// A new, empty connection pool to the endpoint at `authority`, with
    /// this factory's protocol, TLS and timeouts.
    pub fn pool_for(&self, authority: &Authority) -> Arc<EndpointPool> {
        EndpointPool::new(
            authority,
            PoolSettings {
                factory_id: self.id,
                connector: self.connector.clone(),
                http2: self.settings.http2,
                idle_timeout: self.settings.idle_timeout,
            },
        )
    }

    /// The settings this pool was built with.
    pub fn settings(&self) -> &ConnectionSettings {
        &self.settings
    }
}
