//! Where a request goes, decided once by `route` and handed to every layer.

use std::sync::Arc;
use std::time::Duration;

use super::mirror::MirrorPlan;
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
    /// A gRPC call: errors are gRPC errors, `grpc-status` decides retries
    /// and outlier detection.
    pub grpc: bool,
    /// A gRPC call's deadline from its `grpc-timeout` (capped by
    /// `timeout`), passed on reduced by the time spent at each try.
    pub deadline: Option<tokio::time::Instant>,
    /// When the request arrived, once observed: what is left of `timeout`
    /// is counted from here (a retry honouring `Retry-After` asks).
    pub started: Option<tokio::time::Instant>,
    /// Where this request's mirrored copy goes, when it was drawn for one.
    pub mirror: Option<MirrorPlan>,
    /// A tap is watching: the try that answers names its endpoint
    /// ([`crate::tap::TapUpstream`]).
    pub tapped: bool,
}

impl Target {
    /// Makes this a gRPC call: its `grpc-timeout`, if any, becomes the
    /// deadline when it is shorter than the policy's timeout.
    pub fn grpc_call(&mut self, headers: &http::HeaderMap) {
        self.grpc = true;
        if let Some(wanted) = headers
            .get(crate::grpc::GRPC_TIMEOUT)
            .and_then(crate::grpc::parse_timeout)
        {
            self.timeout = self.timeout.min(wanted);
            self.deadline = Some(tokio::time::Instant::now() + self.timeout);
        }
    }

    /// What is left of the whole-request timeout (all of it when the
    /// arrival is unknown). Reads the clock: for the rare retry that asks.
    pub fn time_left(&self) -> Duration {
        match self.started {
            Some(started) => self.timeout.saturating_sub(started.elapsed()),
            None => self.timeout,
        }
    }

    /// The split `endpoints` was drawn from, for a retry that must leave a
    /// subset with nothing else to try.
    pub fn split(&self) -> &Split {
        self.route
            .and_then(|i| self.service.routes.get(i))
            .map_or(&self.service.default_split, |rule| &rule.split)
    }
}
