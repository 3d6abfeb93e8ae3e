//! An upgrade request (`Upgrade: websocket` and others) to a mesh service:
//! routed and balanced like any request, within the whole-request timeout
//! until the answer's head, and outside the service's request limits (an
//! upgraded stream is long lived). A connect failure is retried on another
//! endpoint as the service's retry policy allows it (`connect-failure` in
//! `retry_on`, `attempts`, backoff, the budget): nothing was sent. Once
//! sent, the request is never retried (it is not kept for replay). The hop
//! and the relay are `crate::upgrade`'s.

use std::sync::Arc;

use tower::retry::budget::Budget;

use super::{Req, Rsp, Target};
use crate::balance::EndpointState;
use crate::body::Body;
use crate::errors::ProxyError;
use crate::request_metrics::Direction;
use crate::resilience::RetryOn;
use crate::upgrade::Upgrades;

/// Sends the upgrade `request` to one endpoint of `target`.
pub(super) async fn send(
    target: &Target,
    upgrades: &Upgrades,
    request: Req,
) -> Result<Rsp, ProxyError> {
    let limit = target.timeout;
    tokio::time::timeout(limit, send_within(target, upgrades, request))
        .await
        .unwrap_or(Err(ProxyError::Timeout(limit)))
}

async fn send_within(
    target: &Target,
    upgrades: &Upgrades,
    request: Req,
) -> Result<Rsp, ProxyError> {
    let service = &target.service;
    let (endpoint, connection) = connect(target).await?;
    let in_flight = endpoint.start();
    let address = endpoint.address();
    let outcome = upgrades
        .forward(
            Direction::Outbound,
            &service.name,
            connection,
            endpoint.authority(),
            request,
            |source| ProxyError::UpstreamReset {
                endpoint: address.to_owned(),
                source,
            },
        )
        .await;
    let failed = outcome
        .as_ref()
        .map_or(true, |response| response.status().is_server_error());
    if outcome.is_ok() {
        endpoint.observe_rtt(in_flight.elapsed());
    }
    service.outliers.record(&endpoint, failed);
    if let Err(error) = &outcome {
        tracing::debug!(endpoint = address, %error, "upgrade failed");
    }
    outcome
}

/// A new HTTP/1.1 connection to an endpoint of `target`; after a failed
/// connect, another endpoint as the retry policy allows.
async fn connect(
    target: &Target,
) -> Result<
    (
        Arc<EndpointState>,
        hyper::client::conn::http1::SendRequest<Body>,
    ),
    ProxyError,
> {
    let service = &target.service;
    let policy = &service.retries;
    service.budget.deposit();
    let mut failed: Option<String> = None;
    let mut tries = 1u32;
    loop {
        let endpoint = target
            .endpoints
            .pick_avoiding(failed.as_deref())
            .map_err(|error| ProxyError::unpicked(error, &service.name))?;
        let pool = endpoint.connections(&service.client);
        let source = match pool.connect_upgrade().await {
            Ok(connection) => return Ok((Arc::clone(endpoint), connection)),
            Err(source) => source,
        };
        service.outliers.record(endpoint, true);
        let error = ProxyError::UpstreamConnect {
            endpoint: endpoint.address().to_owned(),
            source,
        };
        tracing::debug!(%error, "upgrade: connect failed");
        let retry = tries <= policy.attempts
            && policy.retry_on.contains(&RetryOn::ConnectFailure)
            && service.budget.withdraw();
        if !retry {
            return Err(error);
        }
        failed = Some(endpoint.address().to_owned());
        service.metrics.retry();
        tokio::time::sleep(policy.backoff.delay(tries)).await;
        tries += 1;
    }
}
