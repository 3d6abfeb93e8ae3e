use super::*;

fn request(path: &str) -> TapRequest {
    let request = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("host", "api")
        .header("authorization", "Bearer secret-token")
        .body(())
        .unwrap();
    TapRequest::of(&request, SystemTime::now())
}

fn outcome(direction: Direction, service: &str) -> TapOutcome<'_> {
    TapOutcome {
        direction,
        service,
        peer: Some("spiffe://tether.local/service/web"),
        status: 503,
        latency: Duration::from_millis(3),
        error: Some("no-endpoints"),
        upstream: Some("127.0.0.1:9".into()),
    }
}

fn filter(query: &str) -> TapFilter {
    TapFilter::parse(query).unwrap()
}

fn json(line: &Bytes) -> serde_json::Value {
    assert_eq!(line.last(), Some(&b'\n'), "one event a line");
    serde_json::from_slice(line).unwrap()
}

#[test]
fn the_sampler_admits_its_rate_in_each_second() {
    let start = Instant::now();
    let mut sampler = Sampler::new(3, start);
    let admitted = (0..10).filter(|_| sampler.admit(start)).count();
    assert_eq!(admitted, 3);
    assert!(!sampler.admit(start + Duration::from_millis(999)));
    let later = start + Duration::from_secs(1);
    assert_eq!((0..10).filter(|_| sampler.admit(later)).count(), 3);
}

#[tokio::test]
async fn a_tap_gets_at_most_its_rate_of_events() {
    let tap = Tap::default();
    let mut stream = tap.subscribe(filter("rate=5")).unwrap();
    for _ in 0..50 {
        tap.publish(request("/v1/x"), outcome(Direction::Outbound, "api"));
    }
    drop(tap);
    let mut got = 0;
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(50), stream.next_line()).await
    {
        got += 1;
    }
    // 5 a second; 10 if the loop straddled a second's boundary.
    assert!((5..=10).contains(&got), "{got} events");
    assert_eq!(stream.dropped(), 0, "sampled out is not dropped");
}

#[tokio::test]
async fn a_slow_client_loses_events_and_they_are_counted() {
    let registry = Registry::new();
    let metrics = Tap::register(&registry).hub.metrics.clone();
    let tap = Tap::with_parts(metrics, 4);
    let mut stream = tap.subscribe(filter("rate=100")).unwrap();
    for _ in 0..10 {
        tap.publish(request("/v1/x"), outcome(Direction::Outbound, "api"));
    }
    assert_eq!(stream.dropped(), 6);
    let first = json(&stream.next_line().await.unwrap());
    assert_eq!(first["dropped"], 6, "each line says how many were lost");
    let text = String::from_utf8(
        prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap()
            .into_bytes(),
    )
    .unwrap();
    assert!(text.contains("tether_tap_events_dropped_total 6"), "{text}");
    assert!(text.contains("tether_tap_events_total 4"), "{text}");
    assert!(text.contains("tether_tap_clients 1"), "{text}");
}

#[test]
fn at_most_max_clients_tap_at_once_and_leaving_frees_a_place() {
    let tap = Tap::default();
    assert!(!tap.is_active());
    let mut open: Vec<TapStream> = (0..MAX_CLIENTS)
        .map(|_| tap.subscribe(TapFilter::default()).unwrap())
        .collect();
    assert!(tap.is_active());
    assert_eq!(
        tap.subscribe(TapFilter::default()).err(),
        Some(TapError::Full)
    );
    open.pop();
    assert_eq!(tap.clients(), MAX_CLIENTS - 1);
    open.push(tap.subscribe(TapFilter::default()).unwrap());
    open.clear();
    assert!(!tap.is_active(), "nobody taps: the request path skips it");
}

#[tokio::test]
async fn filters_pick_direction_service_and_path() {
    let tap = Tap::default();
    let mut inbound = tap
        .subscribe(filter("direction=inbound&path_prefix=%2Fv1"))
        .unwrap();
    let mut other = tap.subscribe(filter("service=other")).unwrap();
    tap.publish(request("/v2/x"), outcome(Direction::Inbound, "api"));
    tap.publish(request("/v1/x"), outcome(Direction::Outbound, "api"));
    tap.publish(request("/v1/y"), outcome(Direction::Inbound, "api"));
    let event = json(&inbound.next_line().await.unwrap());
    assert_eq!(event["path"], "/v1/y");
    assert_eq!(event["direction"], "inbound");
    assert_eq!(event["method"], "POST");
    assert_eq!(event["authority"], "api");
    assert_eq!(event["status"], 503);
    assert_eq!(event["tether_error"], "no-endpoints");
    assert_eq!(event["upstream"], "127.0.0.1:9");
    assert_eq!(event["peer_identity"], "spiffe://tether.local/service/web");
    assert!(event.get("headers").is_none(), "no headers unless asked");
    tap.close_all();
    assert!(inbound.next_line().await.is_none());
    assert!(other.next_line().await.is_none(), "nothing for `other`");
}

#[tokio::test]
async fn header_names_only_never_values() {
    let tap = Tap::default();
    let mut stream = tap.subscribe(filter("headers=names")).unwrap();
    tap.publish(request("/"), outcome(Direction::Outbound, "api"));
    let line = stream.next_line().await.unwrap();
    let text = String::from_utf8_lossy(&line);
    assert!(!text.contains("secret-token"), "{text}");
    let event = json(&line);
    let names = event["headers"].as_array().unwrap();
    assert!(names.iter().any(|n| n == "authorization"), "{event}");
}

#[test]
fn bad_queries_say_what_was_expected() {
    for (query, expected) in [
        ("rate=0", "1 to 100"),
        ("rate=1000", "1 to 100"),
        ("direction=up", "inbound or outbound"),
        ("headers=values", "never tapped"),
        ("colour=red", "unknown parameter `colour`"),
    ] {
        let error = TapFilter::parse(query).unwrap_err();
        assert!(error.contains(expected), "{query}: {error}");
    }
    assert_eq!(filter("").rate, DEFAULT_RATE);
    assert_eq!(filter("rate=100").rate, MAX_RATE);
}

#[tokio::test]
async fn close_all_ends_every_stream() {
    let tap = Tap::default();
    let mut stream = tap.subscribe(TapFilter::default()).unwrap();
    tap.close_all();
    assert!(!tap.is_active());
    assert!(stream.next_line().await.is_none());
}
