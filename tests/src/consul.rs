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
    if let Some(path) = std::env::var_os("CONSUL_BIN") {
        return PathBuf::from(path);
    }
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/scripts/install-consul.sh");
    let output = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (set CONSUL_BIN to a consul binary)",
                script.display()
            )
        });
    assert!(
        output.status.success(),
        "{} failed: Consul is required for this test",
        script.display()
    );
    let path = String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    assert!(!path.is_empty(), "install-consul.sh printed no path");
    PathBuf::from(path)
}

/// A running dev agent; killed when dropped.
pub struct Consul {
    child: Child,
    /// HTTP API address.
    pub http: SocketAddr,
    client: Client,
}

impl Consul {
    /// Starts a dev agent on free ports and waits for a leader.
    pub async fn start() -> Self {
        let http_port = free_port();
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
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start consul: {e}"));
        let consul = Consul {
            child,
            http: ([127, 0, 0, 1], http_port).into(),
            client: Client::http1(),
        };
        let up = eventually(Duration::from_secs(30), || async {
            consul
                .get("/v1/status/leader")
                .await
                .is_some_and(|b| b.len() > 2)
        })
        .await;
        assert!(up, "consul dev agent never elected a leader");
        consul
    }

    /// `http://ADDR` for mesh.yaml.
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    async fn get(&self, path: &str) -> Option<String> {
        let reply = self
            .client
            .try_send(Method::GET, self.http, "consul", path, Bytes::new(), &[])
            .await
            .ok()?;
        (reply.status == 200).then_some(reply.body)
    }

    async fn put(&self, path: &str, body: String) {
        let reply = self
            .client
            .send(
                Method::PUT,
                self.http,
                "consul",
                path,
                Bytes::from(body),
                &[],
            )
            .await;
        assert_eq!(reply.status, 200, "PUT {path}: {}", reply.body);
    }

    /// Registers a service instance, optionally with a TTL check `check:<id>`.
    pub async fn register(
        &self,
        id: &str,
        name: &str,
        address: SocketAddr,
        tags: &[&str],
        ttl_check: bool,
    ) {
        let check = if ttl_check {
            format!(r#","Check":{{"CheckID":"check:{id}","TTL":"30s","Status":"passing"}}"#)
        } else {
            String::new()
        };
        let tags: Vec<String> = tags.iter().map(|t| format!("\"{t}\"")).collect();
        let body = format!(
            r#"{{"ID":"{id}","Name":"{name}","Address":"{}","Port":{},"Tags":[{}]{check}}}"#,
            address.ip(),
            address.port(),
            tags.join(",")
        );
        self.put("/v1/agent/service/register", body).await;
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
