//! Splitting an HTTP authority (`host[:port]`) into host and port, in one
//! place so that routing and tracing agree on what the host is.

/// The authority a request is addressed to: the URI's (HTTP/2, absolute
/// form) or the `Host` header.
pub fn of_request<B>(request: &http::Request<B>) -> Option<&str> {
    request.uri().authority().map(|a| a.as_str()).or_else(|| {
        request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// Whether `request` carries more than one `Host` header, which RFC 9112
/// §3.2 requires a server to answer with 400: two proxies that each pick a
/// different one would route one request two ways.
pub fn has_duplicate_host<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get_all(http::header::HOST)
        .iter()
        .nth(1)
        .is_some()
}

/// [`of_request`] for routing, and whether `request` carries more than one
/// `Host` header (`Err`: see [`has_duplicate_host`]), with one lookup of
/// `Host` instead of two.
pub fn of_routed_request<B>(request: &http::Request<B>) -> Result<Option<&str>, DuplicateHost> {
    let mut hosts = request.headers().get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(DuplicateHost);
    }
    Ok(request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| host.and_then(|h| h.to_str().ok())))
}

/// A request with more than one `Host` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuplicateHost;

/// `authority` split into its host and port.
///
/// - `api`, `api:80`, `API.mesh:15001`: the host keeps its case (lookups
///   decide about case), the port is parsed.
/// - `[::1]:8080`, `[::1]`: an IPv6 literal loses its brackets.
/// - `::1`: a bare IPv6 literal (no brackets, so no port) is all host.
/// - `api:` (empty port, allowed by RFC 3986): host `api`, no port.
/// - A bracket not closed, or followed by anything but `:port`, is not
///   split (`[api]80`): the whole authority is the host.
/// - Anything else after the last colon (`api:http`, `api:99999`) is not a
///   port: the whole authority is the host.
pub fn split(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        // `[host]` or `[host]:port`; anything else after the bracket
        // (`[api]80`, `[::1]:http`) is not an authority we split.
        // Brackets hold IPv6 literals only, which always have a colon.
        if let Some((host, after)) = rest.split_once(']').filter(|(h, _)| h.contains(':')) {
            if after.is_empty() {
                return (host, None);
            }
            if let Some(port) = after.strip_prefix(':').and_then(parse_port) {
                return (host, port);
            }
        }
        return (authority, None);
    }
    match authority.rsplit_once(':') {
        // More than one colon without brackets: a bare IPv6 literal.
        Some((host, _)) if host.contains(':') => (authority, None),
        Some((host, port)) => match parse_port(port) {
            Some(port) => (host, port),
            None => (authority, None),
        },
        None => (authority, None),
    }
}

/// The host of `authority` (see [`split`]).
pub fn host(authority: &str) -> &str {
    split(authority).0
}

/// `Some(None)` for an empty port, `Some(Some(port))` for a valid one, `None`
/// when `text` is not a port.
fn parse_port(text: &str) -> Option<Option<u16>> {
    if text.is_empty() {
        return Some(None);
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().map(Some)
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn names_with_and_without_port() {
        assert_eq!(split("api"), ("api", None));
        assert_eq!(split("api:80"), ("api", Some(80)));
        assert_eq!(split("API.mesh:15001"), ("API.mesh", Some(15001)));
        assert_eq!(split("api:"), ("api", None));
    }

    #[test]
    fn ipv6_literals() {
        assert_eq!(split("[::1]:8080"), ("::1", Some(8080)));
        assert_eq!(split("[::1]"), ("::1", None));
        assert_eq!(split("::1"), ("::1", None));
        assert_eq!(split("[fe80::1]:"), ("fe80::1", None));
    }

    #[test]
    fn malformed_brackets_are_not_split() {
        // Found by fuzzing (fuzz/fuzz_targets/route.rs): `[API]80` routed
        // to `api`.
        assert_eq!(split("[API]80"), ("[API]80", None));
        assert_eq!(split("[::1]:http"), ("[::1]:http", None));
        assert_eq!(split("[::1"), ("[::1", None));
        assert_eq!(split("[api]"), ("[api]", None));
    }

    #[test]
    fn a_colon_without_a_port_keeps_the_whole_authority() {
        assert_eq!(split("api:http"), ("api:http", None));
        assert_eq!(split("api:99999"), ("api:99999", None));
        assert_eq!(split("api:+80"), ("api:+80", None));
    }
}

#[cfg(test)]
mod routed_tests {
    use super::{of_request, of_routed_request, DuplicateHost};

    fn request(uri: &str, hosts: &[&str]) -> http::Request<()> {
        let mut builder = http::Request::builder().uri(uri);
        for host in hosts {
            builder = builder.header(http::header::HOST, *host);
        }
        builder.body(()).unwrap_or_default()
    }

    #[test]
    fn agrees_with_of_request_and_refuses_two_hosts() {
        for (uri, hosts) in [
            ("/", &["api:80"][..]),
            ("http://api.mesh/x", &["other"][..]),
            ("http://api.mesh/x", &[][..]),
            ("/", &[][..]),
        ] {
            let r = request(uri, hosts);
            assert_eq!(of_routed_request(&r), Ok(of_request(&r)), "{uri} {hosts:?}");
        }
        let two = request("/", &["api", "web"]);
        assert_eq!(of_routed_request(&two), Err(DuplicateHost));
        let two_with_uri = request("http://api/", &["api", "api"]);
        assert_eq!(of_routed_request(&two_with_uri), Err(DuplicateHost));
    }
}
