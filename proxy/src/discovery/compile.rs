//! Wire policy (`tether-api`) → the proxy's domain types. The rules a
//! policy must follow are tether-api's ([`TrafficPolicy::problems`]), the
//! same the control plane applies to mesh.yaml, so the two cannot drift.

use std::time::Duration;

use tether_api as wire;
use tether_api::{PolicyProblem, TrafficPolicy};

use crate::balance::{LoadBalancer, OutlierSettings};
use crate::resilience::{Backoff, BudgetSettings, RetryOn, RetryPolicy};
use crate::telemetry::{OtlpProtocol, TracingSettings};

/// A service's traffic policy in domain types.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePolicy {
    /// Whole-request timeout.
    pub timeout: Duration,
    /// TCP connect timeout to one endpoint.
    pub connect_timeout: Duration,
    /// How long a pooled connection may sit idle.
    pub idle_timeout: Duration,
    /// Retry policy.
    pub retries: RetryPolicy,
    /// Endpoint selection algorithm.
    pub load_balancer: LoadBalancer,
    /// Outlier ejection.
    pub outliers: OutlierSettings,
    /// Requests in flight at once.
    pub max_requests: u32,
    /// Requests waiting beyond `max_requests`.
    pub max_pending: u32,
}

impl TryFrom<&TrafficPolicy> for ServicePolicy {
    type Error = Vec<PolicyProblem>;

    fn try_from(policy: &TrafficPolicy) -> Result<Self, Self::Error> {
        let (compiled, problems) = compile(policy);
        if problems.is_empty() {
            Ok(compiled)
        } else {
            Err(problems)
        }
    }
}

/// The policy in domain types and every problem with it. With problems, the
/// policy is still usable (values clamped to what the parts accept), so a
/// build can go on and report the snapshot's other problems too.
pub fn compile(policy: &TrafficPolicy) -> (ServicePolicy, Vec<PolicyProblem>) {
    let problems = policy.problems();
    let breaker = &policy.circuit_breaker;
    let compiled = ServicePolicy {
        timeout: policy.timeout,
        connect_timeout: policy.connect_timeout,
        idle_timeout: policy.idle_timeout,
        retries: retry_policy(&policy.retries),
        load_balancer: policy.load_balancer.into(),
        outliers: OutlierSettings {
            consecutive_failures: breaker.consecutive_failures,
            base_ejection: breaker.base_ejection,
            max_ejection: breaker.max_ejection,
            max_ejection_percent: breaker.max_ejection_percent.min(100),
        },
        max_requests: breaker.max_requests,
        max_pending: breaker.max_pending_requests,
    };
    (compiled, problems)
}

fn retry_policy(retries: &wire::RetryPolicy) -> RetryPolicy {
    RetryPolicy {
        attempts: retries.attempts,
        per_try_timeout: retries.per_try_timeout,
        backoff: Backoff::full(retries.backoff.base, retries.backoff.max),
        budget: budget(&retries.budget),
        retry_on: retries
            .retry_on
            .iter()
            .copied()
            .map(RetryOn::from)
            .collect(),
        replay_buffer_bytes: retries.replay_buffer_bytes,
        retry_non_idempotent: retries.retry_non_idempotent,
    }
}

/// Budget settings within the ranges `TpsBudget::new` asserts (the same
/// ranges `TrafficPolicy::problems` checks, so a valid policy is unchanged).
fn budget(budget: &wire::RetryBudget) -> BudgetSettings {
    let ratio = if budget.ratio.is_nan() {
        0.0
    } else {
        budget.ratio.clamp(0.0, wire::MAX_BUDGET_RATIO)
    };
    BudgetSettings {
        ttl: budget.ttl.clamp(wire::MIN_BUDGET_TTL, wire::MAX_BUDGET_TTL),
        min_per_second: budget.min_per_second.min(wire::MAX_BUDGET_MIN_PER_SECOND),
        ratio,
    }
}

impl From<wire::LoadBalancer> for LoadBalancer {
    fn from(balancer: wire::LoadBalancer) -> Self {
        match balancer {
            wire::LoadBalancer::RoundRobin => LoadBalancer::RoundRobin,
            wire::LoadBalancer::LeastRequest => LoadBalancer::LeastRequest,
            wire::LoadBalancer::Weighted => LoadBalancer::Weighted,
            wire::LoadBalancer::P2cEwma => LoadBalancer::P2cEwma,
        }
    }
}

impl From<wire::RetryOn> for RetryOn {
    fn from(condition: wire::RetryOn) -> Self {
        match condition {
            wire::RetryOn::ConnectFailure => RetryOn::ConnectFailure,
            wire::RetryOn::Reset => RetryOn::Reset,
            wire::RetryOn::ServerError => RetryOn::ServerError,
            wire::RetryOn::GatewayError => RetryOn::GatewayError,
            wire::RetryOn::Status(code) => RetryOn::Status(code),
        }
    }
}

impl From<&wire::TracingSettings> for TracingSettings {
    fn from(settings: &wire::TracingSettings) -> Self {
        Self {
            otlp_endpoint: settings.otlp_endpoint.clone(),
            sample_ratio: settings.sample_ratio,
            protocol: match settings.protocol {
                wire::OtlpProtocol::Grpc => OtlpProtocol::Grpc,
                wire::OtlpProtocol::HttpProtobuf => OtlpProtocol::HttpProtobuf,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policy_compiles_unchanged() {
        let policy =
            ServicePolicy::try_from(&TrafficPolicy::default()).unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(policy.retries.per_try_timeout, None);
        assert_eq!(policy.load_balancer, LoadBalancer::P2cEwma);
        assert_eq!(
            policy.retries.retry_on,
            [
                RetryOn::ConnectFailure,
                RetryOn::Reset,
                RetryOn::Status(503)
            ]
        );
    }

    #[test]
    fn an_invalid_policy_is_refused_but_still_usable() {
        let mut wire = TrafficPolicy::default();
        wire.retries.budget.min_per_second = u32::MAX;
        wire.retries.budget.ratio = f32::NAN;
        wire.retries.budget.ttl = Duration::from_secs(600);
        assert_eq!(
            ServicePolicy::try_from(&wire).err().map(|p| p.len()),
            Some(3)
        );
        let (compiled, _) = compile(&wire);
        let budget = compiled.retries.budget;
        // Would panic in TpsBudget::new if out of range.
        let _ =
            tower::retry::budget::TpsBudget::new(budget.ttl, budget.min_per_second, budget.ratio);
    }
}
