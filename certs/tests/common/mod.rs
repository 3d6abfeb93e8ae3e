//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::time::{Duration, SystemTime};

use tether_certs::{CertificateAuthority, Identity, IdentityKey, SpiffeId};

pub const TD: &str = "tether.local";
pub const DAY: Duration = Duration::from_secs(86_400);

pub fn id(service: &str) -> SpiffeId {
    SpiffeId::service(TD, service).unwrap()
}

pub fn ca() -> CertificateAuthority {
    CertificateAuthority::generate(TD, DAY * 365).unwrap()
}

/// The full proxy flow: key in the proxy, CSR to the CA, chain back.
pub fn issue(ca: &CertificateAuthority, service: &str) -> Identity {
    let key = IdentityKey::generate().unwrap();
    let csr = key.csr_pem(&id(service)).unwrap();
    let issued = ca.sign_csr(&csr, &id(service), DAY).unwrap();
    Identity::new(&key, &issued.chain_pem).unwrap()
}

/// A leaf whose validity ended an hour ago.
pub fn issue_expired(ca: &CertificateAuthority, service: &str) -> Identity {
    let key = IdentityKey::generate().unwrap();
    let csr = key.csr_pem(&id(service)).unwrap();
    let now = SystemTime::now();
    let issued = ca
        .sign_csr_window(
            &csr,
            &id(service),
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    Identity::new(&key, &issued.chain_pem).unwrap()
}
