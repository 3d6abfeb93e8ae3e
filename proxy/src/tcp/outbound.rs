//! One app connection on a tcp service's port: pick an endpoint, connect
//! (retrying another endpoint on failure), secure the stream, relay.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::retry::budget::Budget;

use super::relay::{relay, Outcome, StreamLog};
use crate::access_log::AccessLog;
use crate::balance::{EndpointState, InFlight, PickError};
use crate::errors::{Reason, RetrySkip};
use crate::request_metrics::Direction;
use crate::resilience::RetryOn;
use crate::state::{TcpService, UpstreamService};
use crate::transport::preamble::PREAMBLE;
use crate::transport::{tls_connect, MeshStream};

/// Why no stream to an endpoint could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The service has no endpoints.
    #[error("service `{0}` has no endpoints")]
    NoEndpoints(String),
    /// Every endpoint is ejected.
    #[error("every endpoint of `{0}` is ejected by outlier detection")]
    AllEndpointsEjected(String),
    /// Connecting, the TLS handshake or the preamble failed.
    #[error("cannot connect to {endpoint}: {source}")]
    Failed {
        /// The endpoint tried last.
        endpoint: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The endpoint did not answer within the connect timeout.
    #[error("cannot connect to {endpoint}: no answer within {timeout:?}")]
    Timeout {
        /// The endpoint tried last.
        endpoint: String,
        /// The connect timeout.
        timeout: Duration,
    },
}

impl ConnectError {
    /// The reason, in the vocabulary HTTP uses.
    fn reason(&self) -> Reason {
        match self {
            ConnectError::NoEndpoints(_) => Reason::NoEndpoints,
            ConnectError::AllEndpointsEjected(_) => Reason::AllEndpointsEjected,
            ConnectError::Failed { .. } | ConnectError::Timeout { .. } => Reason::UpstreamConnect,
        }
    }
}

/// A stream to an endpoint, counted in its in-flight total while open (so
/// `least-request` balances open streams).
struct Connected {
    stream: MeshStream,
    in_flight: InFlight,
}

/// Serves one app connection to `service` until it ends.
pub async fn serve<A>(app: A, service: Arc<TcpService>, access_log: Option<AccessLog>)
where
    A: AsyncRead + AsyncWrite + Unpin,
{
    let mut log = StreamLog::start(Direction::Outbound, &service.service.name, None);
    let _open = service.metrics.opened();
    let outcome = match connect(&service).await {
        Ok(connected) => {
            log.endpoint = Some(connected.in_flight.endpoint().address().to_owned());
            let outcome = relay(
                app,
                connected.stream,
                &service.metrics,
                service.idle_timeout,
            )
            .await;
            drop(connected.in_flight);
            outcome
        }
        Err(error) => {
            let reason = error.reason();
            tracing::debug!(%error, reason = reason.as_str(), service = %service.service.name, "tcp stream not opened");
            Outcome {
                error: Some(reason),
                ..Outcome::default()
            }
        }
    };
    log.finish(access_log.as_ref(), outcome);
}

/// Tries endpoints until one takes the stream: the first as the balancer
/// picks, then (on `connect-failure` retries, within the budget) others not
/// tried yet. Every outcome feeds outlier detection.
async fn connect(tcp: &TcpService) -> Result<Connected, ConnectError> {
    let service = &tcp.service;
    service.budget.deposit();
    let retries = if service.retries.retry_on.contains(&RetryOn::ConnectFailure) {
        service.retries.attempts
    } else {
        0
    };
    let mut tried: Vec<Arc<EndpointState>> = Vec::new();
    let mut last = ConnectError::NoEndpoints(service.name.clone());
    for attempt in 0..=retries {
        let endpoint = match pick(service, &tried) {
            Ok(Some(endpoint)) => endpoint,
            Ok(None) => break,
            Err(error) => {
                if tried.is_empty() {
                    last = match error {
                        PickError::NoEndpoints => ConnectError::NoEndpoints(service.name.clone()),
                        PickError::AllEjected => {
                            ConnectError::AllEndpointsEjected(service.name.clone())
                        }
                    };
                }
                break;
            }
        };
        if attempt > 0 {
            if !service.budget.withdraw() {
                service
                    .metrics
                    .retry_skipped(RetrySkip::BudgetExhausted.as_str());
                break;
            }
            service.metrics.retry();
        }
        let in_flight = endpoint.start();
        match connect_one(&endpoint, tcp).await {
            Ok(stream) => {
                service.outliers.record(&endpoint, false);
                endpoint.observe_rtt(in_flight.elapsed());
                return Ok(Connected { stream, in_flight });
            }
            Err(error) => {
                tracing::debug!(%error, attempt, "tcp connect failed");
                service.outliers.record(&endpoint, true);
                tcp.metrics.connect_failed();
                last = error;
                tried.push(endpoint);
            }
        }
    }
    Err(last)
}

/// The balancer's pick unless already tried; then a few more draws, then
/// any endpoint not tried and not ejected (`None`: nothing left to try).
fn pick(
    service: &UpstreamService,
    tried: &[Arc<EndpointState>],
) -> Result<Option<Arc<EndpointState>>, PickError> {
    let set = service
        .default_split
        .choose()
        .ok_or(PickError::NoEndpoints)?;
    let fresh = |e: &Arc<EndpointState>| !tried.iter().any(|t| Arc::ptr_eq(t, e));
    for _ in 0..3 {
        let endpoint = set.pick()?;
        if fresh(endpoint) {
            return Ok(Some(Arc::clone(endpoint)));
        }
    }
    Ok(set
        .endpoints()
        .iter()
        .find(|e| fresh(e) && !e.is_ejected())
        .cloned())
}

/// TCP connect, then TLS (which must negotiate `tether-tcp`) or the
/// preamble, all within the connect timeout.
async fn connect_one(
    endpoint: &EndpointState,
    tcp: &TcpService,
) -> Result<MeshStream, ConnectError> {
    let address = endpoint.address();
    let attempt = async {
        let stream = TcpStream::connect(address).await?;
        let _ = stream.set_nodelay(true);
        match &tcp.tls {
            Some(tls) => {
                let stream = tls_connect(tls, stream).await?;
                if stream.alpn() != Some(tether_certs::MESH_TCP_ALPN) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the endpoint did not accept ALPN tether-tcp (a sidecar without TCP support?)",
                    ));
                }
                Ok(stream)
            }
            None => {
                let mut stream = stream;
                stream.write_all(PREAMBLE).await?;
                Ok(MeshStream::Plain(stream))
            }
        }
    };
    match tokio::time::timeout(tcp.connect_timeout, attempt).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(ConnectError::Failed {
            endpoint: address.to_owned(),
            source,
        }),
        Err(_) => Err(ConnectError::Timeout {
            endpoint: address.to_owned(),
            timeout: tcp.connect_timeout,
        }),
    }
}
