//! The binary's command line: exit codes and error messages an operator sees.
//! (Also makes `cargo test --workspace` build the binary the e2e suite runs.)

use std::process::Command;

fn proxy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tether-proxy"))
}

#[test]
fn a_bad_snapshot_file_exits_2_naming_file_line_and_column() {
    let dir = std::env::temp_dir().join(format!("tether-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        "services:\n  api:\n    endpoints: [ { adress: x } ]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let output = proxy()
        .args(["--snapshot"])
        .arg(&path)
        .args([
            "--admin",
            "127.0.0.1:0",
            "--outbound",
            "127.0.0.1:0",
            "--inbound",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.yaml:3:20: "), "{stderr}");
    assert!(
        stderr.contains("unknown field `adress`, expected one of `address`"),
        "{stderr}"
    );
}

#[test]
fn a_missing_snapshot_file_exits_2() {
    let output = proxy()
        .args(["--snapshot", "/nonexistent/snap.yaml"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("/nonexistent/snap.yaml: cannot read snapshot"));
}

#[test]
fn no_snapshot_source_is_a_usage_error() {
    let output = proxy()
        .env_remove("TETHER_SNAPSHOT")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--snapshot"));
}

#[test]
fn wait_ready_gives_up_with_exit_1() {
    let output = proxy()
        .args(["wait-ready", "--admin", "127.0.0.1:9", "--timeout", "300ms"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(output.status.code(), Some(1));
}

/// Flags for a proxy on port-0 listeners with an empty snapshot file.
fn with_empty_snapshot(name: &str) -> Command {
    let dir = std::env::temp_dir().join(format!("tether-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("snapshot.yaml");
    std::fs::write(&path, "services: {}\n").unwrap_or_else(|e| panic!("{e}"));
    let mut command = proxy();
    command.arg("--snapshot").arg(&path).args([
        "--admin",
        "127.0.0.1:0",
        "--outbound",
        "127.0.0.1:0",
        "--inbound",
        "127.0.0.1:0",
    ]);
    command
}

#[test]
fn consul_registration_needs_a_service_name() {
    let output = with_empty_snapshot("consul-service")
        .args(["--consul-agent", "http://127.0.0.1:8500"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--consul-agent needs --service"),
        "{stderr}"
    );
}

#[test]
fn a_bad_consul_agent_url_exits_2_before_serving() {
    let output = with_empty_snapshot("consul-url")
        .args(["--service", "api", "--consul-agent", "consul:8500"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("expected http://HOST:PORT"), "{stderr}");
}

#[test]
fn consul_meta_must_be_key_value() {
    let output = with_empty_snapshot("consul-meta")
        .args([
            "--service",
            "api",
            "--consul-agent",
            "http://127.0.0.1:8500",
        ])
        .args(["--consul-meta", "zone"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("expected KEY=VALUE"), "{stderr}");
}
