//! Tether's container images on the real engine: built once per test run by
//! `deploy/docker/images.sh` (which starts dockerd when none answers and
//! makes the base images without a registry), and containers that are
//! removed when dropped.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The runtime image (tether-proxy, tether-control, tether-sample).
pub const RUNTIME_IMAGE: &str = "tether:dev";
/// The init image (tether-proxy init + iptables).
pub const INIT_IMAGE: &str = "tether-init:dev";

/// Debian's docker client: images.sh builds with its built-in BuildKit.
pub fn docker_bin() -> String {
    std::env::var("DOCKER").unwrap_or_else(|_| "/usr/bin/docker".to_owned())
}

/// Builds the images once per test binary (a no-op when they are current:
/// the engine's build cache answers). Panics with the script's output when
/// the engine or the build fails: a missing engine fails the test.
pub fn ensure_images() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/docker/images.sh");
        let out = Command::new(&script)
            .output()
            .map_err(|e| format!("{}: {e}", script.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed:\n{}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}

/// `docker ARGS`, run to completion.
pub fn docker(args: &[&str]) -> Output {
    Command::new(docker_bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("docker {args:?}: {e}"))
}

/// A container started with `docker run -d`, removed on drop.
pub struct Container {
    /// Its name.
    pub name: String,
}

impl Container {
    /// Starts `docker run -d --name <unique> ARGS`.
    pub fn run(args: &[&str]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tether-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut all = vec!["run", "-d", "--name", &name];
        all.extend_from_slice(args);
        let out = docker(&all);
        assert!(
            out.status.success(),
            "docker run {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name }
    }

    /// `--net container:<name>`: join this container's network namespace.
    pub fn net(&self) -> String {
        format!("container:{}", self.name)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
    }
}
