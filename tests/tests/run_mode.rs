//! Batch jobs with a sidecar: `tether-proxy run -- CMD` starts the app once
//! the proxy is ready, forwards signals to it, drains when it exits and
//! passes its exit code on; `POST /shutdown` drains a plain proxy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use bytes::Bytes;
use tether_e2e::proxy::proxy_bin;
use tether_e2e::{assert_eventually, free_port, Backend, Behavior, Client, Proxy};

/// `tether-proxy run` on free loopback ports, from an empty snapshot.
struct RunMode {
    child: Child,
    admin: SocketAddr,
    dir: tempfile::TempDir,
}

impl RunMode {
    /// Starts `tether-proxy run [flags] -- bash -c SCRIPT`; `$ADMIN_PORT` and
    /// `$DIR` (a scratch directory) are set for the script.
    fn start(script: &str) -> Self {
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        Self::start_on(admin, script)
    }

    fn start_on(admin: SocketAddr, script: &str) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let snapshot = dir.path().join("snapshot.yaml");
        std::fs::write(&snapshot, "services: {}\n").unwrap_or_else(|e| panic!("write: {e}"));
        let log = std::fs::File::create(dir.path().join("proxy.log"))
            .unwrap_or_else(|e| panic!("log: {e}"));
        let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port)).to_string();
        let child = Command::new(proxy_bin())
            .arg("run")
            .arg("--snapshot")
            .arg(&snapshot)
            .args(["--admin", &admin.to_string()])
            .args(["--outbound", &loopback(free_port())])
            .args(["--inbound", &loopback(free_port())])
            .args(["--drain-timeout", "5s", "--ready-timeout", "15s"])
            .args(["--", "bash", "-c", script])
            .env("ADMIN_PORT", admin.port().to_string())
            .env("DIR", dir.path())
            .env("TETHER_LOG", "info,tether_proxy=debug")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tether-proxy run: {e}"));
        Self { child, admin, dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        read(&self.file("proxy.log"))
    }

    /// The exit status, once the process exits (up to 20 s).
    async fn exit(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tether-proxy run did not exit; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("kill: {e}"));
        assert!(status.success(), "kill -{name} failed");
    }
}

impl Drop for RunMode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Bash that asks the admin `/ready` once and writes the status line to
/// `$DIR/ready`.
const CHECK_READY: &str = r#"exec 3<>/dev/tcp/127.0.0.1/$ADMIN_PORT && printf 'GET /ready HTTP/1.0\r\n\r\n' >&3 && head -n 1 <&3 > "$DIR/ready"; exec 3>&-"#;

#[tokio::test]
async fn the_app_runs_once_the_proxy_is_ready_and_its_exit_code_is_passed_on() {
    let mut run = RunMode::start(&format!("{CHECK_READY}; exit 7"));
    let status = run.exit().await;
    let log = run.log();
    assert_eq!(status.code(), Some(7), "log:\n{log}");
    assert!(
        read(&run.file("ready")).contains(" 200 "),
        "the app saw /ready answer {:?}; log:\n{log}",
        read(&run.file("ready"))
    );
    let exited = log.find("the app exited").unwrap_or(usize::MAX);
    let drained = log.find("drained cleanly").unwrap_or(0);
    assert!(exited < drained, "drain after the app exit; log:\n{log}");
}

#[tokio::test]
async fn an_app_killed_by_a_signal_exits_128_plus_the_signal() {
    let mut run = RunMode::start("kill -KILL $$");
    let status = run.exit().await;
    assert_eq!(status.code(), Some(137), "log:\n{}", run.log());
}

#[tokio::test]
async fn sigterm_is_forwarded_to_the_app() {
    let mut run = RunMode::start(
        r#"trap 'echo TERM > "$DIR/got"; exit 0' TERM; touch "$DIR/started"; for i in $(seq 1 300); do sleep 0.1; done; exit 9"#,
    );
    let started = run.file("started");
    assert_eventually!(
        Duration::from_secs(15),
        || {
            let started = started.clone();
            async move { started.exists() }
        },
        "the app never started; log:\n{}",
        run.log()
    );
    run.signal("TERM");
    let status = run.exit().await;
    assert_eq!(status.code(), Some(0), "log:\n{}", run.log());
    assert_eq!(read(&run.file("got")).trim(), "TERM");
    assert!(run.log().contains("drained cleanly"), "{}", run.log());
}

#[tokio::test]
async fn post_shutdown_under_run_stops_the_app_then_the_proxy() {
    let mut run = RunMode::start(
        r#"trap 'exit 4' TERM; touch "$DIR/started"; for i in $(seq 1 300); do sleep 0.1; done; exit 9"#,
    );
    let started = run.file("started");
    assert_eventually!(
        Duration::from_secs(15),
        || {
            let started = started.clone();
            async move { started.exists() }
        },
        "the app never started; log:\n{}",
        run.log()
    );
    let reply = Client::http1()
        .send(
            http::Method::POST,
            run.admin,
            "admin",
            "/shutdown",
            Bytes::new(),
            &[],
        )
        .await;
    assert_eq!(reply.status, 202);
    let status = run.exit().await;
    assert_eq!(
        status.code(),
        Some(4),
        "the app's code; log:\n{}",
        run.log()
    );
}

#[tokio::test]
async fn a_proxy_that_cannot_start_never_starts_the_app() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let admin = taken.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let mut run = RunMode::start_on(admin, r#"touch "$DIR/started""#);
    let status = run.exit().await;
    assert_eq!(
        status.code(),
        Some(1),
        "the proxy's code; log:\n{}",
        run.log()
    );
    assert!(!run.file("started").exists(), "the app ran");
    assert!(run.log().contains("cannot listen"), "{}", run.log());
}

#[tokio::test]
async fn post_shutdown_drains_a_plain_proxy_and_in_flight_requests_finish() {
    let api = Backend::with(
        "api",
        Behavior {
            delay: Duration::from_millis(700),
            ..Behavior::default()
        },
    )
    .await;
    let snapshot = format!(
        "services:\n  api:\n    endpoints: [ {{ address: \"{}\" }} ]\n",
        api.address()
    );
    let mut proxy = Proxy::builder(&snapshot)
        .arg("--drain-timeout")
        .arg("10s")
        .start()
        .await;
    let admin = Client::http1();
    assert_eq!(
        admin.get(proxy.admin, "admin", "/shutdown").await.status,
        405
    );
    let outbound = proxy.outbound;
    let in_flight =
        tokio::spawn(async move { Client::http1().get(outbound, "api", "/").await.status });
    let api_ref = &api;
    assert_eventually!(
        Duration::from_secs(5),
        || async move { api_ref.hits() == 1 },
        "the request never reached the backend"
    );
    let reply = admin
        .send(
            http::Method::POST,
            proxy.admin,
            "admin",
            "/shutdown",
            Bytes::new(),
            &[],
        )
        .await;
    assert_eq!(reply.status, 202);
    assert_eq!(
        in_flight.await.ok().map(|s| s.as_u16()),
        Some(200),
        "the in-flight request was lost"
    );
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "log:\n{}",
        proxy.log()
    );
    assert!(proxy.log().contains("drained cleanly"), "{}", proxy.log());
}
