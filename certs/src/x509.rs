//! Small helpers to read and write PEM and to read the few certificate
//! fields the mesh cares about (URI SANs, validity, CA flag, public key).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use crate::error::{Error, Result};
use crate::spiffe_id::SpiffeId;

/// Parses every `CERTIFICATE` block in `pem`, in order. Errors if there is none.
pub(crate) fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::BadPem {
            what: "CERTIFICATE",
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::MissingPem {
            what: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// Encodes DER as one PEM block with 64-column lines.
pub(crate) fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The fields of a certificate that the mesh reads.
pub(crate) struct CertInfo {
    /// Every URI SAN, in order.
    pub uris: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub is_ca: bool,
    /// keyCertSign present (or no keyUsage extension at all).
    pub can_sign_certs: bool,
    /// The raw subject public key (the BIT STRING contents of the SPKI).
    pub public_key: Vec<u8>,
    /// Issuer equals subject.
    pub self_issued: bool,
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Error::BadCertificate(format!("cannot parse X.509: {e}")))?;
    Ok(cert)
}

fn unix(ts: i64) -> SystemTime {
    if ts >= 0 {
        UNIX_EPOCH + Duration::from_secs(ts.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(ts.unsigned_abs())
    }
}

/// Reads the mesh-relevant fields of one DER certificate.
pub(crate) fn cert_info(der: &[u8]) -> Result<CertInfo> {
    let cert = parse(der)?;
    let bad = |e: x509_parser::error::X509Error| Error::BadCertificate(e.to_string());
    let uris = match cert.subject_alternative_name().map_err(bad)? {
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    let can_sign_certs = match cert.key_usage().map_err(bad)? {
        Some(ku) => ku.value.key_cert_sign(),
        None => true,
    };
    Ok(CertInfo {
        uris,
        not_before: unix(cert.validity().not_before.timestamp()),
        not_after: unix(cert.validity().not_after.timestamp()),
        is_ca: cert.is_ca(),
        can_sign_certs,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        self_issued: cert.subject() == cert.issuer(),
    })
}

/// The single SPIFFE ID in a certificate's URI SANs.
///
/// Refuses certificates with no URI SAN, more than one, or one that is not a
/// Tether service identity.
pub(crate) fn spiffe_id_of(der: &[u8]) -> Result<SpiffeId> {
    let info = cert_info(der)?;
    match info.uris.as_slice() {
        [] => Err(Error::NoPeerIdentity(
            "the certificate has no URI SAN; it was not issued by a Tether mesh CA".into(),
        )),
        [one] => one
            .parse()
            .map_err(|e: Error| Error::NoPeerIdentity(e.to_string())),
        many => Err(Error::NoPeerIdentity(format!(
            "the certificate has {} URI SANs; a mesh certificate carries exactly one",
            many.len()
        ))),
    }
}

/// Converts a `SystemTime` for rcgen.
pub(crate) fn to_offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}
