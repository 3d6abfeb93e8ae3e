//! A real Consul cluster on loopback: three server agents and one client
//! agent, each on its own ports and data directory, as production runs it
//! (no `-dev`). Tether talks to the client agent, as a sidecar host's
//! control plane would; tests kill servers to see the mesh ride out leader
//! elections.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::Method;

use crate::consul::{consul_bin, Instance};
use crate::{eventually, free_port, Client};

/// One agent process and its ports.
struct Member {
    child: Option<Child>,
    http: SocketAddr,
    /// The server RPC port (what `/v1/status/leader` names).
    server_port: u16,
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Three servers and a client agent.
pub struct ConsulCluster {
    servers: Vec<Member>,
    client: Member,
    /// The client agent (what Tether is pointed at), for registrations.
    pub agent: crate::consul::Consul,
    _dir: tempfile::TempDir,
}

/// Fast Raft timings (Consul's production default multiplier is 5).
const PERFORMANCE: &str = "performance { raft_multiplier = 1 }";

impl ConsulCluster {
    /// Starts the servers, waits for a leader, then the client agent.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let lan: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let join: Vec<String> = lan
            .iter()
            .map(|p| format!("-retry-join=127.0.0.1:{p}"))
            .collect();
        let mut servers = Vec::new();
        for (i, serf_lan) in lan.iter().enumerate() {
            let args = vec![
                "-server".to_owned(),
                "-bootstrap-expect=3".to_owned(),
                format!("-node=server-{i}"),
            ];
            servers.push(spawn(
                dir.path(),
                &format!("server-{i}"),
                *serf_lan,
                &args,
                &join,
            ));
        }
        let client = spawn(
            dir.path(),
            "client",
            free_port(),
            &["-node=client".to_owned()],
            &join,
        );
        let agent = crate::consul::Consul::attach(client.http, None);
        let cluster = ConsulCluster {
            servers,
            client,
            agent,
            _dir: dir,
        };
        let up = eventually(Duration::from_secs(60), || async {
            cluster.leader().await.is_some() && cluster.client_joined().await
        })
        .await;
        assert!(
            up,
            "the Consul cluster never elected a leader with the client joined"
        );
        cluster
    }

    /// `http://ADDR` of the client agent.
    pub fn url(&self) -> String {
        format!("http://{}", self.client.http)
    }

    /// The index (0-2) of the server that leads now, asked of the client agent.
    pub async fn leader(&self) -> Option<usize> {
        let body = get(self.client.http, "/v1/status/leader").await?;
        let leader: String = serde_json::from_str(&body).ok()?;
        let port: u16 = leader.rsplit(':').next()?.parse().ok()?;
        self.servers
            .iter()
            .position(|s| s.server_port == port && s.child.is_some())
    }

    async fn client_joined(&self) -> bool {
        get(self.client.http, "/v1/agent/members")
            .await
            .is_some_and(|b| b.matches("\"Status\":1").count() >= 4)
    }

    /// Kills server `index` (SIGKILL: no leave, as a crash).
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.servers.get_mut(index).and_then(|s| s.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Registers an instance through the client agent.
    pub async fn register(&self, instance: &Instance<'_>) {
        self.agent.register(instance).await;
    }
}

fn spawn(
    dir: &std::path::Path,
    name: &str,
    serf_lan: u16,
    args: &[String],
    join: &[String],
) -> Member {
    let http = free_port();
    let server_port = free_port();
    let child = Command::new(consul_bin())
        .arg("agent")
        .arg(format!("-data-dir={}", dir.join(name).display()))
        .args(["-bind=127.0.0.1", "-client=127.0.0.1", "-log-level=warn"])
        .arg(format!("-http-port={http}"))
        .args(["-dns-port=-1", "-grpc-port=-1", "-grpc-tls-port=-1"])
        .arg(format!("-serf-lan-port={serf_lan}"))
        .arg(format!("-serf-wan-port={}", free_port()))
        .arg(format!("-server-port={server_port}"))
        .arg(format!("-hcl={PERFORMANCE}"))
        .args(args)
        .args(join)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", consul_bin().display()));
    Member {
        child: Some(child),
        http: ([127, 0, 0, 1], http).into(),
        server_port,
    }
}

async fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let reply = Client::http1()
        .try_send(Method::GET, addr, "consul", path, Bytes::new(), &[])
        .await
        .ok()?;
    (reply.status == 200).then_some(reply.body)
}
