//! The real binaries on the chaos hosts: sample apps, sidecars with a
//! snapshot file, `tether-load` for the steady load, and the sidecar's
//! admin API reached from inside its host.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use super::topology::Host;

/// The sidecar's admin listener in every host (the proxy's default).
pub const ADMIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15000);
/// The sidecar's outbound listener (default).
pub const OUTBOUND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15001);
/// The sidecar's inbound port on the host's address (default 0.0.0.0:15443).
pub const INBOUND_PORT: u16 = 15443;
/// The app's port behind the sidecar (the proxy's default `--app`).
pub const APP: &str = "127.0.0.1:8080";
/// How long a sidecar may take to answer `/ready` (a debug build on a busy
/// 2-core machine).
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A binary cargo built beside `tether-proxy` (`cargo test --workspace`
/// builds them all; `cargo build -p tether-examples` builds the samples).
pub fn sibling_bin(name: &str) -> PathBuf {
    let bin = crate::proxy::proxy_bin().with_file_name(name);
    assert!(
        bin.exists(),
        "{name} not found at {}: build it (`cargo build -p tether-examples --bins`)",
        bin.display()
    );
    bin
}

/// `GET path` on `addr` from inside `host`: (status, body), or `None` when
/// nothing answered within 5 s.
pub async fn get_in(host: &Host, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    get_in_as(host, addr, path, "admin").await
}

/// [`get_in`] with this `Host` header (a mesh service's name).
pub async fn get_in_as(
    host: &Host,
    addr: SocketAddr,
    path: &str,
    authority: &str,
) -> Option<(u16, String)> {
    request_in(host, addr, http::Method::GET, path, authority, Bytes::new()).await
}

/// One HTTP/1.1 request from inside `host` on a new connection: (status,
/// body), or `None` when nothing answered within 5 s.
pub async fn request_in(
    host: &Host,
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    authority: &str,
    body: Bytes,
) -> Option<(u16, String)> {
    let attempt = async {
        let stream = host.connect_async(addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, authority)
            .body(http_body_util::Full::new(body))
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

/// A sidecar and its app on one host.
pub struct Sidecar {
    /// The proxy's pid.
    pub pid: u32,
    /// The app's pid, if one was started.
    pub app_pid: Option<u32>,
    snapshot: PathBuf,
    /// The proxy's log file.
    pub log: PathBuf,
}

impl Sidecar {
    /// Replaces the snapshot (the proxy polls it every 100 ms).
    pub fn write_snapshot(&self, snapshot: &str) {
        let tmp = self.snapshot.with_extension("tmp");
        std::fs::write(&tmp, snapshot).unwrap_or_else(|e| panic!("write: {e}"));
        std::fs::rename(&tmp, &self.snapshot).unwrap_or_else(|e| panic!("rename: {e}"));
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Host {
    /// Starts `tether-sample --name NAME` on [`APP`] with `extra` flags and
    /// waits until it answers.
    pub async fn start_app(&mut self, dir: &Path, extra: &[&str]) -> u32 {
        let mut args = vec![
            "--name".to_owned(),
            self.name.clone(),
            "--listen".to_owned(),
            APP.to_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let log = dir.join(format!("{}-app.log", self.name));
        let pid = self.spawn(&sibling_bin("tether-sample"), &args, &log);
        let app: SocketAddr = APP.parse().unwrap_or_else(|e| panic!("{e}"));
        let up = crate::eventually(READY_WITHIN, || async {
            get_in(self, app, "/").await.is_some()
        })
        .await;
        assert!(up, "{}'s app never answered", self.name);
        pid
    }

    /// Starts a sidecar (default listeners) from `snapshot`, with `extra`
    /// flags, and waits for `/ready`.
    pub async fn start_sidecar(&mut self, dir: &Path, snapshot: &str, extra: &[&str]) -> Sidecar {
        let path = dir.join(format!("{}-snapshot.yaml", self.name));
        std::fs::write(&path, snapshot).unwrap_or_else(|e| panic!("write: {e}"));
        let mut args = vec![
            "--snapshot".to_owned(),
            path.display().to_string(),
            "--snapshot-poll-interval".to_owned(),
            "100ms".to_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        self.start_proxy(dir, path, args).await
    }

    /// Starts a sidecar with these flags and waits for `/ready`.
    pub async fn start_proxy(
        &mut self,
        dir: &Path,
        snapshot: PathBuf,
        args: Vec<String>,
    ) -> Sidecar {
        let log = dir.join(format!("{}-proxy.log", self.name));
        let pid = self.spawn(&crate::proxy::proxy_bin(), &args, &log);
        let ready = crate::eventually(READY_WITHIN, || async {
            get_in(self, ADMIN, "/ready")
                .await
                .is_some_and(|(s, _)| s == 200)
        })
        .await;
        assert!(
            ready,
            "{}'s sidecar never became ready; log:\n{}",
            self.name,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Sidecar {
            pid,
            app_pid: None,
            snapshot,
            log,
        }
    }

    /// The sidecar's `/metrics` text ("" when it does not answer).
    pub async fn metrics(&self) -> String {
        get_in(self, ADMIN, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// One series of the sidecar's metrics (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        crate::metric(&self.metrics().await, series).unwrap_or(0.0)
    }
}

/// What one `tether-load` run asked for.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Requests per second (open loop).
    pub rate: u32,
    /// Connections.
    pub connections: usize,
    /// Recorded window.
    pub duration: Duration,
    /// Longest wait for one answer before the load counts it a `timeout`.
    pub timeout: Duration,
    /// `Host` header: the mesh service.
    pub service: String,
}

/// What `tether-load` measured.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Requests answered 2xx (scheduled in the window).
    pub ok: u64,
    /// Failures by kind (`status 503`, `timeout`, `transport`, ...).
    pub errors: std::collections::BTreeMap<String, u64>,
    /// p50 latency, ms.
    pub p50_ms: f64,
    /// p99 latency, ms.
    pub p99_ms: f64,
    /// Slowest answer, ms.
    pub max_ms: f64,
}

impl LoadReport {
    /// Every request counted.
    pub fn total(&self) -> u64 {
        self.ok + self.failed()
    }

    /// Requests that did not get a 2xx.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Share of requests answered 2xx, in percent.
    pub fn success_pct(&self) -> f64 {
        if self.total() == 0 {
            return 0.0;
        }
        100.0 * self.ok as f64 / self.total() as f64
    }

    /// Failures of one kind.
    pub fn errors_of(&self, kind: &str) -> u64 {
        self.errors.get(kind).copied().unwrap_or(0)
    }

    /// `ok N, failed M {kinds}, p50/p99/max`.
    pub fn summary(&self) -> String {
        format!(
            "{} requests, {:.2} % ok, failed {} {:?}, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.total(),
            self.success_pct(),
            self.failed(),
            self.errors,
            self.p50_ms,
            self.p99_ms,
            self.max_ms
        )
    }
}

/// Runs `tether-load` in `host` against its sidecar's outbound listener
/// and returns what it counted; bounded by the load's own duration and
/// timeout, plus a margin.
pub async fn run_load(host: &Host, dir: &Path, spec: &LoadSpec) -> LoadReport {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = dir.join(format!("load-{n}.json"));
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let args = [
        "--url".to_owned(),
        format!("http://{OUTBOUND}/"),
        "--host".to_owned(),
        spec.service.clone(),
        "--rate".to_owned(),
        spec.rate.to_string(),
        "--connections".to_owned(),
        spec.connections.to_string(),
        "--duration".to_owned(),
        ms(spec.duration),
        "--timeout".to_owned(),
        ms(spec.timeout),
        "--out".to_owned(),
        out.display().to_string(),
    ];
    let mut command = host.command(sibling_bin("tether-load"), &[]);
    command
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("tether-load: {e}"));
    let limit = spec.duration + spec.timeout + Duration::from_secs(30);
    let deadline = tokio::time::Instant::now() + limit;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tether-load ran past {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    assert!(status.success(), "tether-load failed: {stderr}");
    let text = std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("load json: {e}"));
    let errors = json["error_kinds"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let latency = |k: &str| json["latency_ms"][k].as_f64().unwrap_or(0.0);
    let unsent = json["unsent"].as_u64().unwrap_or(0);
    let mut report = LoadReport {
        ok: json["count"].as_u64().unwrap_or(0),
        errors,
        p50_ms: latency("p50"),
        p99_ms: latency("p99"),
        max_ms: latency("max"),
    };
    if unsent > 0 {
        report.errors.insert("unsent".into(), unsent);
    }
    report
}
