use super::*;
use std::path::Path;
use tether_api::{Gates, StatsReport, UpstreamCounters, LATENCY_BUCKET_COUNT};

const MESH: &str = "services:\n  web: {}\n  api:\n    subsets: { v1: { tags: [v1] }, v2: { tags: [v2] } }\n    split: [ { subset: v1, weight: 100 } ]\n";

fn config(text: &str) -> Arc<MeshConfig> {
    Arc::new(crate::config::parse(Path::new("m.yaml"), text).unwrap_or_else(|e| panic!("{e}")))
}

fn request(steps: Vec<u32>) -> RolloutRequest {
    RolloutRequest {
        service: "api".into(),
        from: "v1".into(),
        to: "v2".into(),
        steps,
        interval: Duration::from_millis(500),
        gates: Gates {
            min_success_rate: 0.99,
            max_p99: Duration::from_millis(500),
            max_success_drop: 0.01,
            max_p99_ratio: 2.0,
            min_requests: 10,
            max_wait: Duration::from_secs(60),
        },
    }
}

fn report(v2: u64, v2_failures: u64) -> StatsReport {
    let counters = |subset: &str, requests, failures| {
        let mut latency_buckets = vec![0; LATENCY_BUCKET_COUNT];
        latency_buckets[2] = requests;
        UpstreamCounters {
            service: "api".into(),
            subset: Some(subset.into()),
            requests,
            failures,
            latency_buckets,
        }
    };
    StatsReport {
        proxy_id: "web-1".into(),
        service: "web".into(),
        // Counters that started with the proxy, after any window here.
        counters_since_unix_ms: u64::MAX,
        upstreams: vec![counters("v1", 100, 0), counters("v2", v2, v2_failures)],
        ..Default::default()
    }
}

fn engine(dir: &Path, mesh: &str) -> (Arc<Rollouts>, watch::Sender<Arc<MeshConfig>>) {
    let (tx, rx) = watch::channel(config(mesh));
    let rollouts = Rollouts::load(
        Arc::default(),
        rx,
        Some(dir.join("rollouts.json")),
        ControlMetrics::new(),
    )
    .unwrap();
    (rollouts, tx)
}

#[test]
fn a_bad_request_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (rollouts, _tx) = engine(dir.path(), MESH);
    let mut bad = request(vec![50, 20]);
    bad.to = "v3".into();
    bad.interval = Duration::from_millis(1);
    let error = rollouts.start(bad).unwrap_err().to_string();
    for expected in [
        "subset `v3`",
        "steps must end at 100",
        "must increase",
        "interval",
    ] {
        assert!(error.contains(expected), "{expected}: {error}");
    }
}

#[test]
fn a_failing_gate_rolls_back_and_the_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (rollouts, _tx) = engine(dir.path(), MESH);
    let mut overrides = rollouts.overrides();
    rollouts.start(request(vec![20, 100])).unwrap();
    assert_eq!(overrides.borrow_and_update()["api"][1].weight, 20);
    rollouts.stats().record(report(5, 1)).unwrap();
    rollouts.tick();
    let list = rollouts.list();
    assert_eq!(
        list.rollouts[0].phase,
        RolloutPhase::Active,
        "5 < min requests: waits"
    );
    assert!(list.rollouts[0]
        .reason
        .as_deref()
        .unwrap_or("")
        .contains("5 of 10"));
    rollouts.stats().record(report(20, 4)).unwrap();
    rollouts.tick();
    let status = &rollouts.list().rollouts[0];
    assert_eq!(status.phase, RolloutPhase::RolledBack);
    assert_eq!(status.percent, 0);
    assert!(
        status
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("0.8000 below"),
        "{status:?}"
    );
    assert_eq!(overrides.borrow_and_update()["api"][1].weight, 0);

    let (again, _tx) = engine(dir.path(), MESH);
    assert_eq!(again.list(), rollouts.list(), "reported after a restart");
    assert_eq!(
        again.overrides().borrow()["api"][1].weight,
        0,
        "still in force"
    );
}

#[test]
fn healthy_steps_promote_and_a_changed_split_supersedes() {
    let dir = tempfile::tempdir().unwrap();
    let (rollouts, tx) = engine(dir.path(), MESH);
    rollouts.start(request(vec![50, 100])).unwrap();
    rollouts.stats().record(report(50, 0)).unwrap();
    rollouts.tick();
    assert_eq!(rollouts.list().rollouts[0].step, 0, "interval not over");
    // An active rollout resumes after a restart.
    let (resumed, _tx2) = engine(dir.path(), MESH);
    assert_eq!(resumed.list().rollouts[0].phase, RolloutPhase::Active);
    assert_eq!(resumed.list().rollouts[0].percent, 50);
    std::thread::sleep(Duration::from_millis(550));
    rollouts.tick();
    assert_eq!(rollouts.list().rollouts[0].percent, 100, "next step");
    rollouts.stats().record(report(70, 0)).unwrap();
    rollouts.tick();
    std::thread::sleep(Duration::from_millis(550));
    rollouts.stats().record(report(90, 0)).unwrap();
    rollouts.tick();
    let status = &rollouts.list().rollouts[0];
    assert_eq!(status.phase, RolloutPhase::Promoted, "{status:?}");
    let effective = apply(&tx.borrow().clone(), &rollouts.overrides().borrow());
    assert_eq!(effective.services["api"].split[1].weight, 100);

    // Blue-green abort of a promoted rollout: back at once.
    let aborted = rollouts.abort("api").unwrap();
    assert_eq!((aborted.phase, aborted.percent), (RolloutPhase::Aborted, 0));
    tx.send_replace(config(
        &MESH.replace("weight: 100 }", "weight: 100 }, { subset: v2, weight: 0 }"),
    ));
    rollouts.tick();
    assert_eq!(rollouts.list().rollouts[0].phase, RolloutPhase::Superseded);
    assert!(
        rollouts.overrides().borrow().is_empty(),
        "mesh.yaml is in force"
    );
}
