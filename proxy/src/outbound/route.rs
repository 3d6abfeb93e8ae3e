//! Routing: authority → service, then route rules and the traffic split.

use std::sync::Arc;

use http::Request;

use super::Target;
use crate::errors::ProxyError;
use crate::state::{MeshState, UpstreamService};

/// Suffix an app may add to a service name (`api.mesh`).
const MESH_SUFFIX: &str = ".mesh";

/// The service name an authority addresses, whatever the port (an app
/// resolving `api` through its own DNS calls `api:8080`): the port, a
/// trailing dot, `.mesh` and Consul's DNS form (`api.service.consul`,
/// `api.service.<datacenter>.consul`) stripped.
fn service_name(authority: &str) -> &str {
    // Host names are case-insensitive, the suffix too: `API.Mesh` is `API`
    // (which `lookup` finds as `api`).
    let host = crate::authority::host(authority);
    let host = host.strip_suffix('.').unwrap_or(host);
    let cut = host.len().saturating_sub(MESH_SUFFIX.len());
    match (host.get(..cut), host.get(cut..)) {
        (Some(name), Some(suffix)) if suffix.eq_ignore_ascii_case(MESH_SUFFIX) => name,
        _ => consul_service(host).unwrap_or(host),
    }
}

/// The service of a Consul DNS name: `api.service.consul` or
/// `api.service.dc1.consul` (case-insensitive labels). Tagged
/// (`v1.api.service.consul`) and node names are not services.
fn consul_service(host: &str) -> Option<&str> {
    let cut = host.len().checked_sub(".consul".len())?;
    let (rest, suffix) = (host.get(..cut)?, host.get(cut..)?);
    if !suffix.eq_ignore_ascii_case(".consul") {
        return None;
    }
    let (name, tail) = rest.split_once('.')?;
    let service = match tail.split_once('.') {
        None => tail,
        Some((service, datacenter)) if !datacenter.is_empty() && !datacenter.contains('.') => {
            service
        }
        Some(_) => return None,
    };
    (service.eq_ignore_ascii_case("service") && !name.is_empty()).then_some(name)
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

/// The service a request addresses and the index of the first route rule
/// it matches (`None`: the service's default split). The routing decision
/// itself, shared by [`resolve`] and `tether-control explain`
/// (the proxy lib's `explain` module), so the two can never disagree.
#[inline]
pub(crate) fn matched<'a, B>(
    state: &'a MeshState,
    request: &Request<B>,
) -> Result<(&'a Arc<UpstreamService>, Option<usize>), ProxyError> {
    let authority = crate::authority::of_routed_request(request)
        .map_err(|_| ProxyError::BadRequest("more than one Host header".into()))?
        .ok_or(ProxyError::MissingAuthority)?;
    let name = service_name(authority);
    let service = lookup(state, name).ok_or_else(|| ProxyError::UnknownService(name.to_owned()))?;
    let path = request.uri().path();
    let route = service
        .routes
        .iter()
        .position(|r| r.matches(path, request.headers()));
    Ok((service, route))
}

/// Decides where a request goes.
pub fn resolve<B>(state: &MeshState, request: &Request<B>) -> Result<Target, ProxyError> {
    let (service, route) = matched(state, request)?;
    let rule = route.and_then(|i| service.routes.get(i));
    let split = rule.map_or(&service.default_split, |r| &r.split);
    let mut endpoints = split
        .choose()
        .ok_or_else(|| ProxyError::NoEndpoints(service.name.clone()))?;
    // A subset whose every endpoint is ejected (its one instance died)
    // gives way to another subset of the split that has one: one atomic
    // load per request while nothing is ejected.
    if service.outliers.ejected() > 0 && endpoints.all_ejected() {
        if let Some(other) = split.choose_other(endpoints).filter(|s| !s.all_ejected()) {
            endpoints = other;
        }
    }
    // Locality-aware balancing: the subset's endpoints in this zone while
    // enough of them are healthy (one `Option` check when not configured).
    let endpoints = endpoints.localized();
    let mirror = rule.map_or(&service.mirror, |r| &r.mirror);
    Ok(Target {
        service: Arc::clone(service),
        endpoints: Arc::clone(endpoints),
        timeout: rule.and_then(|r| r.timeout).unwrap_or(service.timeout),
        route,
        grpc: false,
        deadline: None,
        started: None,
        mirror: mirror
            .as_ref()
            .and_then(|m| super::mirror::draw(m, service, state)),
        tapped: false,
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
        assert_eq!(service_name(".mesh"), "");
        assert_eq!(service_name("mesh"), "mesh");
        assert_eq!(service_name("é.mesh"), "é");
    }

    #[test]
    fn the_mesh_suffix_is_case_insensitive() {
        // Found by fuzzing (fuzz/fuzz_targets/route.rs): `Host: API.Mesh`
        // was `unknown service API.Mesh`, though `API` and `api.mesh` routed.
        assert_eq!(service_name("API.Mesh:15001"), "API");
        assert_eq!(service_name("api.MESH"), "api");
        assert_eq!(service_name("apimesh"), "apimesh");
    }

    #[test]
    fn the_port_of_a_name_does_not_matter() {
        assert_eq!(service_name("api:8080"), "api");
        assert_eq!(service_name("api.:8080"), "api");
    }

    #[test]
    fn consul_dns_names_mean_the_service() {
        assert_eq!(service_name("api.service.consul"), "api");
        assert_eq!(service_name("api.service.consul."), "api");
        assert_eq!(service_name("api.service.consul:8080"), "api");
        assert_eq!(service_name("api.service.dc1.consul"), "api");
        assert_eq!(service_name("api.SERVICE.Consul."), "api");
        // Not a service name: kept whole, so it matches no service.
        assert_eq!(
            service_name("v1.api.service.consul"),
            "v1.api.service.consul"
        );
        assert_eq!(service_name("node1.node.consul"), "node1.node.consul");
        assert_eq!(service_name(".service.consul"), ".service.consul");
        assert_eq!(service_name("consul"), "consul");
    }
}
