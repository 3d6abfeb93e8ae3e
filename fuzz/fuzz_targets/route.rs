//! Outbound routing on arbitrary requests: service name from the authority
//! (URI or Host header; port and `.mesh` stripped, case-insensitive), then
//! the route rules (`RouteRule::matches`: path prefix and exact headers)
//! and the traffic split, over a fixed mesh state.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request, Uri};
use libfuzzer_sys::fuzz_target;
use tether_proxy::discovery::build::{build, unknown_metrics};
use tether_proxy::fuzzing::{decode_snapshot, resolve};
use tether_proxy::state::MeshState;

/// `api` has a canary route (2 s timeout) and subsets; `db` has a prefix
/// route; `web` has neither.
const SNAPSHOT: &str = r#"
services:
  api:
    endpoints:
      - { address: "127.0.0.1:1", tags: [v1] }
      - { address: "127.0.0.1:2", tags: [v2] }
    subsets: { v1: { tags: [v1] }, v2: { tags: [v2] } }
    split: [ { subset: v1, weight: 90 }, { subset: v2, weight: 10 } ]
    routes:
      - match: { path_prefix: /admin, headers: { x-canary: "1" } }
        split: [ { subset: v2, weight: 100 } ]
        timeout: 2s
  db:
    endpoints: [ { address: "127.0.0.1:3" } ]
    routes:
      - match: { path_prefix: /slow }
        split: []
        timeout: 9s
  web:
    endpoints: [ { address: "127.0.0.1:4" } ]
"#;

fn state() -> &'static MeshState {
    static STATE: OnceLock<MeshState> = OnceLock::new();
    STATE.get_or_init(|| {
        let metrics = tether_proxy::fuzzing::snapshot_metrics();
        let snapshot = decode_snapshot(SNAPSHOT.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        build(
            Arc::new(snapshot),
            &MeshState::empty(unknown_metrics(&metrics)),
            &metrics,
            None,
        )
        .unwrap_or_else(|p| panic!("{p:?}"))
    })
}

/// The input, as text lines: the authority (`Host: <authority>` for an
/// origin-form URI with a Host header, else an absolute `http://` URI),
/// the path (with any query), then `name: value` headers.
struct Input<'a> {
    authority: &'a [u8],
    host_header: bool,
    path: &'a [u8],
    headers: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> Input<'a> {
    fn parse(data: &'a [u8]) -> Self {
        let mut lines = data.split(|&b| b == b'\n');
        let first = lines.next().unwrap_or_default();
        let (authority, host_header) = match first.strip_prefix(b"Host: ") {
            Some(host) => (host, true),
            None => (first, false),
        };
        let path = lines.next().unwrap_or_default();
        let headers = lines
            .filter_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                let (name, value) = line.split_at(colon);
                Some((name, value[1..].trim_ascii()))
            })
            .collect();
        Self {
            authority,
            host_header,
            path,
            headers,
        }
    }
}

/// The service an authority names, written independently of the proxy's:
/// port and `.mesh` stripped, and host names are case-insensitive.
fn expected_service(authority: &str) -> String {
    // Brackets hold IPv6 literals: never a service name.
    if authority.starts_with('[') {
        return authority.to_owned();
    }
    // A port is empty or a number that fits in 16 bits (`api:99999` is
    // not `api`); names here have no brackets or colons of their own.
    let host = match authority.rsplit_once(':') {
        Some((host, port))
            if port.is_empty()
                || (port.chars().all(|c| c.is_ascii_digit()) && port.parse::<u16>().is_ok()) =>
        {
            host
        }
        _ => authority,
    };
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    if let Some(name) = host.strip_suffix(".mesh") {
        return name.to_owned();
    }
    // Consul DNS: NAME.service.consul or NAME.service.DC.consul.
    let labels: Vec<&str> = host.split('.').collect();
    match labels.as_slice() {
        [name, "service", "consul"] if !name.is_empty() => (*name).to_owned(),
        [name, "service", dc, "consul"] if !name.is_empty() && !dc.is_empty() => {
            (*name).to_owned()
        }
        _ => host.to_owned(),
    }
}

fuzz_target!(|data: &[u8]| {
    let input = Input::parse(data);
    let (Ok(authority), Ok(path)) = (
        std::str::from_utf8(input.authority),
        std::str::from_utf8(input.path),
    ) else {
        return;
    };
    let mut builder = Request::builder();
    if input.host_header {
        let Ok(uri) = path.parse::<Uri>() else {
            return;
        };
        let Ok(host) = HeaderValue::from_bytes(input.authority) else {
            return;
        };
        builder = builder.uri(uri).header(http::header::HOST, host);
    } else {
        let Ok(uri) = format!("http://{authority}{path}").parse::<Uri>() else {
            return;
        };
        builder = builder.uri(uri);
    }
    for (name, value) in &input.headers {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            builder = builder.header(name, value);
        }
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let authority = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| request.headers().get(http::header::HOST)?.to_str().ok());
    let expected = authority.map(expected_service);
    let known = expected
        .as_deref()
        .filter(|name| ["api", "db", "web"].contains(name));
    let target = match (resolve(state(), &request), known) {
        (Ok(target), Some(name)) => {
            assert_eq!(target.service.name, name, "authority {authority:?}");
            target
        }
        (Ok(target), None) => panic!("{authority:?} routed to `{}`", target.service.name),
        (Err(error), Some(name)) => panic!("{authority:?} names `{name}` but: {error}"),
        (Err(_), None) => return,
    };
    let path = request.uri().path();
    let canary = request.headers().get("x-canary").map(HeaderValue::as_bytes) == Some(b"1");
    let name = target.service.name.as_str();
    let canary_route = name == "api" && path.starts_with("/admin") && canary;
    let timeout = match name {
        "api" if canary_route => Duration::from_secs(2),
        "db" if path.starts_with("/slow") => Duration::from_secs(9),
        _ => target.service.timeout,
    };
    assert_eq!(
        target.timeout,
        timeout,
        "route rule for {path} {:?}",
        request.headers()
    );
    if canary_route {
        let chosen = target.endpoints.endpoints();
        assert!(
            chosen.iter().all(|e| e.address() == "127.0.0.1:2"),
            "the canary route sends only to subset v2"
        );
    }
});
