//! The real `tether-proxy` binary, started on free loopback ports with a
//! snapshot file the test can edit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use crate::{eventually, free_port, Client};

/// Places the proxy binary at `dest` so that it can be run at once: a hard
/// link where the file system allows (nobody holds it open for writing),
/// else a copy that is run (`--version`) until the kernel stops answering
/// "Text file busy" (another test thread may have forked while the copy's
/// descriptor was open; the child keeps it until it execs).
pub fn place_proxy_bin(dest: &Path) {
    if std::fs::hard_link(proxy_bin(), dest).is_ok() {
        return;
    }
    std::fs::copy(proxy_bin(), dest).unwrap_or_else(|e| panic!("copy: {e}"));
    for _ in 0..100 {
        match Command::new(dest).arg("--version").output() {
            Err(e) if e.raw_os_error() == Some(26) => std::thread::sleep(Duration::from_millis(20)),
            _ => return,
        }
    }
    panic!("{} stays busy", dest.display());
}

/// Path of the built `tether-proxy` binary: `TETHER_PROXY_BIN`, or the one
/// cargo built beside this test (`cargo test --workspace` builds it, because
/// the proxy package has integration tests of its own).
pub fn proxy_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("TETHER_PROXY_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    // target/<profile>/deps/<test> → target/<profile>/tether-proxy
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("tether-proxy"))
        .unwrap_or_default();
    assert!(
        bin.exists(),
        "tether-proxy binary not found at {}: run the suite with `cargo test --workspace` \
         (or set TETHER_PROXY_BIN)",
        bin.display()
    );
    bin
}

/// Options for starting a proxy.
pub struct ProxyBuilder {
    snapshot: Option<String>,
    app: Option<SocketAddr>,
    args: Vec<String>,
}

impl ProxyBuilder {
    /// Sets the local app behind the inbound listener.
    pub fn app(mut self, app: SocketAddr) -> Self {
        self.app = Some(app);
        self
    }

    /// Runs with mTLS: the identity in `dir`, trusting `bundle`.
    pub fn identity(self, dir: &Path, bundle: &Path) -> Self {
        self.arg("--identity-dir")
            .arg(&dir.display().to_string())
            .arg("--trust-bundle")
            .arg(&bundle.display().to_string())
    }

    /// Adds a command-line flag.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// Starts the proxy and waits until `/ready` answers 200.
    pub async fn start(self) -> Proxy {
        let mut proxy = self.spawn();
        let spawned = std::time::Instant::now();
        let admin = proxy.admin;
        let client = Client::http1();
        let ready = eventually(Duration::from_secs(15), || {
            let client = client.clone();
            async move {
                client
                    .try_send(
                        http::Method::GET,
                        admin,
                        "admin",
                        "/ready",
                        bytes::Bytes::new(),
                        &[],
                    )
                    .await
                    .is_ok_and(|r| r.status == 200)
            }
        })
        .await;
        if !ready {
            let exited = proxy.child.try_wait().ok().flatten();
            panic!(
                "proxy never became ready ({:?} after spawn, process exit status {exited:?}); log:\n{}",
                spawned.elapsed(),
                proxy.log()
            );
        }
        proxy
    }

    /// Starts the proxy without waiting for readiness.
    pub fn spawn(self) -> Proxy {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let snapshot_path = dir.path().join("snapshot.yaml");
        let mut args: Vec<String> = Vec::new();
        match &self.snapshot {
            Some(snapshot) => {
                std::fs::write(&snapshot_path, snapshot).unwrap_or_else(|e| panic!("write: {e}"));
                args.extend(["--snapshot".into(), snapshot_path.display().to_string()]);
                args.extend(["--snapshot-poll-interval".into(), "100ms".into()]);
            }
            None => args.extend([
                "--state-dir".into(),
                dir.path().join("state").display().to_string(),
            ]),
        }
        let log_path = dir.path().join("proxy.log");
        let log = std::fs::File::create(&log_path).unwrap_or_else(|e| panic!("log: {e}"));
        let stdout_path = dir.path().join("stdout.log");
        let stdout = std::fs::File::create(&stdout_path).unwrap_or_else(|e| panic!("stdout: {e}"));
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let outbound: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let inbound: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let app = self
            .app
            .unwrap_or_else(|| ([127, 0, 0, 1], free_port()).into());
        args.extend([
            "--admin".into(),
            admin.to_string(),
            "--outbound".into(),
            outbound.to_string(),
        ]);
        args.extend([
            "--inbound".into(),
            inbound.to_string(),
            "--app".into(),
            app.to_string(),
        ]);
        args.extend(self.args);
        let child = launch(&args, stdout, log);
        Proxy {
            child,
            args,
            admin,
            outbound,
            inbound,
            snapshot_path,
            log_path,
            stdout_path,
            _dir: dir,
        }
    }
}

/// A running proxy; killed when dropped.
pub struct Proxy {
    child: Child,
    args: Vec<String>,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Outbound listener.
    pub outbound: SocketAddr,
    /// Inbound listener.
    pub inbound: SocketAddr,
    snapshot_path: PathBuf,
    log_path: PathBuf,
    stdout_path: PathBuf,
    _dir: tempfile::TempDir,
}

fn launch(args: &[String], stdout: std::fs::File, log: std::fs::File) -> Child {
    Command::new(proxy_bin())
        .args(args)
        .env("TETHER_LOG", "info,tether_proxy=debug")
        .stdout(stdout)
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start tether-proxy: {e}"))
}

impl Proxy {
    /// Kills the process and starts it again with the same flags, ports and
    /// state directory (without waiting for readiness).
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let open = |p: &PathBuf| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(p)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        self.child = launch(&self.args, open(&self.stdout_path), open(&self.log_path));
    }

    /// Whether `/ready` answers 200 now.
    pub async fn is_ready(&self) -> bool {
        Client::http1()
            .try_send(
                http::Method::GET,
                self.admin,
                "admin",
                "/ready",
                bytes::Bytes::new(),
                &[],
            )
            .await
            .is_ok_and(|r| r.status == 200)
    }

    /// A proxy running from this snapshot (YAML).
    pub fn builder(snapshot: &str) -> ProxyBuilder {
        ProxyBuilder {
            snapshot: Some(snapshot.to_owned()),
            app: None,
            args: Vec::new(),
        }
    }

    /// A proxy for `service` subscribed to the control plane at `url`, with
    /// a state directory of its own (kept across [`Proxy::restart`]).
    pub fn subscribed(url: &str, service: &str) -> ProxyBuilder {
        ProxyBuilder {
            snapshot: None,
            app: None,
            args: Vec::new(),
        }
        .arg("--control-plane")
        .arg(url)
        .arg("--service")
        .arg(service)
    }

    /// Starts a proxy with default options.
    pub async fn start(snapshot: &str) -> Proxy {
        Self::builder(snapshot).start().await
    }

    /// Replaces the snapshot file (the proxy polls it every 100 ms).
    pub fn write_snapshot(&self, snapshot: &str) {
        // Write then rename, so the proxy never reads half a file.
        let tmp = self.snapshot_path.with_extension("tmp");
        std::fs::write(&tmp, snapshot).unwrap_or_else(|e| panic!("write: {e}"));
        std::fs::rename(&tmp, &self.snapshot_path).unwrap_or_else(|e| panic!("rename: {e}"));
    }

    /// The state directory of a subscribed proxy (`--state-dir`).
    pub fn state_dir(&self) -> PathBuf {
        self._dir.path().join("state")
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// What the proxy wrote to stdout (access log lines).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// `GET` an admin path, returning the body.
    pub async fn admin_get(&self, path: &str) -> String {
        Client::http1().get(self.admin, "admin", path).await.body
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process now, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// The version in `/config`.
    pub async fn config_version(&self) -> u64 {
        let body = self.admin_get("/config").await;
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["version"].as_u64())
            .unwrap_or(0)
    }

    /// Sends a signal by name (`TERM`, `INT`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("kill: {e}"));
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, up to `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
