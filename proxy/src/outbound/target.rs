//! Where a request goes, decided once by `route` and handed to every layer.

use std::sync::Arc;
use std::time::Duration;

use crate::balance::EndpointSet;
use crate::state::UpstreamService;

/// The routing decision for one request.
#[derive(Debug, Clone)]
pub struct Target {
    /// The upstream service and its policy.
    pub service: Arc<UpstreamService>,
    /// The endpoint set (subset) chosen by the route and split.
    pub endpoints: Arc<EndpointSet>,
    /// Whole-request timeout (route override or the service's).
    pub timeout: Duration,
}
