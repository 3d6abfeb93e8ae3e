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
    fn is_declared_opaque(&self, original: SocketAddr) -> bool {
        self.state.load().tcp_endpoints.contains_key(&original)
    }

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
    match crate::transport::copy_until_idle(&mut app, &mut server, super::BACKSTOP_IDLE_TIMEOUT)
        .await
    {
        Some(Ok((sent, received))) => tracing::debug!(sent, received, "passthrough stream ended"),
        Some(Err(error)) => tracing::debug!(%error, "passthrough stream ended with an error"),
        None => {
            tracing::debug!(idle = ?super::BACKSTOP_IDLE_TIMEOUT, "passthrough stream idle: closed")
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::discovery::build::unknown_metrics;
    use crate::discovery::SnapshotMetrics;
    use crate::transport::{ByteCounters, Counted, MeshStream, Rewind};

    /// A captured stream as the listener hands it over: its first bytes
    /// (`sniffed`) already read, the rest still on the socket. Returns the
    /// app's end too.
    async fn captured(sniffed: &'static [u8]) -> (Downstream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let stream = Counted::new(MeshStream::Plain(accepted), ByteCounters::detached());
        (Rewind::new(Bytes::from_static(sniffed), stream), app)
    }

    fn handler(policy: OutboundPolicy) -> (TcpCaptured, ListenerMetrics) {
        let metrics = SnapshotMetrics::for_tests();
        let mut state = MeshState::empty(unknown_metrics(&metrics));
        state.outbound_policy = policy;
        let listeners = ListenerMetrics::register(&prometheus::Registry::new());
        let state = Arc::new(ArcSwap::from_pointee(state));
        (TcpCaptured::new(state, &listeners, None), listeners)
    }

    #[tokio::test]
    async fn allow_any_relays_to_the_original_destination_untouched() {
        let outside = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let original = outside.local_addr().unwrap();
        let (handler, metrics) = handler(OutboundPolicy::AllowAny);
        let (stream, mut app) = captured(b"hel").await;
        let served = tokio::spawn(handler.serve(stream, original));
        let (mut server, _) = outside.accept().await.unwrap();
        app.write_all(b"lo").await.unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(
            &got, b"hello",
            "the sniffed bytes come first, then the rest"
        );
        server.write_all(b"hi").await.unwrap();
        drop(server);
        let mut back = Vec::new();
        app.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"hi");
        // The relay ends once the app closes its side too.
        drop(app);
        served.await.unwrap();
        let passed = metrics.passthrough.with_label_values(&["tcp"]).get();
        assert_eq!(passed, 1);
    }

    #[tokio::test]
    async fn registry_only_closes_and_counts() {
        let outside = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (handler, metrics) = handler(OutboundPolicy::RegistryOnly);
        let (stream, mut app) = captured(b"").await;
        handler.serve(stream, outside.local_addr().unwrap()).await;
        let mut back = Vec::new();
        let read = app.read_to_end(&mut back).await;
        assert!(back.is_empty(), "{read:?}");
        assert_eq!(
            metrics.outbound_refused.with_label_values(&["tcp"]).get(),
            1
        );
        assert_eq!(metrics.passthrough.with_label_values(&["tcp"]).get(), 0);
    }
}
