//! Routing: authority → service, then route rules and the traffic split.

use std::sync::Arc;

use http::Request;

use super::Target;
use crate::errors::ProxyError;
use crate::state::{MeshState, UpstreamService};

/// Suffix an app may add to a service name (`api.mesh`).
const MESH_SUFFIX: &str = ".mesh";

/// The service name an authority addresses: port and `.mesh` stripped.
fn service_name(authority: &str) -> &str {
    let host = crate::authority::host(authority);
    host.strip_suffix(MESH_SUFFIX).unwrap_or(host)
}

fn lookup<'a>(state: &'a MeshState, name: &str) -> Option<&'a Arc<UpstreamService>> {
    state.services.get(name).or_else(|| {
        // Host names are case-insensitive; allocate only for the rare mixed case.
        name.bytes()
            .any(|b| b.is_ascii_uppercase())
            .then(|| state.services.get(&name.to_ascii_lowercase()))
            .flatten()
    })
}

/// Decides where a request goes.
pub fn resolve<B>(state: &MeshState, request: &Request<B>) -> Result<Target, ProxyError> {
    let authority = crate::authority::of_request(request).ok_or(ProxyError::MissingAuthority)?;
    let name = service_name(authority);
    let service = lookup(state, name).ok_or_else(|| ProxyError::UnknownService(name.to_owned()))?;
    let path = request.uri().path();
    let rule = service
        .routes
        .iter()
        .find(|r| r.matches(path, request.headers()));
    let split = rule.map_or(&service.default_split, |r| &r.split);
    let endpoints = split
        .choose()
        .ok_or_else(|| ProxyError::NoEndpoints(service.name.clone()))?;
    Ok(Target {
        service: Arc::clone(service),
        endpoints: Arc::clone(endpoints),
        timeout: rule.and_then(|r| r.timeout).unwrap_or(service.timeout),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_port_and_mesh_suffix() {
        assert_eq!(service_name("api"), "api");
        assert_eq!(service_name("api:80"), "api");
        assert_eq!(service_name("api.mesh"), "api");
        assert_eq!(service_name("api.mesh:15001"), "api");
        assert_eq!(service_name("[::1]:80"), "::1");
        assert_eq!(service_name("::1"), "::1");
    }
}
