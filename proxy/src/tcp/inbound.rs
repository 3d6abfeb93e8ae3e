//! Opaque TCP streams from the mesh to the local app: authorize the caller
//! at L4 (identity only), connect to the app, relay.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Authority;
use prometheus::IntCounter;
use tokio::net::TcpStream;

use super::relay::{relay_first_byte, Outcome, StreamLog};
use crate::access_log::AccessLog;
use crate::errors::Reason;
use crate::request_metrics::{Direction, RequestMetrics};
use crate::state::MeshState;
use crate::tcp_metrics::{TcpFamilies, TcpMetrics};
use crate::transport::{Downstream, Peer, StreamHandler};

/// Connecting to the local app takes longer than this only when it is
/// overloaded or gone; the same bound as the inbound HTTP pool's.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A plaintext connection taken for opaque TCP because it stayed silent
/// (a server-first client) is closed when no byte has moved either way
/// within this of being relayed: a server-first app greets at once, so
/// silence both ways means nobody is talking, and a flood of idle
/// connections must not each hold two sockets for the 1 h backstop.
pub const SILENT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);

/// The inbound TCP path, handed streams by the inbound listener.
#[derive(Clone)]
pub struct TcpInbound {
    inner: Arc<Inner>,
}

struct Inner {
    service: String,
    app: Authority,
    state: Arc<ArcSwap<MeshState>>,
    denied: IntCounter,
    metrics: TcpMetrics,
    access_log: Option<AccessLog>,
}

impl TcpInbound {
    /// Streams for `service` (this proxy's) go to `app`, as the policy in
    /// `state` allows.
    pub fn new(
        service: &str,
        app: Authority,
        state: Arc<ArcSwap<MeshState>>,
        metrics: &RequestMetrics,
        tcp_metrics: &TcpFamilies,
        access_log: Option<AccessLog>,
    ) -> Self {
        let inner = Inner {
            service: service.to_owned(),
            app,
            state,
            denied: metrics.authz_denied.with_label_values(&[service]),
            metrics: tcp_metrics.service(Direction::Inbound, service),
            access_log,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Whether `peer` may open a stream: no policy lets everyone in.
    fn authorized(&self, peer: Option<&Peer>) -> bool {
        let state = self.inner.state.load();
        state
            .authorization
            .as_ref()
            .is_none_or(|policy| policy.allows_l4(peer.map(|p| &p.id)))
    }

    async fn handle(self, stream: Downstream, peer: Option<Arc<Peer>>, silent: bool) {
        let inner = &*self.inner;
        let log = StreamLog::start(
            Direction::Inbound,
            &inner.service,
            peer.as_ref().map(|p| p.text.clone()),
        );
        let access_log = inner.access_log.as_ref();
        if !self.authorized(peer.as_deref()) {
            inner.denied.inc();
            tracing::debug!(
                caller = peer.as_ref().map_or("unauthenticated", |p| p.text.as_str()),
                service = %inner.service,
                "tcp stream refused by authorization"
            );
            let error = Some(Reason::Unauthorized);
            log.finish(
                access_log,
                Outcome {
                    error,
                    ..Outcome::default()
                },
            );
            return;
        }
        let _open = inner.metrics.opened();
        let connecting = TcpStream::connect(inner.app.as_str());
        let connected = match tokio::time::timeout(APP_CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(app)) => Ok(app),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {APP_CONNECT_TIMEOUT:?}")),
        };
        let app = match connected {
            Ok(app) => app,
            Err(error) => {
                inner.metrics.connect_failed();
                tracing::debug!(app = %inner.app, %error, "cannot reach the local app");
                let error = Some(Reason::UpstreamConnect);
                log.finish(
                    access_log,
                    Outcome {
                        error,
                        ..Outcome::default()
                    },
                );
                return;
            }
        };
        let _ = app.set_nodelay(true);
        let idle = super::BACKSTOP_IDLE_TIMEOUT;
        let first_byte = if silent {
            SILENT_FIRST_BYTE_TIMEOUT
        } else {
            idle
        };
        let outcome = relay_first_byte(stream, app, &inner.metrics, first_byte, idle).await;
        log.finish(access_log, outcome);
    }
}

impl StreamHandler for TcpInbound {
    fn serve(
        &self,
        stream: Downstream,
        peer: Option<Arc<Peer>>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(self.clone().handle(stream, peer, false))
    }

    fn serve_silent(
        &self,
        stream: Downstream,
        peer: Option<Arc<Peer>>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(self.clone().handle(stream, peer, true))
    }
}
