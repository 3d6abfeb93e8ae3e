//! Traffic management wire types: fault injection and local rate limits,
//! and the rules they must follow ([`FaultInjection::problems`],
//! [`RateLimit::problems`], [`InboundRateLimit::problems`]); traffic
//! mirroring (`mirror`, on a service or a route) and locality-aware
//! balancing (`policy.locality`). The rules are shared by the control
//! plane (mesh.yaml) and the proxy (snapshots) like the policy rules.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::GRPC_CODE_NAMES;
use crate::validate::PolicyProblem;

/// Largest `requests_per_second` of a rate limit: one request per
/// nanosecond, the resolution the proxy's bucket keeps time in.
pub const MAX_REQUESTS_PER_SECOND: f64 = 1e9;

/// Faults the caller's sidecar injects into requests to a service (or to
/// one route of it): a delay, an abort, or both, each on a share of the
/// requests, optionally only on requests that carry a header.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultInjection {
    /// Hold the request this long before sending it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer the request without sending it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
    /// Only requests carrying this header (any value) are eligible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
}

/// An injected delay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// How long the request is held (counted within its timeout).
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Share of eligible requests delayed, 0 to 100.
    pub percent: f64,
}

/// An injected abort: an HTTP status, or for gRPC calls a gRPC status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// HTTP status answered (200-599). A gRPC call gets the gRPC status
    /// that status maps to unless `grpc_status` is given instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// gRPC status answered, by name as `retry_on` writes them
    /// (`unavailable`, `resource-exhausted`, ...), trailers-only. A plain
    /// HTTP request gets the HTTP status gRPC maps it to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    /// Share of eligible requests aborted, 0 to 100.
    pub percent: f64,
}

/// A token bucket: `requests_per_second` sustained, `burst` at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Tokens added per second (fractions allowed: 0.5 is one every 2 s).
    pub requests_per_second: f64,
    /// Bucket size: requests allowed at once after a quiet spell. Default:
    /// one second's worth (`requests_per_second` rounded up, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// The limit a service's own sidecar applies to the requests it admits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundRateLimit {
    /// Tokens added per second.
    pub requests_per_second: f64,
    /// Bucket size (default: one second's worth, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// One bucket per caller identity (the service name of its SPIFFE ID;
    /// callers without one share a bucket) instead of one for all.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_caller: bool,
}

/// mesh.yaml `services.<name>.rate_limit`: what each caller's sidecar
/// applies to its own requests to the service (`outbound`, carried in the
/// service's entry of every snapshot) and what the service's own sidecar
/// admits (`inbound`, carried in its own snapshot).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// Each caller's sidecar limits its own requests to the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<RateLimit>,
    /// The service's own sidecar limits what it admits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<InboundRateLimit>,
}

impl RateLimit {
    /// The bucket size, its default filled in.
    pub fn burst_or_default(&self) -> u32 {
        self.burst
            .unwrap_or_else(|| default_burst(self.requests_per_second))
    }

    /// Every problem with this limit (empty when it is valid).
    pub fn problems(&self) -> Vec<PolicyProblem> {
        bucket_problems(self.requests_per_second, self.burst)
    }
}

impl InboundRateLimit {
    /// The bucket size, its default filled in.
    pub fn burst_or_default(&self) -> u32 {
        self.burst
            .unwrap_or_else(|| default_burst(self.requests_per_second))
    }

    /// Every problem with this limit (empty when it is valid).
    pub fn problems(&self) -> Vec<PolicyProblem> {
        bucket_problems(self.requests_per_second, self.burst)
    }
}

// One second's worth of tokens: a caller that keeps to the rate on average
// but sends a second's requests at once is not refused.
fn default_burst(requests_per_second: f64) -> u32 {
    if requests_per_second.is_finite() && requests_per_second > 1.0 {
        requests_per_second.min(f64::from(u32::MAX)).ceil() as u32
    } else {
        1
    }
}

fn bucket_problems(requests_per_second: f64, burst: Option<u32>) -> Vec<PolicyProblem> {
    let mut found = Vec::new();
    if !(requests_per_second > 0.0 && requests_per_second <= MAX_REQUESTS_PER_SECOND) {
        found.push(PolicyProblem::new(
            vec!["requests_per_second"],
            format!(
                "requests_per_second is {requests_per_second}: expected a number above 0, at most {MAX_REQUESTS_PER_SECOND}"
            ),
        ));
    }
    if burst == Some(0) {
        found.push(PolicyProblem::new(
            vec!["burst"],
            "burst is 0: expected at least 1 (no request could ever pass)".to_owned(),
        ));
    }
    found
}

impl FaultInjection {
    /// Every problem with this fault (empty when it is valid); paths are
    /// below the `fault` key.
    pub fn problems(&self) -> Vec<PolicyProblem> {
        let mut found = Vec::new();
        if self.delay.is_none() && self.abort.is_none() {
            found.push(PolicyProblem::new(
                vec![],
                "fault has neither delay nor abort: expected at least one".to_owned(),
            ));
        }
        if let Some(delay) = &self.delay {
            percent_problem(vec!["delay", "percent"], "delay", delay.percent, &mut found);
            if delay.duration.is_zero() {
                found.push(PolicyProblem::new(
                    vec!["delay", "duration"],
                    "delay.duration is 0s: expected a duration above zero".to_owned(),
                ));
            }
        }
        if let Some(abort) = &self.abort {
            percent_problem(vec!["abort", "percent"], "abort", abort.percent, &mut found);
            match (abort.status, &abort.grpc_status) {
                (Some(_), Some(_)) | (None, None) => found.push(PolicyProblem::new(
                    vec!["abort"],
                    "abort: expected exactly one of `status` (HTTP) or `grpc_status`".to_owned(),
                )),
                (Some(status), None) if !(200..=599).contains(&status) => {
                    found.push(PolicyProblem::new(
                        vec!["abort", "status"],
                        format!("abort.status is {status}: expected an HTTP status 200 to 599"),
                    ))
                }
                (None, Some(name)) if grpc_code(name).is_none_or(|c| c == 0) => {
                    found.push(PolicyProblem::new(
                        vec!["abort", "grpc_status"],
                        format!(
                            "abort.grpc_status `{name}`: expected a gRPC error status name such as unavailable, resource-exhausted, internal"
                        ),
                    ))
                }
                _ => {}
            }
        }
        if let Some(header) = &self.header {
            if !is_header_name(header) {
                found.push(PolicyProblem::new(
                    vec!["header"],
                    format!("header `{header}` is not a valid HTTP header name: expected a token such as x-tether-fault"),
                ));
            }
        }
        found
    }
}

/// The number of a gRPC status written by name (`unavailable` is 14).
pub fn grpc_code(name: &str) -> Option<u8> {
    GRPC_CODE_NAMES
        .iter()
        .position(|n| *n == name)
        .map(|n| n as u8)
}

fn percent_problem(
    path: Vec<&'static str>,
    what: &str,
    percent: f64,
    found: &mut Vec<PolicyProblem>,
) {
    if !(0.0..=100.0).contains(&percent) {
        found.push(PolicyProblem::new(
            path,
            format!("{what}.percent is {percent}: expected 0 to 100"),
        ));
    }
}

/// RFC 9110 token characters: what a header name may be made of.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

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

    fn fault(json: &str) -> FaultInjection {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    fn paths(found: Vec<PolicyProblem>) -> Vec<String> {
        found.iter().map(|p| p.path.join(".")).collect()
    }

    #[test]
    fn a_valid_fault_has_no_problems_and_round_trips() {
        let f = fault(
            r#"{"delay": {"duration": "200ms", "percent": 10}, "abort": {"grpc_status": "unavailable", "percent": 5.5}, "header": "x-tether-fault"}"#,
        );
        assert_eq!(f.problems(), []);
        assert_eq!(
            f.delay.as_ref().map(|d| d.duration),
            Some(Duration::from_millis(200))
        );
        let json = serde_json::to_string(&f).unwrap_or_default();
        assert_eq!(serde_json::from_str::<FaultInjection>(&json).ok(), Some(f));
    }

    #[test]
    fn every_fault_problem_is_reported_with_its_path() {
        assert_eq!(paths(fault("{}").problems()), [""]);
        let f = fault(
            r#"{"delay": {"duration": "0s", "percent": 101}, "abort": {"status": 700, "percent": -1}, "header": "bad header"}"#,
        );
        assert_eq!(
            paths(f.problems()),
            [
                "delay.percent",
                "delay.duration",
                "abort.percent",
                "abort.status",
                "header"
            ]
        );
        let both =
            fault(r#"{"abort": {"status": 503, "grpc_status": "unavailable", "percent": 1}}"#);
        assert_eq!(paths(both.problems()), ["abort"]);
        let neither = fault(r#"{"abort": {"percent": 1}}"#);
        assert_eq!(paths(neither.problems()), ["abort"]);
        for name in ["UNAVAILABLE", "ok", "nope"] {
            let f = fault(&format!(
                r#"{{"abort": {{"grpc_status": "{name}", "percent": 1}}}}"#
            ));
            assert_eq!(paths(f.problems()), ["abort.grpc_status"], "{name}");
        }
        let nan = FaultInjection {
            delay: Some(FaultDelay {
                duration: Duration::from_secs(1),
                percent: f64::NAN,
            }),
            ..FaultInjection::default()
        };
        assert_eq!(paths(nan.problems()), ["delay.percent"]);
    }

    #[test]
    fn rate_limits_check_rate_and_burst_and_default_the_burst() {
        let limit = |rps: f64, burst: Option<u32>| RateLimit {
            requests_per_second: rps,
            burst,
        };
        assert_eq!(limit(20.0, Some(5)).problems(), []);
        assert_eq!(paths(limit(0.0, None).problems()), ["requests_per_second"]);
        assert_eq!(
            paths(limit(f64::INFINITY, Some(0)).problems()),
            ["requests_per_second", "burst"]
        );
        assert_eq!(limit(20.0, None).burst_or_default(), 20);
        assert_eq!(limit(2.5, None).burst_or_default(), 3);
        assert_eq!(limit(0.1, None).burst_or_default(), 1);
        let inbound: InboundRateLimit =
            serde_json::from_str(r#"{"requests_per_second": 5, "per_caller": true}"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(inbound.per_caller);
        assert_eq!(inbound.burst_or_default(), 5);
        let unknown = serde_json::from_str::<RateLimits>(r#"{"inbond": {}}"#);
        assert!(unknown.is_err(), "unknown keys are refused");
    }
}

#[cfg(test)]
mod mirror_tests {
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
