//! Parsing, merging and every validation error with its exact position.

use super::*;
use std::time::Duration;

fn parse_str(text: &str) -> Result<MeshConfig, ConfigErrors> {
    parse(Path::new("mesh.yaml"), text)
}

#[test]
fn merges_service_policy_over_defaults() {
    let config = parse_str(
        "defaults:\n  timeout: 3s\n  retries: { attempts: 4, per_try_timeout: 500ms }\nservices:\n  api:\n    policy:\n      retries: { attempts: 1 }\n  web: {}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let api = &config.services["api"].policy;
    assert_eq!(api.timeout, Duration::from_secs(3));
    assert_eq!(api.retries.attempts, 1);
    assert_eq!(
        api.retries.per_try_timeout,
        Some(Duration::from_millis(500)),
        "kept from defaults"
    );
    assert_eq!(config.services["web"].policy.retries.attempts, 4);
}

#[test]
fn a_typo_names_file_line_column_and_expectation() {
    let error = parse_str("services:\n  api:\n    policy:\n      timeot: 5s\n")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.starts_with("mesh.yaml:4:7: "), "{error}");
    assert!(
        error.contains("unknown field `timeot`, expected one of"),
        "{error}"
    );
}

fn errors(text: &str) -> Vec<String> {
    parse_str(text).err().map(|e| e.0).unwrap_or_default()
}

#[test]
fn reports_every_semantic_problem_with_its_location() {
    let text = "mesh:\n  tracing: { otlp_endpoint: x, sample_ratio: 2.0 }\nservices:\n  api:\n    subsets: { v1: { tags: [v1] } }\n    split:\n      - { subset: v3, weight: 1 }\nauthorization:\n  rules:\n    - { to: api, from: [ghost] }\n";
    assert_eq!(
        errors(text),
        [
            "mesh.yaml:7:11: split: unknown subset `v3` (expected one of: v1)",
            "mesh.yaml:2:32: sample_ratio 2 is outside 0.0 to 1.0",
            "mesh.yaml:2:14: otlp_endpoint `x`: expected http://HOST:PORT (OTLP over TLS is not supported yet)",
            "mesh.yaml:10:25: rules[0]: unknown service `ghost` (expected one of: api, or *)",
        ]
    );
}

#[test]
fn splits_and_routes_are_checked() {
    let text = "services:\n  api:\n    split: [ { subset: v1, weight: 0 } ]\n  web:\n    subsets: { a: {}, b: { tags: [b] } }\n    split: [ { subset: a, weight: 1 }, { subset: a, weight: 2 } ]\n    routes:\n      - match: { path_prefix: admin, headers: { \"bad header\": x } }\n        split: []\n";
    assert_eq!(
        errors(text),
        [
            "mesh.yaml:3:16: split: subset `v1` is not defined: a split needs `subsets` (expected e.g. `subsets: { v1: { tags: [v1] } }`)",
            "mesh.yaml:3:5: split: weights sum to zero (expected at least one weight above 0)",
            "mesh.yaml:6:42: split: subset `a` is listed twice: expected each subset once",
            "mesh.yaml:9:9: routes[0].split is empty: expected at least one { subset, weight }",
            "mesh.yaml:8:18: routes[0].match.path_prefix `admin`: expected a path starting with `/`",
            "mesh.yaml:8:38: routes[0].match.headers: `bad header: x` is not a valid HTTP header: expected a token name and a visible-ASCII value",
        ]
    );
}

#[test]
fn policies_are_checked_once_where_the_problem_is_written() {
    let text = "defaults:\n  timeout: 0s\n  retries: { budget: { ttl: 2m } }\nservices:\n  api:\n    policy:\n      retries: { backoff: { base: 1s, max: 10ms } }\n      circuit_breaker: { max_requests: 0, max_ejection_percent: 101 }\n  web: {}\n";
    assert_eq!(
        errors(text),
        [
            "mesh.yaml:2:3: defaults.timeout is 0s: expected a duration above zero",
            "mesh.yaml:3:24: defaults.retries.budget.ttl is 120s: expected 1s to 60s",
            "mesh.yaml:7:18: policy.retries.backoff.base (1s) is above max (10ms): expected base <= max",
            "mesh.yaml:8:26: policy.circuit_breaker.max_requests is 0: expected at least 1",
            "mesh.yaml:8:43: policy.circuit_breaker.max_ejection_percent is 101: expected 0 to 100",
        ]
    );
}

#[test]
fn catalogs_are_checked() {
    let text = "mesh:\n  catalog:\n    static:\n      services:\n        api: [ { address: \"127.0.0.1\" }, { address: \"127.0.0.1:1\", weight: 0 } ]\n        Web_1: []\n";
    assert_eq!(
        errors(text),
        [
            "mesh.yaml:6:9: service name `Web_1` is not valid: expected lowercase letters, digits and `-` (a DNS label)",
            "mesh.yaml:5:18: api[0].address `127.0.0.1`: expected host:port (e.g. 127.0.0.1:15443)",
            "mesh.yaml:5:68: api[1].weight is 0: expected 1 or more (remove the instance to send it nothing)",
        ]
    );
    let text =
        "mesh:\n  catalog:\n    consul: { address: \"https://consul:8501\", datacenter: \"\" }\n";
    assert_eq!(
        errors(text),
        [
            "mesh.yaml:3:5: consul.address `https://consul:8501` is https: set consul.ca_file (or CONSUL_CACERT) to the CA that signed Consul's certificate",
            "mesh.yaml:3:5: consul.datacenter is empty: expected a name, or leave it out for the agent's own",
        ]
    );
    let both =
        "mesh:\n  catalog:\n    static: {}\n    consul: { address: \"http://127.0.0.1:8500\" }\n";
    assert_eq!(
        errors(both),
        ["mesh.yaml:2:3: catalog: expected exactly one of `static` or `consul`, found both"]
    );
}

#[test]
fn syntax_errors_name_the_position_too() {
    assert_eq!(
        errors("defaults:\n  timeout: 5s\n  timeout: 6s\n"),
        ["mesh.yaml:2:3: defaults: duplicate field `timeout`"]
    );
    assert_eq!(
        errors("defaults:\n  timeout: soon\n"),
        ["mesh.yaml:2:12: defaults.timeout: invalid value: string \"soon\", expected a duration such as `250ms`, `5s` or `1m`"]
    );
}

#[test]
fn reads_both_catalog_kinds() {
    let config = parse_str(
        "mesh:\n  catalog:\n    consul: { address: \"http://127.0.0.1:8500\", datacenter: dc1 }\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(config.catalog, CatalogConfig::Consul(ref consul) if consul.datacenter.as_deref() == Some("dc1"))
    );
    let config = parse_str("mesh:\n  catalog:\n    static:\n      services:\n        api: [ { address: \"127.0.0.1:1\", tags: [v1] } ]\n").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(config.catalog, CatalogConfig::Static { ref services } if services["api"].len() == 1)
    );
}

#[test]
fn tcp_services_need_a_unique_outbound_port() {
    let text = "services:\n  db:\n    protocol: tcp\n  cache: { protocol: tcp, outbound_port: 70000 }\n  api:\n    outbound_port: 15306\n  queue: { protocol: tcp, outbound_port: 0 }\n  redis:\n    protocol: tcp\n    outbound_port: 6379\n  valkey: { protocol: tcp, outbound_port: 6379 }\n";
    assert_eq!(
        errors(text),
        [
            "mesh.yaml:6:5: outbound_port is only for protocol tcp (this service is http): remove it, or set `protocol: tcp`",
            "mesh.yaml:4:27: outbound_port 70000: expected 1 to 65535",
            "mesh.yaml:3:5: protocol tcp needs outbound_port: the local port every sidecar accepts the app's connections for it on (e.g. `outbound_port: 15306`)",
            "mesh.yaml:7:27: outbound_port 0: expected 1 to 65535",
            "mesh.yaml:11:28: outbound_port 6379 is also `redis`'s: expected one port per service",
        ]
    );
}

#[test]
fn a_tcp_service_keeps_its_outbound_port() {
    let config = parse_str("services:\n  db: { protocol: tcp, outbound_port: 15306 }\n  api: {}\n")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.services["db"].outbound_port, Some(15306));
    assert_eq!(config.services["api"].outbound_port, None);
}

#[test]
fn layout_mistakes_name_the_position() {
    assert_eq!(
        errors("defaults:\n\ttimeout: 5s\n"),
        ["mesh.yaml:2:1: found character that cannot start any token"],
        "a tab indents"
    );
    assert_eq!(
        errors("services:\n  api:\n    policy:\n     timeout: 5s\n      load_balancer: random\n"),
        ["mesh.yaml:4:15: services.api.policy.timeout: invalid value: string \"5s load_balancer\", expected a duration such as `250ms`, `5s` or `1m`"],
        "a deeper line continues the value above it"
    );
    assert_eq!(
        errors("mesh:\n  catalog:\n    static:\n      services:\n        api: [ { address: \"127.0.0.1:1\" }\n"),
        ["mesh.yaml:6:1: did not find expected ',' or ']'"]
    );
}

#[test]
fn a_service_written_twice_is_refused_not_merged_over_nothing() {
    let text =
        "defaults:\n  timeout: 7s\nservices:\n  api: {}\n  web: {}\n  api:\n    protocol: http\n";
    assert_eq!(
        errors(text),
        ["mesh.yaml:4:3: services: duplicate entry with key \"api\""],
        "the position is the mapping's, as for a duplicate field"
    );
}

#[test]
fn authorization_methods_must_be_http_methods() {
    // Found by fuzzing (fuzz/fuzz_targets/mesh_config.rs): this was valid
    // here, and every proxy then refused its snapshot.
    let text = "services:\n  api: {}\n  web: {}\nauthorization:\n  rules:\n    - { to: api, from: [web], methods: [get, \"GET2 POST\"] }\n";
    let found = errors(text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("mesh.yaml:6:")
            && found[0].ends_with(
                "rules[0].methods: `GET2 POST` is not an HTTP method (expected e.g. GET, POST)"
            ),
        "{found:?}"
    );
}

#[test]
fn usable_addresses_have_a_host_and_a_port() {
    assert!(usable_address("127.0.0.1:80"));
    assert!(usable_address("[fd00::1]:80"));
    assert!(usable_address("api.internal:8080"));
    assert!(!usable_address("127.0.0.1"));
    assert!(!usable_address("not an address:80"));
    assert!(!usable_address(""));
}

#[test]
fn outbound_policy_defaults_to_allow_any_and_names_its_values() {
    let config = parse_str("services: {}\n").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.outbound_policy, OutboundPolicy::AllowAny);
    let config =
        parse_str("mesh:\n  outbound_policy: registry-only\n").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.outbound_policy, OutboundPolicy::RegistryOnly);
    let error = parse_str("mesh:\n  outbound_policy: deny\n")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.starts_with("mesh.yaml:2:20: "), "{error}");
    assert!(
        error.contains("expected `allow-any` or `registry-only`"),
        "{error}"
    );
}

#[test]
fn mirrors_and_locality_parse_and_merge() {
    let text = "defaults:\n  locality: { enabled: true }\nservices:\n  api:\n    subsets: { v2: { tags: [v2] } }\n    mirror: { subset: v2, percent: 10 }\n    policy:\n      locality: { min_local_healthy_percent: 50 }\n    routes:\n      - match: { path_prefix: /x }\n        split: [ { subset: v2, weight: 1 } ]\n        mirror: { service: shadow, max_in_flight: 8 }\n  shadow: {}\n  web: {}\n";
    let config = parse_str(text).unwrap_or_else(|e| panic!("{e}"));
    let api = &config.services["api"];
    let mirror = api
        .mirror
        .as_ref()
        .map(|m| (m.subset.as_deref(), m.percent));
    assert_eq!(mirror, Some((Some("v2"), 10.0)));
    let route = api.routes[0].mirror.as_ref();
    assert_eq!(route.map(|m| m.max_in_flight), Some(8));
    assert!(api.policy.locality.enabled, "merged from defaults");
    assert_eq!(api.policy.locality.min_local_healthy_percent, 50);
    assert_eq!(
        config.services["web"]
            .policy
            .locality
            .min_local_healthy_percent,
        70
    );
}

#[test]
fn mirror_problems_name_file_line_and_column() {
    let text = "mesh:\n  catalog:\n    static:\n      services:\n        api: [ { address: \"127.0.0.1:1\", zone: \"\" } ]\nservices:\n  api:\n    subsets: { v1: { tags: [v1] } }\n    mirror: { subset: v2, percent: 120 }\n    policy: { locality: { min_local_healthy_percent: 101 } }\n    routes:\n      - split: [ { subset: v1, weight: 1 } ]\n        mirror: { service: ghost, subset: v1, max_in_flight: 0 }\n  db: { protocol: tcp, outbound_port: 15432 }\n  web:\n    mirror: { service: db }\n";
    assert_eq!(
        errors(text),
        [
            "mesh.yaml:10:27: policy.locality.min_local_healthy_percent is 101: expected 0 to 100",
            "mesh.yaml:5:42: api[0].zone is empty: expected a zone name, or leave it out",
            "mesh.yaml:9:5: mirror.percent is 120: expected 0 to 100",
            "mesh.yaml:9:15: mirror.subset: unknown subset `v2` (expected one of: v1)",
            "mesh.yaml:13:9: routes[0].mirror has both `subset` and `service`: expected exactly one",
            "mesh.yaml:13:9: routes[0].mirror.max_in_flight is 0: expected at least 1",
            "mesh.yaml:13:19: routes[0].mirror.service: unknown service `ghost` (expected one of: api, db, web; with Consul, declare it under `services`)",
            "mesh.yaml:16:15: mirror.service: `db` is a tcp service: expected an HTTP service",
        ]
    );
}

#[test]
fn with_consul_a_mirrored_service_must_be_declared() {
    let text = "mesh:\n  catalog:\n    consul: { address: \"http://127.0.0.1:8500\", zone_meta_key: \"\" }\nservices:\n  api:\n    mirror: { service: shadow }\n";
    assert_eq!(
        errors(text),
        [
            "mesh.yaml:3:49: consul.zone_meta_key is empty: expected a meta key such as `zone`",
            "mesh.yaml:6:15: mirror.service: unknown service `shadow` (expected one of: api; with Consul, declare it under `services`)",
        ]
    );
    let declared = format!(
        "{}  shadow: {{}}\n",
        text.replace("zone_meta_key: \"\"", "zone_meta_key: az")
    );
    let config = parse_str(&declared).unwrap_or_else(|e| panic!("{e}"));
    let CatalogConfig::Consul(consul) = &config.catalog else {
        panic!("consul");
    };
    assert_eq!(consul.zone_meta_key, "az");
}
