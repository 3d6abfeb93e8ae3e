//! mesh.yaml edits on a running control plane: a good edit takes effect, a
//! broken one is refused (logged with line:column, counted) and the last
//! good config stays in force; SIGHUP forces a re-read.

use std::time::Duration;

use tether_e2e::assert_eventually;
use tether_e2e::control::ControlPlane;

fn mesh(timeout: &str) -> String {
    format!(
        "mesh:\n  catalog:\n    static:\n      services:\n        api: [ {{ address: \"127.0.0.1:18081\" }}, {{ address: \"127.0.0.1:18082\" }} ]\nservices:\n  web: {{}}\n  api:\n    policy: {{ timeout: {timeout} }}\n"
    )
}

async fn api_timeout(plane: &ControlPlane) -> Duration {
    plane.snapshot("web").await.services["api"].policy.timeout
}

#[tokio::test]
async fn a_broken_edit_keeps_the_last_good_config() {
    let plane = ControlPlane::start(&mesh("1s")).await;
    assert_eq!(api_timeout(&plane).await, Duration::from_secs(1));
    assert_eq!(
        plane.snapshot("web").await.services["api"].endpoints.len(),
        2
    );

    plane.write_config(&mesh("3s"));
    assert_eventually!(
        Duration::from_secs(5),
        || async { api_timeout(&plane).await == Duration::from_secs(3) },
        "a good edit never took effect"
    );
    let good = plane.snapshot("web").await;

    // Line 9, column 7: `timeot` inside the flow mapping.
    plane.write_config(&mesh("3s").replace("{ timeout: 3s }", "{ timeot: 4s }"));
    let errors = "tether_control_config_reload_errors_total";
    assert_eventually!(
        Duration::from_secs(5),
        || async { plane.metric(errors).await == 1.0 },
        "the broken edit was not counted; log:\n{}",
        plane.log()
    );
    let log = plane.log();
    assert!(
        log.contains("mesh.yaml:9:15: services.api.policy: unknown field `timeot`"),
        "{log}"
    );
    assert_eq!(
        plane.snapshot("web").await,
        good,
        "the last good config stays, same version"
    );
    assert!(plane.is_ready().await);

    plane.signal("HUP");
    assert_eventually!(
        Duration::from_secs(5),
        || async { plane.metric(errors).await == 2.0 },
        "SIGHUP did not re-read the file"
    );
}
