//! Inbound authorization: may this caller (SPIFFE identity) make this
//! request (method, path) to our service (L7), or open an opaque TCP stream
//! to it (L4, identity alone)? Compiled from the snapshot once; checked per
//! request or connection without allocation.

use http::Method;
use tether_api::{Authorization, AuthorizationDefault};
use tether_certs::SpiffeId;

/// One compiled allow rule.
#[derive(Debug, Clone)]
struct Rule {
    /// Caller service names; `None` is any authenticated caller (`*`).
    from: Option<Vec<String>>,
    methods: Vec<Method>,
    paths: Vec<PathPattern>,
}

#[derive(Debug, Clone)]
enum PathPattern {
    Any,
    Exact(String),
    Prefix(String),
}

impl PathPattern {
    fn parse(pattern: &str) -> Self {
        match pattern {
            "*" => PathPattern::Any,
            p => match p.strip_suffix('*') {
                Some(prefix) => PathPattern::Prefix(prefix.to_owned()),
                None => PathPattern::Exact(p.to_owned()),
            },
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Any => true,
            PathPattern::Exact(p) => p == path,
            PathPattern::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

/// The compiled policy of the service this proxy fronts.
#[derive(Debug, Clone)]
pub struct AuthzPolicy {
    allow_by_default: bool,
    rules: Vec<Rule>,
}

impl AuthzPolicy {
    /// Compiles the snapshot's policy; lists problems (bad method names).
    pub fn compile(policy: &Authorization) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut rules = Vec::with_capacity(policy.rules.len());
        for (i, rule) in policy.rules.iter().enumerate() {
            let mut methods = Vec::with_capacity(rule.methods.len());
            for m in &rule.methods {
                match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(method) => methods.push(method),
                    Err(_) => problems.push(format!(
                        "authorization.rules[{i}].methods: `{m}` is not an HTTP method"
                    )),
                }
            }
            let from = (!rule.from.iter().any(|f| f == "*")).then(|| rule.from.clone());
            rules.push(Rule {
                from,
                methods,
                paths: rule.paths.iter().map(|p| PathPattern::parse(p)).collect(),
            });
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            allow_by_default: policy.default == AuthorizationDefault::Allow,
            rules,
        })
    }

    /// Whether `caller` may make this request. Unauthenticated callers
    /// (plaintext in permissive mode) pass only a default-allow policy.
    pub fn allows(&self, caller: Option<&SpiffeId>, method: &Method, path: &str) -> bool {
        let Some(caller) = caller else {
            return self.allow_by_default;
        };
        let allowed = self.rules.iter().any(|rule| {
            Self::caller_matches(rule.from.as_ref(), caller)
                && (rule.methods.is_empty() || rule.methods.contains(method))
                && (rule.paths.is_empty() || rule.paths.iter().any(|p| p.matches(path)))
        });
        allowed || self.allow_by_default
    }

    /// Whether `caller` may open an opaque TCP stream (L4): a rule naming
    /// the caller with no methods and no paths allows it (a rule that limits
    /// either cannot be checked on bytes), or `default: allow`.
    /// Unauthenticated callers pass only a default-allow policy.
    pub fn allows_l4(&self, caller: Option<&SpiffeId>) -> bool {
        let Some(caller) = caller else {
            return self.allow_by_default;
        };
        let allowed = self.rules.iter().any(|rule| {
            rule.methods.is_empty()
                && rule.paths.is_empty()
                && Self::caller_matches(rule.from.as_ref(), caller)
        });
        allowed || self.allow_by_default
    }

    fn caller_matches(from: Option<&Vec<String>>, caller: &SpiffeId) -> bool {
        from.is_none_or(|from| from.iter().any(|f| f == caller.service_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_api::AuthorizationRule;

    fn id(service: &str) -> SpiffeId {
        SpiffeId::service("tether.local", service).unwrap_or_else(|e| panic!("{e}"))
    }

    fn policy(default: AuthorizationDefault, rules: Vec<AuthorizationRule>) -> AuthzPolicy {
        AuthzPolicy::compile(&Authorization { default, rules }).unwrap_or_else(|p| panic!("{p:?}"))
    }

    #[test]
    fn rules_match_caller_method_and_path() {
        let p = policy(
            AuthorizationDefault::Deny,
            vec![AuthorizationRule {
                from: vec!["web".into()],
                methods: vec!["GET".into(), "post".into()],
                paths: vec!["/v1/*".into(), "/health".into()],
            }],
        );
        assert!(p.allows(Some(&id("web")), &Method::GET, "/v1/users"));
        assert!(p.allows(Some(&id("web")), &Method::POST, "/health"));
        assert!(!p.allows(Some(&id("web")), &Method::DELETE, "/v1/users"));
        assert!(!p.allows(Some(&id("web")), &Method::GET, "/v2/users"));
        assert!(!p.allows(Some(&id("batch")), &Method::GET, "/v1/users"));
        assert!(!p.allows(None, &Method::GET, "/v1/users"));
    }

    #[test]
    fn wildcard_caller_and_default_allow() {
        let p = policy(
            AuthorizationDefault::Deny,
            vec![AuthorizationRule {
                from: vec!["*".into()],
                ..Default::default()
            }],
        );
        assert!(p.allows(Some(&id("anyone")), &Method::PATCH, "/x"));
        assert!(!p.allows(None, &Method::GET, "/"));
        let open = policy(AuthorizationDefault::Allow, vec![]);
        assert!(open.allows(None, &Method::GET, "/"));
    }

    #[test]
    fn l4_needs_a_rule_without_methods_or_paths() {
        let rule = |from: &str, methods: &[&str], paths: &[&str]| AuthorizationRule {
            from: vec![from.into()],
            methods: methods.iter().map(|m| (*m).into()).collect(),
            paths: paths.iter().map(|p| (*p).into()).collect(),
        };
        let p = policy(
            AuthorizationDefault::Deny,
            vec![
                rule("web", &[], &[]),
                rule("batch", &["GET"], &[]),
                rule("cron", &[], &["*"]),
            ],
        );
        assert!(p.allows_l4(Some(&id("web"))));
        assert!(!p.allows_l4(Some(&id("batch"))), "a method rule is L7 only");
        assert!(!p.allows_l4(Some(&id("cron"))), "a path rule is L7 only");
        assert!(!p.allows_l4(Some(&id("stranger"))));
        assert!(!p.allows_l4(None), "unauthenticated needs default allow");
        assert!(
            p.allows(Some(&id("batch")), &Method::GET, "/"),
            "L7 still works"
        );

        let any = policy(AuthorizationDefault::Deny, vec![rule("*", &[], &[])]);
        assert!(any.allows_l4(Some(&id("anyone"))));
        assert!(!any.allows_l4(None));
        let open = policy(AuthorizationDefault::Allow, vec![]);
        assert!(open.allows_l4(Some(&id("anyone"))));
        assert!(open.allows_l4(None));
    }

    #[test]
    fn bad_methods_are_reported() {
        let bad = Authorization {
            default: AuthorizationDefault::Deny,
            rules: vec![AuthorizationRule {
                from: vec!["web".into()],
                methods: vec!["G E T".into()],
                paths: vec![],
            }],
        };
        assert_eq!(AuthzPolicy::compile(&bad).err().map(|p| p.len()), Some(1));
    }
}
