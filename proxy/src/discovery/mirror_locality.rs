//! Wire mirrors and locality settings (`tether-api`) → the proxy's domain
//! types: a [`Mirror`] per service and route, a [`LocalEndpoints`] per set
//! of a locality-aware service. Everything is resolved here, once per
//! snapshot, so the request path only reads it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use tether_api::{Endpoint, Locality, Protocol, ServiceSnapshot};

use crate::balance::locality::is_local;
use crate::balance::{EndpointSet, EndpointState, LoadBalancer, LocalEndpoints, OutlierDetector};
use crate::traffic::mirror::{Mirror, MirrorTarget};
use crate::traffic::{MirrorMetrics, TrafficFamilies};

/// What a service's mirrors and locality are resolved against.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    /// This proxy's zone (`--zone`); `None`: locality is off.
    pub zone: Option<&'a str>,
    /// Every service of the snapshot (mirror targets).
    pub services: &'a BTreeMap<String, ServiceSnapshot>,
    /// The traffic metric families.
    pub families: &'a TrafficFamilies,
}

/// `set` preferring its members in `scope.zone`, when the service's
/// `locality` is enabled and the proxy has a zone; `members` are the set's
/// endpoints with their wire form (for the zone).
pub fn localize(
    set: EndpointSet,
    members: &[(&Arc<EndpointState>, &Endpoint)],
    locality: &Locality,
    algorithm: LoadBalancer,
    outliers: &Arc<OutlierDetector>,
    service: &str,
    scope: Scope<'_>,
) -> EndpointSet {
    let Some(zone) = scope.zone.filter(|_| locality.enabled) else {
        return set;
    };
    let local: Vec<Arc<EndpointState>> = members
        .iter()
        .filter(|(_, wire)| is_local(wire.zone.as_deref(), zone))
        .map(|(state, _)| Arc::clone(state))
        .collect();
    let local = EndpointSet::new(local, algorithm, Arc::clone(outliers));
    set.with_locality(LocalEndpoints::new(
        Arc::new(local),
        locality.min_local_healthy_percent,
        scope.families.spillover(service),
    ))
}

/// Builds a service's mirrors: one shared in-flight count, each mirror
/// checked against the service's subsets and the snapshot's services.
pub struct MirrorBuilder<'a> {
    service: &'a str,
    subsets: &'a HashMap<&'a str, Arc<EndpointSet>>,
    scope: Scope<'a>,
    in_flight: Arc<AtomicUsize>,
    metrics: Option<MirrorMetrics>,
}

impl<'a> MirrorBuilder<'a> {
    /// Mirrors of `service`, whose subsets are `subsets`; `in_flight` is
    /// the service's count of copies in flight (kept across snapshots).
    pub fn new(
        service: &'a str,
        subsets: &'a HashMap<&'a str, Arc<EndpointSet>>,
        scope: Scope<'a>,
        in_flight: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            service,
            subsets,
            scope,
            in_flight,
            metrics: None,
        }
    }

    /// The mirror `wire`, written at `services.<service>.<at>`; every
    /// problem with it goes to `problems`.
    pub fn build(
        &mut self,
        wire: &tether_api::Mirror,
        at: &str,
        problems: &mut Vec<String>,
    ) -> Option<Arc<Mirror>> {
        let service = self.service;
        let before = problems.len();
        // Each message starts with `mirror`, which `at` ends with.
        let prefix = at.strip_suffix("mirror").unwrap_or(at);
        for message in wire.problems() {
            problems.push(format!("services.{service}.{prefix}{message}"));
        }
        let target = match (&wire.subset, &wire.service) {
            (Some(subset), None) => match self.subsets.get(subset.as_str()) {
                Some(set) => Some(MirrorTarget::Subset(Arc::clone(set))),
                None => {
                    problems.push(format!(
                        "services.{service}.{at}.subset: unknown subset `{subset}`"
                    ));
                    None
                }
            },
            (None, Some(other)) => {
                let name = other.to_ascii_lowercase();
                // Service names are case-insensitive, as the state's keys.
                let spec = self
                    .scope
                    .services
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(other))
                    .map(|(_, spec)| spec);
                match spec {
                    None => problems.push(format!(
                        "services.{service}.{at}.service: unknown service `{other}`"
                    )),
                    Some(spec) if spec.protocol == Protocol::Tcp => problems.push(format!(
                        "services.{service}.{at}.service: `{other}` is a tcp service: expected an HTTP service"
                    )),
                    Some(_) => {}
                }
                Some(MirrorTarget::Service(name))
            }
            _ => None,
        };
        if problems.len() != before {
            return None;
        }
        let metrics = self
            .metrics
            .get_or_insert_with(|| self.scope.families.mirror(service))
            .clone();
        Some(Arc::new(Mirror::new(
            target?,
            wire.percent,
            wire.max_in_flight,
            Arc::clone(&self.in_flight),
            wire.timeout,
            metrics,
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::discovery::build::{build_in_zone, unknown_metrics};
    use crate::discovery::file::parse;
    use crate::discovery::SnapshotMetrics;
    use crate::state::MeshState;

    fn built(text: &str, zone: Option<&str>) -> Result<MeshState, Vec<String>> {
        let metrics = SnapshotMetrics::for_tests();
        let snapshot = parse(Path::new("t.yaml"), text).unwrap_or_else(|e| panic!("{e}"));
        let empty = MeshState::empty(unknown_metrics(&metrics));
        build_in_zone(std::sync::Arc::new(snapshot), &empty, &metrics, None, zone)
    }

    const ZONED: &str = r#"
services:
  api:
    policy: { locality: { enabled: true } }
    endpoints:
      - { address: "127.0.0.1:1", zone: a, tags: [v1] }
      - { address: "127.0.0.1:2", zone: b, tags: [v1] }
      - { address: "127.0.0.1:3", zone: a, tags: [v2] }
      - { address: "127.0.0.1:4", tags: [v1] }
    subsets: { v1: { tags: [v1] }, v2: { tags: [v2] } }
    split: [ { subset: v1, weight: 1 } ]
"#;

    #[test]
    fn a_zoned_proxy_partitions_each_set_when_the_snapshot_is_built() {
        let state = built(ZONED, Some("a")).unwrap_or_else(|p| panic!("{p:?}"));
        let api = &state.services["api"];
        let v1 = api
            .default_split
            .choose()
            .cloned()
            .unwrap_or_else(|| panic!());
        assert_eq!(v1.endpoints().len(), 3);
        let local = v1.localized();
        let addresses: Vec<&str> = local.endpoints().iter().map(|e| e.address()).collect();
        assert_eq!(addresses, ["127.0.0.1:1"], "v1's endpoints in zone a");
        let state = built(ZONED, Some("c")).unwrap_or_else(|p| panic!("{p:?}"));
        let v1 = state.services["api"].default_split.choose().cloned();
        let v1 = v1.unwrap_or_else(|| panic!());
        assert!(
            std::sync::Arc::ptr_eq(v1.localized(), &v1),
            "nothing local: every zone"
        );
    }

    #[test]
    fn without_a_zone_or_the_policy_nothing_is_partitioned() {
        let state = built(ZONED, None).unwrap_or_else(|p| panic!("{p:?}"));
        let v1 = state.services["api"].default_split.choose().cloned();
        let v1 = v1.unwrap_or_else(|| panic!());
        assert!(std::sync::Arc::ptr_eq(v1.localized(), &v1));
        let off = ZONED.replace("enabled: true", "enabled: false");
        let state = built(&off, Some("a")).unwrap_or_else(|p| panic!("{p:?}"));
        let v1 = state.services["api"].default_split.choose().cloned();
        let v1 = v1.unwrap_or_else(|| panic!());
        assert!(std::sync::Arc::ptr_eq(v1.localized(), &v1));
    }

    #[test]
    fn mirrors_are_built_for_the_service_and_its_routes() {
        let state = built(
            r#"
services:
  api:
    endpoints: [ { address: "127.0.0.1:1", tags: [v2] } ]
    subsets: { v2: { tags: [v2] } }
    mirror: { subset: v2, percent: 10 }
    routes:
      - match: { path_prefix: /own }
        split: [ { subset: v2, weight: 1 } ]
        mirror: { service: Shadow }
      - match: { path_prefix: /inherit }
        split: [ { subset: v2, weight: 1 } ]
  shadow: {}
  web: {}
"#,
            None,
        )
        .unwrap_or_else(|p| panic!("{p:?}"));
        let api = &state.services["api"];
        let service = api.mirror.as_ref().unwrap_or_else(|| panic!("a mirror"));
        let route = api.routes[0].mirror.as_ref().unwrap_or_else(|| panic!());
        assert!(!std::sync::Arc::ptr_eq(service, route), "the route's own");
        assert!(
            matches!(api.routes[1].mirror.as_ref(), Some(m) if std::sync::Arc::ptr_eq(m, service))
        );
        assert!(
            std::sync::Arc::ptr_eq(service.in_flight(), route.in_flight()),
            "one bound per service"
        );
        assert!(state.services["web"].mirror.is_none());
    }

    #[test]
    fn the_in_flight_bound_carries_over_to_the_next_snapshot() {
        let metrics = SnapshotMetrics::for_tests();
        let text = |percent: u32| {
            format!("services:\n  api:\n    endpoints: [ {{ address: \"127.0.0.1:1\", tags: [v2] }} ]\n    subsets: {{ v2: {{ tags: [v2] }} }}\n    routes: [ {{ split: [ {{ subset: v2, weight: 1 }} ], mirror: {{ subset: v2, percent: {percent} }} }} ]\n")
        };
        let snapshot = |percent| {
            let parsed =
                parse(Path::new("t.yaml"), &text(percent)).unwrap_or_else(|e| panic!("{e}"));
            std::sync::Arc::new(parsed)
        };
        let empty = MeshState::empty(unknown_metrics(&metrics));
        let first = build_in_zone(snapshot(10), &empty, &metrics, None, None)
            .unwrap_or_else(|p| panic!("{p:?}"));
        let second = build_in_zone(snapshot(20), &first, &metrics, None, None)
            .unwrap_or_else(|p| panic!("{p:?}"));
        let counter = |state: &MeshState| {
            let mirror = state.services["api"].routes[0].mirror.clone();
            mirror.map(|m| std::sync::Arc::clone(m.in_flight()))
        };
        let (a, b) = (counter(&first), counter(&second));
        assert!(matches!((a, b), (Some(a), Some(b)) if std::sync::Arc::ptr_eq(&a, &b)));
    }

    #[test]
    fn every_mirror_problem_is_reported() {
        let problems = built(
            r#"
services:
  api:
    endpoints: [ { address: "127.0.0.1:1" } ]
    mirror: { subset: v2, percent: 200 }
    routes:
      - split: []
        mirror: { service: ghost }
      - split: []
        mirror: { service: db, max_in_flight: 0 }
  db: { protocol: tcp, outbound_port: 15432 }
"#,
            None,
        )
        .err()
        .unwrap_or_default();
        assert_eq!(
            problems,
            [
                "services.api.mirror.percent is 200: expected 0 to 100",
                "services.api.mirror.subset: unknown subset `v2`",
                "services.api.routes[0].mirror.service: unknown service `ghost`",
                "services.api.routes[1].mirror.max_in_flight is 0: expected at least 1",
                "services.api.routes[1].mirror.service: `db` is a tcp service: expected an HTTP service",
            ]
        );
    }
}
