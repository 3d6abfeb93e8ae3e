//! Builds [`MeshState`] from a snapshot, validating it (every problem at
//! once) and carrying live state (endpoint statistics, ejections, connection
//! pools, limiters, budgets) over from the previous state wherever the
//! inputs are unchanged. Policies compile in `compile.rs`, authorization in
//! `authz.rs`; nothing past this module sees a wire type.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use tether_api::{Endpoint, Protocol, ServiceSnapshot, Snapshot, SplitTarget, SubsetSelector};
use tower::retry::budget::TpsBudget;

use super::compile::compile;
use super::mirror_locality::{self, MirrorBuilder, Scope};
use super::SnapshotMetrics;
use crate::balance::{EndpointSet, EndpointState, OutlierDetector};
use crate::identity::MeshIdentity;
use crate::request_metrics::{Direction, UNKNOWN_SERVICE};
use crate::resilience::{ConcurrencyLimiter, RetryOn};
use crate::state::{
    MeshState, OutboundPolicy, RouteRule, SourceDocument, Split, TcpService, UpstreamService,
};
use crate::transport::{ConnectionSettings, PoolFactory};

/// Builds the state for `snapshot`, or lists every problem found in it.
pub fn build(
    snapshot: Arc<Snapshot>,
    previous: &MeshState,
    metrics: &SnapshotMetrics,
    identity: Option<&MeshIdentity>,
) -> Result<MeshState, Vec<String>> {
    build_in_zone(snapshot, previous, metrics, identity, None)
}

/// [`build`] for a proxy in `zone` (`--zone`), which locality-aware
/// services prefer.
pub fn build_in_zone(
    snapshot: Arc<Snapshot>,
    previous: &MeshState,
    metrics: &SnapshotMetrics,
    identity: Option<&MeshIdentity>,
    zone: Option<&str>,
) -> Result<MeshState, Vec<String>> {
    let scope = Scope {
        zone,
        services: &snapshot.services,
        families: &metrics.traffic,
    };
    let mut problems = Vec::new();
    if let Some(identity) = identity {
        if snapshot.mesh.trust_domain != identity.trust_domain() {
            problems.push(format!(
                "mesh.trust_domain is `{}` but this proxy's identity is in `{}`: peers could not be verified; a trust-domain change needs certificates from that domain's CA",
                snapshot.mesh.trust_domain,
                identity.trust_domain()
            ));
        }
    }
    let authorization = match &snapshot.authorization {
        None => None,
        Some(policy) => match super::authz::compile(policy) {
            Ok(policy) => Some(Arc::new(policy)),
            Err(mut found) => {
                problems.append(&mut found);
                None
            }
        },
    };
    let inbound_rate_limit =
        super::traffic::inbound(&snapshot, previous, &metrics.traffic, &mut problems);
    let mut services = HashMap::with_capacity(snapshot.services.len());
    let mut tcp = HashMap::new();
    for (name, spec) in &snapshot.services {
        let before = problems.len();
        let port = tcp_port(name, spec, &tcp, &mut problems);
        let kept = match port {
            Some(_) => previous
                .tcp
                .values()
                .map(|t| &t.service)
                .find(|s| s.name == *name),
            None => previous.services.get(name),
        };
        let service = build_service(name, spec, kept, metrics, identity, scope, &mut problems);
        if problems.len() != before {
            continue;
        }
        let Some(port) = port else {
            services.insert(name.to_ascii_lowercase(), Arc::new(service));
            continue;
        };
        let tls = match identity.map(|i| crate::tcp::tls_target(i, name)) {
            None => None,
            Some(Ok(target)) => Some(target),
            Some(Err(error)) => {
                problems.push(format!("services.{name}: {error}"));
                continue;
            }
        };
        let tcp_service = TcpService {
            port,
            connect_timeout: spec.policy.connect_timeout,
            idle_timeout: spec.policy.stream_idle_timeout,
            tls,
            metrics: metrics.tcp.service(Direction::Outbound, name),
            service: Arc::new(service),
        };
        tcp.insert(port, Arc::new(tcp_service));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let tcp_endpoints = tcp_endpoints(&tcp);
    let outbound_policy = match snapshot.mesh.outbound_policy {
        tether_api::OutboundPolicy::AllowAny => OutboundPolicy::AllowAny,
        tether_api::OutboundPolicy::RegistryOnly => OutboundPolicy::RegistryOnly,
    };
    let partial = snapshot.partial;
    Ok(MeshState {
        version: snapshot.version,
        partial,
        source: SourceDocument::new(move || serde_json::to_value(&*snapshot).unwrap_or_default()),
        services,
        unknown_metrics: previous.unknown_metrics.clone(),
        authorization,
        tcp,
        tcp_endpoints,
        outbound_policy,
        inbound_rate_limit,
    })
}

/// Each tcp service by the `ip:port` of its endpoints (endpoints named by
/// host name have no fixed address and are left out): a captured
/// connection to one of them goes through its service. An address two
/// services share goes to the first by port, the same every time.
fn tcp_endpoints(tcp: &HashMap<u16, Arc<TcpService>>) -> HashMap<SocketAddr, Arc<TcpService>> {
    let mut by_port: Vec<&Arc<TcpService>> = tcp.values().collect();
    by_port.sort_by_key(|t| t.port);
    let mut found = HashMap::new();
    for service in by_port {
        for endpoint in &service.service.endpoints {
            if let Ok(addr) = endpoint.address().parse::<SocketAddr>() {
                found.entry(addr).or_insert_with(|| Arc::clone(service));
            }
        }
    }
    found
}

/// The outbound port of a tcp service (`None` for other protocols), after
/// checking it: tcp needs one, others may not have one, ports are unique.
fn tcp_port(
    name: &str,
    spec: &ServiceSnapshot,
    taken: &HashMap<u16, Arc<TcpService>>,
    problems: &mut Vec<String>,
) -> Option<u16> {
    match (spec.protocol, spec.outbound_port) {
        (Protocol::Tcp, None) => problems.push(format!(
            "services.{name}: protocol tcp needs outbound_port (the local port the app connects to for it)"
        )),
        (Protocol::Tcp, Some(0)) => problems.push(format!(
            "services.{name}.outbound_port: 0 is not a port: expected 1 to 65535"
        )),
        (Protocol::Tcp, Some(port)) => match taken.get(&port) {
            Some(other) => problems.push(format!(
                "services.{name}.outbound_port: {port} is also `{}`'s: expected one port per service",
                other.service.name
            )),
            None => return Some(port),
        },
        (_, Some(_)) => problems.push(format!(
            "services.{name}.outbound_port: only protocol tcp has one"
        )),
        (_, None) => {}
    }
    None
}

/// The unknown-service metric handles for an empty state.
pub fn unknown_metrics(metrics: &SnapshotMetrics) -> crate::request_metrics::ServiceMetrics {
    metrics.service(Direction::Outbound, UNKNOWN_SERVICE)
}

fn build_service(
    name: &str,
    spec: &ServiceSnapshot,
    previous: Option<&Arc<UpstreamService>>,
    metrics: &SnapshotMetrics,
    identity: Option<&MeshIdentity>,
    scope: Scope<'_>,
    problems: &mut Vec<String>,
) -> UpstreamService {
    let (policy, found) = compile(&spec.policy);
    problems.extend(
        found
            .into_iter()
            .map(|p| format!("services.{name}.policy.{}", p.message)),
    );
    check_splits(name, spec, problems);

    let service_metrics = previous
        .map(|p| p.metrics.clone())
        .unwrap_or_else(|| metrics.service(Direction::Outbound, name));

    // Endpoints: keep the live state of any endpoint whose address and
    // weight are unchanged, so EWMA and ejections survive the update.
    let old: HashMap<&str, &Arc<EndpointState>> = previous
        .map(|p| p.endpoints.iter().map(|e| (e.address(), e)).collect())
        .unwrap_or_default();
    let mut endpoints = Vec::with_capacity(spec.endpoints.len());
    for (i, endpoint) in spec.endpoints.iter().enumerate() {
        match old.get(endpoint.address.as_str()) {
            Some(kept) if kept.weight() == endpoint.weight => endpoints.push(Arc::clone(kept)),
            _ => match EndpointState::new(&endpoint.address, endpoint.weight) {
                Ok(state) => endpoints.push(Arc::new(state)),
                Err(_) => problems.push(format!(
                    "services.{name}.endpoints[{i}].address: `{}` is not host:port",
                    endpoint.address
                )),
            },
        }
    }
    let still_ejected = endpoints.iter().filter(|e| e.is_ejected()).count();
    let outliers = Arc::new(
        OutlierDetector::new(&policy.outliers, endpoints.len(), service_metrics.clone())
            .with_ejected(still_ejected),
    );

    let subset_set = |selector: Option<&SubsetSelector>, subset_name: Option<&str>| {
        let members: Vec<_> = endpoints
            .iter()
            .zip(&spec.endpoints)
            .filter(|(_, wire)| selector.is_none_or(|s| selects(s, wire)))
            .collect();
        let stats = metrics.upstream_stats.handle(name, subset_name);
        let set = EndpointSet::new(
            members.iter().map(|(state, _)| Arc::clone(state)).collect(),
            policy.load_balancer,
            Arc::clone(&outliers),
        )
        .with_stats(stats);
        Arc::new(mirror_locality::localize(
            set,
            &members,
            &spec.policy.locality,
            policy.load_balancer,
            &outliers,
            name,
            scope,
        ))
    };
    let all = subset_set(None, None);
    let subsets: HashMap<&str, Arc<EndpointSet>> = spec
        .subsets
        .iter()
        .map(|(n, s)| (n.as_str(), subset_set(Some(s), Some(n.as_str()))))
        .collect();
    let split_of = |targets: &[SplitTarget], at: &str, problems: &mut Vec<String>| {
        if targets.is_empty() {
            return Split::new(vec![(Arc::clone(&all), 1)]);
        }
        let mut chosen = Vec::with_capacity(targets.len());
        for t in targets {
            match subsets.get(t.subset.as_str()) {
                Some(set) => chosen.push((Arc::clone(set), t.weight)),
                None => problems.push(format!(
                    "services.{name}.{at}: unknown subset `{}`",
                    t.subset
                )),
            }
        }
        Split::new(chosen)
    };
    let default_split = split_of(&spec.split, "split", problems);
    // Copies still in flight keep counting against the bound after an update.
    let in_flight = previous
        .and_then(|p| {
            let mut routes = p.routes.iter().filter_map(|r| r.mirror.as_ref());
            p.mirror.as_ref().or_else(|| routes.next())
        })
        .map(|m| Arc::clone(m.in_flight()))
        .unwrap_or_default();
    let mut mirrors = MirrorBuilder::new(name, &subsets, scope, in_flight);
    let mirror = spec
        .mirror
        .as_ref()
        .and_then(|m| mirrors.build(m, "mirror", problems));
    let mut routes = Vec::with_capacity(spec.routes.len());
    for (i, route) in spec.routes.iter().enumerate() {
        let mut headers = Vec::with_capacity(route.matches.headers.len());
        for (key, value) in &route.matches.headers {
            match (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(value)) {
                (Ok(k), Ok(v)) => headers.push((k, v)),
                _ => problems.push(format!("services.{name}.routes[{i}].match.headers: `{key}: {value}` is not a valid header")),
            }
        }
        routes.push(RouteRule {
            path_prefix: route.matches.path_prefix.clone(),
            headers,
            split: split_of(&route.split, &format!("routes[{i}].split"), problems),
            timeout: route.timeout,
            mirror: match &route.mirror {
                Some(m) => mirrors.build(m, &format!("routes[{i}].mirror"), problems),
                None => mirror.clone(),
            },
        });
    }

    // Between two sidecars over mTLS the hop is HTTP/2 whatever the app
    // speaks: the endpoint proved it is a Tether sidecar (which serves both),
    // and one multiplexed connection per endpoint keeps handshakes and memory
    // flat under bursts, where HTTP/1.1 opens a connection per concurrent
    // request (measured: 1 connection instead of ~180 at 4k rps, peak RSS
    // 11 MiB instead of 15-62 MiB, for ~15 % more CPU per request).
    // Plaintext endpoints may be plain apps, so they get the app's protocol.
    let http2 = matches!(spec.protocol, Protocol::Http2 | Protocol::Grpc) || identity.is_some();
    let tls = match identity.map(|i| i.target(name, http2)) {
        None => None,
        Some(Ok(target)) => Some(target),
        Some(Err(error)) => {
            problems.push(format!("services.{name}: {error}"));
            None
        }
    };
    let settings = ConnectionSettings {
        http2,
        connect_timeout: policy.connect_timeout,
        idle_timeout: policy.idle_timeout,
        expected_identity: tls.as_ref().map(|(id, _)| id.clone()),
    };
    let client = previous
        .filter(|p| *p.client.settings() == settings)
        .map(|p| p.client.clone())
        .unwrap_or_else(|| PoolFactory::with_tls(settings, tls.map(|(_, t)| t)));
    let limits = (policy.max_requests, policy.max_pending);
    let limiter = previous
        .filter(|p| p.limiter.limits() == limits)
        .map(|p| Arc::clone(&p.limiter))
        .unwrap_or_else(|| Arc::new(ConcurrencyLimiter::new(limits.0, limits.1)));
    // Budget settings are in range by construction (compile clamps them).
    let budget_spec = policy.retries.budget;
    let budget = match previous.filter(|p| p.retries.budget == budget_spec) {
        Some(p) => Arc::clone(&p.budget),
        None => Arc::new(TpsBudget::new(
            budget_spec.ttl,
            budget_spec.min_per_second,
            budget_spec.ratio,
        )),
    };

    // A gRPC service left on the HTTP default retries on UNAVAILABLE
    // instead of a 503 (which a gRPC server never answers).
    let mut retries = policy.retries;
    if spec.protocol == Protocol::Grpc
        && tether_api::is_default_retry_on(&spec.policy.retries.retry_on)
    {
        retries.retry_on = tether_api::default_grpc_retry_on()
            .into_iter()
            .map(RetryOn::from)
            .collect();
    }
    let traffic = super::traffic::outbound(name, spec, previous, &metrics.traffic, problems);
    UpstreamService {
        traffic,
        name: name.to_owned(),
        timeout: policy.timeout,
        retries,
        budget,
        limiter,
        client,
        outliers,
        endpoints,
        default_split,
        routes,
        metrics: service_metrics,
        mirror,
    }
}

/// Whether `endpoint` belongs to the subset `selector` describes.
pub fn selects(selector: &SubsetSelector, endpoint: &Endpoint) -> bool {
    selector.tags.iter().all(|t| endpoint.tags.contains(t))
        && selector
            .meta
            .iter()
            .all(|(k, v)| endpoint.meta.get(k) == Some(v))
}

/// Split weights must not all be zero (policy rules are checked by
/// `compile`, unknown subsets where splits are built).
fn check_splits(name: &str, spec: &ServiceSnapshot, problems: &mut Vec<String>) {
    if spec
        .split
        .iter()
        .chain(spec.routes.iter().flat_map(|r| &r.split))
        .all(|t| t.weight == 0)
        && (!spec.split.is_empty() || spec.routes.iter().any(|r| !r.split.is_empty()))
    {
        problems.push(format!("services.{name}: split weights sum to zero"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::file::parse;
    use std::path::Path;
    use std::time::Duration;

    fn snapshot(text: &str) -> Arc<Snapshot> {
        Arc::new(parse(Path::new("t.yaml"), text).unwrap_or_else(|e| panic!("{e}")))
    }

    fn empty(metrics: &SnapshotMetrics) -> MeshState {
        MeshState::empty(unknown_metrics(metrics))
    }

    #[tokio::test]
    async fn builds_subsets_and_routes() {
        let metrics = SnapshotMetrics::for_tests();
        let s = snapshot(
            r#"
services:
  api:
    endpoints:
      - { address: "127.0.0.1:1", tags: [v1] }
      - { address: "127.0.0.1:2", tags: [v2], meta: { version: "2" } }
    subsets: { v1: { tags: [v1] }, v2: { meta: { version: "2" } } }
    split: [ { subset: v1, weight: 90 }, { subset: v2, weight: 10 } ]
    routes:
      - match: { path_prefix: /admin, headers: { x-canary: "1" } }
        split: [ { subset: v2, weight: 100 } ]
        timeout: 2s
"#,
        );
        let state = build(s, &empty(&metrics), &metrics, None).unwrap_or_else(|p| panic!("{p:?}"));
        let api = &state.services["api"];
        assert_eq!(api.endpoints.len(), 2);
        assert_eq!(api.routes.len(), 1);
        let routed = api.routes[0]
            .split
            .choose()
            .map(|s| s.endpoints()[0].address().to_owned());
        assert_eq!(routed.as_deref(), Some("127.0.0.1:2"));
        assert_eq!(api.routes[0].timeout, Some(Duration::from_secs(2)));
    }

    #[tokio::test]
    async fn reports_every_problem_at_once() {
        let metrics = SnapshotMetrics::for_tests();
        let s = snapshot(
            r#"
services:
  api:
    endpoints: [ { address: "nope nope" } ]
    split: [ { subset: missing, weight: 1 } ]
    policy: { circuit_breaker: { max_requests: 0 } }
"#,
        );
        let problems = build(s, &empty(&metrics), &metrics, None)
            .err()
            .unwrap_or_default();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems
            .iter()
            .any(|p| p.contains("unknown subset `missing`")));
        assert!(problems.iter().any(|p| p.contains("not host:port")));
    }

    #[tokio::test]
    async fn keeps_endpoint_state_and_pool_across_updates() {
        let metrics = SnapshotMetrics::for_tests();
        let text = "services:\n  api:\n    endpoints: [ { address: \"127.0.0.1:1\" }, { address: \"127.0.0.1:2\" } ]\n";
        let first = build(snapshot(text), &empty(&metrics), &metrics, None)
            .unwrap_or_else(|p| panic!("{p:?}"));
        let text2 = "services:\n  api:\n    endpoints: [ { address: \"127.0.0.1:1\" }, { address: \"127.0.0.1:3\" } ]\n";
        let second =
            build(snapshot(text2), &first, &metrics, None).unwrap_or_else(|p| panic!("{p:?}"));
        let (a, b) = (&first.services["api"], &second.services["api"]);
        assert!(Arc::ptr_eq(&a.endpoints[0], &b.endpoints[0]));
        assert!(!Arc::ptr_eq(&a.endpoints[1], &b.endpoints[1]));
        assert!(Arc::ptr_eq(&a.limiter, &b.limiter));
        assert!(Arc::ptr_eq(&a.budget, &b.budget));
    }

    #[tokio::test]
    async fn an_empty_subset_gives_its_share_to_the_others() {
        // A canary split whose v1 (90 %) has no instance for a moment (its
        // one instance restarting): v2 takes everything rather than 90 %
        // of requests failing with no-endpoints. A zero weight still means
        // no traffic, and with no instance anywhere requests fail.
        let metrics = SnapshotMetrics::for_tests();
        let text = |v1: &str| {
            format!(
                r#"
services:
  api:
    endpoints: [ {v1} {{ address: "127.0.0.1:2", tags: [v2] }}, {{ address: "127.0.0.1:3", tags: [v3] }} ]
    subsets: {{ v1: {{ tags: [v1] }}, v2: {{ tags: [v2] }}, v3: {{ tags: [v3] }} }}
    split: [ {{ subset: v1, weight: 90 }}, {{ subset: v2, weight: 10 }}, {{ subset: v3, weight: 0 }} ]
"#
            )
        };
        let drawn = |text: String| {
            let state = build(snapshot(&text), &empty(&metrics), &metrics, None)
                .unwrap_or_else(|p| panic!("{p:?}"));
            let split = state.services["api"].default_split.clone();
            (0..200)
                .filter_map(|_| split.choose().map(|set| set.endpoints().len()))
                .collect::<Vec<_>>()
        };
        let with_v1 = drawn(text(r#"{ address: "127.0.0.1:1", tags: [v1] },"#));
        assert_eq!(with_v1.len(), 200);
        let without_v1 = drawn(text(""));
        assert_eq!(without_v1.len(), 200, "every draw finds a set");
        assert!(
            without_v1.iter().all(|n| *n == 1),
            "every draw is a set with an endpoint (v2; v3 has weight 0)"
        );
    }

    #[tokio::test]
    async fn choose_other_draws_another_subset_with_endpoints() {
        let metrics = SnapshotMetrics::for_tests();
        let text = r#"
services:
  api:
    endpoints: [ { address: "127.0.0.1:1", tags: [v1] }, { address: "127.0.0.1:2", tags: [v2] } ]
    subsets: { v1: { tags: [v1] }, v2: { tags: [v2] }, v3: { tags: [v3] } }
    split: [ { subset: v1, weight: 90 }, { subset: v2, weight: 10 }, { subset: v3, weight: 50 } ]
"#;
        let state = build(snapshot(text), &empty(&metrics), &metrics, None)
            .unwrap_or_else(|p| panic!("{p:?}"));
        let split = &state.services["api"].default_split;
        let v1 = (0..1000)
            .filter_map(|_| split.choose())
            .find(|set| set.endpoints()[0].address() == "127.0.0.1:1")
            .cloned()
            .unwrap_or_else(|| panic!("v1 is drawn"));
        for _ in 0..50 {
            let other = split
                .choose_other(&v1)
                .map(|set| set.endpoints()[0].address());
            assert_eq!(
                other,
                Some("127.0.0.1:2"),
                "v2: the only other subset with endpoints"
            );
        }
    }

    #[tokio::test]
    async fn split_weights_may_sum_past_u32() {
        // Found by fuzzing (fuzz/fuzz_targets/snapshot.rs): the split's
        // total was a u32 sum, which overflowed (a panic in debug builds, a
        // wrapped total and skewed draws in release).
        let metrics = SnapshotMetrics::for_tests();
        let s = snapshot(
            r#"
services:
  api:
    endpoints:
      - { address: "127.0.0.1:1", tags: [a] }
      - { address: "127.0.0.1:2", tags: [b] }
    subsets: { a: { tags: [a] }, b: { tags: [b] } }
    split: [ { subset: a, weight: 4294967295 }, { subset: b, weight: 1 } ]
"#,
        );
        let state = build(s, &empty(&metrics), &metrics, None).unwrap_or_else(|p| panic!("{p:?}"));
        let split = &state.services["api"].default_split;
        let heavy = (0..100)
            .filter_map(|_| split.choose())
            .filter(|set| set.endpoints()[0].address() == "127.0.0.1:1")
            .count();
        assert!(
            heavy >= 99,
            "weight 2^32-1 against 1 drew `a` {heavy} times in 100"
        );
    }

    #[tokio::test]
    async fn indexes_tcp_endpoints_and_compiles_the_outbound_policy() {
        let metrics = SnapshotMetrics::for_tests();
        let text = r#"
mesh: { outbound_policy: registry-only }
services:
  db:
    protocol: tcp
    outbound_port: 15432
    endpoints: [ { address: "10.0.0.5:5432" }, { address: "db.example:5432" } ]
  api:
    endpoints: [ { address: "10.0.0.6:8080" } ]
"#;
        let state = build(snapshot(text), &empty(&metrics), &metrics, None)
            .unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(state.outbound_policy, OutboundPolicy::RegistryOnly);
        let db: SocketAddr = "10.0.0.5:5432".parse().unwrap();
        assert_eq!(
            state.tcp_endpoints.len(),
            1,
            "host names and http services are not indexed"
        );
        assert_eq!(state.tcp_endpoints[&db].service.name, "db");
        let state = build(snapshot("services: {}\n"), &state, &metrics, None)
            .unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(state.outbound_policy, OutboundPolicy::AllowAny);
        assert!(state.tcp_endpoints.is_empty());
    }
}
