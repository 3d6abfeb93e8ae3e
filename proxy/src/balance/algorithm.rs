//! Which algorithm an endpoint set picks with.

/// Endpoint selection algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoadBalancer {
    /// Each endpoint in turn.
    RoundRobin,
    /// Power of two random choices, fewer requests in flight wins.
    LeastRequest,
    /// Random in proportion to endpoint weights.
    Weighted,
    /// Power of two choices by peak-EWMA latency × in-flight requests.
    P2cEwma,
}
