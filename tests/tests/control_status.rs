//! `tether-control status` against a running control plane: what a proxy
//! applied, and what it refused, as an operator reads it.

use std::process::{Command, Output};

use tether_e2e::control::ControlPlane;

async fn status_command(url: String) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(tether_e2e::control::control_bin())
            .args(["status", "--control-plane", &url])
            .output()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .unwrap_or_else(|e| panic!("cannot run tether-control status: {e}"))
}

#[tokio::test]
async fn status_lists_each_proxy_and_never_shows_a_refused_version_as_applied() {
    let plane = ControlPlane::start("services:\n  web: {}\n").await;
    let current = plane.snapshot("web").await.version;
    let report = format!(
        r#"{{"proxy_id":"web-1","service":"web","applied_version":41,"rejected_version":{current},"error":"bad route"}}"#
    );
    let (status, body) = plane.post("/v1/report", &report).await;
    assert_eq!(status, 204, "{body}");

    let output = status_command(format!("http://{}", plane.addr)).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("web-1"))
        .unwrap_or_default();
    assert!(line.contains(" 41 no "), "{stdout}");
    assert!(
        line.contains(&format!("refused {current}: bad route")),
        "{stdout}"
    );
}

#[tokio::test]
async fn status_fails_with_a_hint_when_nothing_answers() {
    let url = format!("http://127.0.0.1:{}", tether_e2e::free_port());
    let output = status_command(url).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is `tether-control serve` running there?"),
        "{stderr}"
    );
}
