//! Join tokens across control-plane replicas (issue #16): two `serve`
//! replicas on one real Consul dev agent, each with its OWN copy of the
//! mesh CA. A token made with the CLI against replica A's CA directory gets
//! a real proxy its certificate from replica B; revoked with the CLI (into
//! Consul's KV store) both replicas refuse it; an expired token and another
//! CA's token are refused with what happened; and with Consul gone a token
//! is refused (503, fail closed) rather than let through unchecked.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tether_certs::TokenClaims;
use tether_e2e::consul::Consul;
use tether_e2e::consul_secure::SecureConsul;
use tether_e2e::control::ControlPlane;
use tether_e2e::pki::TRUST_DOMAIN;
use tether_e2e::tokens::{control_cli, request_certificate, text};
use tether_e2e::{eventually, Proxy};

/// Revocations live under this Consul KV prefix (docs/identity.md).
const KV_PREFIX: &str = "tether/join-tokens/revoked/";

fn mesh(consul: &Consul) -> String {
    format!(
        "mesh:\n  trust_domain: {TRUST_DOMAIN}\n  catalog:\n    consul: {{ address: \"{}\" }}\nservices:\n  api: {{}}\n",
        consul.url()
    )
}

/// `ca init` once, in a directory of the test's own: the CA every replica
/// gets a copy of.
fn make_ca(dir: &Path) -> PathBuf {
    let ca = dir.join("ca");
    let init = control_cli(&["ca", "init", "--dir", &ca.display().to_string()]);
    assert!(init.status.success(), "{}", text(&init));
    ca
}

/// `token create` against `ca_dir`: the token (from stdout) and its claims.
fn create_token(ca_dir: &Path, service: &str, ttl: &str) -> (String, TokenClaims) {
    let created = control_cli(&[
        "token",
        "create",
        "--service",
        service,
        "--ttl",
        ttl,
        "--ca-dir",
        &ca_dir.display().to_string(),
    ]);
    assert!(created.status.success(), "{}", text(&created));
    let token = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    let claims = TokenClaims::read_unverified(&token).unwrap_or_else(|e| panic!("{e}: {token}"));
    assert!(
        String::from_utf8_lossy(&created.stderr).contains(&format!("token id {}", claims.id)),
        "{}",
        text(&created)
    );
    (token, claims)
}

async fn token_issues(plane: &ControlPlane) -> f64 {
    plane
        .metric("tether_control_certificates_issued_total{auth=\"token\"}")
        .await
}

#[tokio::test]
async fn a_token_made_on_one_replica_works_on_another_and_revocation_reaches_both() {
    let consul = Consul::start().await;
    let setup = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ca = make_ca(setup.path());
    let mesh = mesh(&consul);
    let a = ControlPlane::start_with_ca_copy(&mesh, &ca, "1h").await;
    let b = ControlPlane::start_with_ca_copy(&mesh, &ca, "1h").await;
    assert_ne!(a.ca_dir(), b.ca_dir(), "each replica has its own copy");

    // Made with A's CA directory, written to a file for the proxy.
    let token_file = setup.path().join("api.token");
    let created = control_cli(&[
        "token",
        "create",
        "--service",
        "api",
        "--ca-dir",
        &a.ca_dir().display().to_string(),
        "--out",
        &token_file.display().to_string(),
    ]);
    assert!(created.status.success(), "{}", text(&created));
    let token = std::fs::read_to_string(&token_file)
        .unwrap_or_else(|e| panic!("{e}"))
        .trim()
        .to_owned();
    let claims = TokenClaims::read_unverified(&token).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(claims.service, "api");

    // A real proxy gets its first certificate from B with it.
    let proxy = Proxy::subscribed(&b.url(), "api")
        .arg("--trust-bundle")
        .arg(&b.bundle().display().to_string())
        .arg("--token-file")
        .arg(&token_file.display().to_string())
        .start()
        .await;
    let config: serde_json::Value =
        serde_json::from_str(&proxy.admin_get("/config").await).unwrap_or_default();
    assert_eq!(
        config["identity"]["spiffe_id"], "spiffe://tether.local/service/api",
        "{config}"
    );
    assert_eq!(token_issues(&b).await, 1.0, "B issued it");
    assert_eq!(token_issues(&a).await, 0.0, "A never saw it");
    assert!(
        !b.log().contains(&token) && !proxy.log().contains(&token),
        "a token is never logged"
    );
    assert!(b.log().contains(&claims.id), "the log names the token's id");
    // And A accepts it too (a direct CSR).
    let on_a = request_certificate(a.addr, &a.bundle(), "api", &token).await;
    assert_eq!(on_a.status, 200, "{}", on_a.body);

    // Revoked by id with the CLI: the entry lands in Consul's KV store.
    let mesh_file = a.config_path().display().to_string();
    let revoked = control_cli(&["token", "revoke", &claims.id, "--config", &mesh_file]);
    assert!(revoked.status.success(), "{}", text(&revoked));
    let stdout = String::from_utf8_lossy(&revoked.stdout);
    assert!(
        stdout.contains(&format!("revoked join token {}", claims.id))
            && stdout.contains("Consul KV"),
        "{stdout}"
    );
    let entry = consul
        .get(&format!("/v1/kv/{KV_PREFIX}{}?raw", claims.id))
        .await
        .unwrap_or_else(|| panic!("no KV entry for {}", claims.id));
    let entry: serde_json::Value = serde_json::from_str(&entry).unwrap_or_default();
    assert_eq!(entry["id"], claims.id.as_str(), "{entry}");
    assert!(entry["revoked_unix"].as_u64().unwrap_or(0) > 0, "{entry}");
    // Revoking again by the token's text keeps the first entry.
    let again = control_cli(&[
        "token",
        "revoke",
        &token,
        "--config",
        &mesh_file,
        "--ca-dir",
        &b.ca_dir().display().to_string(),
    ]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("was already revoked"),
        "{}",
        text(&again)
    );
    let listed = control_cli(&["token", "list-revoked", "--config", &mesh_file]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&claims.id),
        "{}",
        text(&listed)
    );

    // Both replicas refuse it now, saying so.
    for (name, plane) in [("A", &a), ("B", &b)] {
        let reply = request_certificate(plane.addr, &plane.bundle(), "api", &token).await;
        assert_eq!(reply.status, 401, "{name}: {}", reply.body);
        assert!(
            reply.body.contains(&format!(
                "join token {} for api refused: it was revoked at",
                claims.id
            )),
            "{name}: {}",
            reply.body
        );
        assert_eq!(
            plane
                .metric("tether_control_certificate_refusals_total{reason=\"revoked-token\"}")
                .await,
            1.0,
            "{name}"
        );
    }
    // Another token of the same service is unaffected.
    let (other, _) = create_token(&b.ca_dir(), "api", "1h");
    let fine = request_certificate(a.addr, &a.bundle(), "api", &other).await;
    assert_eq!(fine.status, 200, "{}", fine.body);

    // A token that has expired: refused with when.
    let (short, short_claims) = create_token(&b.ca_dir(), "api", "1s");
    let expiry = short_claims.expires_at();
    assert!(
        eventually(Duration::from_secs(5), || async {
            SystemTime::now() >= expiry
        })
        .await,
        "the clock never passed the token's expiry"
    );
    let expired = request_certificate(a.addr, &a.bundle(), "api", &short).await;
    assert_eq!(expired.status, 401, "{}", expired.body);
    assert!(
        expired.body.contains(&format!(
            "join token {} for api refused: it expired at {}",
            short_claims.id,
            tether_certs::fmt_unix(short_claims.expires_unix)
        )),
        "{}",
        expired.body
    );

    // A token of another CA, and a token used for another service.
    let stranger = make_ca(&setup.path().join("other"));
    let (foreign, _) = create_token(&stranger, "api", "1h");
    let refused = request_certificate(b.addr, &b.bundle(), "api", &foreign).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.body.contains("another CA"), "{}", refused.body);
    let (web_token, _) = create_token(&a.ca_dir(), "web", "1h");
    let wrong = request_certificate(b.addr, &b.bundle(), "api", &web_token).await;
    assert_eq!(wrong.status, 403, "{}", wrong.body);
    assert!(
        wrong
            .body
            .contains("only authorized for spiffe://tether.local/service/web"),
        "{}",
        wrong.body
    );
}

#[tokio::test]
async fn without_consul_a_token_is_refused_not_let_through() {
    let mut consul = Consul::start().await;
    let setup = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ca = make_ca(setup.path());
    let plane = ControlPlane::start_with_ca_copy(&mesh(&consul), &ca, "1h").await;
    let (token, claims) = create_token(&ca, "api", "1h");
    let granted = request_certificate(plane.addr, &plane.bundle(), "api", &token).await;
    assert_eq!(granted.status, 200, "{}", granted.body);

    consul.stop();
    let refused = request_certificate(plane.addr, &plane.bundle(), "api", &token).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        refused.body.contains(&format!(
            "join token {} refused for now: cannot check whether it is revoked (Consul KV at {}",
            claims.id,
            consul.url()
        )),
        "{}",
        refused.body
    );
    assert_eq!(
        plane
            .metric("tether_control_certificate_refusals_total{reason=\"revocation-unavailable\"}")
            .await,
        1.0
    );
    // The CLI cannot revoke either, and says where it tried.
    let revoke = control_cli(&[
        "token",
        "revoke",
        &claims.id,
        "--config",
        &plane.config_path().display().to_string(),
    ]);
    assert_eq!(revoke.status.code(), Some(1), "{}", text(&revoke));
    assert!(
        String::from_utf8_lossy(&revoke.stderr).contains("Consul KV at"),
        "{}",
        text(&revoke)
    );
}

/// The control plane's Consul policy with revocations: the catalog rules of
/// docs/control-plane.md plus `read` on the revocation prefix.
const CONTROL_RULES: &str = "service_prefix \"\" { policy = \"read\" }\nnode_prefix \"\" { policy = \"read\" }\nkey_prefix \"tether/join-tokens/revoked/\" { policy = \"read\" }\n";
/// The operator's policy for `token revoke` / `prune-revoked`.
const OPERATOR_RULES: &str = "key_prefix \"tether/join-tokens/revoked/\" { policy = \"write\" }\n";
/// The catalog rules alone: what a control plane upgraded without the KV rule has.
const CATALOG_ONLY_RULES: &str =
    "service_prefix \"\" { policy = \"read\" }\nnode_prefix \"\" { policy = \"read\" }\n";

/// mesh.yaml reading Consul over HTTPS (client certificate) with the ACL
/// token in `token_file`.
fn secure_mesh(consul: &SecureConsul, token_file: &Path) -> String {
    format!(
        "mesh:\n  trust_domain: {TRUST_DOMAIN}\n  catalog:\n    consul:\n      address: \"{}\"\n      datacenter: dc1\n      token_file: \"{}\"\n      ca_file: \"{}\"\n      cert_file: \"{}\"\n      key_file: \"{}\"\n      tls_server_name: server.dc1.consul\nservices:\n  api: {{}}\n",
        consul.url(),
        token_file.display(),
        consul.file("ca.pem").display(),
        consul.file("client.pem").display(),
        consul.file("client-key.pem").display(),
    )
}

#[tokio::test]
async fn revocations_over_https_with_the_documented_least_privilege_acl_policies() {
    let consul = SecureConsul::start().await;
    let control_token = consul.token_with("tether-control", CONTROL_RULES).await;
    let operator_token = consul.token_with("tether-operator", OPERATOR_RULES).await;
    let catalog_only = consul.token_with("catalog-only", CATALOG_ONLY_RULES).await;
    let operator_file = consul.token_file("operator-token", &operator_token);
    let setup = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ca = make_ca(setup.path());
    let plane = ControlPlane::start_with_ca_copy(
        &secure_mesh(&consul, &consul.token_file("control-token", &control_token)),
        &ca,
        "1h",
    )
    .await;
    let (token, claims) = create_token(&ca, "api", "1h");
    let granted = request_certificate(plane.addr, &plane.bundle(), "api", &token).await;
    assert_eq!(granted.status, 200, "{}", granted.body);

    // mesh.yaml's token is the control plane's, read-only: revoking with it
    // is refused by Consul; with the operator's it works.
    let mesh_file = plane.config_path().display().to_string();
    let read_only = control_cli(&["token", "revoke", &claims.id, "--config", &mesh_file]);
    assert_eq!(read_only.status.code(), Some(1), "{}", text(&read_only));
    assert!(
        String::from_utf8_lossy(&read_only.stderr).contains("403"),
        "{}",
        text(&read_only)
    );
    let revoked = control_cli(&[
        "token",
        "revoke",
        &claims.id,
        "--config",
        &mesh_file,
        "--consul-token-file",
        &operator_file.display().to_string(),
    ]);
    assert!(revoked.status.success(), "{}", text(&revoked));
    let refused = request_certificate(plane.addr, &plane.bundle(), "api", &token).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(
        refused.body.contains("it was revoked at"),
        "{}",
        refused.body
    );
    // Listing needs only read; nothing has expired, so nothing is pruned.
    let listed = control_cli(&["token", "list-revoked", "--config", &mesh_file]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&claims.id),
        "{}",
        text(&listed)
    );
    let pruned = control_cli(&[
        "token",
        "prune-revoked",
        "--config",
        &mesh_file,
        "--consul-token-file",
        &operator_file.display().to_string(),
    ]);
    assert!(
        String::from_utf8_lossy(&pruned.stdout).contains("deleted 0 revocation(s)"),
        "{}",
        text(&pruned)
    );

    // A control plane whose token lacks the KV rule fails closed, saying why.
    let without = ControlPlane::start_with_ca_copy(
        &secure_mesh(&consul, &consul.token_file("catalog-token", &catalog_only)),
        &ca,
        "1h",
    )
    .await;
    let (fresh, _) = create_token(&ca, "api", "1h");
    let closed = request_certificate(without.addr, &without.bundle(), "api", &fresh).await;
    assert_eq!(closed.status, 503, "{}", closed.body);
    assert!(
        closed.body.contains("cannot check whether it is revoked") && closed.body.contains("403"),
        "{}",
        closed.body
    );
}
