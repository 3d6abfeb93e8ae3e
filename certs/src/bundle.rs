//! The set of mesh roots a peer's chain may end in. Holding more than one
//! root is what makes root rotation possible without an outage.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;

use crate::error::{Error, Result};
use crate::x509::{cert_info, certs_from_pem, to_pem};

/// One or more trusted root certificates.
///
/// Rotation with overlap: `add` the new root everywhere, switch the CA to the
/// new root, wait until every leaf from the old root has expired, then
/// `remove` the old root (see `docs/identity.md`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustBundle({} roots)", self.roots.len())
    }
}

impl TrustBundle {
    /// A bundle of already-vetted DER roots (no checks).
    pub(crate) fn from_der(roots: Vec<CertificateDer<'static>>) -> Self {
        let mut b = TrustBundle::default();
        for r in roots {
            if !b.roots.contains(&r) {
                b.roots.push(r);
            }
        }
        b
    }

    /// Parses a PEM file holding one or more root certificates. Each must be
    /// a CA certificate.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let mut b = TrustBundle::default();
        for cert in certs_from_pem(pem)? {
            b.add(cert)?;
        }
        Ok(b)
    }

    /// All roots as concatenated PEM, in the order they were added.
    pub fn to_pem(&self) -> String {
        self.roots
            .iter()
            .map(|c| to_pem("CERTIFICATE", c))
            .collect()
    }

    /// The trust domains the roots name in a `spiffe://<trust_domain>` URI
    /// SAN (roots made by `tether-control ca init` carry one), without
    /// duplicates, in root order. Roots without one add nothing.
    pub fn trust_domains(&self) -> Vec<String> {
        let mut domains: Vec<String> = Vec::new();
        for root in &self.roots {
            let Ok(info) = cert_info(root) else { continue };
            for uri in info.uris {
                let Some(domain) = uri.strip_prefix("spiffe://") else {
                    continue;
                };
                if !domain.is_empty()
                    && !domain.contains('/')
                    && crate::spiffe::validate_trust_domain(domain).is_ok()
                    && !domains.iter().any(|d| d == domain)
                {
                    domains.push(domain.to_owned());
                }
            }
        }
        domains
    }

    /// Adds a root (ignored if already present). Refuses non-CA certificates.
    pub fn add(&mut self, root: CertificateDer<'static>) -> Result<()> {
        let info = cert_info(&root)?;
        if !info.is_ca {
            return Err(Error::NotACa(
                "a trust bundle holds only root (CA) certificates".into(),
            ));
        }
        if !self.roots.contains(&root) {
            self.roots.push(root);
        }
        Ok(())
    }

    /// Adds every root of `other`.
    pub fn merge(&mut self, other: &TrustBundle) {
        for r in &other.roots {
            if !self.roots.contains(r) {
                self.roots.push(r.clone());
            }
        }
    }

    /// Removes `root`; returns whether it was present.
    pub fn remove(&mut self, root: &CertificateDer<'_>) -> bool {
        let before = self.roots.len();
        self.roots.retain(|r| r.as_ref() != root.as_ref());
        before != self.roots.len()
    }

    /// Whether `root` is in the bundle.
    pub fn contains(&self, root: &CertificateDer<'_>) -> bool {
        self.roots.iter().any(|r| r.as_ref() == root.as_ref())
    }

    /// The roots, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Number of roots.
    pub fn len(&self) -> usize {
        self.roots.len()
    }

    /// True when the bundle trusts nothing.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// A rustls root store of these roots. Errors on an empty bundle, which
    /// would trust nothing and fail every handshake.
    pub fn root_store(&self) -> Result<Arc<RootCertStore>> {
        if self.roots.is_empty() {
            return Err(Error::MissingPem {
                what: "CERTIFICATE",
            });
        }
        let mut store = RootCertStore::empty();
        for r in &self.roots {
            store.add(r.clone())?;
        }
        Ok(Arc::new(store))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::CertificateAuthority;
    use std::time::Duration;

    #[test]
    fn pem_round_trip_and_rotation_ops() {
        let day = Duration::from_secs(86_400);
        let old = CertificateAuthority::generate("tether.local", day).unwrap();
        let new = CertificateAuthority::generate("tether.local", day).unwrap();
        let mut b = old.bundle();
        b.add(new.cert_der().clone()).unwrap();
        b.add(new.cert_der().clone()).unwrap();
        assert_eq!(b.len(), 2);
        let parsed = TrustBundle::from_pem(&b.to_pem()).unwrap();
        assert_eq!(parsed, b);
        assert!(b.remove(old.cert_der()));
        assert!(!b.contains(old.cert_der()));
        assert!(b.contains(new.cert_der()));
        assert_eq!(b.root_store().unwrap().len(), 1);
        assert!(TrustBundle::default().root_store().is_err());
        assert!(TrustBundle::from_pem("nothing here").is_err());
    }
}
