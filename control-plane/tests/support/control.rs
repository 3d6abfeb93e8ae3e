//! The real `tether-control serve` on a free loopback port, with a mesh.yaml
//! the test can edit and a log it can read.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use http::StatusCode;
use tether_api::Snapshot;

use super::{eventually, free_port, Http, Reply};

/// A running control plane; killed when dropped.
pub struct ControlPlane {
    child: Child,
    /// Its API address.
    pub addr: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    client: Http,
    _dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts `tether-control serve` with this mesh.yaml and waits for `/ready`.
    pub async fn start(mesh_yaml: &str) -> Self {
        let plane = Self::spawn(mesh_yaml);
        let ready = eventually(Duration::from_secs(15), || plane.is_ready()).await;
        assert!(
            ready,
            "tether-control never became ready; log:\n{}",
            plane.log()
        );
        plane
    }

    /// Starts it and waits only until it answers `/live`.
    pub async fn start_unready(mesh_yaml: &str) -> Self {
        let plane = Self::spawn(mesh_yaml);
        let live = eventually(Duration::from_secs(15), || async {
            let reply = plane
                .client
                .send(http::Method::GET, plane.addr, "/live", "");
            reply.await.is_ok_and(|r| r.status == StatusCode::OK)
        })
        .await;
        assert!(
            live,
            "tether-control never answered /live; log:\n{}",
            plane.log()
        );
        plane
    }

    fn spawn(mesh_yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let config = dir.path().join("mesh.yaml");
        std::fs::write(&config, mesh_yaml).unwrap_or_else(|e| panic!("{e}"));
        let log = dir.path().join("control.log");
        let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}"));
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let child = Command::new(env!("CARGO_BIN_EXE_tether-control"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(addr.to_string())
            .env("TETHER_LOG", "info")
            .stderr(file.try_clone().unwrap_or_else(|e| panic!("{e}")))
            .stdout(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tether-control: {e}"));
        ControlPlane {
            child,
            addr,
            config,
            log,
            client: Http::default(),
            _dir: dir,
        }
    }

    /// Whether `/ready` answers 200.
    pub async fn is_ready(&self) -> bool {
        let reply = self.client.send(http::Method::GET, self.addr, "/ready", "");
        reply.await.is_ok_and(|r| r.status == StatusCode::OK)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.client.get(self.addr, path).await
    }

    /// A long-poll for `service` from `version`, as a proxy sends it.
    pub async fn poll(&self, service: &str, version: u64, wait: &str) -> Reply {
        let path = format!("/v1/snapshot/{service}?version={version}&wait={wait}");
        self.get(&path).await
    }

    /// The current snapshot of `service` (panics unless it is a 200).
    pub async fn snapshot(&self, service: &str) -> Snapshot {
        let reply = self.poll(service, 0, "0s").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body))
    }

    /// The value of an unlabelled metric in `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").await.body;
        text.lines()
            .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .find_map(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Replaces mesh.yaml.
    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Sends SIGHUP.
    pub fn sighup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("kill -HUP: {e}"));
        assert!(status.success());
    }

    /// Sends SIGTERM and waits up to `within` for the exit status.
    pub async fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid} failed");
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
