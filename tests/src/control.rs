//! The real `tether-control` binary on a free loopback port, with a
//! mesh.yaml the test can edit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use crate::{eventually, free_port, Client};

/// Path of the built `tether-control` binary (beside the test, as for the proxy).
pub fn control_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("TETHER_CONTROL_BIN") {
        return PathBuf::from(path);
    }
    let bin = crate::proxy::proxy_bin().with_file_name("tether-control");
    assert!(
        bin.exists(),
        "tether-control not found at {}: run `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// A running control plane; killed when dropped.
pub struct ControlPlane {
    child: Option<Child>,
    /// Its API address.
    pub addr: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts `tether-control serve` with this mesh.yaml and waits for `/ready`.
    pub async fn start(mesh_yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let config = dir.path().join("mesh.yaml");
        std::fs::write(&config, mesh_yaml).unwrap_or_else(|e| panic!("{e}"));
        let mut plane = ControlPlane {
            child: None,
            addr: ([127, 0, 0, 1], free_port()).into(),
            log: dir.path().join("control.log"),
            config,
            _dir: dir,
        };
        plane.restart().await;
        plane
    }

    /// (Re)starts the process on the same address and config.
    pub async fn restart(&mut self) {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(control_bin())
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--listen")
            .arg(self.addr.to_string())
            .env("TETHER_LOG", "info")
            .stderr(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
            .stdout(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tether-control: {e}"));
        self.child = Some(child);
        let client = Client::http1();
        let addr = self.addr;
        let ready = eventually(Duration::from_secs(15), || {
            let client = client.clone();
            async move {
                client
                    .try_send(
                        http::Method::GET,
                        addr,
                        "control",
                        "/ready",
                        bytes::Bytes::new(),
                        &[],
                    )
                    .await
                    .is_ok_and(|r| r.status == 200)
            }
        })
        .await;
        assert!(
            ready,
            "tether-control never became ready; log:\n{}",
            self.log()
        );
    }

    /// Kills the process (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `http://ADDR`, for `tether-proxy --control-plane`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces mesh.yaml (the control plane polls it).
    pub fn write_config(&self, mesh_yaml: &str) {
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, mesh_yaml).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&tmp, &self.config).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET` a path, returning the body.
    pub async fn get(&self, path: &str) -> String {
        Client::http1().get(self.addr, "control", path).await.body
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}
