//! `tether-certs`: mesh identities for Tether.
//!
//! - [`SpiffeId`] is `spiffe://<trust_domain>/service/<name>`.
//! - [`CertificateAuthority`]: creates or adopts the mesh root and signs CSRs
//!   only for the identity the caller proved (a signed join token checked
//!   with [`TokenKey`], a legacy [`JoinToken`], or the current cert).
//! - [`TrustBundle`]: one or more roots, for rotation with overlap.
//! - [`IdentityKey`] / [`Identity`]: the proxy's key (never leaves it) and
//!   its issued chain; [`IdentityStore`] swaps them live.
//! - [`server_config`] / [`client_config`] / [`ClientConfigs`]: rustls
//!   configs (TLS 1.3, ring) that verify SPIFFE identities against the
//!   current bundle; [`peer_spiffe_id`] reads the caller after a handshake.
//!
//! See `docs/identity.md` for the certificate profile and operations.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod bundle;
mod ca;
mod error;
mod external;
mod fsutil;
mod identity;
mod join_token;
mod provider;
mod spiffe;
mod spiffe_id;
mod store;
mod tls;
mod token;
mod verify;
mod x509;

use std::time::Duration;

pub use bundle::TrustBundle;
pub use ca::{CertificateAuthority, IssuedCert, CA_CERT_FILE, CA_KEY_FILE, DEFAULT_CA_VALIDITY};
pub use error::{find_identity_mismatch, Error, Result};
pub use external::{ca_client_config, ClientCertPem};
pub use identity::{Identity, IdentityKey, IDENTITY_CERT_FILE, IDENTITY_KEY_FILE};
pub use join_token::{
    fmt_unix, is_signed_token, is_token_id, TokenClaims, TokenKey, TokenRefusal, DEFAULT_TOKEN_TTL,
    TOKEN_FORMAT, TOKEN_ID_BYTES,
};
pub use spiffe::{validate_service_name, validate_trust_domain};
pub use spiffe_id::SpiffeId;
pub use store::IdentityStore;
pub use tls::{
    client_config, server_config, ClientAuth, ClientConfigs, MESH_ALPN, MESH_SERVER_ALPN,
    MESH_TCP_ALPN,
};
pub use token::{JoinToken, TokenRecord, TokenStore, TOKEN_BYTES};
pub use verify::peer_spiffe_id;

/// Default lifetime of a service certificate: short enough that a leaked
/// key is useful for at most a day, long enough to ride out a control-plane
/// outage of several hours (renewal starts at two thirds).
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The service name the control plane's own certificate carries
/// (`spiffe://<trust_domain>/service/tether-control`); proxies dial the
/// control-plane API with `client_config(store, SpiffeId::service(td, CONTROL_PLANE_SERVICE))`.
pub const CONTROL_PLANE_SERVICE: &str = "tether-control";

/// How far `notBefore` is backdated, so peers whose clocks lag a little
/// still accept a certificate issued a moment ago.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Fills `N` bytes from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    use ring::rand::SecureRandom;
    let mut buf = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| Error::Random)?;
    Ok(buf)
}
