//! Captured outbound connections that are not HTTP (transparent mode),
//! routed by their original destination:
//!
//! ```text
//! app ─► any ip:port ─(nat REDIRECT)─► outbound listener (transport::server: not HTTP)
//!   → an endpoint of a tcp service   through that service: balanced, mTLS (outbound.rs)
//!   → anything else, allow-any       relayed untouched to the original destination
//!   → anything else, registry-only   closed
//! ```
//!
//! Passed-through and refused connections are counted
//! (`tether_passthrough_total`, `tether_outbound_refused_total`, protocol
//! `tcp`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::IntCounter;
use tokio::net::TcpStream;

use super::outbound;
use crate::access_log::AccessLog;
use crate::state::{MeshState, OutboundPolicy};
use crate::transport::{CapturedHandler, Downstream, ListenerMetrics};

/// How long a passed-through connection may take to reach its original
/// destination: the app's own connect timeout usually ends it sooner; this
/// bounds the relays an unreachable address can hold open.
const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves captured non-HTTP connections by original destination.
pub struct TcpCaptured {
    state: Arc<ArcSwap<MeshState>>,
    access_log: Option<AccessLog>,
    passthrough: IntCounter,
    refused: IntCounter,
}

impl TcpCaptured {
    /// Routes by the tcp services' endpoints in the (swappable) `state`.
    pub fn new(
        state: Arc<ArcSwap<MeshState>>,
        metrics: &ListenerMetrics,
        access_log: Option<AccessLog>,
    ) -> Self {
        Self {
            state,
            access_log,
            passthrough: metrics.passthrough.with_label_values(&["tcp"]),
            refused: metrics.outbound_refused.with_label_values(&["tcp"]),
        }
    }
}

impl CapturedHandler for TcpCaptured {
    fn serve(
        &self,
        stream: Downstream,
        original: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let state = self.state.load();
        if let Some(service) = state.tcp_endpoints.get(&original) {
            tracing::debug!(service = %service.service.name, "captured stream to a tcp service endpoint");
            return Box::pin(outbound::serve(
                stream,
                Arc::clone(service),
                self.access_log.clone(),
            ));
        }
        match state.outbound_policy {
            OutboundPolicy::AllowAny => {
                self.passthrough.inc();
                Box::pin(pass_through(stream, original))
            }
            OutboundPolicy::RegistryOnly => {
                self.refused.inc();
                tracing::debug!(
                    policy = OutboundPolicy::RegistryOnly.as_str(),
                    "captured stream to a destination outside the mesh refused"
                );
                Box::pin(std::future::ready(()))
            }
        }
    }
}

/// Relays `app` to `original` untouched until both directions end.
async fn pass_through(mut app: Downstream, original: SocketAddr) {
    let connect = tokio::time::timeout(PASSTHROUGH_CONNECT_TIMEOUT, TcpStream::connect(original));
    let mut server = match connect.await {
        Ok(Ok(server)) => server,
        Ok(Err(error)) => {
            tracing::debug!(%error, "passthrough: cannot connect to the original destination");
            return;
        }
        Err(_) => {
            tracing::debug!(timeout = ?PASSTHROUGH_CONNECT_TIMEOUT, "passthrough: no answer from the original destination");
            return;
        }
    };
    let _ = server.set_nodelay(true);
    match tokio::io::copy_bidirectional(&mut app, &mut server).await {
        Ok((sent, received)) => tracing::debug!(sent, received, "passthrough stream ended"),
        Err(error) => tracing::debug!(%error, "passthrough stream ended with an error"),
    }
}
