//! A real Jaeger (all-in-one, in-memory) on free loopback ports, started
//! through `deploy/scripts/run-jaeger.sh`, and a reader for its query API.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{eventually, free_port, Client};

/// A running Jaeger; stopped when dropped.
pub struct Jaeger {
    child: Child,
    /// OTLP/gRPC receiver, `http://127.0.0.1:PORT`.
    pub otlp_grpc: String,
    /// OTLP/HTTP receiver, `http://127.0.0.1:PORT`.
    pub otlp_http: String,
    /// Query API base, `127.0.0.1:PORT`.
    pub query: std::net::SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

impl Jaeger {
    /// Starts Jaeger and waits until its query API answers. Missing Jaeger
    /// is a test failure, never a skip.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = dir.path().join("jaeger.log");
        let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}"));
        let (grpc, http, query) = (free_port(), free_port(), free_port());
        let child = Command::new(repo_root().join("deploy/scripts/run-jaeger.sh"))
            .env("JAEGER_OTLP_GRPC_PORT", grpc.to_string())
            .env("JAEGER_OTLP_HTTP_PORT", http.to_string())
            .env("JAEGER_QUERY_PORT", query.to_string())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run deploy/scripts/run-jaeger.sh: {e}"));
        let jaeger = Jaeger {
            child,
            otlp_grpc: format!("http://127.0.0.1:{grpc}"),
            otlp_http: format!("http://127.0.0.1:{http}"),
            query: ([127, 0, 0, 1], query).into(),
            log,
            _dir: dir,
        };
        let client = Client::http1();
        // The first run may build Jaeger from source: allow for it.
        let up = eventually(Duration::from_secs(600), || {
            let client = client.clone();
            async move {
                client
                    .try_send(
                        http::Method::GET,
                        jaeger.query,
                        "jaeger",
                        "/api/services",
                        bytes::Bytes::new(),
                        &[],
                    )
                    .await
                    .is_ok_and(|r| r.status == 200)
            }
        })
        .await;
        assert!(
            up,
            "Jaeger did not come up; log:\n{}",
            std::fs::read_to_string(&jaeger.log).unwrap_or_default()
        );
        jaeger
    }

    /// The trace with this id, once it holds at least `spans` spans (polls
    /// up to 20 s). Returns the `data[0]` object of `/api/traces/{id}`.
    pub async fn trace(&self, trace_id: &str, spans: usize) -> Option<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            if let Some(trace) = self
                .trace_now(trace_id)
                .await
                .filter(|t| t["spans"].as_array().is_some_and(|s| s.len() >= spans))
            {
                return Some(trace);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// The trace with this id as Jaeger holds it now, if it holds any span.
    pub async fn trace_now(&self, trace_id: &str) -> Option<serde_json::Value> {
        let reply = Client::http1()
            .try_send(
                http::Method::GET,
                self.query,
                "jaeger",
                &format!("/api/traces/{trace_id}"),
                bytes::Bytes::new(),
                &[],
            )
            .await;
        reply
            .ok()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
            .map(|v| v["data"][0].clone())
            .filter(|t| t["spans"].as_array().is_some_and(|s| !s.is_empty()))
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A span of a Jaeger trace, with helpers to read it.
pub struct JaegerSpan<'a> {
    /// The span JSON.
    pub span: &'a serde_json::Value,
    /// Its process's service name.
    pub service: String,
}

impl JaegerSpan<'_> {
    /// A tag's value, as text.
    pub fn tag(&self, key: &str) -> Option<String> {
        self.span["tags"]
            .as_array()?
            .iter()
            .find(|t| t["key"] == key)
            .map(|t| match &t["value"] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
    }

    /// The span id this span is a child of, if any.
    pub fn parent(&self) -> Option<String> {
        self.span["references"]
            .as_array()?
            .iter()
            .find(|r| r["refType"] == "CHILD_OF")
            .and_then(|r| r["spanID"].as_str())
            .map(str::to_owned)
    }

    /// Its span id.
    pub fn id(&self) -> String {
        self.span["spanID"].as_str().unwrap_or_default().to_owned()
    }
}

/// The spans of a trace, each with its service name.
pub fn spans(trace: &serde_json::Value) -> Vec<JaegerSpan<'_>> {
    let processes = &trace["processes"];
    trace["spans"]
        .as_array()
        .map(|spans| {
            spans
                .iter()
                .map(|span| {
                    let process = span["processID"].as_str().unwrap_or_default();
                    let service = processes[process]["serviceName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    JaegerSpan { span, service }
                })
                .collect()
        })
        .unwrap_or_default()
}
