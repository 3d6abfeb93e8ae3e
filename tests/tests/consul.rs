//! The mesh on a real Consul (`consul agent -dev`): registrations, health
//! and tags flow from Consul through the control plane to the sidecar.

use std::time::Duration;

use tether_e2e::consul::{Consul, Instance};
use tether_e2e::control::ControlPlane;
use tether_e2e::{assert_eventually, Backend, Client, Proxy};

fn mesh(consul: &Consul, api: &str) -> String {
    format!("mesh:\n  catalog:\n    consul: {{ address: \"{}\" }}\nservices:\n  web: {{}}\n  api: {api}\n", consul.url())
}

const ROUND_ROBIN: &str = "{ policy: { load_balancer: round-robin, retries: { attempts: 0 } } }";

async fn endpoints(web: &Proxy) -> usize {
    let config: serde_json::Value =
        serde_json::from_str(&web.admin_get("/config").await).unwrap_or_default();
    config["services"]["api"]["endpoints"]
        .as_array()
        .map_or(0, Vec::len)
}

struct Setup {
    consul: Consul,
    _plane: ControlPlane,
    web: Proxy,
    apps: Vec<Backend>,
}

async fn setup(api: &str, tags: &[&[&str]]) -> Setup {
    let consul = Consul::start().await;
    let mut apps = Vec::new();
    for (i, tags) in tags.iter().enumerate() {
        let app = Backend::start(&format!("api-{i}")).await;
        consul
            .register(&Instance {
                id: &format!("api-{i}"),
                name: "api",
                address: Some("127.0.0.1"),
                port: app.addr.port(),
                tags,
                ttl_check: true,
                ..Instance::default()
            })
            .await;
        apps.push(app);
    }
    consul
        .register(&Instance {
            id: "web-0",
            name: "web",
            address: Some("127.0.0.1"),
            port: 1,
            ..Instance::default()
        })
        .await;
    let plane = ControlPlane::start(&mesh(&consul, api)).await;
    let web = Proxy::subscribed(&plane.url(), "web").start().await;
    let count = tags.len();
    assert_eventually!(
        Duration::from_secs(10),
        || async { endpoints(&web).await == count },
        "instances never reached the sidecar"
    );
    Setup {
        consul,
        _plane: plane,
        web,
        apps,
    }
}

#[tokio::test]
async fn every_registered_instance_is_reached() {
    let s = setup(ROUND_ROBIN, &[&[], &[], &[]]).await;
    let client = Client::http1();
    for _ in 0..9 {
        assert_eq!(client.get(s.web.outbound, "api", "/").await.status, 200);
    }
    assert_eq!(
        s.apps.iter().map(Backend::hits).collect::<Vec<_>>(),
        vec![3, 3, 3]
    );
}

#[tokio::test]
async fn a_deregistered_instance_is_gone_within_a_second() {
    let s = setup(ROUND_ROBIN, &[&[], &[], &[]]).await;
    s.consul.deregister("api-2").await;
    assert_eventually!(
        Duration::from_secs(1),
        || async { endpoints(&s.web).await == 2 },
        "still routed to after 1 s"
    );
    let client = Client::http1();
    for _ in 0..10 {
        assert_eq!(client.get(s.web.outbound, "api", "/").await.status, 200);
    }
    assert_eq!(s.apps[2].hits(), 0);
}

#[tokio::test]
async fn a_critical_instance_is_dropped_until_it_passes_again() {
    let s = setup(ROUND_ROBIN, &[&[], &[]]).await;
    s.consul.check("api-1", false).await;
    assert_eventually!(
        Duration::from_secs(2),
        || async { endpoints(&s.web).await == 1 },
        "critical instance not dropped"
    );
    let client = Client::http1();
    for _ in 0..6 {
        assert_eq!(
            client
                .get(s.web.outbound, "api", "/")
                .await
                .header("x-backend"),
            "api-0"
        );
    }
    s.consul.check("api-1", true).await;
    assert_eventually!(
        Duration::from_secs(2),
        || async { endpoints(&s.web).await == 2 },
        "passing instance not restored"
    );
}

#[tokio::test]
async fn a_90_10_split_by_tag_lands_within_tolerance() {
    let split = "{ subsets: { v1: { tags: [v1] }, v2: { tags: [v2] } }, split: [ { subset: v1, weight: 90 }, { subset: v2, weight: 10 } ] }";
    let s = setup(split, &[&["v1"], &["v2"]]).await;
    let client = Client::http1();
    let total = 1000;
    for _ in 0..total {
        assert_eq!(client.get(s.web.outbound, "api", "/").await.status, 200);
    }
    let v2 = s.apps[1].hits() as f64 / total as f64;
    // 10 % ± 4 points (binomial sd ≈ 0.95 points at n = 1000).
    assert!((0.06..=0.14).contains(&v2), "v2 got {v2}");
}

#[tokio::test]
async fn routing_continues_when_consul_stops() {
    let mut s = setup(ROUND_ROBIN, &[&[], &[]]).await;
    s.consul.stop();
    let client = Client::http1();
    for _ in 0..6 {
        assert_eq!(client.get(s.web.outbound, "api", "/").await.status, 200);
    }
    assert_eq!(endpoints(&s.web).await, 2, "the last snapshot stays");
}
