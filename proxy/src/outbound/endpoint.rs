//! The innermost layer: pick an endpoint, send one try (within the per-try
//! timeout, when the policy sets one: otherwise only the whole-request
//! timeout bounds it), and feed the outcome to the balancer and outlier
//! detection.

use super::{Req, Rsp, Target};
use crate::errors::{is_peer_app_connect, is_peer_grpc_app_connect, ProxyError};
use crate::grpc;
use crate::hop::{from_upstream, to_upstream};
use crate::telemetry::InFlightSpan;

/// Sends one try of the request in `slot` to one endpoint of `target`, not
/// the one at `avoid` (where the last try could not connect) when another
/// can be had. Leaves the slot empty, whatever the outcome (an unsent
/// request is dropped, as it would be if it had been passed by value).
pub async fn send_one_try(
    target: &Target,
    slot: &mut Option<Req>,
    avoid: Option<&str>,
) -> Result<Rsp, ProxyError> {
    let service = &target.service;
    // A retry whose subset has no endpoint but the one that just failed to
    // connect goes to another subset of the split, if there is one.
    let set = match avoid {
        Some(failed) if !target.endpoints.has_other_than(failed) => target
            .split()
            .choose_other(&target.endpoints)
            .unwrap_or(&target.endpoints),
        _ => &target.endpoints,
    };
    let endpoint = match set.pick_avoiding(avoid) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            *slot = None;
            return Err(ProxyError::unpicked(error, &service.name));
        }
    };
    let Some(request) = slot.take() else {
        return Err(ProxyError::NotReady("no request to send"));
    };
    let in_flight = endpoint.start();
    // The first try's endpoint is a span attribute; each later try is a
    // `retry` event naming its own, so a plain request carries no event
    // (each one costs its export).
    InFlightSpan::try_started(&request, endpoint.address());
    let pool = endpoint.connections(&service.client);
    let mut request = to_upstream(request, endpoint.authority(), pool.is_http2())?;
    if let Some(deadline) = target.deadline {
        // The caller's deadline, less the time spent here so far.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        request
            .headers_mut()
            .insert(grpc::GRPC_TIMEOUT, grpc::encode_timeout(left));
    }
    // Back in the slot, which the pool takes it from when a connection is
    // ready: the request is not stored once more in each future below.
    *slot = Some(request);
    let result = {
        // Awaited pinned where it is made: `.await` and `timeout` would move it.
        let send = std::pin::pin!(pool.send_from(slot));
        match service.retries.per_try_timeout {
            Some(per_try) => tokio::time::timeout(per_try, send)
                .await
                .map_err(|_| per_try),
            None => Ok(send.await),
        }
    };
    // Not sent (no connection, or the per-try timeout): dropped here.
    *slot = None;
    let outcome = match result {
        Err(per_try) => Err(ProxyError::PerTryTimeout(per_try)),
        // The peer sidecar could not reach its app: nothing was processed.
        // Believed only from a peer authenticated by mTLS.
        Ok(Ok(response))
            if pool.is_mtls()
                && if target.grpc {
                    is_peer_grpc_app_connect(&response)
                } else {
                    is_peer_app_connect(&response)
                } =>
        {
            Err(ProxyError::PeerAppConnect {
                endpoint: endpoint.address().to_owned(),
            })
        }
        Ok(Ok(response)) => {
            let mut response = from_upstream(response);
            if target.tapped {
                let upstream = crate::tap::TapUpstream(endpoint.address().to_owned());
                response.extensions_mut().insert(upstream);
            }
            Ok(response)
        }
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
        Ok(response) => {
            response.status().is_server_error()
                || (target.grpc
                    && grpc::status_of(response.headers())
                        .is_some_and(grpc::Code::is_server_failure))
        }
        Err(_) => true,
    };
    if outcome.is_ok() {
        in_flight.observe_rtt();
    }
    service.outliers.record(endpoint, failed);
    if let Err(error) = &outcome {
        tracing::debug!(endpoint = endpoint.address(), %error, "try failed");
    }
    outcome
}
