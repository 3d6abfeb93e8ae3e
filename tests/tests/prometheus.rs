//! deploy/prometheus/ against the real parts: a Prometheus server (built
//! from its Go module: Debian's lacks Consul discovery) runs the committed
//! prometheus.yml and rules, finds a sidecar through the real Consul agent
//! it registered with, scrapes its admin port, and the query API returns
//! the sidecar's request counter with the labels the rules group by.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tether_e2e::consul::Consul;
use tether_e2e::{assert_eventually, free_port, Backend, Client, Proxy};

fn prometheus_bin() -> std::path::PathBuf {
    tether_e2e::installed_binary("PROMETHEUS_BIN", "install-prometheus.sh")
}

/// The committed files, pointed at this test's Consul and scraping every
/// second; the rules file beside them (rule_files is relative).
fn config_dir(consul: &Consul) -> tempfile::TempDir {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    let read = |name: &str| {
        std::fs::read_to_string(source.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let config = read("prometheus.yml")
        .replace("127.0.0.1:8500", &consul.http.to_string())
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
    assert!(
        config.contains(&consul.http.to_string()),
        "the Consul address was replaced"
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    write("prometheus.yml", &config);
    write("tether-rules.yml", &read("tether-rules.yml"));
    dir
}

struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(consul: &Consul) -> Self {
        let dir = config_dir(consul);
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log"))
            .unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(prometheus_bin())
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("prometheus: {e}"));
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/PATH` as JSON (`Null` when it does not answer 200).
    async fn api(&self, path_and_query: &str) -> Value {
        Client::http1()
            .try_send(
                http::Method::GET,
                ([127, 0, 0, 1], self.port).into(),
                "prometheus",
                &format!("/api/v1/{path_and_query}"),
                bytes::Bytes::new(),
                &[],
            )
            .await
            .ok()
            .filter(|reply| reply.status == 200)
            .and_then(|reply| serde_json::from_str(&reply.body).ok())
            .unwrap_or(Value::Null)
    }

    /// The result vector of an instant query.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        self.api(&format!("query?query={encoded}")).await["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

#[tokio::test]
async fn a_sidecar_registered_in_consul_is_found_and_scraped_by_the_committed_config() {
    let consul = Consul::start().await;
    let app = Backend::start("api").await;
    let snapshot = format!(
        "services:\n  api:\n    endpoints: [ {{ address: \"{}\" }} ]\n",
        app.address()
    );
    let proxy = Proxy::builder(&snapshot)
        .app(app.addr)
        .arg("--service")
        .arg("api")
        .arg("--consul-agent")
        .arg(&consul.url())
        .arg("--consul-service-id")
        .arg("api-1")
        .arg("--consul-check-interval")
        .arg("500ms")
        .start()
        .await;
    for _ in 0..5 {
        let reply = Client::http1().get(proxy.outbound, "api", "/").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let prometheus = Prometheus::start(&consul);
    let want_instance = format!("127.0.0.1:{}", proxy.admin.port());
    assert_eventually!(
        Duration::from_secs(60),
        || async {
            prometheus
                .query(r#"tether_requests_total{direction="outbound",service="api"}"#)
                .await
                .iter()
                .any(|series| {
                    let labels = &series["metric"];
                    labels["mesh_service"] == "api"
                        && labels["instance_id"] == "api-1"
                        && labels["instance"] == want_instance.as_str()
                        && labels["job"] == "tether-sidecars"
                        && series["value"][1] == "5"
                })
        },
        "the sidecar's counter never showed up with its labels: {:?}\nprometheus log:\n{}",
        prometheus.query("tether_requests_total").await,
        prometheus.log()
    );
    // Only Tether sidecars are scraped: Consul's own service is not.
    let targets = prometheus.api("targets").await;
    let active = targets["data"]["activeTargets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let sidecars: Vec<&Value> = active
        .iter()
        .filter(|t| t["labels"]["job"] == "tether-sidecars")
        .collect();
    assert_eq!(sidecars.len(), 1, "{targets}");
    // The committed rules load and evaluate.
    let rules = prometheus.api("rules").await;
    let mut groups: Vec<&str> = rules["data"]["groups"]
        .as_array()
        .map(|g| g.iter().filter_map(|g| g["name"].as_str()).collect())
        .unwrap_or_default();
    groups.sort_unstable();
    assert_eq!(groups, ["tether-alerts", "tether-edges"], "{rules}");
    let healthy = rules.to_string().matches(r#""health":"ok""#).count();
    assert_eq!(healthy, 11, "every rule evaluates: {rules}");
    assert_eventually!(
        Duration::from_secs(60),
        || async {
            !prometheus
                .query(r#"tether:edge_requests:rate1m{mesh_service="api",service="api"}"#)
                .await
                .is_empty()
        },
        "the recording rule never produced the api -> api edge"
    );
}

#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    for args in [
        &["check", "rules", "tether-rules.yml"][..],
        &["test", "rules", "tether-rules.test.yml"][..],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("promtool: {e} (apt-get install prometheus)"));
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
