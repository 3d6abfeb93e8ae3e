//! The mesh on a real Consul cluster (three servers, one client agent on
//! loopback): a proxy keeps routing without a failed request while the
//! leader is killed, changes registered after the new leader is elected
//! reach it, and losing a follower as well as the old leader changes
//! nothing but quorum.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tether_e2e::consul::Instance;
use tether_e2e::consul_cluster::ConsulCluster;
use tether_e2e::control::ControlPlane;
use tether_e2e::{assert_eventually, Backend, Client, Proxy};

/// Requests through the proxy every 20 ms until stopped (at most 60 s):
/// how many were sent and how many failed.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(proxy: std::net::SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let (s, n, f) = (stop.clone(), sent.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let client = Client::http1();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while !s.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                n.fetch_add(1, Ordering::Relaxed);
                match client
                    .try_send(
                        http::Method::GET,
                        proxy,
                        "api",
                        "/",
                        bytes::Bytes::new(),
                        &[],
                    )
                    .await
                {
                    Ok(reply) if reply.status == 200 => {}
                    _ => {
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self {
            stop,
            sent,
            failed,
            task,
        }
    }

    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

fn instance(id: &str, port: u16) -> Instance<'_> {
    Instance {
        id,
        name: "api",
        address: Some("127.0.0.1"),
        port,
        ..Instance::default()
    }
}

#[tokio::test]
async fn the_mesh_rides_out_a_leader_election_and_a_lost_follower() {
    let mut cluster = ConsulCluster::start().await;
    let first = Backend::start("api-1").await;
    let second = Backend::start("api-2").await;
    cluster
        .register(&instance("api-1", first.addr.port()))
        .await;
    let plane = ControlPlane::start(&format!(
        "mesh:\n  catalog:\n    consul: {{ address: \"{}\" }}\nservices:\n  api: {{}}\n  web: {{}}\n",
        cluster.url()
    ))
    .await;
    let web = Proxy::subscribed(&plane.url(), "web").start().await;
    assert_eventually!(
        Duration::from_secs(20),
        || async { Client::http1().get(web.outbound, "api", "/").await.status == 200 },
        "api never routed through the cluster's catalog; control log:\n{}",
        plane.log()
    );
    let load = Load::start(web.outbound);
    let leader = cluster
        .leader()
        .await
        .unwrap_or_else(|| panic!("no leader"));
    cluster.kill(leader);
    assert_eventually!(
        Duration::from_secs(30),
        || async { cluster.leader().await.is_some_and(|l| l != leader) },
        "no new leader after server-{leader} was killed"
    );
    // A change made under the new leader reaches the proxy. The client
    // agent syncs a registration to the servers at once, but when that
    // first sync still hits the dead leader it waits for its next
    // anti-entropy run (a minute or more): register again until the
    // catalog has it, then time Tether's part.
    assert_eventually!(
        Duration::from_secs(30),
        || async {
            cluster
                .register(&instance("api-2", second.addr.port()))
                .await;
            let listed = cluster
                .agent
                .get("/v1/catalog/service/api")
                .await
                .is_some_and(|body| body.contains("\"api-2\""));
            if !listed {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            listed
        },
        "the cluster never took api-2 into its catalog"
    );
    let reached =
        tether_e2e::eventually(Duration::from_secs(15), || async { second.hits() > 0 }).await;
    if !reached {
        let snapshot = plane.snapshot("web").await;
        let catalog = cluster
            .agent
            .get("/v1/health/service/api?passing=true")
            .await;
        panic!(
            "the instance registered after the election never got traffic ({} at {}); web's snapshot {}: {:?}\ncatalog: {catalog:?}\nweb config version {}\nweb config: {}\nweb log: {}\ncontrol log:\n{}",
            second.hits(),
            second.addr,
            snapshot.version,
            snapshot.services.get("api").map(|a| &a.endpoints),
            web.config_version().await,
            web.admin_get("/config").await,
            web.log(),
            plane.log()
        );
    }
    // Lose a follower too: two of three servers are gone, no quorum;
    // reads may fail at Consul, but the mesh keeps what it has.
    let now = cluster.leader().await;
    let follower = (0..3)
        .find(|i| *i != leader && Some(*i) != now)
        .unwrap_or_else(|| panic!("no follower left"));
    cluster.kill(follower);
    // The proxy keeps routing on what it holds (which instance a caller
    // sending one request at a time prefers is peak-EWMA's choice).
    let before = first.hits() + second.hits();
    assert_eventually!(
        Duration::from_secs(10),
        || async { first.hits() + second.hits() > before + 100 },
        "traffic stopped without quorum; control log:\n{}\nweb log:\n{}",
        plane.log(),
        web.log()
    );
    let (sent, failed) = load.finish().await;
    assert!(sent > 100, "the load ran: {sent} requests");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during the elections"
    );
}
