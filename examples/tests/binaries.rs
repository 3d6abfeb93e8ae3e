//! Every example binary starts and answers `--help`. Being an integration
//! test of this package also makes `cargo test --workspace` build them
//! (cargo builds a package's binaries for its integration tests), which the
//! chaos suite (`tether-sample`, `tether-load`) needs from a clean clone.

use std::process::Command;

#[test]
fn every_example_binary_answers_help() {
    for bin in [
        env!("CARGO_BIN_EXE_tether-sample"),
        env!("CARGO_BIN_EXE_tether-load"),
        env!("CARGO_BIN_EXE_tether-pki"),
        env!("CARGO_BIN_EXE_tether-cp-bench"),
        env!("CARGO_BIN_EXE_tether-otlp-sink"),
        env!("CARGO_BIN_EXE_tether-connmem"),
        env!("CARGO_BIN_EXE_tether-grpc-echo"),
    ] {
        let out = Command::new(bin)
            .arg("--help")
            .output()
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        assert!(out.status.success(), "{bin} --help: {:?}", out.status);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{bin} --help printed no usage"
        );
    }
}
