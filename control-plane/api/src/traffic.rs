//! Traffic mirroring (`mirror`, on a service or a route) and locality-aware
//! balancing (`policy.locality`): their wire types, defaults and the rules
//! both the control plane and the proxy apply to them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Copies a share of a service's (or a route's) requests to another subset
/// of the same service or to another mesh service. The copies' responses
/// are discarded; the original request never waits for them.
///
/// Exactly one of `subset` and `service` names the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// A subset of the same service (a key of its `subsets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Another mesh service (its default split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Share of requests copied, 0 to 100 (fractions allowed).
    #[serde(default = "default_mirror_percent")]
    pub percent: f64,
    /// Copies in flight at once, per service; a copy beyond it is dropped
    /// (counted), never queued.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// How long one copy may take, to the end of its response; `None`: the
    /// mirrored service's `timeout`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
}

// 100 %: as Envoy's `request_mirror_policies` without a runtime fraction,
// naming a target means mirroring everything unless a share is given.
fn default_mirror_percent() -> f64 {
    100.0
}

/// Default of [`Mirror::max_in_flight`]. 64 copies: a shadow that answers
/// in 50 ms then takes ~1,300 mirrored requests a second before copies are
/// dropped, while a shadow that hangs holds at most 64 tasks and
/// connections' worth of memory (a few hundred KiB) in the caller's proxy.
pub const DEFAULT_MIRROR_MAX_IN_FLIGHT: u32 = 64;

fn default_max_in_flight() -> u32 {
    DEFAULT_MIRROR_MAX_IN_FLIGHT
}

impl Mirror {
    /// What is wrong with this mirror on its own (targets that do not exist
    /// are checked by whoever knows the services), each message starting
    /// with `mirror`.
    pub fn problems(&self) -> Vec<String> {
        let mut found = Vec::new();
        match (&self.subset, &self.service) {
            (Some(_), Some(_)) => found.push(
                "mirror has both `subset` and `service`: expected exactly one".to_owned(),
            ),
            (None, None) => found.push(
                "mirror names no target: expected `subset: NAME` (of this service) or `service: NAME`"
                    .to_owned(),
            ),
            (Some(s), None) | (None, Some(s)) if s.is_empty() => {
                found.push("mirror target is empty: expected a name".to_owned());
            }
            _ => {}
        }
        if !(0.0..=100.0).contains(&self.percent) {
            found.push(format!(
                "mirror.percent is {}: expected 0 to 100",
                self.percent
            ));
        }
        if self.max_in_flight == 0 {
            found.push("mirror.max_in_flight is 0: expected at least 1".to_owned());
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            found.push("mirror.timeout is 0s: expected a duration above zero".to_owned());
        }
        found
    }
}

/// Locality-aware balancing: while enough of the chosen subset's endpoints
/// in the proxy's own zone are healthy, requests stay in that zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Locality {
    /// Whether requests prefer endpoints in the proxy's zone (`--zone`).
    #[serde(default)]
    pub enabled: bool,
    /// Requests stay in the local zone while at least this share (percent)
    /// of its endpoints in the chosen subset is healthy (not ejected);
    /// below it, or with no local endpoint, they go to every endpoint of
    /// the subset (a spill, counted).
    #[serde(default = "default_min_local_healthy_percent")]
    pub min_local_healthy_percent: u32,
}

/// Default of [`Locality::min_local_healthy_percent`]. 70 %: where Envoy's
/// default overprovisioning factor (1.4) stops giving the local priority
/// all the traffic (100 / 1.4 ≈ 71 %), so an operator used to Envoy sees
/// the spill begin at about the same point.
pub const DEFAULT_MIN_LOCAL_HEALTHY_PERCENT: u32 = 70;

fn default_min_local_healthy_percent() -> u32 {
    DEFAULT_MIN_LOCAL_HEALTHY_PERCENT
}

impl Default for Locality {
    fn default() -> Self {
        Self {
            enabled: false,
            min_local_healthy_percent: DEFAULT_MIN_LOCAL_HEALTHY_PERCENT,
        }
    }
}

impl Locality {
    /// Whether this is the default (left out of the wire form).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(json: &str) -> Mirror {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_mirror_has_defaults_and_round_trips() {
        let m = mirror(r#"{"subset": "v2"}"#);
        assert_eq!(m.percent, 100.0);
        assert_eq!(m.max_in_flight, DEFAULT_MIRROR_MAX_IN_FLIGHT);
        assert_eq!(m.problems(), Vec::<String>::new());
        let json = serde_json::to_string(&m).unwrap_or_default();
        assert!(
            !json.contains("service") && !json.contains("timeout"),
            "{json}"
        );
        let back: Mirror = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, m);
    }

    #[test]
    fn every_mirror_problem_is_reported() {
        let m = mirror(
            r#"{"subset": "v2", "service": "x", "percent": 101, "max_in_flight": 0, "timeout": "0s"}"#,
        );
        assert_eq!(m.problems().len(), 4, "{:?}", m.problems());
        assert_eq!(mirror(r#"{"percent": 5}"#).problems().len(), 1);
        assert!(mirror(r#"{"service": "x", "percent": -1}"#).problems()[0].contains("0 to 100"));
    }

    #[test]
    fn locality_defaults_are_left_out_of_the_wire() {
        let l: Locality = serde_json::from_str(r#"{"enabled": true}"#).unwrap_or_default();
        assert!(l.enabled);
        assert_eq!(l.min_local_healthy_percent, 70);
        assert!(!l.is_default());
        assert!(Locality::default().is_default());
    }
}
