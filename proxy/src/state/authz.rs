//! Inbound authorization: may this caller (SPIFFE identity) make this
//! request (method, path) to our service (L7), or open an opaque TCP stream
//! to it (L4, identity alone)? Compiled from the snapshot once (by
//! `discovery`); checked per request or connection without allocation.

use http::Method;
use tether_certs::SpiffeId;

/// One compiled allow rule.
#[derive(Debug, Clone)]
pub struct AuthzRule {
    /// Caller service names; `None` is any authenticated caller (`*`).
    pub from: Option<Vec<String>>,
    /// Allowed methods; empty is any (and then the rule may allow L4).
    pub methods: Vec<Method>,
    /// Allowed paths; empty is any (and then the rule may allow L4).
    pub paths: Vec<PathPattern>,
}

/// A path a rule allows.
#[derive(Debug, Clone)]
pub enum PathPattern {
    /// `*`: every path.
    Any,
    /// This exact path.
    Exact(String),
    /// Paths starting with this (written `/v1/*`).
    Prefix(String),
}

impl PathPattern {
    /// Reads `*`, `/prefix*` or an exact path.
    pub fn parse(pattern: &str) -> Self {
        match pattern {
            "*" => PathPattern::Any,
            p => match p.strip_suffix('*') {
                Some(prefix) => PathPattern::Prefix(prefix.to_owned()),
                None => PathPattern::Exact(p.to_owned()),
            },
        }
    }

    /// Whether `path` is allowed by this pattern.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Any => true,
            PathPattern::Exact(p) => p == path,
            PathPattern::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

/// What decided an authorization check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzDecision {
    /// Allowed by the rule at this index of the snapshot's rules (the
    /// first that matches).
    Rule(usize),
    /// No rule allowed it (or the caller is unauthenticated, when rules
    /// are not even consulted): the policy's default decides.
    Default {
        /// `default: allow`.
        allow: bool,
        /// The caller presented no identity (plaintext, permissive).
        unauthenticated: bool,
    },
}

impl AuthzDecision {
    /// Whether the request is let in.
    pub fn allowed(self) -> bool {
        match self {
            AuthzDecision::Rule(_) => true,
            AuthzDecision::Default { allow, .. } => allow,
        }
    }
}

/// The compiled policy of the service this proxy fronts.
#[derive(Debug, Clone)]
pub struct AuthzPolicy {
    allow_by_default: bool,
    rules: Vec<AuthzRule>,
}

impl AuthzPolicy {
    /// A policy of allow `rules`, falling back to `allow_by_default`.
    pub fn new(allow_by_default: bool, rules: Vec<AuthzRule>) -> Self {
        Self {
            allow_by_default,
            rules,
        }
    }

    /// Whether `caller` may make this request. Unauthenticated callers
    /// (plaintext in permissive mode) pass only a default-allow policy.
    pub fn allows(&self, caller: Option<&SpiffeId>, method: &Method, path: &str) -> bool {
        self.decide(caller, method, path).allowed()
    }

    /// Why `caller` may or may not make this request: the first rule that
    /// allows it, else the default. [`Self::allows`] is this decision (and
    /// `tether-control explain` shows it), so the two never disagree.
    #[inline]
    pub fn decide(&self, caller: Option<&SpiffeId>, method: &Method, path: &str) -> AuthzDecision {
        let Some(caller) = caller else {
            return AuthzDecision::Default {
                allow: self.allow_by_default,
                unauthenticated: true,
            };
        };
        let rule = self.rules.iter().position(|rule| {
            Self::caller_matches(rule.from.as_ref(), caller)
                && (rule.methods.is_empty() || rule.methods.contains(method))
                && (rule.paths.is_empty() || rule.paths.iter().any(|p| p.matches(path)))
        });
        match rule {
            Some(index) => AuthzDecision::Rule(index),
            None => AuthzDecision::Default {
                allow: self.allow_by_default,
                unauthenticated: false,
            },
        }
    }

    /// The allow rules, in the snapshot's order.
    pub fn rules(&self) -> &[AuthzRule] {
        &self.rules
    }

    /// Whether a request no rule allows is let in (`default: allow`).
    pub fn allows_by_default(&self) -> bool {
        self.allow_by_default
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

    #[test]
    fn path_patterns() {
        assert!(PathPattern::parse("*").matches("/anything"));
        assert!(PathPattern::parse("/v1/*").matches("/v1/users"));
        assert!(!PathPattern::parse("/v1/*").matches("/v2"));
        assert!(PathPattern::parse("/health").matches("/health"));
        assert!(!PathPattern::parse("/health").matches("/healthz"));
    }
}
