//! Checks of the traffic-management keys of a service: `fault` (the
//! service's and each route's) and `rate_limit`, by tether-api's rules
//! (the ones a proxy applies to a snapshot), each problem at its
//! `FILE:LINE:COL`.

use tether_api::{PolicyProblem, Protocol};

use super::validate::Problems;
use super::ServiceConfig;

/// Reports every problem with `service`'s faults and rate limits.
pub fn check(problems: &mut Problems<'_>, name: &str, service: &ServiceConfig) {
    let tcp = service.protocol == Protocol::Tcp;
    if let Some(fault) = &service.fault {
        report(
            problems,
            &["services", name, "fault"],
            "fault",
            fault.problems(),
        );
        if tcp {
            problems.at(
                &["services", name, "fault"],
                "fault: protocol tcp carries no requests to inject faults into: expected an HTTP or gRPC service",
            );
        }
    }
    for (i, route) in service.routes.iter().enumerate() {
        if let Some(fault) = &route.fault {
            let item = format!("[{i}]");
            let label = format!("routes[{i}].fault");
            let at = ["services", name, "routes", item.as_str(), "fault"];
            report(problems, &at, &label, fault.problems());
        }
    }
    let Some(limits) = &service.rate_limit else {
        return;
    };
    if let Some(outbound) = &limits.outbound {
        let at = ["services", name, "rate_limit", "outbound"];
        report(problems, &at, "rate_limit.outbound", outbound.problems());
    }
    if let Some(inbound) = &limits.inbound {
        let at = ["services", name, "rate_limit", "inbound"];
        report(problems, &at, "rate_limit.inbound", inbound.problems());
    }
    if tcp {
        problems.at(
            &["services", name, "rate_limit"],
            "rate_limit: protocol tcp carries no requests to limit: expected an HTTP or gRPC service",
        );
    }
}

/// Each problem at `at` + its own path, its message prefixed by `label`.
fn report(problems: &mut Problems<'_>, at: &[&str], label: &str, found: Vec<PolicyProblem>) {
    for problem in found {
        let keys: Vec<&str> = at.iter().copied().chain(problem.path).collect();
        // A whole-fault problem names the key itself ("fault has ..."):
        // prefix only messages about a key below it.
        let message = if problem.message.starts_with("fault ") {
            format!("{label}{}", problem.message.trim_start_matches("fault"))
        } else {
            format!("{label}.{}", problem.message)
        };
        problems.at(&keys, message);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    fn errors(text: &str) -> Vec<String> {
        super::super::parse(Path::new("mesh.yaml"), text)
            .err()
            .map(|e| e.0)
            .unwrap_or_default()
    }

    #[test]
    fn faults_and_rate_limits_parse_into_the_service() {
        let text = "services:\n  api:\n    fault:\n      delay: { duration: 200ms, percent: 10 }\n      abort: { status: 503, percent: 5 }\n      header: x-tether-fault\n    rate_limit:\n      outbound: { requests_per_second: 100, burst: 200 }\n      inbound: { requests_per_second: 500, per_caller: true }\n    subsets: { v1: {} }\n    routes:\n      - split: [ { subset: v1, weight: 1 } ]\n        fault: { abort: { grpc_status: unavailable, percent: 100 } }\n";
        let config =
            super::super::parse(Path::new("mesh.yaml"), text).unwrap_or_else(|e| panic!("{e}"));
        let api = &config.services["api"];
        let fault = api.fault.as_ref();
        assert_eq!(
            fault.and_then(|f| f.delay.as_ref()).map(|d| d.duration),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            fault.and_then(|f| f.abort.as_ref()).and_then(|a| a.status),
            Some(503)
        );
        let limits = api.rate_limit.as_ref();
        assert_eq!(
            limits
                .and_then(|l| l.outbound.as_ref())
                .map(|o| o.burst_or_default()),
            Some(200)
        );
        assert!(limits
            .and_then(|l| l.inbound.as_ref())
            .is_some_and(|i| i.per_caller && i.burst_or_default() == 500));
        assert!(api.routes[0].fault.is_some());
    }

    #[test]
    fn every_fault_and_rate_limit_problem_is_reported_where_written() {
        let text = "services:\n  api:\n    fault:\n      delay: { duration: 1s, percent: 120 }\n      abort: { status: 700, percent: 5 }\n      header: \"bad header\"\n    rate_limit:\n      outbound: { requests_per_second: 0 }\n      inbound: { requests_per_second: 5, burst: 0 }\n    subsets: { v1: {} }\n    routes:\n      - split: [ { subset: v1, weight: 1 } ]\n        fault: { header: x-f }\n      - split: [ { subset: v1, weight: 1 } ]\n        fault: { abort: { status: 503, grpc_status: unavailable, percent: 1 } }\n";
        assert_eq!(
            errors(text),
            [
                "mesh.yaml:4:30: fault.delay.percent is 120: expected 0 to 100",
                "mesh.yaml:5:16: fault.abort.status is 700: expected an HTTP status 200 to 599",
                "mesh.yaml:6:7: fault.header `bad header` is not a valid HTTP header name: expected a token such as x-tether-fault",
                "mesh.yaml:13:9: routes[0].fault has neither delay nor abort: expected at least one",
                "mesh.yaml:15:18: routes[1].fault.abort: expected exactly one of `status` (HTTP) or `grpc_status`",
                "mesh.yaml:8:19: rate_limit.outbound.requests_per_second is 0: expected a number above 0, at most 1000000000",
                "mesh.yaml:9:42: rate_limit.inbound.burst is 0: expected at least 1 (no request could ever pass)",
            ]
        );
    }

    #[test]
    fn a_tcp_service_has_no_faults_or_rate_limits() {
        let text = "services:\n  db:\n    protocol: tcp\n    outbound_port: 15306\n    fault: { abort: { status: 503, percent: 1 } }\n    rate_limit: { outbound: { requests_per_second: 1 } }\n";
        let found = errors(text);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("mesh.yaml:5:5: fault: protocol tcp"),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("mesh.yaml:6:5: rate_limit: protocol tcp"),
            "{found:?}"
        );
    }
}
