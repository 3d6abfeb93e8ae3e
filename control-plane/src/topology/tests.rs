use std::sync::Arc;

use tether_api::{EndpointHealth, ProxyReport, UpstreamCounters};

use super::*;

const NOW_MS: u64 = 1_000_000_000_000;

fn counters(service: &str, requests: u64, failures: u64, bucket: usize) -> UpstreamCounters {
    let mut latency_buckets = vec![0; LATENCY_BUCKET_COUNT];
    latency_buckets[bucket] = requests;
    UpstreamCounters {
        service: service.into(),
        subset: None,
        requests,
        failures,
        latency_buckets,
    }
}

fn report(proxy: &str, service: &str, upstreams: Vec<UpstreamCounters>) -> StatsReport {
    StatsReport {
        proxy_id: proxy.into(),
        service: service.into(),
        // Started long before any window.
        counters_since_unix_ms: 1,
        upstreams,
        ..StatsReport::default()
    }
}

/// A span from `base` to `latest`, 10 s apart, the latest 1 s old.
fn span(base: StatsReport, latest: StatsReport) -> Span {
    Span {
        base: Arc::new(base),
        latest: Arc::new(latest),
        elapsed: Duration::from_secs(10),
        age: Duration::from_secs(1),
    }
}

fn status(proxy: &str, service: &str, applied: u64, rejected: Option<u64>) -> ProxyStatus {
    ProxyStatus {
        report: ProxyReport {
            proxy_id: proxy.into(),
            service: service.into(),
            applied_version: applied,
            rejected_version: rejected,
            error: rejected.map(|_| "bad route".into()),
        },
        last_contact_unix: NOW_MS / 1000,
        connected: true,
    }
}

fn topology(spans: &[Span], proxies: &[ProxyStatus], endpoints: &[(&str, &[&str])]) -> Topology {
    let endpoints: BTreeMap<String, Vec<String>> = endpoints
        .iter()
        .map(|(s, a)| (s.to_string(), a.iter().map(|a| a.to_string()).collect()))
        .collect();
    compute(Inputs {
        spans,
        proxies,
        endpoints: &endpoints,
        window: DEFAULT_WINDOW,
        now_unix_ms: NOW_MS,
    })
}

fn edge<'a>(t: &'a Topology, from: &str, to: &str) -> &'a EdgeView {
    t.edges
        .iter()
        .find(|e| e.from == from && e.to == to)
        .unwrap_or_else(|| panic!("no edge {from} → {to}: {:?}", t.edges))
}

fn service<'a>(t: &'a Topology, name: &str) -> &'a ServiceView {
    t.services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

#[test]
fn edges_are_window_deltas_summed_over_the_callers_proxies() {
    // Two web proxies call api: 100 and 50 requests in 10 s; one also calls db.
    let spans = [
        span(
            report("web-1", "web", vec![counters("api", 1000, 0, 2)]),
            report(
                "web-1",
                "web",
                vec![counters("api", 1100, 0, 2), counters("db", 20, 0, 1)],
            ),
        ),
        span(
            report("web-2", "web", vec![counters("api", 500, 10, 3)]),
            report("web-2", "web", vec![counters("api", 550, 15, 3)]),
        ),
    ];
    let t = topology(&spans, &[], &[("web", &[]), ("api", &["10.0.0.1:80"])]);
    let api = &edge(&t, "web", "api").figures;
    assert_eq!((api.requests, api.failures), (150, 5));
    assert!((api.rps - 15.0).abs() < 1e-9, "{api:?}");
    assert!((api.success_rate - (1.0 - 5.0 / 150.0)).abs() < 1e-9);
    // 100 in the 1 ms bucket, 50 in the 2.5 ms one: p99 is in the latter.
    assert_eq!(api.p99_ms, Some(2.5));
    // db had no base entry: its whole count is the window's.
    let db = &edge(&t, "web", "db").figures;
    assert_eq!((db.requests, db.rps), (20, 2.0));
    // Per service: inbound from callers, outbound of its proxies.
    assert_eq!(
        service(&t, "api").inbound.as_ref().map(|f| f.requests),
        Some(150)
    );
    assert_eq!(
        service(&t, "web").outbound.as_ref().map(|f| f.requests),
        Some(170)
    );
    assert!(service(&t, "web").inbound.is_none());
    // Layers: web calls api and db.
    assert_eq!(service(&t, "web").depth, 0);
    assert_eq!(service(&t, "api").depth, 1);
    assert_eq!(service(&t, "db").depth, 1);
    assert_eq!(t.services[0].name, "web", "sorted by depth");
    assert_eq!(t.window_seconds, 30);
}

#[test]
fn a_low_success_rate_is_a_problem_of_the_callee_once_enough_requests_count() {
    let spans = [span(
        report(
            "web-1",
            "web",
            vec![counters("api", 0, 0, 2), counters("db", 0, 0, 2)],
        ),
        report(
            "web-1",
            "web",
            vec![counters("api", 100, 20, 2), counters("db", 3, 3, 2)],
        ),
    )];
    let t = topology(&spans, &[], &[]);
    let low: Vec<&Problem> = t
        .problems
        .iter()
        .filter(|p| p.kind == ProblemKind::LowSuccessRate)
        .collect();
    assert_eq!(
        low.len(),
        1,
        "db's 3 requests are too few to judge: {low:?}"
    );
    assert_eq!(low[0].service, "api");
    assert!(low[0].message.contains("80.0 %"), "{}", low[0].message);
    assert!(service(&t, "api").problem);
    assert!(!service(&t, "web").problem);
    assert!(!service(&t, "db").problem);
}

#[test]
fn instances_show_ejections_and_the_fronting_proxys_versions() {
    let mut latest = report("web-1", "web", vec![counters("api", 10, 0, 2)]);
    latest.endpoints = vec![
        EndpointHealth {
            service: "api".into(),
            address: "10.0.0.1:80".into(),
            ejected: false,
        },
        EndpointHealth {
            service: "api".into(),
            address: "10.0.0.2:80".into(),
            ejected: true,
        },
    ];
    let mut api_stats = report("api-1", "api", vec![]);
    api_stats.inbound_address = Some("10.0.0.1:80".into());
    api_stats.proxy_version = Some("9.9.9".into());
    let spans = [
        span(report("web-1", "web", vec![]), latest),
        span(api_stats.clone(), api_stats),
    ];
    let proxies = [
        status("api-1", "api", 42, None),
        status("web-1", "web", 42, None),
    ];
    let t = topology(
        &spans,
        &proxies,
        &[("api", &["10.0.0.1:80", "10.0.0.2:80"])],
    );
    let api = service(&t, "api");
    assert_eq!(api.instances.len(), 2);
    let first = &api.instances[0];
    assert_eq!(first.address, "10.0.0.1:80");
    assert!(first.healthy);
    assert_eq!((first.ejected_by, first.observed_by), (0, 1));
    assert_eq!(first.proxy_id.as_deref(), Some("api-1"));
    assert_eq!(first.proxy_version.as_deref(), Some("9.9.9"));
    assert_eq!(first.config_version, Some(42));
    let second = &api.instances[1];
    assert_eq!((second.ejected_by, second.observed_by), (1, 1));
    assert!(second.proxy_id.is_none());
    assert!(t
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::EjectedInstance
            && p.subject == "10.0.0.2:80"
            && p.service == "api"));
    assert_eq!(api.proxies, vec!["api-1".to_owned()]);
}

#[test]
fn refused_configs_and_expiring_certificates_are_problems_of_their_proxy() {
    let mut soon = report("api-1", "api", vec![]);
    soon.certificate_not_after_unix = Some(NOW_MS / 1000 + 3600);
    let mut later = report("db-1", "db", vec![]);
    later.certificate_not_after_unix = Some(NOW_MS / 1000 + 30 * 24 * 3600);
    let spans = [span(soon.clone(), soon), span(later.clone(), later)];
    let proxies = [
        status("web-1", "web", 41, Some(42)),
        status("api-1", "api", 42, None),
    ];
    let t = topology(&spans, &proxies, &[]);
    let kinds: Vec<(ProblemKind, &str)> = t
        .problems
        .iter()
        .map(|p| (p.kind, p.subject.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (ProblemKind::RefusedConfig, "web-1"),
            (ProblemKind::CertificateExpiring, "api-1"),
        ]
    );
    assert!(t.problems[0]
        .message
        .contains("refused config 42: bad route"));
    assert!(
        t.problems[1].message.contains("1h00m"),
        "{}",
        t.problems[1].message
    );
    let web = t.proxies.iter().find(|p| p.proxy_id == "web-1").unwrap();
    assert_eq!((web.applied_version, web.rejected_version), (41, Some(42)));
    assert_eq!(web.stats_age_ms, None, "web-1 sent no statistics");
    let api = t.proxies.iter().find(|p| p.proxy_id == "api-1").unwrap();
    assert_eq!(api.stats_age_ms, Some(1000));
    assert!(service(&t, "web").problem && service(&t, "api").problem);
    assert!(!service(&t, "db").problem);
}

#[test]
fn a_proxy_that_started_inside_the_window_counts_from_zero_and_stale_ones_not_at_all() {
    let mut young = report("web-1", "web", vec![counters("api", 40, 0, 2)]);
    // Started 4 s before its latest report (which is 1 s old).
    young.counters_since_unix_ms = NOW_MS - 5_000;
    let single = Span {
        base: Arc::new(young.clone()),
        latest: Arc::new(young),
        elapsed: Duration::ZERO,
        age: Duration::from_secs(1),
    };
    let mut stale = span(
        report("web-2", "web", vec![counters("api", 0, 0, 2)]),
        report("web-2", "web", vec![counters("api", 999, 0, 2)]),
    );
    stale.age = DEFAULT_WINDOW + Duration::from_secs(1);
    let t = topology(&[single, stale], &[], &[]);
    let api = &edge(&t, "web", "api").figures;
    assert_eq!(api.requests, 40);
    assert!((api.rps - 10.0).abs() < 1e-9, "{api:?}");
}

#[test]
fn cycles_do_not_stop_the_layering() {
    let spans = [
        span(
            report("a-1", "a", vec![]),
            report("a-1", "a", vec![counters("b", 1, 0, 0)]),
        ),
        span(
            report("b-1", "b", vec![]),
            report("b-1", "b", vec![counters("c", 1, 0, 0)]),
        ),
        span(
            report("c-1", "c", vec![]),
            report("c-1", "c", vec![counters("a", 1, 0, 0)]),
        ),
    ];
    let t = topology(&spans, &[], &[("d", &[])]);
    let depths: Vec<(&str, u32)> = t
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.depth))
        .collect();
    assert_eq!(depths, vec![("a", 0), ("d", 0), ("b", 1), ("c", 2)]);
}

#[test]
fn two_hundred_services_in_a_chain_of_layers_compute_quickly() {
    // 200 services, each calling the next two: layered, no panic.
    let spans: Vec<Span> = (0..200)
        .map(|i| {
            let ups = vec![
                counters(&format!("svc-{:03}", i + 1), 10, 0, 2),
                counters(&format!("svc-{:03}", i + 2), 10, 0, 2),
            ];
            let name = format!("svc-{i:03}");
            span(
                report(&format!("{name}-1"), &name, vec![]),
                report(&format!("{name}-1"), &name, ups),
            )
        })
        .collect();
    let t = topology(&spans, &[], &[]);
    assert_eq!(t.services.len(), 202);
    assert_eq!(t.edges.len(), 400);
    assert_eq!(service(&t, "svc-000").depth, 0);
    assert_eq!(service(&t, "svc-200").depth, 200);
    assert_eq!(service(&t, "svc-201").depth, 200, "called by svc-199 only");
}

#[test]
fn window_query_is_clamped_and_unspecified_inbound_ips_take_the_peers() {
    assert_eq!(window_from_query(None), DEFAULT_WINDOW);
    assert_eq!(window_from_query(Some("10s")), Duration::from_secs(10));
    assert_eq!(window_from_query(Some("1h")), MAX_WINDOW);
    assert_eq!(window_from_query(Some("0s")), MIN_WINDOW);
    assert_eq!(window_from_query(Some("junk")), DEFAULT_WINDOW);
    let mut r = report("a-1", "a", vec![]);
    r.inbound_address = Some("0.0.0.0:15006".into());
    resolve_inbound(&mut r, "10.1.2.3".parse().unwrap());
    assert_eq!(r.inbound_address.as_deref(), Some("10.1.2.3:15006"));
    r.inbound_address = Some("127.0.0.5:1".into());
    resolve_inbound(&mut r, "10.1.2.3".parse().unwrap());
    assert_eq!(r.inbound_address.as_deref(), Some("127.0.0.5:1"));
}
