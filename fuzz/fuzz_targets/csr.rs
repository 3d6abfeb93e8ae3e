//! CSR handling in the CA: `sign_csr` on arbitrary PEM text, or on
//! arbitrary DER wrapped as a PEM `CERTIFICATE REQUEST`. Refusals are
//! expected; a certificate is issued only for the authorized identity.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use tether_certs::{CertificateAuthority, Identity, IdentityKey, SpiffeId};

fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| {
        CertificateAuthority::generate("tether.local", Duration::from_secs(3600))
            .unwrap_or_else(|e| panic!("{e}"))
    })
}

fn authorized() -> SpiffeId {
    SpiffeId::service("tether.local", "api").unwrap_or_else(|e| panic!("{e}"))
}

fuzz_target!(|data: &[u8]| {
    // First byte: 0 = the rest is PEM text; otherwise the rest is DER.
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let pem = if mode == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let body = base64::engine::general_purpose::STANDARD.encode(rest);
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n")
    };
    let id = authorized();
    let Ok(issued) = ca().sign_csr(&pem, &id, Duration::from_secs(600)) else {
        return;
    };
    assert_eq!(issued.spiffe_id, id);
    assert!(issued.not_before < issued.not_after);
    // The chain is a real one for that identity: it loads with a fresh key
    // only if the key matches, so check it parses as an identity chain.
    let key = IdentityKey::generate().unwrap_or_else(|e| panic!("{e}"));
    if let Ok(identity) = Identity::new(&key, &issued.chain_pem) {
        // A fresh key can never match a certificate issued for the CSR's key.
        panic!(
            "issued chain accepted a foreign key: {:?}",
            identity.spiffe_id()
        );
    }
});
