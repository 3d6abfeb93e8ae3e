//! Per-service policy overrides merged over `defaults`, key by key.
//!
//! Merging happens on the YAML trees, before typing: a service that writes
//! `retries: { attempts: 1 }` keeps every other `retries` key from
//! `defaults`, which a merge of typed structs (where every field has a
//! value) could not tell apart from an explicit default.

use serde_norway::Value;
use tether_api::TrafficPolicy;

/// `defaults` with `services.<service>.policy` merged over it.
pub fn merged_policy(raw: &Value, service: &str) -> Result<TrafficPolicy, serde_norway::Error> {
    let mut merged = raw.get("defaults").cloned().unwrap_or(Value::Null);
    if let Some(overrides) = raw
        .get("services")
        .and_then(|s| s.get(service))
        .and_then(|s| s.get("policy"))
    {
        merge(&mut merged, overrides.clone());
    }
    if merged.is_null() {
        return Ok(TrafficPolicy::default());
    }
    serde_norway::from_value(merged)
}

/// Maps merge recursively; anything else (scalars, lists) is replaced.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(base), Value::Mapping(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (_, Value::Null) => {}
        (base, over) => *base = over,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tether_api::{LoadBalancer, RetryOn};

    fn raw(text: &str) -> Value {
        serde_norway::from_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn nested_keys_merge_and_lists_are_replaced() {
        let raw = raw("defaults:\n  timeout: 3s\n  load_balancer: round-robin\n  retries: { attempts: 4, per_try_timeout: 500ms, retry_on: [reset, 503] }\nservices:\n  api:\n    policy:\n      retries: { attempts: 1, retry_on: [5xx] }\n");
        let api = merged_policy(&raw, "api").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(api.timeout, Duration::from_secs(3));
        assert_eq!(api.load_balancer, LoadBalancer::RoundRobin);
        assert_eq!(api.retries.attempts, 1);
        assert_eq!(
            api.retries.per_try_timeout,
            Some(Duration::from_millis(500))
        );
        assert_eq!(api.retries.retry_on, vec![RetryOn::ServerError]);
        let other = merged_policy(&raw, "web").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(other.retries.attempts, 4);
    }

    #[test]
    fn no_defaults_and_an_empty_policy_give_the_built_in_defaults() {
        let raw = raw("services:\n  api:\n    policy:\n");
        let api = merged_policy(&raw, "api").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(api, TrafficPolicy::default());
    }
}
