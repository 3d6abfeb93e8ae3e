//! An upgrade request (`Upgrade: websocket` and others) to a mesh service:
//! routed and balanced like any request, within the whole-request timeout
//! until the answer's head, but tried once (no retry, no replay buffer)
//! and outside the service's request limits (an upgraded stream is long
//! lived). The hop and the relay are `crate::upgrade`'s.

use super::{Req, Rsp, Target};
use crate::errors::ProxyError;
use crate::request_metrics::Direction;
use crate::upgrade::Upgrades;

/// Sends the upgrade `request` to one endpoint of `target`.
pub(super) async fn send(
    target: &Target,
    upgrades: &Upgrades,
    request: Req,
) -> Result<Rsp, ProxyError> {
    let service = &target.service;
    let endpoint = target
        .endpoints
        .pick_avoiding(None)
        .map_err(|error| ProxyError::unpicked(error, &service.name))?;
    let in_flight = endpoint.start();
    let pool = endpoint.connections(&service.client);
    let address = endpoint.address();
    let forwarded = upgrades.forward(
        Direction::Outbound,
        &service.name,
        &pool,
        endpoint.authority(),
        request,
        |source| {
            if source.is_connect() {
                ProxyError::UpstreamConnect {
                    endpoint: address.to_owned(),
                    source,
                }
            } else {
                ProxyError::UpstreamReset {
                    endpoint: address.to_owned(),
                    source,
                }
            }
        },
    );
    let outcome = tokio::time::timeout(target.timeout, forwarded)
        .await
        .unwrap_or(Err(ProxyError::Timeout(target.timeout)));
    let failed = outcome
        .as_ref()
        .map_or(true, |response| response.status().is_server_error());
    if outcome.is_ok() {
        endpoint.observe_rtt(in_flight.elapsed());
    }
    service.outliers.record(endpoint, failed);
    if let Err(error) = &outcome {
        tracing::debug!(endpoint = address, %error, "upgrade failed");
    }
    outcome
}
