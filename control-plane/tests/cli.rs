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
    let output = Command::new(env!("CARGO_BIN_EXE_tether-control"))
        .arg("validate")
        .arg(&path)
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
