//! Certificates from the control plane's CA, end to end: `ca init`, join
//! tokens, CSRs from proxies whose keys never leave them, renewal by
//! certificate under load, an API that serves each proxy only its own
//! service, and a restart with the control plane down.

use std::net::SocketAddr;
use std::time::Duration;

use tether_certs::{Identity, IdentityKey, SpiffeId};
use tether_e2e::control::ControlPlane;
use tether_e2e::mesh_tls::{self, TlsReply};
use tether_e2e::pki::TRUST_DOMAIN;
use tether_e2e::{assert_eventually, metric, Backend, Client, Proxy};

/// The mesh: web may call api; api's only instance is its sidecar's inbound
/// listener (added once that sidecar is up).
fn mesh(api_inbound: Option<SocketAddr>) -> String {
    let api = api_inbound
        .map(|a| format!("{{ address: \"{a}\" }}"))
        .unwrap_or_default();
    format!(
        "mesh:\n  trust_domain: {TRUST_DOMAIN}\n  catalog:\n    static:\n      services:\n        api: [ {api} ]\nservices:\n  web: {{}}\n  api:\n    policy: {{ retries: {{ attempts: 0 }} }}\nauthorization:\n  default: deny\n  rules:\n    - {{ to: api, from: [web] }}\n"
    )
}

/// A sidecar for `service` that gets its certificate from `plane` with a
/// join token; its key is made inside the proxy.
fn sidecar(plane: &ControlPlane, service: &str) -> tether_e2e::ProxyBuilder {
    Proxy::subscribed(&plane.url(), service)
        .arg("--trust-bundle")
        .arg(&plane.bundle().display().to_string())
        .arg("--token-file")
        .arg(&plane.token_file(service).display().to_string())
}

/// Control plane with a CA, api's sidecar (in front of `app`), then web's.
async fn two_sidecars(lifetime: &str, app: &Backend) -> (ControlPlane, Proxy, Proxy) {
    let plane = ControlPlane::start_with_ca(&mesh(None), lifetime).await;
    let api = sidecar(&plane, "api").app(app.addr).start().await;
    plane.write_config(&mesh(Some(api.inbound)));
    let web = sidecar(&plane, "web").start().await;
    let ready = tether_e2e::eventually(Duration::from_secs(10), || async {
        Client::http1().get(web.outbound, "api", "/").await.status == 200
    })
    .await;
    assert!(
        ready,
        "web never reached api over mTLS; web log:\n{}\napi log:\n{}",
        web.log(),
        api.log()
    );
    (plane, api, web)
}

/// A CSR for `service` with a fresh key, sent with `token`; the identity on success.
async fn request_certificate(
    plane: &ControlPlane,
    service: &str,
    token: Option<&str>,
) -> (TlsReply, Option<Identity>) {
    let id = SpiffeId::service(TRUST_DOMAIN, service).unwrap_or_else(|e| panic!("{e}"));
    let key = IdentityKey::generate().unwrap_or_else(|e| panic!("{e}"));
    let csr = key.csr_pem(&id).unwrap_or_else(|e| panic!("{e}"));
    let body = serde_json::to_vec(&tether_api::CertificateRequest { csr_pem: csr })
        .unwrap_or_else(|e| panic!("{e}"));
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    let reply = mesh_tls::request(
        plane.addr,
        &plane.bundle(),
        None,
        http::Method::POST,
        tether_api::CERTIFICATE_PATH,
        &headers,
        body,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let identity = (reply.status == 200).then(|| {
        let issued: tether_api::CertificateResponse =
            serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body));
        Identity::new(&key, &issued.chain_pem).unwrap_or_else(|e| panic!("{e}"))
    });
    (reply, identity)
}

#[tokio::test]
async fn a_token_for_one_service_cannot_get_a_certificate_for_another() {
    let plane = ControlPlane::start_with_ca(&mesh(None), "1h").await;
    let api_token = plane.token("api");

    let (stolen, _) = request_certificate(&plane, "web", Some(&api_token)).await;
    assert_eq!(stolen.status, 403, "{}", stolen.body);
    assert!(
        stolen
            .body
            .contains("only authorized for spiffe://tether.local/service/api"),
        "{}",
        stolen.body
    );
    let (unknown, _) = request_certificate(&plane, "api", Some("not-a-real-token")).await;
    assert_eq!(unknown.status, 401, "{}", unknown.body);
    let (anonymous, _) = request_certificate(&plane, "api", None).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);

    let (granted, identity) = request_certificate(&plane, "api", Some(&api_token)).await;
    assert_eq!(granted.status, 200, "{}", granted.body);
    let identity = identity.unwrap_or_else(|| panic!("no identity"));
    assert_eq!(
        identity.spiffe_id().to_string(),
        "spiffe://tether.local/service/api"
    );
    let lifetime = identity.not_after().duration_since(identity.issued_at());
    assert!(
        lifetime.is_ok_and(|l| l <= Duration::from_secs(3600)),
        "the lifetime is the control plane's, not the requester's"
    );
    let metrics = plane.get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "tether_control_certificate_refusals_total{reason=\"identity-not-authorized\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "tether_control_certificates_issued_total{auth=\"token\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn the_api_is_tls_and_serves_each_proxy_only_its_own_service() {
    let plane = ControlPlane::start_with_ca(&mesh(None), "1h").await;
    let (web_token, api_token) = (plane.token("web"), plane.token("api"));
    // Tokens are reusable: each use below gets a certificate of its own.
    let cert = |service: &'static str, token: String| {
        let plane = &plane;
        async move {
            request_certificate(plane, service, Some(&token))
                .await
                .1
                .unwrap_or_else(|| panic!("no certificate for {service}"))
        }
    };
    let web = || cert("web", web_token.clone());
    let api = || cert("api", api_token.clone());
    let get = |identity: Option<Identity>, path: &'static str| {
        let bundle = plane.bundle();
        let addr = plane.addr;
        async move {
            mesh_tls::request(
                addr,
                &bundle,
                identity,
                http::Method::GET,
                path,
                &[],
                Vec::new(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    let own = get(Some(web().await), "/v1/snapshot/web").await;
    assert_eq!(own.status, 200, "{}", own.body);
    let other = get(Some(api().await), "/v1/snapshot/web").await;
    assert_eq!(other.status, 403, "{}", other.body);
    let nobody = get(None, "/v1/snapshot/web").await;
    assert_eq!(nobody.status, 401, "{}", nobody.body);
    assert_eq!(get(None, "/v1/status").await.status, 200, "status is open");

    // A report for web from api's certificate is refused too.
    let report = serde_json::json!({"proxy_id": "x", "service": "web", "applied_version": 1});
    let forged = mesh_tls::request(
        plane.addr,
        &plane.bundle(),
        Some(api().await),
        http::Method::POST,
        "/v1/report",
        &[("content-type", "application/json")],
        report.to_string().into_bytes(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(forged.status, 403, "{}", forged.body);

    // The plaintext admin listener serves metrics and status, never a snapshot.
    let admin = plane.admin.unwrap_or_else(|| panic!("no admin listener"));
    let plain_get = |path: &'static str| async move {
        Client::http1().get(admin, "control", path).await.status
    };
    assert_eq!(plain_get("/metrics").await, 200);
    assert_eq!(plain_get("/v1/status").await, 200);
    assert_eq!(plain_get("/v1/snapshot/web").await, 404);

    // Plaintext HTTP at the TLS port gets no HTTP answer.
    let plain = Client::http1()
        .try_send(
            http::Method::GET,
            plane.addr,
            "control",
            "/v1/status",
            bytes::Bytes::new(),
            &[],
        )
        .await;
    assert!(
        plain.is_err(),
        "plaintext was answered: {:?}",
        plain.map(|r| r.status)
    );
}

#[tokio::test]
async fn sidecars_obtain_certificates_with_join_tokens_and_talk_mtls() {
    let app = Backend::start("api-app").await;
    let (_plane, api, web) = two_sidecars("1h", &app).await;
    let reply = Client::http1().get(web.outbound, "api", "/hello").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-backend"), "api-app");
    let config: serde_json::Value =
        serde_json::from_str(&web.admin_get("/config").await).unwrap_or_default();
    assert_eq!(
        config["identity"]["spiffe_id"], "spiffe://tether.local/service/web",
        "{config}"
    );
    for proxy in [&api, &web] {
        assert_eq!(
            metric(
                &proxy.metrics().await,
                "tether_identity_certificate_requests_total{kind=\"issue\",result=\"ok\"}"
            ),
            Some(1.0)
        );
    }
    let key = std::fs::metadata(web.state_dir().join(tether_certs::IDENTITY_KEY_FILE))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    assert_eq!(key.ok(), Some(0o600), "the saved key is 0600");
    // The api sidecar refuses a plaintext caller.
    let plain = Client::http1()
        .try_send(
            http::Method::GET,
            api.inbound,
            "api",
            "/",
            bytes::Bytes::new(),
            &[],
        )
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status != 200));
}

#[tokio::test]
async fn a_proxy_given_another_services_token_never_gets_a_certificate() {
    let plane = ControlPlane::start_with_ca(&mesh(None), "1h").await;
    let web = Proxy::subscribed(&plane.url(), "web")
        .arg("--trust-bundle")
        .arg(&plane.bundle().display().to_string())
        .arg("--token-file")
        .arg(&plane.token_file("api").display().to_string())
        .spawn();
    assert_eventually!(
        Duration::from_secs(10),
        || async {
            web.log()
                .contains("only authorized for spiffe://tether.local/service/api")
        },
        "the refusal was never logged; log:\n{}",
        web.log()
    );
    assert!(!web.is_ready().await, "ready without a certificate");
    assert!(
        web.admin_get("/ready")
            .await
            .contains("no valid mesh certificate")
            || web.admin_get("/ready").await.contains("no snapshot"),
        "readiness says why"
    );
}

#[tokio::test]
async fn certificates_renewed_through_the_control_plane_under_load_fail_no_request() {
    let app = Backend::start("api-app").await;
    // 3 s certificates, renewed every 2 s: at least three renewals each
    // while the load below runs.
    let (_plane, api, web) = two_sidecars("3s", &app).await;
    let renewed = |proxy: &Proxy| {
        let admin = proxy.admin;
        async move {
            metric(
                &Client::http1().get(admin, "admin", "/metrics").await.body,
                "tether_identity_certificate_requests_total{kind=\"renew\",result=\"ok\"}",
            )
            .unwrap_or(0.0)
        }
    };
    let mut failures = Vec::new();
    let mut client = Client::http1();
    let started = std::time::Instant::now();
    let mut sent = 0u32;
    while renewed(&api).await < 3.0 || renewed(&web).await < 3.0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "renewals did not happen within 30 s; web log:\n{}",
            web.log()
        );
        // Pooled connections and fresh ones (a new client every 20).
        for _ in 0..20 {
            let reply = client.get(web.outbound, "api", "/").await;
            if reply.status != 200 {
                failures.push(reply);
            }
            sent += 1;
        }
        client = Client::http1();
    }
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {:?}",
        failures.len(),
        failures.first()
    );
    for proxy in [&api, &web] {
        let metrics = proxy.metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "tether_identity_certificate_requests_total{kind=\"renew\",result=\"error\"}"
            ),
            None,
            "no renewal failed"
        );
    }
}

#[tokio::test]
async fn a_restarted_sidecar_serves_with_its_saved_certificate_while_the_control_plane_is_down() {
    let app = Backend::start("api-app").await;
    let (mut plane, _api, mut web) = two_sidecars("1h", &app).await;
    plane.stop();
    web.restart();
    assert_eventually!(
        Duration::from_secs(15),
        || async { web.is_ready().await },
        "web never became ready from its state directory; log:\n{}",
        web.log()
    );
    let reply = Client::http1().get(web.outbound, "api", "/").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(web
        .log()
        .contains("serving with the certificate from the state directory"));
}
