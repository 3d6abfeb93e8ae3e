use super::*;
use std::path::Path;

const SNAPSHOT: &str = r#"
services:
  api:
    endpoints:
      - { address: "127.0.0.1:1", tags: [v1] }
      - { address: "127.0.0.1:2", tags: [v2] }
      - { address: "127.0.0.1:3", tags: [v1] }
    subsets: { v1: { tags: [v1] }, v2: { tags: [v2] }, v3: { tags: [v3] } }
    split: [ { subset: v1, weight: 90 }, { subset: v2, weight: 10 }, { subset: v3, weight: 5 } ]
    policy: { timeout: 3s }
    routes:
      - match: { path_prefix: /admin }
        split: [ { subset: v2, weight: 100 } ]
        timeout: 1s
      - match: { path_prefix: /v1, headers: { x-canary: "1" } }
        split: [ { subset: v2, weight: 1 } ]
authorization:
  default: deny
  rules:
    - { from: [web], methods: [GET], paths: ["/v1/*"] }
    - { from: [ops], paths: ["/admin"] }
"#;

fn snapshot() -> Snapshot {
    crate::discovery::file::parse(Path::new("t.yaml"), SNAPSHOT).unwrap()
}

fn request(path: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut builder = Request::builder().uri(path).header("host", "api");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(()).unwrap()
}

#[tokio::test]
async fn the_first_matching_route_decides_and_the_default_split_otherwise() {
    let wire = snapshot();
    let state = state_for(wire.clone(), None).unwrap();
    let admin = route(&state, &wire, &request("/admin/x", &[])).unwrap();
    assert_eq!(admin.route, Some(0));
    assert_eq!(admin.timeout, Duration::from_secs(1));
    assert_eq!(admin.split.len(), 1);
    assert_eq!(admin.split[0].subset.as_deref(), Some("v2"));
    assert_eq!(admin.split[0].endpoints, vec!["127.0.0.1:2"]);

    // The header is required: without it, the default split.
    let plain = route(&state, &wire, &request("/v1/users", &[])).unwrap();
    assert_eq!(plain.route, None);
    assert_eq!(plain.timeout, Duration::from_secs(3));
    let canary = route(&state, &wire, &request("/v1/users", &[("x-canary", "1")])).unwrap();
    assert_eq!(canary.route, Some(1));
}

#[tokio::test]
async fn the_split_names_its_subsets_shares_and_endpoints() {
    let wire = snapshot();
    let state = state_for(wire.clone(), None).unwrap();
    let plain = route(&state, &wire, &request("/", &[])).unwrap();
    let v1 = &plain.split[0];
    assert_eq!(v1.subset.as_deref(), Some("v1"));
    assert_eq!(v1.endpoints, vec!["127.0.0.1:1", "127.0.0.1:3"]);
    assert!((v1.percent - 90.0).abs() < 1e-9, "{}", v1.percent);
    assert_eq!(plain.split[1].subset.as_deref(), Some("v2"));
    assert!((plain.split[1].percent - 10.0).abs() < 1e-9);
    // v3 has no endpoint: the proxy leaves it out of the draw.
    let v3 = &plain.split[2];
    assert_eq!(v3.subset.as_deref(), Some("v3"));
    assert_eq!(v3.percent, 0.0);
    assert!(v3.note.as_deref().unwrap().contains("no endpoints"));
}

#[tokio::test]
async fn an_unknown_service_is_the_proxy_s_own_error() {
    let wire = snapshot();
    let state = state_for(wire.clone(), None).unwrap();
    let mut request = request("/", &[]);
    request
        .headers_mut()
        .insert("host", http::HeaderValue::from_static("nope"));
    let error = route(&state, &wire, &request).unwrap_err();
    assert!(matches!(error, ProxyError::UnknownService(ref s) if s == "nope"));
}

#[tokio::test]
async fn authorization_names_the_first_allowing_rule_or_the_default() {
    let state = state_for(snapshot(), None).unwrap();
    let web = SpiffeId::service("tether.local", "web").unwrap();
    let ops = SpiffeId::service("tether.local", "ops").unwrap();
    let allowed = authorize(&state, Some(&web), &Method::GET, "/v1/users");
    assert!(allowed.allowed);
    assert_eq!(allowed.rule, Some(0));
    let by_ops = authorize(&state, Some(&ops), &Method::POST, "/admin");
    assert_eq!(by_ops.rule, Some(1));
    let denied = authorize(&state, Some(&web), &Method::POST, "/v1/users");
    assert!(!denied.allowed);
    assert_eq!(denied.rule, None);
    assert_eq!(denied.default, Some("default: deny"));
    // The check the inbound path runs agrees.
    let policy = state.authorization.as_deref().unwrap();
    assert!(!policy.allows(Some(&web), &Method::POST, "/v1/users"));
    assert!(policy.allows(Some(&web), &Method::GET, "/v1/users"));
}

#[tokio::test]
async fn without_authorization_everyone_is_let_in() {
    let text = "services:\n  api:\n    endpoints: [ { address: \"127.0.0.1:1\" } ]\n";
    let wire = crate::discovery::file::parse(Path::new("t.yaml"), text).unwrap();
    let state = state_for(wire, None).unwrap();
    let open = authorize(&state, None, &Method::DELETE, "/");
    assert!(open.allowed);
    assert_eq!(open.default, Some("no authorization configured"));
}

#[tokio::test]
async fn with_a_zone_each_subset_shows_its_local_endpoints() {
    let text = r#"
services:
  api:
    policy: { locality: { enabled: true } }
    endpoints:
      - { address: "127.0.0.1:1", zone: a }
      - { address: "127.0.0.1:2", zone: b }
"#;
    let wire = crate::discovery::file::parse(Path::new("t.yaml"), text).unwrap();
    let state = state_for(wire.clone(), Some("a")).unwrap();
    let routed = route(&state, &wire, &request("/", &[])).unwrap();
    assert_eq!(routed.split[0].subset, None, "no split: every endpoint");
    assert_eq!(routed.split[0].endpoints.len(), 2);
    assert_eq!(
        routed.split[0].local_endpoints,
        Some(vec!["127.0.0.1:1".to_owned()])
    );
    let nowhere = state_for(wire.clone(), None).unwrap();
    let routed = route(&nowhere, &wire, &request("/", &[])).unwrap();
    assert_eq!(
        routed.split[0].local_endpoints, None,
        "no zone: no locality"
    );
}
