//! Where a request goes, decided once by `route` and read by every layer.

use std::sync::Arc;
use std::time::Duration;

use crate::balance::EndpointSet;
use crate::errors::ProxyError;
use crate::state::Service;

/// The routing decision for one request, carried in its extensions.
#[derive(Debug, Clone)]
pub struct Target {
    /// The upstream service and its policy.
    pub service: Arc<Service>,
    /// The endpoint set (subset) chosen by the route and split.
    pub endpoints: Arc<EndpointSet>,
    /// Whole-request timeout (route override or the service's).
    pub timeout: Duration,
}

impl Target {
    /// The target of a request; every layer below `route` can rely on it.
    pub fn of<B>(request: &http::Request<B>) -> Result<Target, ProxyError> {
        request
            .extensions()
            .get::<Target>()
            .cloned()
            .ok_or(ProxyError::NotReady(
                "request reached the outbound stack without a route",
            ))
    }
}
