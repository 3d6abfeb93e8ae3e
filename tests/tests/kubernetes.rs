//! The Kubernetes manifests in deploy/kubernetes, checked statically (no
//! cluster runs here): every document parses into its Kubernetes API type
//! (k8s-openapi, API 1.33), and nothing is lost on the way, so a misspelled
//! or misplaced field fails here instead of being ignored by the API server
//! (k8s-openapi's types skip unknown fields; a field that does not survive
//! the round trip through the type is one).

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

fn manifests() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "manifests missing in {}", dir.display());
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{e}"));
        for (i, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} document {i}: {e}", file.display()));
            if !value.is_null() {
                docs.push((format!("{} document {i}", file.display()), value));
            }
        }
    }
    docs
}

/// The first path where `theirs` lacks or differs from `ours`.
fn lost(ours: &Value, theirs: &Value, path: &str) -> Option<String> {
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| match b.get(k) {
            None => Some(format!("{path}.{k} (unknown field)")),
            Some(w) => lost(v, w, &format!("{path}.{k}")),
        }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| lost(v, w, &format!("{path}[{i}]"))),
        _ if ours == theirs => None,
        _ => Some(format!("{path}: {ours} became {theirs}")),
    }
}

fn round_trip<T: DeserializeOwned + serde::Serialize>(name: &str, doc: &Value) {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let back = serde_json::to_value(&typed).unwrap_or_else(|e| panic!("{name}: {e}"));
    if let Some(path) = lost(doc, &back, "") {
        panic!("{name}: {path}");
    }
}

#[test]
fn every_manifest_is_a_valid_kubernetes_object_with_no_unknown_field() {
    for (name, doc) in manifests() {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        match (
            doc["apiVersion"].as_str().unwrap_or_default(),
            kind.as_str(),
        ) {
            ("apps/v1", "Deployment") => round_trip::<Deployment>(&name, &doc),
            ("v1", "Service") => round_trip::<Service>(&name, &doc),
            ("v1", "ConfigMap") => round_trip::<ConfigMap>(&name, &doc),
            ("v1", "Namespace") => round_trip::<Namespace>(&name, &doc),
            (api, kind) => panic!("{name}: no check for {api} {kind}: add it here"),
        }
    }
}

#[test]
fn sidecars_are_native_sidecars_behind_an_init_step_and_outlive_the_drain() {
    for (name, doc) in manifests() {
        if doc["kind"] != "Deployment" || doc["metadata"]["name"] == "tether-control" {
            continue;
        }
        let deployment: Deployment = serde_json::from_value(doc).unwrap_or_else(|e| panic!("{e}"));
        let pod = deployment
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod spec");
        let inits = pod.init_containers.unwrap_or_default();
        let names: Vec<&str> = inits.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["tether-init", "tether-proxy"], "{name}");
        let caps = inits[0]
            .security_context
            .as_ref()
            .and_then(|s| s.capabilities.as_ref());
        assert!(
            caps.and_then(|c| c.add.as_ref())
                .is_some_and(|a| a.iter().any(|c| c == "NET_ADMIN")),
            "{name}: the init step needs NET_ADMIN"
        );
        let sidecar = &inits[1];
        assert_eq!(
            sidecar.restart_policy.as_deref(),
            Some("Always"),
            "{name}: native sidecar"
        );
        assert!(
            sidecar.startup_probe.is_some(),
            "{name}: the app waits for /ready"
        );
        let uid = sidecar
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_user);
        assert_eq!(
            uid,
            Some(1337),
            "{name}: the capture rules exempt uid 1337 only"
        );
        // deregister grace (2 s) + --drain-timeout (25 s) < grace period
        assert!(
            pod.termination_grace_period_seconds.unwrap_or(30) > 27,
            "{name}"
        );
    }
}
