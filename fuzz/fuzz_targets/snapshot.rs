//! Snapshot decoding and the building of the proxy's domain state: what a
//! control-plane response body or a `--snapshot` file goes through before
//! it routes anything. Errors are expected; panics are findings.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tether_proxy::discovery::build::{build, unknown_metrics};
use tether_proxy::fuzzing::decode_snapshot;
use tether_proxy::state::MeshState;

fuzz_target!(|data: &[u8]| {
    let Ok(snapshot) = decode_snapshot(data) else {
        return;
    };
    // A fresh registry per input: fuzzed service names are metric labels,
    // and one shared registry would grow without bound.
    let metrics = tether_proxy::fuzzing::snapshot_metrics();
    let empty = MeshState::empty(unknown_metrics(&metrics));
    let snapshot = Arc::new(snapshot);
    let Ok(first) = build(Arc::clone(&snapshot), &empty, &metrics, None) else {
        return;
    };
    // The same snapshot again over the state it built: the carry-over path
    // (kept endpoints, pools, limiters, budgets) must build it too.
    let again = build(snapshot, &first, &metrics, None);
    assert!(
        again.is_ok(),
        "a snapshot built once was refused over itself: {again:?}",
        again = again.err()
    );
    for service in first.services.values() {
        let _ = service.default_split.choose();
        for route in &service.routes {
            let _ = route.split.choose();
        }
    }
});
