use super::*;

const MESH: &str = r#"mesh:
  catalog:
    static:
      services:
        web:
          - { address: "127.0.0.1:7001" }
        ops:
          - { address: "127.0.0.1:7201" }
        api:
          - { address: "127.0.0.1:7101", tags: [v1] }
          - { address: "127.0.0.1:7102", tags: [v2] }
services:
  api:
    policy: { timeout: 4s }
    subsets:
      v1: { tags: [v1] }
      v2: { tags: [v2] }
    split:
      - { subset: v1, weight: 80 }
      - { subset: v2, weight: 20 }
    routes:
      - match: { path_prefix: /beta }
        split: [ { subset: v2, weight: 100 } ]
        timeout: 1s
authorization:
  default: deny
  rules:
    - to: web
      from: ["*"]
    - to: api
      from: [ops]
    - to: api
      from: [web]
      methods: [GET]
      paths: ["/v1/*", "/beta*"]
"#;

fn query(from: &str, method: &str, path: &str) -> Query {
    Query {
        from: from.into(),
        to: "api".into(),
        method: http::Method::from_bytes(method.as_bytes()).unwrap(),
        path: path.into(),
        headers: Vec::new(),
        zone: None,
    }
}

fn run(query: &Query) -> Explanation {
    let path = Path::new("mesh.yaml");
    let config = crate::config::parse(path, MESH).unwrap();
    let positions = Positions::new(path, MESH.to_owned(), config.clone());
    let inputs = offline(&config, path, query);
    explain(query, &inputs, Some(&positions)).unwrap()
}

#[tokio::test]
async fn an_allowed_request_names_its_route_split_and_rule_by_line() {
    let e = run(&query("web", "GET", "/beta/x"));
    assert!(e.ok(), "{e:?}");
    let route = e.route.as_ref().unwrap();
    assert_eq!(route.decision.route, Some(0));
    assert_eq!(route.position.as_deref(), Some("mesh.yaml:22"));
    assert_eq!(route.decision.timeout, std::time::Duration::from_secs(1));
    assert_eq!(route.decision.split[0].subset.as_deref(), Some("v2"));
    assert_eq!(route.decision.split[0].endpoints, vec!["127.0.0.1:7102"]);
    // The third rule of the file, the second of those for `api`.
    assert_eq!(e.authorization.decision.rule, Some(1));
    assert_eq!(e.authorization.config_index, Some(2));
    assert_eq!(e.authorization.position.as_deref(), Some("mesh.yaml:32"));
    let text = render(&e);
    assert!(
        text.contains("ALLOWED by authorization.rules[2] at mesh.yaml:32"),
        "{text}"
    );
    assert!(
        text.contains("verdict: allowed and routed (exit 0)"),
        "{text}"
    );
}

#[tokio::test]
async fn the_default_split_shares_by_weight() {
    let e = run(&query("web", "GET", "/v1/users"));
    let route = e.route.as_ref().unwrap();
    assert_eq!(route.decision.route, None);
    assert_eq!(route.decision.timeout, std::time::Duration::from_secs(4));
    let shares: Vec<(Option<&str>, f64)> = route
        .decision
        .split
        .iter()
        .map(|s| (s.subset.as_deref(), s.percent))
        .collect();
    assert_eq!(shares, vec![(Some("v1"), 80.0), (Some("v2"), 20.0)]);
}

#[tokio::test]
async fn a_request_no_rule_allows_is_denied_by_the_default() {
    let e = run(&query("web", "DELETE", "/v1/users"));
    assert!(e.routed);
    assert!(!e.allowed);
    assert!(!e.ok());
    assert_eq!(e.authorization.decision.default, Some("default: deny"));
    assert!(render(&e).contains("DENIED no rule allows it (default: deny)"));
}

#[tokio::test]
async fn an_unknown_service_is_unroutable_with_the_proxy_s_reason() {
    let mut q = query("web", "GET", "/");
    q.to = "nope".into();
    let e = run(&q);
    assert!(!e.routed);
    assert_eq!(e.error.as_ref().map(|x| x.reason), Some("unknown-service"));
}

#[tokio::test]
async fn a_rollout_is_shown_with_the_split_it_holds() {
    let q = query("web", "GET", "/v1/users");
    let path = Path::new("mesh.yaml");
    let config = crate::config::parse(path, MESH).unwrap();
    let mut inputs = offline(&config, path, &q);
    inputs.source = "http://control".into();
    inputs.rollout = Some(RolloutView {
        from: "v1".into(),
        to: "v2".into(),
        phase: "active",
        percent: 20,
    });
    let e = explain(&q, &inputs, None).unwrap();
    let text = render(&e);
    assert!(
        text.contains(
            "rollout:            v1 → v2 at 20 % (active): the split above is its override"
        ),
        "{text}"
    );
    // Without the file, the rule is named by its place among api's rules.
    assert!(text.contains("ALLOWED by rule 1 for api"), "{text}");
}
