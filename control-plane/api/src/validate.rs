//! The policy rules: what a control plane accepts in mesh.yaml and what a
//! proxy accepts in a snapshot, written once so the two cannot drift.
//!
//! Each problem names where it is (a key path below the policy, for the
//! control plane to turn into `FILE:LINE:COL`) and what is wrong and what
//! was expected, in the words both sides report.

use std::time::Duration;

use crate::policy::{RetryBudget, RetryOn, TrafficPolicy};

/// Shortest retry budget window: below a second the budget would count too
/// few requests to mean anything.
pub const MIN_BUDGET_TTL: Duration = Duration::from_secs(1);
/// Longest retry budget window: the budget keeps one counter per second of it.
pub const MAX_BUDGET_TTL: Duration = Duration::from_secs(60);
/// Largest retry budget ratio (retries per request).
pub const MAX_BUDGET_RATIO: f32 = 1000.0;
/// Largest `min_per_second`: the proxy's retry budget (tower's, after
/// Finagle's) requires it below `i32::MAX`.
pub const MAX_BUDGET_MIN_PER_SECOND: u32 = i32::MAX as u32 - 1;

/// One thing wrong with a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// Key path below the policy, e.g. `["retries", "budget", "ttl"]`.
    pub path: Vec<&'static str>,
    /// What is wrong and what was expected, starting with the dotted path,
    /// e.g. `retries.budget.ttl is 120s: expected 1s to 60s`.
    pub message: String,
}

impl PolicyProblem {
    pub(crate) fn new(path: Vec<&'static str>, message: String) -> Self {
        Self { path, message }
    }
}

impl TrafficPolicy {
    /// Every problem with this policy (empty when it is valid). A policy
    /// without problems is one every proxy accepts.
    pub fn problems(&self) -> Vec<PolicyProblem> {
        let mut found = Vec::new();
        let per_try = self.retries.per_try_timeout;
        for (path, value) in [
            (vec!["timeout"], Some(self.timeout)),
            (vec!["connect_timeout"], Some(self.connect_timeout)),
            (vec!["stream_idle_timeout"], Some(self.stream_idle_timeout)),
            (vec!["retries", "per_try_timeout"], per_try),
        ] {
            if value.is_some_and(|v| v.is_zero()) {
                let message = format!("{} is 0s: expected a duration above zero", path.join("."));
                found.push(PolicyProblem::new(path, message));
            }
        }
        let backoff = &self.retries.backoff;
        if backoff.base > backoff.max {
            found.push(PolicyProblem::new(
                vec!["retries", "backoff"],
                format!(
                    "retries.backoff.base ({:?}) is above max ({:?}): expected base <= max",
                    backoff.base, backoff.max
                ),
            ));
        }
        if self.retries.retry_on.contains(&RetryOn::Grpc(0)) {
            found.push(PolicyProblem::new(
                vec!["retries", "retry_on"],
                "retries.retry_on has `ok`: a gRPC success is never retried; expected a failure such as unavailable".to_owned(),
            ));
        }
        budget_problems(&self.retries.budget, &mut found);
        let breaker = &self.circuit_breaker;
        if breaker.max_requests == 0 {
            found.push(PolicyProblem::new(
                vec!["circuit_breaker", "max_requests"],
                "circuit_breaker.max_requests is 0: expected at least 1".to_owned(),
            ));
        }
        if breaker.max_ejection_percent > 100 {
            found.push(PolicyProblem::new(
                vec!["circuit_breaker", "max_ejection_percent"],
                format!(
                    "circuit_breaker.max_ejection_percent is {}: expected 0 to 100",
                    breaker.max_ejection_percent
                ),
            ));
        }
        if self.locality.min_local_healthy_percent > 100 {
            found.push(PolicyProblem::new(
                vec!["locality", "min_local_healthy_percent"],
                format!(
                    "locality.min_local_healthy_percent is {}: expected 0 to 100",
                    self.locality.min_local_healthy_percent
                ),
            ));
        }
        found
    }
}

fn budget_problems(budget: &RetryBudget, found: &mut Vec<PolicyProblem>) {
    if !(MIN_BUDGET_TTL..=MAX_BUDGET_TTL).contains(&budget.ttl) {
        found.push(PolicyProblem::new(
            vec!["retries", "budget", "ttl"],
            format!("retries.budget.ttl is {:?}: expected 1s to 60s", budget.ttl),
        ));
    }
    if !(0.0..=MAX_BUDGET_RATIO).contains(&budget.ratio) {
        found.push(PolicyProblem::new(
            vec!["retries", "budget", "ratio"],
            format!(
                "retries.budget.ratio is {}: expected 0 to 1000",
                budget.ratio
            ),
        ));
    }
    if budget.min_per_second > MAX_BUDGET_MIN_PER_SECOND {
        found.push(PolicyProblem::new(
            vec!["retries", "budget", "min_per_second"],
            format!(
                "retries.budget.min_per_second is {}: expected 0 to {MAX_BUDGET_MIN_PER_SECOND}",
                budget.min_per_second
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policy_is_valid() {
        assert_eq!(TrafficPolicy::default().problems(), []);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let mut policy = TrafficPolicy {
            timeout: Duration::ZERO,
            ..TrafficPolicy::default()
        };
        policy.retries.per_try_timeout = Some(Duration::ZERO);
        policy.retries.budget.min_per_second = u32::MAX;
        policy.retries.budget.ratio = f32::NAN;
        policy.circuit_breaker.max_ejection_percent = 101;
        let paths: Vec<String> = policy.problems().iter().map(|p| p.path.join(".")).collect();
        assert_eq!(
            paths,
            [
                "timeout",
                "retries.per_try_timeout",
                "retries.budget.ratio",
                "retries.budget.min_per_second",
                "circuit_breaker.max_ejection_percent",
            ]
        );
    }

    #[test]
    fn no_per_try_timeout_is_valid_and_the_budget_limit_is_inclusive() {
        let mut policy = TrafficPolicy::default();
        policy.retries.per_try_timeout = None;
        policy.retries.budget.min_per_second = MAX_BUDGET_MIN_PER_SECOND;
        assert_eq!(policy.problems(), []);
    }
}
