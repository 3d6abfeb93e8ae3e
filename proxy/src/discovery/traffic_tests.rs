//! Faults and rate limits from snapshots: what is built, what is refused,
//! and which buckets survive a new snapshot.

use std::sync::Arc;

use tether_api::Snapshot;

use super::build::{build, unknown_metrics};
use super::SnapshotMetrics;
use crate::state::MeshState;

fn snapshot(text: &str) -> Arc<Snapshot> {
    Arc::new(serde_norway::from_str(text).unwrap_or_else(|e| panic!("{e}")))
}

fn built(text: &str, previous: &MeshState, metrics: &SnapshotMetrics) -> MeshState {
    build(snapshot(text), previous, metrics, None).unwrap_or_else(|e| panic!("{e:?}"))
}

const FAULTY: &str = "service: api\ninbound_rate_limit: { requests_per_second: 5, per_caller: true }\nservices:\n  api:\n    endpoints: [ { address: \"127.0.0.1:1\", tags: [v1] } ]\n    subsets: { v1: { tags: [v1] } }\n    fault: { abort: { status: 503, percent: 100 } }\n    rate_limit: { requests_per_second: 20, burst: 5 }\n    routes:\n      - match: { path_prefix: /slow }\n        split: [ { subset: v1, weight: 1 } ]\n        fault: { delay: { duration: 300ms, percent: 100 } }\n      - match: { path_prefix: /plain }\n        split: [ { subset: v1, weight: 1 } ]\n  web: {}\n";

#[test]
fn a_service_without_faults_or_limits_carries_nothing() {
    let metrics = SnapshotMetrics::for_tests();
    let empty = MeshState::empty(unknown_metrics(&metrics));
    let state = built(FAULTY, &empty, &metrics);
    assert!(state.services["web"].traffic.is_none());
    let api = state.services["api"].traffic.as_ref();
    let Some(api) = api else {
        panic!("api has faults")
    };
    assert!(api.fault.as_ref().is_some_and(|f| f.abort.is_some()));
    assert!(api.route_faults[0]
        .as_ref()
        .is_some_and(|f| f.delay.is_some() && f.abort.is_none()));
    assert!(
        api.route_faults[1]
            .as_ref()
            .is_some_and(|f| f.abort.is_some()),
        "a route without its own fault has the service's"
    );
    assert!(state.inbound_rate_limit.is_some());
    let plain = built("services:\n  api: {}\n", &empty, &metrics);
    assert!(plain.services["api"].traffic.is_none() && plain.inbound_rate_limit.is_none());
}

#[test]
fn buckets_survive_an_unchanged_limit_and_restart_on_a_changed_one() {
    let metrics = SnapshotMetrics::for_tests();
    let empty = MeshState::empty(unknown_metrics(&metrics));
    let first = built(FAULTY, &empty, &metrics);
    let second = built(
        &FAULTY.replace("127.0.0.1:1", "127.0.0.1:2"),
        &first,
        &metrics,
    );
    let limit = |s: &MeshState| {
        s.services["api"]
            .traffic
            .as_ref()
            .and_then(|t| t.limit.clone())
    };
    let (Some(a), Some(b)) = (limit(&first), limit(&second)) else {
        panic!("both have a limit")
    };
    assert!(Arc::ptr_eq(&a, &b), "same limit, same bucket");
    let (Some(x), Some(y)) = (&first.inbound_rate_limit, &second.inbound_rate_limit) else {
        panic!("both have an inbound limit")
    };
    assert!(Arc::ptr_eq(x, y));
    let third = built(&FAULTY.replace("burst: 5", "burst: 6"), &second, &metrics);
    let Some(c) = limit(&third) else {
        panic!("still limited")
    };
    assert!(!Arc::ptr_eq(&b, &c), "a new limit, a new bucket");
}

#[test]
fn bad_faults_and_limits_refuse_the_snapshot_naming_each_problem() {
    let metrics = SnapshotMetrics::for_tests();
    let empty = MeshState::empty(unknown_metrics(&metrics));
    let text = "inbound_rate_limit: { requests_per_second: 0 }\nservices:\n  api:\n    fault: { header: x-f }\n    rate_limit: { requests_per_second: 1, burst: 0 }\n    routes:\n      - split: []\n        fault: { abort: { grpc_status: nope, percent: 200 } }\n";
    let problems = build(snapshot(text), &empty, &metrics, None)
        .err()
        .unwrap_or_default();
    assert_eq!(
        problems,
        [
            "inbound_rate_limit.requests_per_second is 0: expected a number above 0, at most 1000000000",
            "services.api.fault has neither delay nor abort: expected at least one",
            "services.api.routes[0].fault.abort.percent is 200: expected 0 to 100",
            "services.api.routes[0].fault.abort.grpc_status `nope`: expected a gRPC error status name such as unavailable, resource-exhausted, internal",
            "services.api.rate_limit.burst is 0: expected at least 1 (no request could ever pass)",
        ]
    );
}
