//! Crossing a hop: rewrites a downstream request for an upstream
//! connection, and cleans an upstream response for the downstream one.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, Version};

use crate::body::Body;
use crate::errors::ProxyError;

/// Connection-specific headers (RFC 9110 §7.6.1) that never cross a hop.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// Whether a header never crosses a hop.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == header::TE
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
/// One pass over the names first: most requests carry none, and then no
/// header is hashed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if let Some(connection) = headers.get(header::CONNECTION).cloned() {
        if let Ok(names) = connection.to_str() {
            for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                    headers.remove(name);
                }
            }
        }
    }
    for name in &HOP_BY_HOP {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
    // `te: trailers` is the one TE value allowed to pass (gRPC needs it).
    if headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

/// Readies `request` for a connection to `endpoint`, in the HTTP version
/// the upstream speaks, keeping the authority the caller asked for (the
/// connection, not the request, says where it goes). HTTP/2 gets the
/// absolute URI with that authority as `:authority` and no `Host` (RFC 9113
/// §8.3.1: a `Host` differing from `:authority` is malformed); HTTP/1.1 the
/// origin form (`/path?query`) with the authority in `Host`. A request that
/// names none gets the endpoint's.
pub fn to_upstream(
    mut request: Request<Body>,
    endpoint: &Authority,
    http2: bool,
) -> Result<Request<Body>, ProxyError> {
    // HTTP/1.1 to HTTP/1.1 in origin form (what apps send): the URI is
    // already what goes upstream, so it is kept instead of rebuilt.
    let uri = request.uri();
    let origin_form =
        uri.scheme().is_none() && uri.authority().is_none() && uri.path_and_query().is_some();
    let mut parts = http::uri::Parts::default();
    if http2 {
        let from_host = request
            .headers()
            .get(header::HOST)
            .and_then(|v| Authority::try_from(v.as_bytes()).ok());
        if from_host.is_some() {
            request.headers_mut().remove(header::HOST);
        }
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = from_host
            .or_else(|| request.uri().authority().cloned())
            .or_else(|| Some(endpoint.clone()));
    } else if !request.headers().contains_key(header::HOST) {
        let original = request.uri().authority().unwrap_or(endpoint);
        let host = HeaderValue::from_str(original.as_str())
            .map_err(|_| ProxyError::BadRequest("authority is not a valid Host".into()))?;
        request.headers_mut().insert(header::HOST, host);
    }
    if http2 || !origin_form {
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.path_and_query = Some(path);
        *request.uri_mut() = Uri::from_parts(parts)
            .map_err(|e| ProxyError::BadRequest(format!("cannot build upstream URI: {e}")))?;
    }
    *request.version_mut() = if http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    strip_hop_by_hop(request.headers_mut());
    Ok(request)
}

/// Cleans an upstream response for the downstream connection.
pub fn from_upstream(mut response: Response<Body>) -> Response<Body> {
    strip_hop_by_hop(response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_form_request_keeps_its_uri_for_http1() {
        let request = Request::builder()
            .uri("/v1/x?q=1")
            .header("host", "api")
            .body(Body::Empty)
            .unwrap_or_default();
        let endpoint = Authority::from_static("10.0.0.1:8080");
        let out = to_upstream(request, &endpoint, false).unwrap_or_default();
        assert_eq!(out.uri(), "/v1/x?q=1");
        assert_eq!(out.uri().scheme(), None);
        assert_eq!(out.headers()["host"], "api");
        assert_eq!(out.version(), Version::HTTP_11);
        // The same request to an HTTP/2 upstream gets the absolute form.
        let request = Request::builder()
            .uri("/v1/x?q=1")
            .header("host", "api")
            .body(Body::Empty)
            .unwrap_or_default();
        let out = to_upstream(request, &endpoint, true).unwrap_or_default();
        assert_eq!(out.uri(), "http://api/v1/x?q=1");
    }

    #[test]
    fn rewrites_uri_and_keeps_host() {
        let request = Request::builder()
            .uri("http://api.mesh/v1/x?q=1")
            .version(Version::HTTP_2)
            .header("connection", "close, x-secret")
            .header("x-secret", "1")
            .header("te", "trailers")
            .header("x-keep", "yes")
            .body(Body::Empty)
            .unwrap_or_default();
        let authority: Authority = "127.0.0.1:9000".parse().unwrap_or_else(|e| panic!("{e}"));
        let out = to_upstream(request, &authority, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.uri(), "/v1/x?q=1", "origin form on HTTP/1.1");
        assert_eq!(out.version(), Version::HTTP_11);
        assert_eq!(out.headers()["host"], "api.mesh");
        assert!(out.headers().get("connection").is_none());
        assert!(out.headers().get("x-secret").is_none());
        assert_eq!(out.headers()["te"], "trailers");
        assert_eq!(out.headers()["x-keep"], "yes");
    }

    #[test]
    fn http2_carries_the_callers_authority_and_no_host() {
        let endpoint: Authority = "10.0.0.7:15443".parse().unwrap_or_else(|e| panic!("{e}"));
        let from_h1 = Request::builder()
            .uri("/v1/x")
            .header("host", "api:8080")
            .body(Body::Empty)
            .unwrap_or_default();
        let out = to_upstream(from_h1, &endpoint, true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.uri(), "http://api:8080/v1/x");
        assert!(
            out.headers().get("host").is_none(),
            "no Host beside :authority"
        );
        assert_eq!(out.version(), Version::HTTP_2);
        let from_h2 = Request::builder()
            .uri("http://api.mesh/y")
            .version(Version::HTTP_2)
            .body(Body::Empty)
            .unwrap_or_default();
        let out = to_upstream(from_h2, &endpoint, true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.uri(), "http://api.mesh/y");
        let nameless = Request::builder()
            .uri("/z")
            .body(Body::Empty)
            .unwrap_or_default();
        let out = to_upstream(nameless, &endpoint, true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            out.uri(),
            "http://10.0.0.7:15443/z",
            "the endpoint's when none was named"
        );
        let nameless = Request::builder()
            .uri("/z")
            .body(Body::Empty)
            .unwrap_or_default();
        let out = to_upstream(nameless, &endpoint, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.headers()["host"], "10.0.0.7:15443");
    }
}
