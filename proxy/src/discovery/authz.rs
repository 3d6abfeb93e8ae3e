//! Compiles the snapshot's inbound authorization into [`AuthzPolicy`].

use http::Method;
use tether_api::{Authorization, AuthorizationDefault};

use crate::state::{AuthzPolicy, AuthzRule, PathPattern};

/// Compiles the snapshot's policy; lists every problem (bad method names).
pub fn compile(policy: &Authorization) -> Result<AuthzPolicy, Vec<String>> {
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
        rules.push(AuthzRule {
            from,
            methods,
            paths: rule.paths.iter().map(|p| PathPattern::parse(p)).collect(),
        });
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(AuthzPolicy::new(
        policy.default == AuthorizationDefault::Allow,
        rules,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;
    use tether_api::AuthorizationRule;
    use tether_certs::SpiffeId;

    fn id(service: &str) -> SpiffeId {
        SpiffeId::service("tether.local", service).unwrap_or_else(|e| panic!("{e}"))
    }

    fn policy(default: AuthorizationDefault, rules: Vec<AuthorizationRule>) -> AuthzPolicy {
        compile(&Authorization { default, rules }).unwrap_or_else(|p| panic!("{p:?}"))
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
        assert_eq!(compile(&bad).err().map(|p| p.len()), Some(1));
    }
}
