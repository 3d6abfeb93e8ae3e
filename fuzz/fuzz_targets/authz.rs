//! The inbound authorization matcher: a policy compiled from arbitrary
//! rules, checked for arbitrary callers (SPIFFE IDs parsed from arbitrary
//! URIs, as read from a peer certificate), methods and paths, against a
//! reference model written from the documented semantics.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use tether_api::{Authorization, AuthorizationDefault, AuthorizationRule};
use tether_certs::SpiffeId;

struct Rule {
    from: Vec<String>,
    methods: Vec<String>,
    paths: Vec<String>,
}

/// The input, as text lines (unknown lines are skipped):
///
/// ```text
/// default: deny
/// rule: from=web,* methods=GET,post paths=/v1/*,/health
/// caller: spiffe://tether.local/service/web
/// request: GET /v1/users
/// ```
///
/// No `caller` line is an unauthenticated (plaintext) caller.
struct Input {
    allow_by_default: bool,
    rules: Vec<Rule>,
    caller: Option<String>,
    method: String,
    path: String,
}

impl Input {
    fn parse(text: &str) -> Self {
        let mut input = Input {
            allow_by_default: false,
            rules: Vec::new(),
            caller: None,
            method: "GET".to_owned(),
            path: "/".to_owned(),
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once(": ") else {
                continue;
            };
            match key {
                "default" => input.allow_by_default = value == "allow",
                "caller" => input.caller = Some(value.to_owned()),
                "request" => {
                    let (method, path) = value.split_once(' ').unwrap_or((value, ""));
                    input.method = method.to_owned();
                    input.path = path.to_owned();
                }
                "rule" => {
                    let mut rule = Rule {
                        from: Vec::new(),
                        methods: Vec::new(),
                        paths: Vec::new(),
                    };
                    for field in value.split(' ') {
                        let (list, items) = match field.split_once('=') {
                            Some(("from", items)) => (&mut rule.from, items),
                            Some(("methods", items)) => (&mut rule.methods, items),
                            Some(("paths", items)) => (&mut rule.paths, items),
                            _ => continue,
                        };
                        list.extend(items.split(',').map(str::to_owned));
                    }
                    input.rules.push(rule);
                }
                _ => {}
            }
        }
        input
    }
}

/// `*` any path, `p*` a prefix, anything else exact.
fn path_matches(pattern: &str, path: &str) -> bool {
    pattern == "*"
        || pattern
            .strip_suffix('*')
            .map_or(pattern == path, |prefix| path.starts_with(prefix))
}

fn rule_allows(rule: &Rule, caller: &str, method: Option<&Method>, path: &str) -> bool {
    let from = rule.from.iter().any(|f| f == "*" || f == caller);
    match method {
        // L4: only a rule with neither methods nor paths.
        None => from && rule.methods.is_empty() && rule.paths.is_empty(),
        Some(method) => {
            from && (rule.methods.is_empty()
                || rule
                    .methods
                    .iter()
                    .any(|m| m.to_ascii_uppercase() == method.as_str()))
                && (rule.paths.is_empty() || rule.paths.iter().any(|p| path_matches(p, path)))
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let input = Input::parse(text);
    let policy = Authorization {
        default: if input.allow_by_default {
            AuthorizationDefault::Allow
        } else {
            AuthorizationDefault::Deny
        },
        rules: input
            .rules
            .iter()
            .map(|r| AuthorizationRule {
                from: r.from.clone(),
                methods: r.methods.clone(),
                paths: r.paths.clone(),
            })
            .collect(),
    };
    let compiled = tether_proxy::fuzzing::compile_authorization(&policy);
    let bad_method = input
        .rules
        .iter()
        .flat_map(|r| &r.methods)
        .any(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).is_err());
    assert_eq!(compiled.is_err(), bad_method, "compile: {compiled:?}");
    let Ok(compiled) = compiled else {
        return;
    };
    let caller = match &input.caller {
        None => None,
        Some(uri) => match uri.parse::<SpiffeId>() {
            Ok(id) => {
                assert_eq!(
                    id.to_string(),
                    *uri,
                    "a SPIFFE ID does not print as it parsed"
                );
                Some(id)
            }
            Err(_) => return,
        },
    };
    let Ok(method) = Method::from_bytes(input.method.as_bytes()) else {
        return;
    };
    let name = caller.as_ref().map(SpiffeId::service_name);
    let l7 = name.is_some_and(|n| {
        input
            .rules
            .iter()
            .any(|r| rule_allows(r, n, Some(&method), &input.path))
    });
    let l4 = name.is_some_and(|n| input.rules.iter().any(|r| rule_allows(r, n, None, "")));
    assert_eq!(
        compiled.allows(caller.as_ref(), &method, &input.path),
        l7 || input.allow_by_default,
        "L7 verdict for {caller:?} {method} {}",
        input.path
    );
    assert_eq!(
        compiled.allows_l4(caller.as_ref()),
        l4 || input.allow_by_default,
        "L4 verdict for {caller:?}"
    );
});
