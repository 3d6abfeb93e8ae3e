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

/// An answer of the control plane.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: http::StatusCode,
    /// Body as text.
    pub body: String,
}

/// The status `GET path` answers with (over TLS with a CA), if any.
async fn self_status(plane: &ControlPlane, path: &str) -> Option<u16> {
    plane.try_get(path).await.map(|(status, _)| status)
}

fn control_command() -> Command {
    Command::new(control_bin())
}

/// A running control plane; killed when dropped.
pub struct ControlPlane {
    child: Option<Child>,
    /// Its API address.
    pub addr: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    /// With a CA: its directory and the certificate lifetime (`serve --ca-dir`).
    ca: Option<(PathBuf, String)>,
    /// The plaintext admin listener (`serve --admin`), started with a CA.
    pub admin: Option<SocketAddr>,
    /// More `serve` flags (e.g. `--rollout-state FILE`).
    extra_args: Vec<String>,
    dir: tempfile::TempDir,
}

impl ControlPlane {
    /// A control plane for this mesh.yaml in a new directory, not running.
    fn unstarted(mesh_yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let config = dir.path().join("mesh.yaml");
        std::fs::write(&config, mesh_yaml).unwrap_or_else(|e| panic!("{e}"));
        ControlPlane {
            child: None,
            addr: ([127, 0, 0, 1], free_port()).into(),
            log: dir.path().join("control.log"),
            config,
            ca: None,
            admin: None,
            extra_args: Vec::new(),
            dir,
        }
    }

    /// Starts `tether-control serve` with more flags, made by `args` from
    /// the control plane's own directory, and waits for `/ready`.
    pub async fn start_with_args(
        mesh_yaml: &str,
        args: impl FnOnce(&std::path::Path) -> Vec<String>,
    ) -> Self {
        let mut plane = Self::unstarted(mesh_yaml);
        plane.extra_args = args(plane.dir.path());
        plane.restart().await;
        plane
    }

    /// Starts `tether-control serve` with this mesh.yaml and waits for `/ready`.
    pub async fn start(mesh_yaml: &str) -> Self {
        let mut plane = Self::unstarted(mesh_yaml);
        plane.restart().await;
        plane
    }

    /// Starts `tether-control serve` and waits only until it answers
    /// `/live` (for a catalog that cannot be read yet).
    pub async fn start_unready(mesh_yaml: &str) -> Self {
        let mut plane = Self::unstarted(mesh_yaml);
        plane.spawn();
        let live = eventually(Duration::from_secs(15), || async {
            self_status(&plane, "/live").await == Some(200)
        })
        .await;
        assert!(
            live,
            "tether-control never answered /live; log:\n{}",
            plane.log()
        );
        plane
    }

    /// Starts `tether-control serve` with a mesh CA made by `ca init` (the
    /// API is then https, with a plaintext `--admin` listener) issuing
    /// certificates valid for `cert_lifetime`.
    pub async fn start_with_ca(mesh_yaml: &str, cert_lifetime: &str) -> Self {
        let mut plane = Self::unstarted(mesh_yaml);
        let ca_dir = plane.dir.path().join("ca");
        let init = control_command()
            .args(["ca", "init", "--dir"])
            .arg(&ca_dir)
            .output()
            .unwrap_or_else(|e| panic!("ca init: {e}"));
        assert!(
            init.status.success(),
            "ca init failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        plane.ca = Some((ca_dir, cert_lifetime.to_owned()));
        plane.admin = Some(([127, 0, 0, 1], free_port()).into());
        plane.restart().await;
        plane
    }

    /// Another replica of this control plane, started and ready: its own
    /// directory with the same mesh.yaml and (with a CA) a copy of the CA
    /// directory, as an operator provisions replicas; its own address.
    pub async fn replica(&self) -> Self {
        let text = std::fs::read_to_string(&self.config).unwrap_or_else(|e| panic!("{e}"));
        let mut plane = Self::unstarted(&text);
        if let Some((dir, lifetime)) = &self.ca {
            let copy = plane.dir.path().join("ca");
            crate::tokens::copy_ca_dir(dir, &copy);
            plane.ca = Some((copy, lifetime.clone()));
            plane.admin = Some(([127, 0, 0, 1], free_port()).into());
        }
        plane.extra_args = self.extra_args.clone();
        plane.restart().await;
        plane
    }

    /// Starts `tether-control serve` as one more replica of a mesh: with
    /// its own copy of the CA in `ca_source` (copied the way a replica gets
    /// it from a secret store, see [`crate::tokens::copy_ca_dir`]), an https
    /// API and a plaintext `--admin` listener.
    pub async fn start_with_ca_copy(
        mesh_yaml: &str,
        ca_source: &std::path::Path,
        cert_lifetime: &str,
    ) -> Self {
        let mut plane = Self::unstarted(mesh_yaml);
        let ca_dir = plane.dir.path().join("ca");
        crate::tokens::copy_ca_dir(ca_source, &ca_dir);
        plane.ca = Some((ca_dir, cert_lifetime.to_owned()));
        plane.admin = Some(([127, 0, 0, 1], free_port()).into());
        plane.restart().await;
        plane
    }

    /// Whether the process is running (not stopped by [`Self::stop`]).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Its mesh.yaml.
    pub fn config_path(&self) -> PathBuf {
        self.config.clone()
    }

    /// The CA's root (`ca.pem`): the trust bundle for proxies.
    pub fn bundle(&self) -> PathBuf {
        match &self.ca {
            Some((dir, _)) => dir.join("ca.pem"),
            None => panic!("this control plane runs no CA"),
        }
    }

    /// The CA directory.
    pub fn ca_dir(&self) -> PathBuf {
        match &self.ca {
            Some((dir, _)) => dir.clone(),
            None => panic!("this control plane runs no CA"),
        }
    }

    /// A join token for `service`, written by `tether-control token create
    /// --out` into a new file; returns the file.
    pub fn token_file(&self, service: &str) -> PathBuf {
        let path = self
            .dir
            .path()
            .join(format!("token-{service}-{}", free_port()));
        let out = control_command()
            .args(["token", "create", "--service", service, "--ca-dir"])
            .arg(self.ca_dir())
            .arg("--out")
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("token create: {e}"));
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    }

    /// The token in `token_file(service)`, as text.
    pub fn token(&self, service: &str) -> String {
        let path = self.token_file(service);
        std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{e}"))
            .trim()
            .to_owned()
    }

    /// (Re)starts the process on the same address and config.
    pub async fn restart(&mut self) {
        self.spawn();
        let ready = eventually(Duration::from_secs(15), || self.is_ready()).await;
        assert!(
            ready,
            "tether-control never became ready; log:\n{}",
            self.log()
        );
    }

    /// (Re)starts the process without waiting for anything.
    fn spawn(&mut self) {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut command = control_command();
        command
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--listen")
            .arg(self.addr.to_string());
        if let Some((dir, lifetime)) = &self.ca {
            command
                .arg("--ca-dir")
                .arg(dir)
                .arg("--cert-lifetime")
                .arg(lifetime);
        }
        if let Some(admin) = self.admin {
            command.arg("--admin").arg(admin.to_string());
        }
        command.args(&self.extra_args);
        let child = command
            .env("TETHER_LOG", "info")
            .stderr(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
            .stdout(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tether-control: {e}"));
        self.child = Some(child);
    }

    /// Whether `/ready` answers 200 now.
    pub async fn is_ready(&self) -> bool {
        self_status(self, "/ready").await == Some(200)
    }

    /// A long-poll for `service` from `version`, as a plaintext proxy sends it.
    pub async fn poll(&self, service: &str, version: u64, wait: &str) -> Answer {
        let path = format!("/v1/snapshot/{service}?version={version}&wait={wait}");
        match self.try_get(&path).await {
            Some((status, body)) => Answer {
                status: http::StatusCode::from_u16(status)
                    .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
                body,
            },
            None => panic!("GET {path} failed; log:\n{}", self.log()),
        }
    }

    /// The current snapshot of `service` (panics unless it is a 200).
    /// As a current proxy gets it (one that merges deltas, asking for a
    /// full snapshot: `delta=0`).
    pub async fn snapshot(&self, service: &str) -> tether_api::Snapshot {
        let answer = self.poll(service, 0, "0s&delta=0").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let update: tether_api::SnapshotUpdate =
            serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{e}: {}", answer.body));
        update
            .full
            .unwrap_or_else(|| panic!("no full snapshot: {}", answer.body))
    }

    /// The snapshot of `service` as a proxy that does not merge deltas (an
    /// older one) gets it.
    pub async fn legacy_snapshot(&self, service: &str) -> tether_api::Snapshot {
        let answer = self.poll(service, 0, "0s").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{e}: {}", answer.body))
    }

    /// The value of a series in `/metrics`, as rendered (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        crate::metric(&self.get("/metrics").await, series).unwrap_or(0.0)
    }

    /// `POST` a body (plaintext API): status and body.
    pub async fn post(&self, path: &str, body: &str) -> (u16, String) {
        let reply = Client::http1()
            .send(
                http::Method::POST,
                self.addr,
                "control",
                path,
                bytes::Bytes::from(body.to_owned()),
                &[("content-type", "application/json")],
            )
            .await;
        (reply.status.as_u16(), reply.body)
    }

    /// Sends a signal by name (`HUP`, `TERM`).
    pub fn signal(&self, name: &str) {
        let pid = self
            .child
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("not running"));
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("kill: {e}"));
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// Sends SIGTERM and waits up to `within` for the exit status.
    pub async fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.signal("TERM");
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Kills the process (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `http://ADDR` (or `https://ADDR` with a CA), for `tether-proxy --control-plane`.
    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Replaces mesh.yaml (the control plane polls it).
    pub fn write_config(&self, mesh_yaml: &str) {
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, mesh_yaml).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&tmp, &self.config).unwrap_or_else(|e| panic!("{e}"));
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET` a path, returning the body.
    pub async fn get(&self, path: &str) -> String {
        match self.try_get(path).await {
            Some((_, body)) => body,
            None => panic!(
                "GET {path} on the control plane failed; log:\n{}",
                self.log()
            ),
        }
    }

    /// `GET` a path (over TLS, without a client certificate, with a CA).
    pub async fn try_get(&self, path: &str) -> Option<(u16, String)> {
        match &self.ca {
            None => Client::http1()
                .try_send(
                    http::Method::GET,
                    self.addr,
                    "control",
                    path,
                    bytes::Bytes::new(),
                    &[],
                )
                .await
                .ok()
                .map(|r| (r.status.as_u16(), r.body)),
            Some(_) => crate::mesh_tls::request(
                self.addr,
                &self.bundle(),
                None,
                http::Method::GET,
                path,
                &[],
                Vec::new(),
            )
            .await
            .ok()
            .map(|r| (r.status, r.body)),
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}
