//! The innermost layer: pick an endpoint, send one try (within the per-try
//! timeout, when the policy sets one: otherwise only the whole-request
//! timeout bounds it), and feed the outcome to the balancer and outlier
//! detection.

use super::{Req, Rsp, Target};
use crate::errors::ProxyError;
use crate::forward::{from_upstream, to_upstream};
use crate::telemetry::TraceCx;

/// Sends one try of `request` to one endpoint of `target`.
pub async fn forward(target: &Target, request: Req) -> Result<Rsp, ProxyError> {
    let service = &target.service;
    let endpoint = target
        .endpoints
        .pick()
        .ok_or_else(|| ProxyError::NoEndpoints(service.name.clone()))?;
    let in_flight = endpoint.start();
    // The first try's endpoint is a span attribute; each later try is a
    // `retry` event naming its own, so a plain request carries no event
    // (each one costs its export).
    TraceCx::try_started(&request, endpoint.address());
    let pool = endpoint.connections(&service.client);
    let request = to_upstream(request, endpoint.authority(), pool.is_http2())?;
    let result = match service.retries.per_try_timeout {
        Some(per_try) => tokio::time::timeout(per_try, pool.send(request))
            .await
            .map_err(|_| per_try),
        None => Ok(pool.send(request).await),
    };
    let outcome = match result {
        Err(per_try) => Err(ProxyError::PerTryTimeout(per_try)),
        Ok(Ok(response)) => Ok(from_upstream(response)),
        Ok(Err(source)) if source.is_connect() => Err(ProxyError::UpstreamConnect {
            endpoint: endpoint.address().to_owned(),
            source,
        }),
        Ok(Err(source)) => Err(ProxyError::UpstreamReset {
            endpoint: endpoint.address().to_owned(),
            source,
        }),
    };
    let failed = match &outcome {
        Ok(response) => response.status().is_server_error(),
        Err(_) => true,
    };
    if outcome.is_ok() {
        endpoint.observe_rtt(in_flight.elapsed());
    }
    service.outliers.record(endpoint, failed);
    if let Err(error) = &outcome {
        tracing::debug!(endpoint = endpoint.address(), %error, "try failed");
    }
    outcome
}
