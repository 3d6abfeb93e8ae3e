//! Where a request goes, decided once by `route` and handed to every layer.

use std::sync::Arc;
use std::time::Duration;

use crate::balance::EndpointSet;
use crate::state::{Split, UpstreamService};

/// The routing decision for one request.
#[derive(Debug, Clone)]
pub struct Target {
    /// The upstream service and its policy.
    pub service: Arc<UpstreamService>,
    /// The endpoint set (subset) chosen by the route and split.
    pub endpoints: Arc<EndpointSet>,
    /// Whole-request timeout (route override or the service's).
    pub timeout: Duration,
    /// The route rule that matched (its index), or `None` for the
    /// service's default split.
    pub route: Option<usize>,
}

impl Target {
    /// The split `endpoints` was drawn from, for a retry that must leave a
    /// subset with nothing else to try.
    pub fn split(&self) -> &Split {
        self.route
            .and_then(|i| self.service.routes.get(i))
            .map_or(&self.service.default_split, |rule| &rule.split)
    }
}
