//! Join tokens across control-plane replicas: copying a CA directory the
//! way each replica gets it, running `tether-control token ...`, and a
//! first-certificate request with a token.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::process::Output;

use tether_certs::{IdentityKey, SpiffeId};

use crate::mesh_tls::{self, TlsReply};
use crate::pki::TRUST_DOMAIN;

/// Copies `ca.pem` (0644) and `ca-key.pem` (0600) byte for byte from `from`
/// into a new directory `to` (0700), as an operator copies them to each
/// replica from a secret store.
pub fn copy_ca_dir(from: &Path, to: &Path) {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(to)
        .unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    for (file, mode) in [("ca.pem", 0o644), ("ca-key.pem", 0o600)] {
        let target = to.join(file);
        std::fs::copy(from.join(file), &target).unwrap_or_else(|e| panic!("copy {file}: {e}"));
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {file}: {e}"));
    }
}

/// Runs `tether-control ARGS...` to completion.
pub fn control_cli(args: &[&str]) -> Output {
    std::process::Command::new(crate::control::control_bin())
        .args(args)
        .env("TETHER_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("tether-control {args:?}: {e}"))
}

/// stdout and stderr of a CLI run, for assertion messages.
pub fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `POST /v1/certificate` to the control plane at `addr` (verified with
/// `bundle`) with a fresh key's CSR for `service` and `Authorization:
/// Bearer <token>`.
pub async fn request_certificate(
    addr: std::net::SocketAddr,
    bundle: &Path,
    service: &str,
    token: &str,
) -> TlsReply {
    let id = SpiffeId::service(TRUST_DOMAIN, service).unwrap_or_else(|e| panic!("{e}"));
    let csr = IdentityKey::generate()
        .and_then(|key| key.csr_pem(&id))
        .unwrap_or_else(|e| panic!("{e}"));
    let body = serde_json::to_vec(&tether_api::CertificateRequest { csr_pem: csr })
        .unwrap_or_else(|e| panic!("{e}"));
    let auth = format!("Bearer {token}");
    mesh_tls::request(
        addr,
        bundle,
        None,
        http::Method::POST,
        tether_api::CERTIFICATE_PATH,
        &[("authorization", &auth)],
        body,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}
