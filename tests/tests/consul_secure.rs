//! Consul as production runs it: HTTPS with its own CA and client
//! certificates required, ACLs on with a default-deny policy. The control
//! plane reads the catalog and the sidecar registers through the HTTPS port
//! with tokens read from files whose policies grant only what each needs
//! (the ones docs/control-plane.md lists); a token without those rights
//! is refused or filtered, and says so in the log.

use std::time::Duration;

use tether_e2e::consul_secure::SecureConsul;
use tether_e2e::control::ControlPlane;
use tether_e2e::{assert_eventually, Backend, Proxy, ProxyBuilder};

/// The control plane's policy: read every service and node.
const CONTROL_RULES: &str =
    "service_prefix \"\" { policy = \"read\" }\nnode_prefix \"\" { policy = \"read\" }\n";
/// A sidecar's policy: write its own service only.
const SIDECAR_RULES: &str = "service \"api\" { policy = \"write\" }\n";

/// mesh.yaml reading `consul` over HTTPS with the token in `token_file`.
fn mesh(consul: &SecureConsul, token_file: &std::path::Path) -> String {
    format!(
        "mesh:\n  catalog:\n    consul:\n      address: \"{}\"\n      datacenter: dc1\n      token_file: \"{}\"\n      ca_file: \"{}\"\n      cert_file: \"{}\"\n      key_file: \"{}\"\n      tls_server_name: server.dc1.consul\nservices:\n  web: {{}}\n  api: {{}}\n",
        consul.url(),
        token_file.display(),
        consul.file("ca.pem").display(),
        consul.file("client.pem").display(),
        consul.file("client-key.pem").display(),
    )
}

/// A sidecar for `app` registering as `api` through the HTTPS port with
/// the token in `token_file`.
fn sidecar(
    consul: &SecureConsul,
    app: std::net::SocketAddr,
    token_file: &std::path::Path,
) -> ProxyBuilder {
    let path = |p: std::path::PathBuf| p.display().to_string();
    Proxy::builder("services: {}\n")
        .app(app)
        .arg("--service")
        .arg("api")
        .arg("--consul-agent")
        .arg(&consul.url())
        .arg("--consul-token-file")
        .arg(&token_file.display().to_string())
        .arg("--consul-ca-cert")
        .arg(&path(consul.file("ca.pem")))
        .arg("--consul-client-cert")
        .arg(&path(consul.file("client.pem")))
        .arg("--consul-client-key")
        .arg(&path(consul.file("client-key.pem")))
        .arg("--consul-service-id")
        .arg("api-1")
        .arg("--consul-check-interval")
        .arg("500ms")
}

#[tokio::test]
async fn https_and_least_privilege_tokens_carry_registration_and_discovery() {
    let consul = SecureConsul::start().await;
    let control_token = consul.token_with("tether-control", CONTROL_RULES).await;
    let sidecar_token = consul.token_with("api-sidecar", SIDECAR_RULES).await;
    let app = Backend::start("api").await;
    let proxy = sidecar(
        &consul,
        app.addr,
        &consul.token_file("sidecar-token", &sidecar_token),
    )
    .start()
    .await;
    let plane = ControlPlane::start(&mesh(
        &consul,
        &consul.token_file("control-token", &control_token),
    ))
    .await;
    let expected = format!("127.0.0.1:{}", proxy.inbound.port());
    assert_eventually!(
        Duration::from_secs(20),
        || async {
            plane
                .snapshot("web")
                .await
                .services
                .get("api")
                .is_some_and(|api| api.endpoints.iter().any(|e| e.address == expected))
        },
        "the sidecar's HTTPS registration never reached the control plane over HTTPS; sidecar log:\n{}\ncontrol log:\n{}",
        proxy.log(),
        plane.log()
    );
    assert!(
        !plane.log().contains("consul watch failed"),
        "{}",
        plane.log()
    );
}

#[tokio::test]
async fn tokens_without_the_rights_are_refused_and_filtered_visibly() {
    let consul = SecureConsul::start().await;
    // A read-only token cannot register a service.
    let read_only = consul.token_with("read-only", CONTROL_RULES).await;
    let app = Backend::start("api").await;
    let proxy = sidecar(
        &consul,
        app.addr,
        &consul.token_file("read-only-token", &read_only),
    )
    .start()
    .await;
    assert_eventually!(
        Duration::from_secs(20),
        || async { proxy.log().contains("Permission denied") },
        "a sidecar whose token lacks service:write did not log Consul's refusal:\n{}",
        proxy.log()
    );
    // Register it with the management token, then read with a token that
    // may not read services: Consul filters, and the control plane says so.
    consul
        .agent
        .register(&tether_e2e::consul::Instance {
            id: "api-2",
            name: "api",
            address: Some("127.0.0.1"),
            port: 9,
            ..Default::default()
        })
        .await;
    let blind = consul
        .token_with("blind", "key_prefix \"tether/\" { policy = \"read\" }\n")
        .await;
    let plane =
        ControlPlane::start(&mesh(&consul, &consul.token_file("blind-token", &blind))).await;
    assert_eventually!(
        Duration::from_secs(20),
        || async { plane.log().contains("ACL token may not read") },
        "no warning about ACL-filtered results:\n{}",
        plane.log()
    );
    let api = plane
        .snapshot("web")
        .await
        .services
        .get("api")
        .map(|s| s.endpoints.len());
    assert_eq!(
        api.unwrap_or(0),
        0,
        "a token that may not read sees nothing"
    );
}
