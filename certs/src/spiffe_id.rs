//! The SPIFFE ID type itself, apart from its parsing and checks (in
//! `spiffe`), so that the crate's error type, which names SpiffeIds, sits
//! below the code that returns it.

use std::fmt;

/// The URI scheme of every SPIFFE ID.
pub(crate) const SCHEME: &str = "spiffe://";
/// The only path prefix Tether issues: one identity per service.
pub(crate) const SERVICE_PATH: &str = "/service/";

/// The identity of one mesh service, carried as the only URI SAN of its
/// certificates.
///
/// `Display` and `FromStr` use the form `spiffe://<trust_domain>/service/<name>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub(crate) trust_domain: String,
    pub(crate) service: String,
}

impl SpiffeId {
    /// The trust domain, e.g. `tether.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The service name, e.g. `api`.
    pub fn service_name(&self) -> &str {
        &self.service
    }

    /// The URI of the trust domain itself (`spiffe://<trust_domain>`), which
    /// the mesh root carries as its URI SAN.
    pub fn trust_domain_uri(trust_domain: &str) -> String {
        format!("{SCHEME}{trust_domain}")
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}{SERVICE_PATH}{}",
            self.trust_domain, self.service
        )
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({self})")
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
