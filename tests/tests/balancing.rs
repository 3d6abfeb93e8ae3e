//! Each load-balancing algorithm, through the real proxy to real backends.

use std::time::Duration;

use tether_e2e::{Backend, Behavior, Client, Proxy};

fn snapshot(algorithm: &str, endpoints: &[(&Backend, u32)]) -> String {
    let list: Vec<String> = endpoints
        .iter()
        .map(|(b, w)| format!("{{ address: \"{}\", weight: {w} }}", b.address()))
        .collect();
    format!(
        "services:\n  api:\n    policy: {{ load_balancer: {algorithm} }}\n    endpoints: [ {} ]\n",
        list.join(", ")
    )
}

async fn send(proxy: &Proxy, n: usize) {
    let client = Client::http1();
    for _ in 0..n {
        assert_eq!(client.get(proxy.outbound, "api", "/").await.status, 200);
    }
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let b = [
        Backend::start("b0").await,
        Backend::start("b1").await,
        Backend::start("b2").await,
    ];
    let proxy = Proxy::start(&snapshot(
        "round-robin",
        &[(&b[0], 1), (&b[1], 1), (&b[2], 1)],
    ))
    .await;
    send(&proxy, 300).await;
    // Sequential requests through one rotation: exactly even.
    assert_eq!([b[0].hits(), b[1].hits(), b[2].hits()], [100, 100, 100]);
}

#[tokio::test]
async fn weighted_follows_endpoint_weights() {
    let light = Backend::start("light").await;
    let heavy = Backend::start("heavy").await;
    let proxy = Proxy::start(&snapshot("weighted", &[(&light, 1), (&heavy, 3)])).await;
    send(&proxy, 800).await;
    let share = heavy.hits() as f64 / 800.0;
    // 75 % ± 6 points (sd ≈ 1.5 points at n = 800).
    assert!((0.69..=0.81).contains(&share), "heavy got {share}");
}

#[tokio::test]
async fn least_request_avoids_the_busy_endpoint() {
    let slow = Backend::with(
        "slow",
        Behavior {
            delay: Duration::from_secs(3),
            ..Behavior::default()
        },
    )
    .await;
    let fast = Backend::start("fast").await;
    let proxy = Proxy::start(&snapshot("least-request", &[(&slow, 1), (&fast, 1)])).await;
    // Keep requests in flight until the slow endpoint holds one.
    let client = Client::http1();
    let mut background = Vec::new();
    while slow.hits() == 0 {
        let client = client.clone();
        let outbound = proxy.outbound;
        background.push(tokio::spawn(async move {
            client.get(outbound, "api", "/").await
        }));
        tokio::task::yield_now().await;
        let slow = &slow;
        tether_e2e::eventually(
            Duration::from_millis(200),
            || async move { slow.hits() > 0 },
        )
        .await;
    }
    let before = fast.hits();
    send(&proxy, 100).await;
    // With two endpoints P2C compares both: 1+ in flight loses to 0 every time.
    assert_eq!(fast.hits() - before, 100, "slow {}", slow.hits());
    for handle in background {
        handle.abort();
    }
}

#[tokio::test]
async fn p2c_ewma_sends_clearly_less_to_a_slow_endpoint() {
    let slow = Backend::with(
        "slow",
        Behavior {
            delay: Duration::from_millis(50),
            ..Behavior::default()
        },
    )
    .await;
    let fast1 = Backend::start("fast1").await;
    let fast2 = Backend::start("fast2").await;
    let proxy = Proxy::start(&snapshot(
        "p2c-ewma",
        &[(&slow, 1), (&fast1, 1), (&fast2, 1)],
    ))
    .await;
    send(&proxy, 300).await;
    let slow_share = slow.hits() as f64 / 300.0;
    // Even spread would give it a third; peak EWMA should leave it a trickle.
    assert!(
        slow_share < 0.10,
        "slow got {slow_share} ({} of 300)",
        slow.hits()
    );
    assert!(
        fast1.hits() > 50 && fast2.hits() > 50,
        "both fast endpoints used"
    );
}
