//! A real `consul agent -dev` on free loopback ports, and the few agent API
//! calls tests make. The binary comes from `CONSUL_BIN` or
//! `deploy/scripts/install-consul.sh`; without one the test fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::Method;

use crate::{eventually, free_port, Client};

/// The Consul binary: `CONSUL_BIN`, else what the install script prints.
pub fn consul_bin() -> PathBuf {
    crate::installed_binary("CONSUL_BIN", "install-consul.sh")
}

/// One instance to register.
#[derive(Debug, Clone, Default)]
pub struct Instance<'a> {
    /// Service ID (also names its TTL check `check:<id>`).
    pub id: &'a str,
    /// Service name.
    pub name: &'a str,
    /// `Service.Address`; `None` leaves it empty so Consul's answer falls
    /// back to the node's address.
    pub address: Option<&'a str>,
    /// Port.
    pub port: u16,
    /// Tags.
    pub tags: &'a [&'a str],
    /// `Meta`.
    pub meta: &'a [(&'a str, &'a str)],
    /// `Weights.Passing` (Consul's default is 1).
    pub weight: Option<u32>,
    /// Adds a passing TTL check `check:<id>`.
    pub ttl_check: bool,
}

/// A running dev agent; killed when dropped.
pub struct Consul {
    child: Child,
    /// HTTP API address.
    pub http: SocketAddr,
    client: Client,
    /// Token the harness's own calls carry (the management token of an
    /// agent with ACLs).
    token: Option<String>,
}

impl Consul {
    /// Starts a dev agent on free ports and waits for a leader.
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// Starts a dev agent whose HTTP API listens on `http_port`.
    pub async fn start_on(http_port: u16) -> Self {
        Self::start_with(http_port, &[], None).await
    }

    /// Starts a dev agent on `http_port` with `extra` arguments (e.g.
    /// `-config-file=...`); the harness's calls carry `token`.
    pub async fn start_with(http_port: u16, extra: &[String], token: Option<String>) -> Self {
        let child = Command::new(consul_bin())
            .args([
                "agent",
                "-dev",
                "-bind=127.0.0.1",
                "-client=127.0.0.1",
                "-log-level=warn",
            ])
            .arg(format!("-http-port={http_port}"))
            .args(["-dns-port=-1", "-grpc-port=-1", "-grpc-tls-port=-1"])
            .arg(format!("-serf-lan-port={}", free_port()))
            .arg(format!("-serf-wan-port={}", free_port()))
            .arg(format!("-server-port={}", free_port()))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", consul_bin().display()));
        let consul = Consul {
            child,
            http: ([127, 0, 0, 1], http_port).into(),
            client: Client::http1(),
            token,
        };
        // `""` until a leader is elected.
        let up = eventually(Duration::from_secs(30), || async {
            consul
                .get("/v1/status/leader")
                .await
                .is_some_and(|b| b.len() > 2)
        })
        .await;
        assert!(
            up,
            "consul dev agent on :{http_port} never elected a leader"
        );
        consul
    }

    /// A handle on an agent someone else runs (not killed on drop); the
    /// harness's calls carry `token`.
    pub fn attach(http: SocketAddr, token: Option<String>) -> Self {
        // A child that has exited at once stands in for "not ours to kill".
        let child = Command::new("true")
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `true`: {e}"));
        Consul {
            child,
            http,
            client: Client::http1(),
            token,
        }
    }

    /// `http://ADDR` for mesh.yaml.
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    fn headers(&self) -> Vec<(&str, &str)> {
        self.token
            .as_deref()
            .map(|t| ("x-consul-token", t))
            .into_iter()
            .collect()
    }

    /// `GET path` (with the harness's token): the body of a 200.
    pub async fn get(&self, path: &str) -> Option<String> {
        let reply = self
            .client
            .try_send(
                Method::GET,
                self.http,
                "consul",
                path,
                Bytes::new(),
                &self.headers(),
            )
            .await
            .ok()?;
        (reply.status == 200).then_some(reply.body)
    }

    /// `PUT path` (with the harness's token), which must answer 200: its body.
    pub async fn put(&self, path: &str, body: String) -> String {
        let reply = self
            .client
            .send(
                Method::PUT,
                self.http,
                "consul",
                path,
                Bytes::from(body),
                &self.headers(),
            )
            .await;
        assert_eq!(reply.status, 200, "PUT {path}: {}", reply.body);
        reply.body
    }

    /// Applies catalog operations (`/v1/txn`: `Node`, `Service`, `Check`
    /// verbs) atomically; at most 128 per call, Consul's limit.
    pub async fn txn(&self, ops: &[serde_json::Value]) {
        self.put("/v1/txn", serde_json::Value::from(ops.to_vec()).to_string())
            .await;
    }

    /// Registers an instance with the agent.
    pub async fn register(&self, instance: &Instance<'_>) {
        let mut body = serde_json::json!({
            "ID": instance.id,
            "Name": instance.name,
            "Port": instance.port,
            "Tags": instance.tags,
            "Meta": instance.meta.iter().copied().collect::<std::collections::BTreeMap<_, _>>(),
        });
        if let Some(address) = instance.address {
            body["Address"] = address.into();
        }
        if let Some(weight) = instance.weight {
            body["Weights"] = serde_json::json!({ "Passing": weight, "Warning": 1 });
        }
        if instance.ttl_check {
            let id = format!("check:{}", instance.id);
            body["Check"] = serde_json::json!({ "CheckID": id, "TTL": "30s", "Status": "passing" });
        }
        self.put("/v1/agent/service/register", body.to_string())
            .await;
    }

    /// Removes an instance.
    pub async fn deregister(&self, id: &str) {
        self.put(&format!("/v1/agent/service/deregister/{id}"), String::new())
            .await;
    }

    /// Sets an instance's TTL check passing or critical.
    pub async fn check(&self, id: &str, passing: bool) {
        let verb = if passing { "pass" } else { "fail" };
        self.put(&format!("/v1/agent/check/{verb}/check:{id}"), String::new())
            .await;
    }

    /// Kills the agent.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Consul {
    fn drop(&mut self) {
        self.stop();
    }
}
