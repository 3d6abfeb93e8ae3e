//! The CA side: files, CSR checks, the issued certificate profile.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use common::{ca, id, issue, DAY, TD};
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tether_certs::{
    CertificateAuthority, Error, Identity, IdentityKey, TrustBundle, CA_CERT_FILE, CA_KEY_FILE,
};
use x509_parser::extensions::GeneralName;

#[test]
fn ca_init_dir_writes_key_0600_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca = CertificateAuthority::init_dir(&ca_dir, TD).unwrap();
    let key_mode = std::fs::metadata(ca_dir.join(CA_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(&ca_dir).unwrap().permissions().mode();
    assert_eq!(
        dir_mode & 0o077,
        0,
        "CA directory must not be group/other accessible"
    );

    let before = std::fs::read(ca_dir.join(CA_KEY_FILE)).unwrap();
    let err = CertificateAuthority::init_dir(&ca_dir, TD).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read(ca_dir.join(CA_KEY_FILE)).unwrap(), before);

    let loaded = CertificateAuthority::load_dir(&ca_dir).unwrap();
    assert_eq!(loaded.cert_der(), ca.cert_der());
    assert_eq!(loaded.trust_domain(), Some(TD));
    // The loaded CA can still sign.
    let leaf = issue(&loaded, "api");
    assert_eq!(leaf.spiffe_id(), &id("api"));
}

#[test]
fn ca_key_never_in_debug_output() {
    let ca = ca();
    let key_pem = {
        let dir = tempfile::tempdir().unwrap();
        ca.write_dir(dir.path()).unwrap();
        std::fs::read_to_string(dir.path().join(CA_KEY_FILE)).unwrap()
    };
    let body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let dbg = format!("{ca:?}");
    assert!(dbg.contains("redacted"), "{dbg}");
    assert!(!dbg.contains(&body[..20]), "{dbg}");
    let key = IdentityKey::generate().unwrap();
    assert_eq!(format!("{key:?}"), "IdentityKey(<redacted>)");
    let ident = issue(&ca, "api");
    assert!(format!("{ident:?}").contains("redacted"));
}

#[test]
fn from_pem_adopts_operator_root_and_checks_key() {
    let a = ca();
    let b = ca();
    let dir = tempfile::tempdir().unwrap();
    a.write_dir(&dir.path().join("a")).unwrap();
    b.write_dir(&dir.path().join("b")).unwrap();
    let a_key = std::fs::read_to_string(dir.path().join("a").join(CA_KEY_FILE)).unwrap();
    let b_key = std::fs::read_to_string(dir.path().join("b").join(CA_KEY_FILE)).unwrap();
    assert!(CertificateAuthority::from_pem(a.cert_pem(), &a_key).is_ok());
    let err = CertificateAuthority::from_pem(a.cert_pem(), &b_key).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch), "{err}");
    // A leaf is not a CA.
    let leaf = issue(&a, "api");
    let err = CertificateAuthority::from_pem(leaf.chain_pem(), &a_key).unwrap_err();
    assert!(matches!(err, Error::NotACa(_)), "{err}");
    // Garbage key text is refused without echoing it.
    let err = CertificateAuthority::from_pem(a.cert_pem(), "secret-garbage").unwrap_err();
    assert!(!err.to_string().contains("secret-garbage"));
    // An operator root without a SPIFFE SAN has no trust domain but still signs.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let root = params.self_signed(&key).unwrap();
    let op = CertificateAuthority::from_pem(&root.pem(), &key.serialize_pem()).unwrap();
    assert_eq!(op.trust_domain(), None);
    assert_eq!(issue(&op, "api").spiffe_id(), &id("api"));
}

#[test]
fn csr_for_another_identity_is_refused() {
    let ca = ca();
    let key = IdentityKey::generate().unwrap();
    // A proxy holding a token for "api" asks for "web".
    let csr = key.csr_pem(&id("web")).unwrap();
    let err = ca.sign_csr(&csr, &id("api"), DAY).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::CsrIdentityNotAuthorized { .. }),
        "{msg}"
    );
    assert!(msg.contains("spiffe://tether.local/service/web"), "{msg}");
    assert!(msg.contains("spiffe://tether.local/service/api"), "{msg}");

    // Extra SANs next to the right one are refused too.
    let kp = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["api.example.com".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::URI(id("api").to_string().try_into().unwrap()));
    let csr = params.serialize_request(&kp).unwrap().pem().unwrap();
    let err = ca.sign_csr(&csr, &id("api"), DAY).unwrap_err();
    assert!(err.to_string().contains("DNS:api.example.com"), "{err}");

    // No SAN at all.
    let params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let csr = params.serialize_request(&kp).unwrap().pem().unwrap();
    assert!(matches!(
        ca.sign_csr(&csr, &id("api"), DAY),
        Err(Error::CsrIdentityNotAuthorized { .. })
    ));

    // Another trust domain.
    let other = tether_certs::SpiffeId::service("other.mesh", "api").unwrap();
    let csr = key.csr_pem(&other).unwrap();
    assert!(matches!(
        ca.sign_csr(&csr, &other, DAY),
        Err(Error::WrongTrustDomain { .. })
    ));

    // Garbage and tampered CSRs.
    assert!(matches!(
        ca.sign_csr("hello", &id("api"), DAY),
        Err(Error::BadCsr(_))
    ));
    let good = key.csr_pem(&id("api")).unwrap();
    let mut der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(good.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    let n = der.len();
    der[n - 5] ^= 0x01; // inside the signature
    let tampered = pem_encode("CERTIFICATE REQUEST", &der);
    assert!(matches!(
        ca.sign_csr(&tampered, &id("api"), DAY),
        Err(Error::BadCsr(_))
    ));
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
}

#[test]
fn issued_cert_has_exactly_the_spiffe_san_and_ekus() {
    let ca = ca();
    let key = IdentityKey::generate().unwrap();
    let csr = key.csr_pem(&id("api")).unwrap();
    let before = SystemTime::now();
    let issued = ca.sign_csr(&csr, &id("api"), DAY).unwrap();
    let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf then root");
    assert_eq!(&chain[1], ca.cert_der());
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();

    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI("spiffe://tether.local/service/api")]
    );
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!eku.any && !eku.code_signing && !eku.email_protection && !eku.time_stamping);
    assert!(eku.other.is_empty());
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    assert!(!leaf.is_ca());
    assert_eq!(
        leaf.issuer(),
        x509_parser::parse_x509_certificate(&chain[1])
            .unwrap()
            .1
            .subject()
    );

    // notBefore backdated by about a minute, notAfter = now + lifetime.
    let nb = issued.not_before;
    let na = issued.not_after;
    assert!(nb <= before - Duration::from_secs(58) && nb >= before - Duration::from_secs(62));
    let lifetime_from_now = na.duration_since(before).unwrap();
    assert!(lifetime_from_now <= DAY + Duration::from_secs(2));
    assert!(lifetime_from_now >= DAY - Duration::from_secs(2));
    assert_eq!(leaf.validity().not_after.timestamp() as u64, secs(na));

    // The root carries the trust-domain SAN and CA:true.
    let (_, root) = x509_parser::parse_x509_certificate(&chain[1]).unwrap();
    assert!(root.is_ca());
    let san = root.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI("spiffe://tether.local")]
    );
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn renew_at_is_two_thirds_of_lifetime() {
    let ca = ca();
    let key = IdentityKey::generate().unwrap();
    let csr = key.csr_pem(&id("api")).unwrap();
    let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(secs(SystemTime::now()));
    let na = nb + Duration::from_secs(3 * 3600);
    let issued = ca.sign_csr_window(&csr, &id("api"), nb, na).unwrap();
    let ident = Identity::new(&key, &issued.chain_pem).unwrap();
    assert_eq!(ident.not_before(), nb);
    assert_eq!(ident.not_after(), na);
    assert_eq!(ident.renew_at(), nb + Duration::from_secs(2 * 3600));
    assert_eq!(
        ident.renew_at_fraction(1, 2),
        nb + Duration::from_secs(5400)
    );
    assert_eq!(
        ident.renew_after(nb + Duration::from_secs(3600)),
        Duration::from_secs(3600)
    );
    assert_eq!(ident.renew_after(na), Duration::ZERO);
    assert!(!ident.is_expired_at(nb + Duration::from_secs(1)));
    assert!(ident.is_expired_at(na));

    // With sign_csr the window includes the 60 s backdating.
    let issued = ca.sign_csr(&csr, &id("api"), DAY).unwrap();
    let ident = Identity::new(&key, &issued.chain_pem).unwrap();
    let lifetime = ident.lifetime();
    let two_thirds = ident.renew_at().duration_since(ident.not_before()).unwrap();
    assert_eq!(two_thirds.as_secs(), lifetime.as_secs() * 2 / 3);
}

#[test]
fn identity_must_match_key_and_round_trips_through_state_dir() {
    let ca = ca();
    let key = IdentityKey::generate().unwrap();
    let other_key = IdentityKey::generate().unwrap();
    let csr = key.csr_pem(&id("api")).unwrap();
    let issued = ca.sign_csr(&csr, &id("api"), DAY).unwrap();
    let err = Identity::new(&other_key, &issued.chain_pem).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch), "{err}");

    let ident = Identity::new(&key, &issued.chain_pem).unwrap();
    // Only the leaf is presented; peers hold the root in their bundle.
    assert_eq!(ident.certified_key().cert.len(), 1);
    let dir = tempfile::tempdir().unwrap();
    ident.write_dir(dir.path()).unwrap();
    ident.write_dir(dir.path()).unwrap(); // replacing is fine
    let mode = std::fs::metadata(dir.path().join(tether_certs::IDENTITY_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let back = Identity::load_dir(dir.path()).unwrap();
    assert_eq!(back.spiffe_id(), ident.spiffe_id());
    assert_eq!(back.not_after(), ident.not_after());
}

#[test]
fn bundle_rejects_leaf_certs() {
    let ca = ca();
    let leaf = issue(&ca, "api");
    assert!(matches!(
        TrustBundle::from_pem(leaf.chain_pem()),
        Err(Error::NotACa(_))
    ));
    let b = TrustBundle::from_pem(ca.cert_pem()).unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(CA_CERT_FILE, "ca.pem");
}

#[test]
fn renewal_time_counts_life_from_issue_not_from_the_backdated_start() {
    let ca = ca();
    let key = IdentityKey::generate().unwrap();
    let csr = key.csr_pem(&id("api")).unwrap();
    // A 30 s certificate: backdated 60 s, so 2/3 of the whole window would
    // already lie in the past; renewal must still be ~20 s after issue.
    let issued = ca
        .sign_csr(&csr, &id("api"), Duration::from_secs(30))
        .unwrap();
    let ident = Identity::new(&key, &issued.chain_pem).unwrap();
    assert_eq!(
        ident.issued_at(),
        ident.not_before() + tether_certs::CLOCK_SKEW
    );
    let due = ident.renewal_time(2.0 / 3.0);
    assert_eq!(due.duration_since(ident.issued_at()).unwrap().as_secs(), 20);
    assert_eq!(ident.renewal_time(5.0), ident.not_after());
}

#[test]
fn bundle_names_the_trust_domains_of_its_roots() {
    let first = ca();
    let second = CertificateAuthority::generate("other.example", DAY).unwrap();
    let pem = format!(
        "{}{}{}",
        first.cert_pem(),
        second.cert_pem(),
        first.cert_pem()
    );
    let bundle = TrustBundle::from_pem(&pem).unwrap();
    assert_eq!(
        bundle.trust_domains(),
        vec![TD.to_owned(), "other.example".to_owned()]
    );
}
