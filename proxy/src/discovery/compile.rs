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
    /// How long an opaque TCP stream may carry nothing before it is closed.
    pub stream_idle_timeout: Duration,
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
        stream_idle_timeout: policy.stream_idle_timeout,
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
            wire::RetryOn::Grpc(code) => RetryOn::Grpc(code),
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

    /// Property: the shared rules and the proxy agree. Any policy
    /// `TrafficPolicy::problems` accepts builds in a snapshot, and any it
    /// refuses makes the build fail (so the control plane, which applies the
    /// same rules, never sends a policy a proxy refuses). Random policies
    /// are drawn around the edges of every rule.
    #[tokio::test]
    async fn every_policy_the_shared_rules_accept_builds_and_no_other() {
        use std::sync::Arc;

        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        use tether_api::{Endpoint, ServiceSnapshot, Snapshot};

        use crate::discovery::build::{build, unknown_metrics};
        use crate::discovery::SnapshotMetrics;
        use crate::state::MeshState;

        fn duration(rng: &mut StdRng) -> Duration {
            let edges = [
                Duration::ZERO,
                Duration::from_nanos(1),
                Duration::from_millis(999),
                Duration::from_secs(1),
                Duration::from_secs(60),
                Duration::from_millis(60_001),
                Duration::from_secs(3600),
                Duration::from_secs(u64::from(u32::MAX)),
            ];
            if rng.gen_bool(0.7) {
                edges[rng.gen_range(0..edges.len())]
            } else {
                Duration::from_millis(rng.gen_range(0..120_000))
            }
        }
        fn count(rng: &mut StdRng, edges: &[u32]) -> u32 {
            if rng.gen_bool(0.7) {
                edges[rng.gen_range(0..edges.len())]
            } else {
                rng.gen()
            }
        }
        fn policy(rng: &mut StdRng) -> TrafficPolicy {
            let mut p = TrafficPolicy::default();
            // Each field changes from its (valid) default now and then, so
            // valid and invalid policies are both common.
            let maybe = |rng: &mut StdRng| rng.gen_bool(0.15);
            if maybe(rng) {
                p.timeout = duration(rng);
            }
            if maybe(rng) {
                p.connect_timeout = duration(rng);
            }
            if maybe(rng) {
                p.idle_timeout = duration(rng);
                p.stream_idle_timeout = duration(rng);
            }
            if maybe(rng) {
                p.retries.attempts = count(rng, &[0, 1, 2, u32::MAX]);
            }
            if maybe(rng) {
                p.retries.per_try_timeout = rng.gen_bool(0.5).then(|| duration(rng));
            }
            if maybe(rng) {
                p.retries.backoff.base = duration(rng);
            }
            if maybe(rng) {
                p.retries.backoff.max = duration(rng);
            }
            if maybe(rng) {
                let ratios = [
                    0.0,
                    0.2,
                    1.0,
                    1000.0,
                    1000.001,
                    -0.1,
                    f32::NAN,
                    f32::INFINITY,
                ];
                p.retries.budget.ratio = if rng.gen_bool(0.7) {
                    ratios[rng.gen_range(0..ratios.len())]
                } else {
                    rng.gen_range(-10.0..2000.0)
                };
            }
            if maybe(rng) {
                let max = i32::MAX as u32;
                p.retries.budget.min_per_second =
                    count(rng, &[0, 10, max - 2, max - 1, max, max + 1, u32::MAX]);
            }
            if maybe(rng) {
                p.retries.budget.ttl = duration(rng);
            }
            if maybe(rng) {
                let all = [
                    wire::RetryOn::ConnectFailure,
                    wire::RetryOn::Reset,
                    wire::RetryOn::ServerError,
                    wire::RetryOn::GatewayError,
                    wire::RetryOn::Status(503),
                    wire::RetryOn::Grpc(0),
                    wire::RetryOn::Grpc(14),
                ];
                p.retries.retry_on = all.into_iter().filter(|_| rng.gen_bool(0.5)).collect();
            }
            if maybe(rng) {
                p.retries.replay_buffer_bytes = rng.gen_range(0..1 << 20);
            }
            if maybe(rng) {
                p.retries.retry_non_idempotent = rng.gen();
            }
            if maybe(rng) {
                let all = [
                    wire::LoadBalancer::RoundRobin,
                    wire::LoadBalancer::LeastRequest,
                    wire::LoadBalancer::Weighted,
                    wire::LoadBalancer::P2cEwma,
                ];
                p.load_balancer = all[rng.gen_range(0..all.len())];
            }
            let cb = &mut p.circuit_breaker;
            if maybe(rng) {
                cb.consecutive_failures = count(rng, &[0, 1, 5, u32::MAX]);
            }
            if maybe(rng) {
                cb.base_ejection = duration(rng);
            }
            if maybe(rng) {
                cb.max_ejection = duration(rng);
            }
            if maybe(rng) {
                cb.max_ejection_percent = count(rng, &[0, 1, 50, 100, 101, u32::MAX]);
            }
            if maybe(rng) {
                cb.max_pending_requests = count(rng, &[0, 1, 1024, u32::MAX]);
            }
            if maybe(rng) {
                cb.max_requests = count(rng, &[0, 1, 1024, u32::MAX]);
            }
            p
        }

        let seed: u64 = rand::random();
        let mut rng = StdRng::seed_from_u64(seed);
        let metrics = SnapshotMetrics::for_tests();
        let empty = MeshState::empty(unknown_metrics(&metrics));
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..1000 {
            let policy = policy(&mut rng);
            let valid = policy.problems().is_empty();
            let service = ServiceSnapshot {
                policy: policy.clone(),
                endpoints: vec![Endpoint {
                    address: "127.0.0.1:1".into(),
                    weight: 1,
                    tags: Vec::new(),
                    meta: Default::default(),
                    zone: None,
                }],
                ..ServiceSnapshot::default()
            };
            let snapshot = Snapshot {
                services: [("api".to_owned(), service)].into(),
                ..Snapshot::default()
            };
            let built = build(Arc::new(snapshot), &empty, &metrics, None);
            assert_eq!(
                built.is_ok(),
                valid,
                "seed {seed}: {policy:?}: {:?}",
                built.err()
            );
            if valid {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
        assert!(
            accepted > 50 && refused > 50,
            "seed {seed}: {accepted} accepted, {refused} refused: the generator should cover both"
        );
    }
}
