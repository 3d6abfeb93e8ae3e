//! The mesh certificate authority: creates or adopts the root, and signs
//! service CSRs for exactly the identity the caller proved.

use std::fmt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;

use crate::bundle::TrustBundle;
use crate::error::{Error, Result};
use crate::fsutil::{self, PUBLIC_MODE, SECRET_MODE};
use crate::spiffe::validate_trust_domain;
use crate::spiffe_id::SpiffeId;
use crate::x509::{cert_info, certs_from_pem, to_offset, to_pem};
use crate::{random_bytes, CLOCK_SKEW};

/// File name of the root certificate in a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the root private key in a CA directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Default validity of a generated root: ten years, so that root rotation is
/// a planned operation, not an emergency.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A certificate issued by [`CertificateAuthority::sign_csr`].
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// PEM chain: the leaf first, then the root that signed it.
    pub chain_pem: String,
    /// The identity the leaf carries (its only URI SAN).
    pub spiffe_id: SpiffeId,
    /// Start of validity (backdated by [`CLOCK_SKEW`]).
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

/// The mesh root: certificate plus private key.
///
/// The key never appears in `Debug` output; only [`CertificateAuthority::write_dir`]
/// writes it, to a 0600 file.
pub struct CertificateAuthority {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
    trust_domain: Option<String>,
    not_after: SystemTime,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

fn serial() -> Result<SerialNumber> {
    let mut bytes = random_bytes::<16>()?;
    // Keep the serial positive when read as a DER INTEGER.
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tether");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn uri_san(uri: String) -> Result<SanType> {
    Ok(SanType::URI(uri.try_into()?))
}

impl CertificateAuthority {
    /// Generates a new self-signed ECDSA P-256 root for `trust_domain`, valid
    /// for `validity` (see [`DEFAULT_CA_VALIDITY`]). It carries the URI SAN
    /// `spiffe://<trust_domain>`, CA:true (path length 0) and keyCertSign.
    pub fn generate(trust_domain: &str, validity: Duration) -> Result<Self> {
        validate_trust_domain(trust_domain)?;
        let now = SystemTime::now();
        let not_after = now
            .checked_add(validity)
            .ok_or_else(|| Error::Validity(format!("CA validity {validity:?} is too long")))?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        // A random tag in the name tells roots apart during rotation (in logs,
        // and in webpki's issuer lookup).
        let tag: String = random_bytes::<4>()?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        params.distinguished_name = name(&format!("Tether mesh root {trust_domain} {tag}"));
        params.subject_alt_names = vec![uri_san(SpiffeId::trust_domain_uri(trust_domain))?];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_offset(now - CLOCK_SKEW);
        params.not_after = to_offset(not_after);
        params.serial_number = Some(serial()?);
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
            trust_domain: Some(trust_domain.to_owned()),
            not_after,
        })
    }

    /// Generates a root (valid [`DEFAULT_CA_VALIDITY`]) and writes it to `dir`
    /// as [`CA_CERT_FILE`] (0644) and [`CA_KEY_FILE`] (0600). Refuses if
    /// either file already exists: an existing CA is never overwritten.
    pub fn init_dir(dir: &Path, trust_domain: &str) -> Result<Self> {
        let ca = Self::generate(trust_domain, DEFAULT_CA_VALIDITY)?;
        ca.write_dir(dir)?;
        Ok(ca)
    }

    /// Writes this CA to `dir` (created 0700 if missing), the key first with
    /// mode 0600 set at creation. Refuses to overwrite existing files.
    pub fn write_dir(&self, dir: &Path) -> Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(dir, e))?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        for p in [&cert_path, &key_path] {
            if p.exists() {
                return Err(Error::AlreadyExists { path: p.clone() });
            }
        }
        fsutil::write_new(&key_path, self.key.serialize_pem().as_bytes(), SECRET_MODE)?;
        fsutil::write_new(&cert_path, self.cert_pem.as_bytes(), PUBLIC_MODE)?;
        tracing::info!(dir = %dir.display(), trust_domain = ?self.trust_domain, "wrote mesh CA");
        Ok(())
    }

    /// Loads the CA written by [`CertificateAuthority::init_dir`] (or placed
    /// there by the operator) from `dir`.
    pub fn load_dir(dir: &Path) -> Result<Self> {
        let key_path = dir.join(CA_KEY_FILE);
        if let Ok(meta) = std::fs::metadata(&key_path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %key_path.display(),
                    "CA key file is readable by group or others; run chmod 600 on it"
                );
            }
        }
        let key_pem = fsutil::read_string(&key_path)?;
        let cert_pem = fsutil::read_string(&dir.join(CA_CERT_FILE))?;
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// Adopts an existing root and key (PEM). The first certificate in
    /// `cert_pem` is the root; it must be a CA with keyCertSign, and the key
    /// must be its key. The trust domain is taken from a `spiffe://<td>` URI
    /// SAN when the root has one.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let cert_der = certs_from_pem(cert_pem)?
            .into_iter()
            .next()
            .ok_or(Error::MissingPem {
                what: "CERTIFICATE",
            })?;
        // rcgen's error text never includes key material.
        let key = KeyPair::from_pem(key_pem).map_err(|e| Error::BadKey(e.to_string()))?;
        let info = cert_info(&cert_der)?;
        if !info.is_ca {
            return Err(Error::NotACa("basicConstraints CA:true is missing".into()));
        }
        if !info.can_sign_certs {
            return Err(Error::NotACa("keyUsage lacks keyCertSign".into()));
        }
        if key.public_key_raw() != info.public_key.as_slice() {
            return Err(Error::KeyMismatch);
        }
        let trust_domain = info.uris.iter().find_map(|u| {
            let td = u.strip_prefix("spiffe://")?;
            validate_trust_domain(td).ok()?;
            Some(td.to_owned())
        });
        Ok(CertificateAuthority {
            cert_pem: to_pem("CERTIFICATE", &cert_der),
            cert_der,
            key,
            trust_domain,
            not_after: info.not_after,
        })
    }

    /// The root's private key, PKCS#8 DER: only for deriving the join-token
    /// key ([`crate::TokenKey`]); never written anywhere by this crate but
    /// [`CertificateAuthority::write_dir`].
    pub(crate) fn private_key_der(&self) -> &[u8] {
        self.key.serialized_der()
    }

    /// The private key as PEM, for tests that load a copy of this CA.
    #[cfg(test)]
    pub(crate) fn key_pem_for_tests(&self) -> String {
        self.key.serialize_pem()
    }

    /// The trust domain named by the root's URI SAN, if it has one.
    pub fn trust_domain(&self) -> Option<&str> {
        self.trust_domain.as_deref()
    }

    /// The root certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The root certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// When the root expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// A trust bundle holding only this root.
    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::from_der(vec![self.cert_der.clone()])
    }

    /// Signs `csr_pem` for `authorized`, valid from now (backdated by
    /// [`CLOCK_SKEW`]) for `lifetime` (clamped to the root's own expiry).
    ///
    /// `authorized` is what the caller proved: the service bound to its join
    /// token, or the identity of its current client certificate. The CSR's
    /// signature is checked, and it is refused unless its only SAN is exactly
    /// `authorized`. The leaf carries only that URI SAN, is not a CA, has
    /// digitalSignature and the serverAuth + clientAuth EKUs.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        authorized: &SpiffeId,
        lifetime: Duration,
    ) -> Result<IssuedCert> {
        if lifetime.is_zero() {
            return Err(Error::Validity(
                "certificate lifetime must be positive".into(),
            ));
        }
        let now = SystemTime::now();
        let not_after = now
            .checked_add(lifetime)
            .ok_or_else(|| Error::Validity(format!("lifetime {lifetime:?} is too long")))?
            .min(self.not_after);
        self.sign_csr_window(csr_pem, authorized, now - CLOCK_SKEW, not_after)
    }

    /// Like [`CertificateAuthority::sign_csr`] with an explicit validity
    /// window, for tests (expired certificates) and tooling. Normal issuance
    /// uses `sign_csr`.
    pub fn sign_csr_window(
        &self,
        csr_pem: &str,
        authorized: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert> {
        if not_after <= not_before {
            return Err(Error::Validity("notAfter must be after notBefore".into()));
        }
        if let Some(td) = &self.trust_domain {
            if td != authorized.trust_domain() {
                return Err(Error::WrongTrustDomain {
                    ca: td.clone(),
                    requested: authorized.clone(),
                });
            }
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| match e {
            rcgen::Error::CouldNotParseCertificationRequest => {
                Error::BadCsr("it is not a PEM 'CERTIFICATE REQUEST'".into())
            }
            rcgen::Error::InvalidCertificationRequestSignature => {
                Error::BadCsr("its signature does not verify with its own public key".into())
            }
            other => Error::BadCsr(other.to_string()),
        })?;
        check_requested_identity(&csr.params.subject_alt_names, authorized)?;
        if csr.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(Error::BadCsr(
                "the key is not ECDSA P-256; generate it with IdentityKey::generate".into(),
            ));
        }

        let mut params = CertificateParams::default();
        params.distinguished_name = name(authorized.service_name());
        params.subject_alt_names = vec![uri_san(authorized.to_string())?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_offset(not_before);
        params.not_after = to_offset(not_after);
        params.serial_number = Some(serial()?);
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key)?;
        let leaf = params.signed_by(&csr.public_key, &issuer)?;
        // Read the times back from the certificate: X.509 stores whole seconds.
        let info = cert_info(leaf.der())?;
        tracing::info!(
            spiffe_id = %authorized,
            not_after = %humantime::format_rfc3339_seconds(not_after),
            "issued certificate"
        );
        Ok(IssuedCert {
            chain_pem: format!("{}{}", leaf.pem(), self.cert_pem),
            spiffe_id: authorized.clone(),
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }
}

/// The CSR must ask for exactly one thing: the URI SAN of `authorized`.
fn check_requested_identity(sans: &[SanType], authorized: &SpiffeId) -> Result<()> {
    let wanted = authorized.to_string();
    if let [SanType::URI(uri)] = sans {
        if uri.as_str() == wanted {
            return Ok(());
        }
    }
    let requested = if sans.is_empty() {
        "nothing (no SAN)".to_owned()
    } else {
        sans.iter()
            .map(|s| match s {
                SanType::URI(u) => u.as_str().to_owned(),
                SanType::DnsName(d) => format!("DNS:{}", d.as_str()),
                SanType::IpAddress(ip) => format!("IP:{ip}"),
                SanType::Rfc822Name(m) => format!("email:{}", m.as_str()),
                _ => "another name".to_owned(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(Error::CsrIdentityNotAuthorized {
        requested,
        authorized: authorized.clone(),
    })
}
