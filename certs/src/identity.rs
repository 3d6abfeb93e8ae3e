//! A service's own identity: its private key (generated in the proxy, never
//! sent anywhere) and the certificate chain the CA issued for it.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::{Error, Result};
use crate::fsutil::{self, PUBLIC_MODE, SECRET_MODE};
use crate::spiffe_id::SpiffeId;
use crate::x509::{cert_info, certs_from_pem, spiffe_id_of};

/// File name of an identity's certificate chain in a state directory.
pub const IDENTITY_CERT_FILE: &str = "identity.pem";
/// File name of an identity's private key in a state directory (mode 0600).
pub const IDENTITY_KEY_FILE: &str = "identity-key.pem";

/// An ECDSA P-256 private key for one service identity.
///
/// It stays in the process; only the CSR (public key + identity) leaves.
/// `Debug` never shows it.
pub struct IdentityKey {
    key: KeyPair,
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdentityKey(<redacted>)")
    }
}

impl IdentityKey {
    /// Generates a fresh ECDSA P-256 key.
    pub fn generate() -> Result<Self> {
        Ok(IdentityKey {
            key: KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        })
    }

    /// Reads a PKCS#8 PEM key (as written by [`Identity::write_dir`]).
    pub fn from_pem(pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(pem).map_err(|e| Error::BadKey(e.to_string()))?;
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(Error::BadKey("the key is not ECDSA P-256".into()));
        }
        Ok(IdentityKey { key })
    }

    /// A PEM CSR asking for `id` as its only (URI) SAN, signed by this key.
    pub fn csr_pem(&self, id: &SpiffeId) -> Result<String> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.service_name());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        Ok(params.serialize_request(&self.key)?.pem()?)
    }

    fn pkcs8_der(&self) -> PrivatePkcs8KeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key.serialize_der())
    }
}

/// A certificate chain and its private key, ready for rustls.
///
/// Cheap to share: hand it to [`crate::IdentityStore::set_identity`].
/// `Debug` shows the identity and validity, never the key.
pub struct Identity {
    certified: Arc<CertifiedKey>,
    spiffe_id: SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
    chain_pem: String,
    key_der: PrivatePkcs8KeyDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("spiffe_id", &self.spiffe_id)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Identity {
    /// Pairs `key` with the chain the CA issued for its CSR (leaf first).
    /// Checks that the leaf is a mesh leaf (one SPIFFE URI SAN, not a CA) and
    /// that it certifies this key.
    pub fn new(key: &IdentityKey, chain_pem: &str) -> Result<Self> {
        let chain = certs_from_pem(chain_pem)?;
        Self::build(chain, key.pkcs8_der())
    }

    /// Reads an identity from PEM (chain, leaf first) and a PKCS#8 PEM key.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self> {
        let key = IdentityKey::from_pem(key_pem)?;
        Self::new(&key, chain_pem)
    }

    fn build(
        chain: Vec<CertificateDer<'static>>,
        key_der: PrivatePkcs8KeyDer<'static>,
    ) -> Result<Self> {
        let leaf = chain.first().ok_or(Error::MissingPem {
            what: "CERTIFICATE",
        })?;
        let info = cert_info(leaf)?;
        if info.is_ca {
            return Err(Error::BadCertificate(
                "the first certificate of the chain is a CA, not a service leaf".into(),
            ));
        }
        let spiffe_id = spiffe_id_of(leaf)?;
        // Present the leaf and any intermediates; peers already hold the root.
        let presented: Vec<CertificateDer<'static>> = chain
            .iter()
            .enumerate()
            .filter(|(i, c)| *i == 0 || cert_info(c).map(|ci| !ci.self_issued).unwrap_or(true))
            .map(|(_, c)| c.clone())
            .collect();
        let provider = crate::provider::provider();
        let signing_key = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(key_der.clone_key()))
            .map_err(|e| Error::BadKey(e.to_string()))?;
        let certified = CertifiedKey::new(presented, signing_key);
        certified.keys_match().map_err(|_| Error::KeyMismatch)?;
        let chain_pem = chain
            .iter()
            .map(|c| crate::x509::to_pem("CERTIFICATE", c))
            .collect();
        Ok(Identity {
            certified: Arc::new(certified),
            spiffe_id,
            not_before: info.not_before,
            not_after: info.not_after,
            chain_pem,
            key_der,
        })
    }

    /// The identity this certificate proves.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// Start of validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Total validity period (`not_after - not_before`).
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO)
    }

    /// When to renew: two thirds of the way through the validity period,
    /// which leaves a third of the lifetime (8 h of the default 24 h) to
    /// retry through a control-plane outage.
    pub fn renew_at(&self) -> SystemTime {
        self.renew_at_fraction(2, 3)
    }

    /// How long from `now` until [`Identity::renew_at`] (zero if it has
    /// passed): the sleep of a renewal loop.
    pub fn renew_after(&self, now: SystemTime) -> Duration {
        self.renew_at()
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }

    /// When to renew, at `num/den` of the validity period (for operators who
    /// configure another fraction). `den == 0` means "now".
    pub fn renew_at_fraction(&self, num: u32, den: u32) -> SystemTime {
        match self.lifetime().checked_mul(num) {
            Some(part) if den > 0 => self.not_before + part / den,
            _ => self.not_before,
        }
    }

    /// When the certificate was issued, as far as renewal is concerned:
    /// `notBefore` plus the [`crate::CLOCK_SKEW`] backdating the mesh CA
    /// applies, so the backdated minute is not counted as life spent.
    pub fn issued_at(&self) -> SystemTime {
        (self.not_before + crate::CLOCK_SKEW).min(self.not_after)
    }

    /// When a proxy renews: `fraction` (0..=1, e.g. 2/3) of the way from
    /// [`Identity::issued_at`] to `notAfter`. Out-of-range fractions clamp.
    pub fn renewal_time(&self, fraction: f64) -> SystemTime {
        let issued = self.issued_at();
        let life = self
            .not_after
            .duration_since(issued)
            .unwrap_or(Duration::ZERO);
        issued + life.mul_f64(fraction.clamp(0.0, 1.0))
    }

    /// Whether `now` is outside the validity period.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now >= self.not_after || now < self.not_before
    }

    /// The certificate chain as PEM (leaf first). Public; safe to show.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// The rustls view: chain plus signing key.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }

    /// Saves chain ([`IDENTITY_CERT_FILE`], 0644) and key
    /// ([`IDENTITY_KEY_FILE`], 0600) into the proxy's own state directory,
    /// replacing earlier files atomically, so a restart can serve with the
    /// last good certificate. The key only ever goes to this 0600 file.
    pub fn write_dir(&self, dir: &Path) -> Result<()> {
        let key_pem = crate::x509::to_pem("PRIVATE KEY", self.key_der.secret_pkcs8_der());
        fsutil::replace(
            &dir.join(IDENTITY_KEY_FILE),
            key_pem.as_bytes(),
            SECRET_MODE,
        )?;
        fsutil::replace(
            &dir.join(IDENTITY_CERT_FILE),
            self.chain_pem.as_bytes(),
            PUBLIC_MODE,
        )
    }

    /// Loads what [`Identity::write_dir`] saved. The caller should check
    /// [`Identity::is_expired_at`] before serving with it.
    pub fn load_dir(dir: &Path) -> Result<Self> {
        let chain = fsutil::read_string(&dir.join(IDENTITY_CERT_FILE))?;
        let key = fsutil::read_string(&dir.join(IDENTITY_KEY_FILE))?;
        Self::from_pem(&chain, &key)
    }
}
