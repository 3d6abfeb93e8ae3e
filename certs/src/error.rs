//! The crate's error type: every message says what went wrong and what the
//! operator (or the calling code) should do about it.

use std::path::PathBuf;

use crate::spiffe_id::SpiffeId;

/// Result alias used throughout `tether-certs`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `tether-certs`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A SPIFFE ID string could not be parsed.
    #[error(
        "invalid SPIFFE ID {input:?}: {reason}; expected spiffe://<trust-domain>/service/<name>"
    )]
    InvalidSpiffeId {
        /// The text that was parsed.
        input: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A service name does not follow the DNS-label rules.
    #[error("invalid service name {name:?}: {reason}; use 1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit")]
    InvalidServiceName {
        /// The refused name.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A trust domain does not follow the DNS-name rules.
    #[error("invalid trust domain {domain:?}: {reason}; use a lower-case DNS-like name such as tether.local")]
    InvalidTrustDomain {
        /// The refused trust domain.
        domain: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// PEM input held no usable item of the expected kind.
    #[error(
        "no {what} found in PEM input; check that the file holds a '-----BEGIN {what}-----' block"
    )]
    MissingPem {
        /// What was looked for, e.g. `CERTIFICATE`.
        what: &'static str,
    },

    /// PEM input was malformed.
    #[error("malformed PEM ({what}): {detail}")]
    BadPem {
        /// What was being read.
        what: &'static str,
        /// Parser detail.
        detail: String,
    },

    /// A certificate could not be parsed or lacks something the mesh needs.
    #[error("bad certificate: {0}")]
    BadCertificate(String),

    /// A private key could not be parsed or used.
    #[error("bad private key: {0}; supply a PKCS#8 PEM key ('-----BEGIN PRIVATE KEY-----')")]
    BadKey(String),

    /// The private key does not belong to the certificate.
    #[error("the private key does not match the certificate's public key; pass the key that was generated together with this certificate")]
    KeyMismatch,

    /// The CA certificate is not usable as a CA.
    #[error("the certificate is not a usable CA: {0}; give a root with basicConstraints CA:true and keyCertSign")]
    NotACa(String),

    /// A CSR could not be parsed or its signature is invalid.
    #[error("certificate signing request refused: {0}")]
    BadCsr(String),

    /// A CSR asked for an identity the caller is not authorized for.
    #[error("certificate signing request refused: it asks for {requested} but the caller is only authorized for {authorized}")]
    CsrIdentityNotAuthorized {
        /// What the CSR asked for (all URI SANs, comma separated, or `nothing`).
        requested: String,
        /// What the caller proved (join token or current certificate).
        authorized: SpiffeId,
    },

    /// The CA's trust domain is not the trust domain of the identity to sign.
    #[error("this CA serves trust domain {ca} and cannot sign for {requested}; use the CA of that trust domain")]
    WrongTrustDomain {
        /// The CA's trust domain.
        ca: String,
        /// The requested identity.
        requested: SpiffeId,
    },

    /// The peer's certificate does not carry exactly one mesh identity.
    #[error("peer certificate has no usable SPIFFE identity: {0}")]
    NoPeerIdentity(String),

    /// The server presented a valid mesh certificate for another service.
    #[error("peer identity mismatch: expected {expected} but the server presented {presented}; the endpoint is not the service it was listed as")]
    IdentityMismatch {
        /// The identity the caller wanted.
        expected: SpiffeId,
        /// The identity the server proved.
        presented: SpiffeId,
    },

    /// Certificate generation or signing failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),

    /// rustls refused something (key, verifier, config).
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),

    /// A lifetime or time value is out of range.
    #[error("invalid validity period: {0}")]
    Validity(String),

    /// The CA directory already holds a CA; it is never overwritten.
    #[error("{} already exists; refusing to overwrite an existing CA. Move it away first, or load it instead", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },

    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The token store file is corrupt.
    #[error("token store {}: {detail}; fix or remove the file and create tokens again", path.display())]
    TokenStore {
        /// The store file.
        path: PathBuf,
        /// Parser detail.
        detail: String,
    },

    /// The system random generator failed.
    #[error("the system random number generator failed")]
    Random,
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Finds an [`Error::IdentityMismatch`] anywhere in an error chain, looking
/// through `std::io::Error` (what tokio-rustls returns) and `rustls::Error::Other`.
///
/// The outbound path uses this to tell "the endpoint is another service"
/// (eject it) apart from ordinary connect failures.
pub fn find_identity_mismatch<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<(&'a SpiffeId, &'a SpiffeId)> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(Error::IdentityMismatch {
            expected,
            presented,
        }) = e.downcast_ref::<Error>()
        {
            return Some((expected, presented));
        }
        if let Some(rustls::Error::Other(other)) = e.downcast_ref::<rustls::Error>() {
            cur = Some(other.0.as_ref());
            continue;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                cur = Some(inner);
                continue;
            }
        }
        cur = e.source();
    }
    None
}
