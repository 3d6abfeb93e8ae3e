//! SPIFFE identities of mesh services: `spiffe://<trust_domain>/service/<name>`:
//! building, parsing and the name checks. The type is in `spiffe_id`.

use std::str::FromStr;

use crate::error::{Error, Result};
use crate::spiffe_id::{SpiffeId, SCHEME, SERVICE_PATH};

/// DNS label limit; service names double as DNS labels (`api.mesh`).
const MAX_SERVICE_LEN: usize = 63;
/// SPIFFE limits trust domains to 255 bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

impl SpiffeId {
    /// Builds the identity of service `name` in `trust_domain`, checking both.
    pub fn service(trust_domain: &str, name: &str) -> Result<Self> {
        validate_trust_domain(trust_domain)?;
        validate_service_name(name)?;
        Ok(SpiffeId {
            trust_domain: trust_domain.to_owned(),
            service: name.to_owned(),
        })
    }

    /// A TLS server name to dial this service with (`<service>.<trust_domain>`).
    ///
    /// Mesh verifiers never check DNS names, so this only fills SNI; it is
    /// handy for logs and for telling endpoints apart in packet captures.
    pub fn server_name(&self) -> Result<rustls_pki_types::ServerName<'static>> {
        let name = format!("{}.{}", self.service, self.trust_domain);
        rustls_pki_types::ServerName::try_from(name).map_err(|_| Error::InvalidTrustDomain {
            domain: self.trust_domain.clone(),
            reason: "it does not form a DNS name with the service name",
        })
    }
}

impl FromStr for SpiffeId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidSpiffeId {
            input: s.to_owned(),
            reason,
        };
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("the scheme must be spiffe://"))?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if td.is_empty() {
            return Err(bad("the trust domain is empty"));
        }
        validate_trust_domain(td)
            .map_err(|_| bad("the trust domain is not a valid DNS-like name"))?;
        if path.is_empty() {
            return Err(bad("it names a trust domain, not a service"));
        }
        if path.contains(['?', '#']) {
            return Err(bad("query and fragment are not allowed"));
        }
        let name = path
            .strip_prefix(SERVICE_PATH)
            .ok_or(bad("the path must be /service/<name>"))?;
        if name.contains('/') {
            return Err(bad(
                "the path must be /service/<name> with nothing after the name",
            ));
        }
        validate_service_name(name).map_err(|e| match e {
            Error::InvalidServiceName { reason, .. } => bad(reason),
            other => other,
        })?;
        Ok(SpiffeId {
            trust_domain: td.to_owned(),
            service: name.to_owned(),
        })
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Checks a service name: `[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most 63 bytes.
pub fn validate_service_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidServiceName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("the service name is empty");
    }
    if name.len() > MAX_SERVICE_LEN {
        return bad("the service name is longer than 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("the service name has characters other than a-z, 0-9 and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("the service name starts or ends with '-'");
    }
    Ok(())
}

/// Checks a trust domain: lower-case letters, digits, `.`, `-` and `_`, no
/// empty labels, at most 255 bytes.
pub fn validate_trust_domain(domain: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidTrustDomain {
            domain: domain.to_owned(),
            reason,
        })
    };
    if domain.is_empty() {
        return bad("the trust domain is empty");
    }
    if domain.len() > MAX_TRUST_DOMAIN_LEN {
        return bad("the trust domain is longer than 255 characters");
    }
    if !domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return bad(
            "only a-z, 0-9, '.', '-' and '_' are allowed (no ports, no user info, no upper case)",
        );
    }
    if domain.split('.').any(str::is_empty) {
        return bad("it has an empty label ('..' or a leading or trailing '.')");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(s: &str) -> String {
        match s.parse::<SpiffeId>() {
            Err(Error::InvalidSpiffeId { reason, .. }) => reason.to_owned(),
            other => panic!("{s}: expected InvalidSpiffeId, got {other:?}"),
        }
    }

    #[test]
    fn round_trips() {
        let id = SpiffeId::service("tether.local", "api").unwrap();
        assert_eq!(id.to_string(), "spiffe://tether.local/service/api");
        assert_eq!(id.to_string().parse::<SpiffeId>().unwrap(), id);
        assert_eq!(id.service_name(), "api");
        assert_eq!(id.trust_domain(), "tether.local");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://tether.local/service/api\"");
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
    }

    #[test]
    fn parse_edge_cases() {
        assert!(reason("https://tether.local/service/api").contains("scheme"));
        assert!(reason("SPIFFE://tether.local/service/api").contains("scheme"));
        assert!(reason("spiffe:///service/api").contains("empty"));
        assert!(reason("spiffe://Tether.local/service/api").contains("trust domain"));
        assert!(reason("spiffe://tether.local:8080/service/api").contains("trust domain"));
        assert!(reason("spiffe://user@tether.local/service/api").contains("trust domain"));
        assert!(reason("spiffe://tether..local/service/api").contains("trust domain"));
        assert!(reason("spiffe://tether.local").contains("not a service"));
        assert!(reason("spiffe://tether.local/").contains("/service/"));
        assert!(reason("spiffe://tether.local/ns/default/sa/api").contains("/service/"));
        assert!(reason("spiffe://tether.local/service/").contains("empty"));
        assert!(reason("spiffe://tether.local/service/api/").contains("nothing after"));
        assert!(reason("spiffe://tether.local/service/api/x").contains("nothing after"));
        assert!(reason("spiffe://tether.local/service/Api").contains("characters"));
        assert!(reason("spiffe://tether.local/service/a_b").contains("characters"));
        assert!(reason("spiffe://tether.local/service/-api").contains("'-'"));
        assert!(reason("spiffe://tether.local/service/api-").contains("'-'"));
        assert!(reason("spiffe://tether.local/service/api?x=1").contains("query"));
        assert!(
            reason(&format!("spiffe://tether.local/service/{}", "a".repeat(64))).contains("63")
        );
        let ok = format!("spiffe://tether.local/service/{}", "a".repeat(63));
        assert!(ok.parse::<SpiffeId>().is_ok());
        assert!("spiffe://tether.local/service/a"
            .parse::<SpiffeId>()
            .is_ok());
        assert!("spiffe://td/service/web-2".parse::<SpiffeId>().is_ok());
    }

    #[test]
    fn constructor_validates() {
        assert!(SpiffeId::service("tether.local", "").is_err());
        assert!(SpiffeId::service("", "api").is_err());
        assert!(SpiffeId::service("tether.local", "API").is_err());
        let msg = SpiffeId::service("tether.local", "a b")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("a-z, 0-9"), "{msg}");
    }

    #[test]
    fn server_name_is_dns() {
        let id = SpiffeId::service("tether.local", "api").unwrap();
        assert_eq!(id.server_name().unwrap().to_str(), "api.tether.local");
    }
}
