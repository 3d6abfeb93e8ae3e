//! Start and stop of `tether-control serve`: a bad file refuses to start
//! with its position, and SIGTERM stops the process cleanly.

use std::process::Command;
use std::time::Duration;

use tether_e2e::control::ControlPlane;

#[tokio::test]
async fn sigterm_stops_it_cleanly() {
    let mut plane = ControlPlane::start("services:\n  web: {}\n").await;
    let status = plane.terminate(Duration::from_secs(5)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit: {status:?}; log:\n{}",
        plane.log()
    );
    assert!(plane.log().contains("stopping"), "{}", plane.log());
}

#[test]
fn an_invalid_file_stops_start_up_with_its_position() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, "services:\n  api:\n    policy: { timeout: 0s }\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let port = tether_e2e::free_port();
    let output = Command::new(tether_e2e::control::control_bin())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--config",
        ])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("mesh.yaml:3:15: policy.timeout is 0s: expected a duration above zero"),
        "{stderr}"
    );
}
