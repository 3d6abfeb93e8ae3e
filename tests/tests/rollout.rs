//! Rollouts gated by the proxies' own statistics: a canary to a healthy v2
//! promotes, one to a v2 failing 20 % rolls back by itself, a control-plane
//! restart mid-rollout resumes it, and blue-green switches and switches
//! back at once. A caller sends a steady, bounded stream (~50 rps) through
//! its sidecar throughout; v1 never fails a request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_api::{RolloutList, RolloutPhase, RolloutStatus};
use tether_e2e::control::{control_bin, ControlPlane};
use tether_e2e::{assert_eventually, eventually, Backend, Behavior, Client, Proxy};

/// Between two requests of the caller's stream: ~50 rps.
const LOAD_PERIOD: Duration = Duration::from_millis(20);
/// Most requests the stream sends, whatever happens (bounds the test).
const LOAD_MAX_REQUESTS: usize = 5_000;
/// Longest a rollout may take to finish here.
const FINISH_WITHIN: Duration = Duration::from_secs(40);

fn mesh(v1: &Backend, v2: &Backend) -> String {
    format!(
        "mesh:\n  catalog:\n    static:\n      services:\n        api: [ {{ address: \"{}\", tags: [v1] }}, {{ address: \"{}\", tags: [v2] }} ]\nservices:\n  web: {{}}\n  api:\n    subsets: {{ v1: {{ tags: [v1] }}, v2: {{ tags: [v2] }} }}\n    split: [ {{ subset: v1, weight: 100 }} ]\n",
        v1.address(),
        v2.address()
    )
}

struct Mesh {
    v1: Backend,
    v2: Backend,
    plane: ControlPlane,
    web: Proxy,
}

/// v1 healthy, v2 failing every `v2_fail_every`th request (0: never), a
/// control plane keeping rollouts in a state file, and the caller's sidecar
/// reporting statistics every 500 ms.
async fn mesh_with(v2_fail_every: usize) -> Mesh {
    let v1 = Backend::start("v1").await;
    let v2 = Backend::with(
        "v2",
        Behavior {
            fail_every: v2_fail_every,
            ..Behavior::default()
        },
    )
    .await;
    let plane = ControlPlane::start_with_args(&mesh(&v1, &v2), |dir| {
        vec![
            "--rollout-state".into(),
            dir.join("rollouts.json").display().to_string(),
        ]
    })
    .await;
    let web = Proxy::subscribed(&plane.url(), "web")
        .arg("--stats-interval")
        .arg("500ms")
        .start()
        .await;
    Mesh { v1, v2, plane, web }
}

/// Runs `tether-control rollout ARGS --control-plane URL`: success and output.
async fn cli(plane: &ControlPlane, args: &[&str]) -> (bool, String) {
    let mut command = std::process::Command::new(control_bin());
    command
        .arg("rollout")
        .args(args)
        .arg("--control-plane")
        .arg(plane.url());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("tether-control rollout: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Starts a canary of api from v1 to v2 with short steps and test gates.
async fn start(plane: &ControlPlane, steps: &str, interval: &str) {
    let (ok, out) = cli(
        plane,
        &[
            "start",
            "api",
            "--from",
            "v1",
            "--to",
            "v2",
            "--steps",
            steps,
            "--interval",
            interval,
            "--min-requests",
            "10",
            // Latency is not what these tests judge: generous bounds so a
            // busy machine does not fail a healthy subset.
            "--max-p99",
            "3s",
            "--max-p99-ratio",
            "100",
        ],
    )
    .await;
    assert!(ok, "rollout start failed: {out}");
    assert!(out.contains("active"), "{out}");
}

async fn rollout(plane: &ControlPlane) -> Option<RolloutStatus> {
    let (status, body) = plane.try_get("/v1/rollouts").await?;
    assert_eq!(status, 200, "{body}");
    let list: RolloutList = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    list.rollouts
        .into_iter()
        .find(|r| r.request.service == "api")
}

/// Waits until the rollout leaves `active`; its final status.
async fn finished(plane: &ControlPlane) -> RolloutStatus {
    let done = eventually(FINISH_WITHIN, || async {
        rollout(plane)
            .await
            .is_some_and(|r| r.phase != RolloutPhase::Active)
    })
    .await;
    let status = rollout(plane).await;
    assert!(
        done,
        "the rollout never finished: {status:?}; log:\n{}",
        plane.log()
    );
    status.unwrap_or_else(|| unreachable!())
}

/// Whether the next `n` requests are all answered 200 by `backend`.
async fn all_to(web: &Proxy, backend: &str, n: usize) -> bool {
    let client = Client::http1();
    for _ in 0..n {
        let reply = client.get(web.outbound, "api", "/").await;
        if reply.status != 200 || reply.header("x-backend") != backend {
            return false;
        }
    }
    true
}

/// The caller's steady stream: every answer's status and backend.
struct Load {
    answers: Arc<Mutex<Vec<(u16, String)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(outbound: SocketAddr) -> Self {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let answers = Arc::clone(&answers);
            let stop = Arc::clone(&stop);
            async move {
                let client = Client::http1();
                let mut ticks = tokio::time::interval(LOAD_PERIOD);
                for _ in 0..LOAD_MAX_REQUESTS {
                    ticks.tick().await;
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let reply = client.get(outbound, "api", "/").await;
                    let backend = reply.header("x-backend").to_owned();
                    if let Ok(mut answers) = answers.lock() {
                        answers.push((reply.status.as_u16(), backend));
                    }
                }
            }
        });
        Self {
            answers,
            stop,
            task,
        }
    }

    /// Stops the stream; every answer it had.
    async fn stop(self) -> Vec<(u16, String)> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        self.answers.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

/// Failed answers by backend: (by v1, by v2, by no backend).
fn failures(answers: &[(u16, String)]) -> (usize, usize, usize) {
    let failed = |who: &str| {
        answers
            .iter()
            .filter(|(status, backend)| *status != 200 && backend == who)
            .count()
    };
    (failed("v1"), failed("v2"), failed(""))
}

#[tokio::test]
async fn a_canary_to_a_healthy_v2_promotes_without_a_failed_request() {
    let m = mesh_with(0).await;
    assert!(all_to(&m.web, "v1", 5).await, "before: all on v1");
    let load = Load::start(m.web.outbound);
    start(&m.plane, "20,50,100", "2s").await;
    let status = finished(&m.plane).await;
    assert_eq!(status.phase, RolloutPhase::Promoted, "{status:?}");
    assert_eq!(status.percent, 100);
    assert_eventually!(
        Duration::from_secs(5),
        || all_to(&m.web, "v2", 20),
        "after promotion traffic is not all on v2"
    );
    let answers = load.stop().await;
    assert!(answers.len() > 100, "the stream ran: {}", answers.len());
    assert_eq!(failures(&answers), (0, 0, 0), "no failed request");
    assert!(m.v1.hits() > 0 && m.v2.hits() > 0);
    let (_, table) = cli(&m.plane, &["status", "api"]).await;
    assert!(
        table.contains("promoted") && table.contains("v1 -> v2"),
        "{table}"
    );
    assert_eq!(
        m.plane
            .metric(r#"tether_control_rollouts_total{outcome="promoted"}"#)
            .await,
        1.0
    );
    let log = m.plane.log();
    assert!(
        log.matches("rollout step").count() >= 4,
        "each step is logged: {log}"
    );
}

#[tokio::test]
async fn a_canary_to_a_v2_failing_20_percent_rolls_back_by_itself() {
    let m = mesh_with(5).await;
    let load = Load::start(m.web.outbound);
    start(&m.plane, "20,50,100", "2s").await;
    let status = finished(&m.plane).await;
    assert_eq!(status.phase, RolloutPhase::RolledBack, "{status:?}");
    assert_eq!(status.percent, 0);
    let reason = status.reason.clone().unwrap_or_default();
    assert!(reason.contains("success rate"), "{reason}");
    assert!(status.to_figures.failures > 0, "{status:?}");
    assert_eventually!(
        Duration::from_secs(5),
        || all_to(&m.web, "v1", 20),
        "after the rollback traffic is not all on v1"
    );
    let v2_hits = m.v2.hits();
    assert!(all_to(&m.web, "v1", 20).await);
    assert_eq!(m.v2.hits(), v2_hits, "v2 gets nothing after the rollback");
    let answers = load.stop().await;
    let (by_v1, by_v2, by_proxy) = failures(&answers);
    assert_eq!((by_v1, by_proxy), (0, 0), "only v2 ever failed a request");
    assert!(by_v2 > 0, "v2 failed some before the rollback");
    assert!(
        by_v2 <= m.v2.failed(),
        "the failures seen are v2's own: {by_v2} of {}",
        m.v2.failed()
    );
    let (_, table) = cli(&m.plane, &["status"]).await;
    assert!(
        table.contains("rolled-back") && table.contains("reason:"),
        "{table}"
    );
    assert_eq!(
        m.plane
            .metric(r#"tether_control_rollouts_total{outcome="rolled-back"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_rollout_survives_a_control_plane_restart_and_finishes() {
    let mut m = mesh_with(0).await;
    let load = Load::start(m.web.outbound);
    start(&m.plane, "20,50,100", "2s").await;
    assert_eventually!(
        Duration::from_secs(20),
        || async { rollout(&m.plane).await.is_some_and(|r| r.step >= 1) },
        "the rollout never reached its second step; log:\n{}",
        m.plane.log()
    );
    m.plane.stop();
    m.plane.restart().await;
    let resumed = rollout(&m.plane).await;
    assert!(
        resumed
            .as_ref()
            .is_some_and(|r| r.phase == RolloutPhase::Active && r.step >= 1),
        "after the restart: {resumed:?}"
    );
    let (_, table) = cli(&m.plane, &["status"]).await;
    assert!(table.contains("active"), "{table}");
    let status = finished(&m.plane).await;
    assert_eq!(status.phase, RolloutPhase::Promoted, "{status:?}");
    let answers = load.stop().await;
    assert_eq!(failures(&answers), (0, 0, 0), "no failed request");
    assert!(m.plane.log().contains("rollout resumed"));
}

#[tokio::test]
async fn blue_green_switches_at_once_and_abort_switches_back() {
    let m = mesh_with(0).await;
    let load = Load::start(m.web.outbound);
    start(&m.plane, "100", "60s").await;
    assert_eventually!(
        Duration::from_secs(5),
        || all_to(&m.web, "v2", 20),
        "blue-green did not switch to v2"
    );
    let (ok, out) = cli(&m.plane, &["undo", "api"]).await;
    assert!(ok && out.contains("aborted"), "{out}");
    assert_eventually!(
        Duration::from_secs(5),
        || all_to(&m.web, "v1", 20),
        "abort did not switch back to v1"
    );
    let (ok, out) = cli(&m.plane, &["abort", "api"]).await;
    assert!(!ok && out.contains("nothing to abort"), "{out}");
    let answers = load.stop().await;
    assert_eq!(failures(&answers), (0, 0, 0), "no failed request");
}

#[tokio::test]
async fn over_tls_a_sidecar_reports_stats_with_its_certificate() {
    let app = Backend::start("api").await;
    let mesh = |api: Option<SocketAddr>| {
        let api = api
            .map(|a| format!("{{ address: \"{a}\" }}"))
            .unwrap_or_default();
        format!("mesh:\n  catalog:\n    static:\n      services:\n        api: [ {api} ]\nservices:\n  web: {{}}\n  api: {{}}\n")
    };
    let plane = ControlPlane::start_with_ca(&mesh(None), "1h").await;
    let sidecar = |service: &str| {
        Proxy::subscribed(&plane.url(), service)
            .arg("--trust-bundle")
            .arg(&plane.bundle().display().to_string())
            .arg("--token-file")
            .arg(&plane.token_file(service).display().to_string())
            .arg("--stats-interval")
            .arg("300ms")
    };
    let api = sidecar("api").app(app.addr).start().await;
    plane.write_config(&mesh(Some(api.inbound)));
    let web = sidecar("web").start().await;
    assert_eventually!(
        Duration::from_secs(10),
        || async { Client::http1().get(web.outbound, "api", "/").await.status == 200 },
        "web never reached api over mTLS"
    );
    assert_eventually!(
        Duration::from_secs(10),
        || async { plane.metric("tether_control_stats_reports_total").await >= 4.0 },
        "no stats report arrived; log:\n{}",
        plane.log()
    );
    assert_eq!(
        plane
            .metric(r#"tether_control_api_unauthorized_total{path="stats"}"#)
            .await,
        0.0,
        "every report came with the proxy's own certificate"
    );
    let mut command = std::process::Command::new(control_bin());
    command
        .args(["rollout", "status", "--control-plane"])
        .arg(plane.url())
        .arg("--trust-bundle")
        .arg(plane.bundle());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && text.contains("(no rollout)"),
        "{text}"
    );
}
