//! `tether-control validate`: what an operator sees for good and bad files.
//! (Also makes `cargo test --workspace` build the binary the e2e suite runs.)

use std::process::Command;

fn validate(text: &str) -> (Option<i32>, String, String) {
    let dir = std::env::temp_dir().join(format!(
        "tether-control-cli-{}-{}",
        std::process::id(),
        text.len()
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("mesh.yaml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    run(&["validate".as_ref(), path.as_os_str()])
}

/// `tether-control ARGS`: (exit code, stdout, stderr).
fn run(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tether-control"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_good_file_validates() {
    let (code, out, _) = validate("services:\n  api: {}\n  web: {}\n");
    assert_eq!(code, Some(0));
    assert!(out.contains("OK (2 services"), "{out}");
}

#[test]
fn every_problem_is_listed_with_line_and_column() {
    let text = "services:\n  api:\n    subsets: { v1: { tags: [v1] } }\n    split: [ { subset: v2, weight: 1 } ]\nauthorization:\n  rules:\n    - { to: api, from: [nobody] }\n";
    let (code, _, err) = validate(text);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("mesh.yaml:4:16: split: unknown subset `v2` (expected one of: v1)"),
        "{err}"
    );
    assert!(
        err.contains("mesh.yaml:7:25: rules[0]: unknown service `nobody`"),
        "{err}"
    );
}

#[test]
fn a_typo_is_refused_with_what_was_expected() {
    let (code, _, err) = validate("defaults:\n  load_balancer: fastest\n");
    assert_eq!(code, Some(1));
    assert!(
        err.contains(
            "mesh.yaml:2:18: defaults.load_balancer: unknown variant `fastest`, expected one of"
        ),
        "{err}"
    );
}

/// `tether-control plan NEW --current CURRENT`: (exit code, stdout, stderr).
fn plan(current: &str, new: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (a, b) = (dir.path().join("mesh.yaml"), dir.path().join("next.yaml"));
    std::fs::write(&a, current).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&b, new).unwrap_or_else(|e| panic!("{e}"));
    run(&[
        "plan".as_ref(),
        b.as_os_str(),
        "--current".as_ref(),
        a.as_os_str(),
    ])
}

#[test]
fn plan_says_what_changes_and_its_exit_code_says_whether() {
    let current = "services:\n  api: { policy: { timeout: 5s } }\n  web: {}\n";
    let (code, out, _) = plan(current, current);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("no change for any proxy"), "{out}");
    let next = "services:\n  api: { policy: { timeout: 2s } }\n  web: {}\n";
    let (code, out, _) = plan(current, next);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains(
            "upstream api (every proxy's view of it):\n  ~ policy.timeout: \"5s\" -> \"2s\""
        ),
        "{out}"
    );
    let (code, _, err) = plan(current, "services:\n  api: { policy: { timeout: 0s } }\n");
    assert_eq!(code, Some(1));
    assert!(
        err.contains("next.yaml:2:"),
        "the new file's problem with its position: {err}"
    );
}
