//! mesh.yaml parsing and validation in the control plane, and then the
//! promise that makes validation worth having: every snapshot computed from
//! a valid mesh.yaml (static catalog) is decoded and accepted by the proxy.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tether_control::catalog::CatalogState;
use tether_control::config::{parse, CatalogConfig};
use tether_control::metrics::ControlMetrics;
use tether_control::snapshot::Snapshots;
use tether_proxy::discovery::build::{build, unknown_metrics};
use tether_proxy::fuzzing::decode_snapshot;
use tether_proxy::state::MeshState;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = parse(Path::new("mesh.yaml"), text) else {
        return;
    };
    let CatalogConfig::Static { services } = &config.catalog else {
        return;
    };
    let snapshots = Snapshots::new(ControlMetrics::new());
    snapshots.update(&config, &CatalogState::synced(services.clone()));
    let metrics = tether_proxy::fuzzing::snapshot_metrics();
    let empty = MeshState::empty(unknown_metrics(&metrics));
    for name in snapshots.versions().keys() {
        let Some(published) = snapshots.get(name) else {
            panic!("`{name}` is listed but has no snapshot");
        };
        let json = published.to_json();
        let snapshot = match decode_snapshot(&json) {
            Ok(snapshot) => snapshot,
            Err(error) => panic!("the proxy cannot decode `{name}`'s snapshot: {error}"),
        };
        if let Err(problems) = build(Arc::new(snapshot), &empty, &metrics, None) {
            panic!("valid mesh.yaml, but the proxy refuses `{name}`'s snapshot: {problems:?}");
        }
    }
});
