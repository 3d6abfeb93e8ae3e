//! `tether-cp-bench`: control-plane propagation benchmark (issue 3).
//!
//! Registers SERVICES × INSTANCES instances in Consul, opens SUBSCRIBERS
//! long-polls on the control plane (lightweight: the real protocol, no
//! proxy), then makes CHANGES catalog changes one at a time (deregister or
//! re-register one instance) and measures, for each, how long until every
//! subscriber holds a new version. Prints p50/p99 of per-subscriber and of
//! last-subscriber propagation. Used by deploy/scripts/bench-control-plane.sh.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, Semaphore};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    consul: String,
    #[arg(long)]
    control_plane: String,
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 5)]
    instances: usize,
    #[arg(long, default_value_t = 200)]
    subscribers: usize,
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// The control plane's PID: its CPU time over the change phase is printed.
    #[arg(long)]
    control_pid: Option<u32>,
}

/// utime + stime of `pid` in seconds (Linux `/proc/PID/stat`), if readable.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks as f64 / 100.0)
}

type Http = Client<HttpConnector, Full<Bytes>>;

async fn send(
    client: &Http,
    method: http::Method,
    uri: String,
    body: String,
) -> Result<(u16, Bytes), String> {
    let request = http::Request::builder()
        .method(method)
        .uri(&uri)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{uri}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

fn registration(service: usize, instance: usize) -> String {
    format!(
        r#"{{"ID":"svc-{service}-{instance}","Name":"svc-{service}","Address":"127.0.0.1","Port":{},"Tags":["v1"]}}"#,
        20_000 + instance
    )
}

/// The version and the number of endpoints of a snapshot, without parsing
/// it: 200 subscribers fully parsing 500 KiB each on one core would measure
/// this client, not the control plane. The wire JSON names `"version"`
/// first, and every endpoint has exactly one `"address"` key.
fn skim(body: &[u8]) -> (u64, usize) {
    let text = std::str::from_utf8(body).unwrap_or("");
    let version = text
        .split_once("\"version\":")
        .map(|(_, rest)| {
            rest.bytes()
                .take_while(u8::is_ascii_digit)
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'))
        })
        .unwrap_or(0);
    (version, text.matches("\"address\":").count())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Http = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build(connector);

    eprintln!(
        "registering {} × {} instances in Consul…",
        args.services, args.instances
    );
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(16));
    let mut tasks = Vec::new();
    for s in 0..args.services {
        for i in 0..args.instances {
            let (client, permits, uri) = (
                client.clone(),
                Arc::clone(&permits),
                format!("{}/v1/agent/service/register", args.consul),
            );
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire().await;
                send(&client, http::Method::PUT, uri, registration(s, i)).await
            }));
        }
    }
    for task in tasks {
        let (status, body) = task.await.map_err(|e| e.to_string())??;
        if status != 200 {
            return Err(format!(
                "register: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
    }
    eprintln!("registered in {:.1} s", started.elapsed().as_secs_f64());

    // Subscribers: each long-polls one service's snapshot and reports every
    // new version it receives.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(usize, u64, Instant, usize)>();
    for sub in 0..args.subscribers {
        let (client, base, seen) = (client.clone(), args.control_plane.clone(), seen_tx.clone());
        let service = format!("svc-{}", sub % args.services);
        tokio::spawn(async move {
            let mut version = 0u64;
            loop {
                let uri = format!("{base}/v1/snapshot/{service}?version={version}&wait=30s");
                match send(&client, http::Method::GET, uri, String::new()).await {
                    Ok((200, body)) => {
                        let at = Instant::now();
                        let (v, endpoints) = skim(&body);
                        version = v;
                        let _ = seen.send((sub, version, at, endpoints));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
    }
    drop(seen_tx);
    let total = args.services * args.instances;
    let mut holding = vec![0usize; args.subscribers];
    eprintln!(
        "waiting for {} subscribers to hold all {total} endpoints…",
        args.subscribers
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    while holding.iter().any(|&n| n != total) {
        match tokio::time::timeout_at(deadline.into(), seen_rx.recv()).await {
            Ok(Some((sub, _, _, endpoints))) => holding[sub] = endpoints,
            _ => {
                return Err(format!(
                    "subscribers never caught up: {:?}",
                    holding.iter().filter(|&&n| n != total).count()
                ))
            }
        }
    }

    let mut per_subscriber = Vec::new();
    let mut last = Vec::new();
    let cpu_before = args.control_pid.and_then(cpu_seconds);
    let changes_started = Instant::now();
    for change in 0..args.changes {
        let (service, instance) = (change % args.services, change % args.instances);
        let deregister = change % 2 == 0;
        let expected = if deregister { total - 1 } else { total };
        let t0 = Instant::now();
        let (method, uri, body) = if deregister {
            (
                http::Method::PUT,
                format!(
                    "{}/v1/agent/service/deregister/svc-{service}-{instance}",
                    args.consul
                ),
                String::new(),
            )
        } else {
            let (s, i) = ((change - 1) % args.services, (change - 1) % args.instances);
            (
                http::Method::PUT,
                format!("{}/v1/agent/service/register", args.consul),
                registration(s, i),
            )
        };
        send(&client, method, uri, body).await?;
        let mut done = vec![false; args.subscribers];
        let mut times = Vec::with_capacity(args.subscribers);
        while done.iter().any(|d| !d) {
            match tokio::time::timeout(Duration::from_secs(30), seen_rx.recv()).await {
                Ok(Some((sub, _, at, endpoints))) if endpoints == expected && !done[sub] => {
                    done[sub] = true;
                    times.push(at.saturating_duration_since(t0));
                }
                Ok(Some(_)) => {}
                _ => {
                    return Err(format!(
                        "change {change}: {} subscribers never saw it",
                        done.iter().filter(|d| !**d).count()
                    ))
                }
            }
        }
        times.sort();
        last.push(*times.last().unwrap_or(&Duration::ZERO));
        per_subscriber.extend(times);
    }
    let changes_took = changes_started.elapsed();
    let cpu_used = args
        .control_pid
        .and_then(cpu_seconds)
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    per_subscriber.sort();
    last.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "catalog: {} services × {} instances = {total} endpoints; {} subscribers; {} changes",
        args.services, args.instances, args.subscribers, args.changes
    );
    println!(
        "propagation, Consul change → subscriber holds it: p50 {:.1} ms, p99 {:.1} ms (all {} samples)",
        ms(percentile(&per_subscriber, 0.5)),
        ms(percentile(&per_subscriber, 0.99)),
        per_subscriber.len()
    );
    println!(
        "propagation to the LAST subscriber, per change: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(percentile(&last, 0.5)),
        ms(percentile(&last, 0.99)),
        ms(*last.last().unwrap_or(&Duration::ZERO))
    );
    if let Some(cpu) = cpu_used {
        println!(
            "tether-control CPU over the {} changes: {cpu:.2} s in {:.1} s ({:.0} ms per change, each pushing {} snapshots)",
            args.changes,
            changes_took.as_secs_f64(),
            cpu * 1e3 / args.changes.max(1) as f64,
            args.subscribers
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::skim;

    #[test]
    fn skim_reads_the_version_and_counts_endpoints() {
        let wire = br#"{"version":1795457186998,"service":"web","mesh":{"trust_domain":"t"},"services":{"a":{"endpoints":[{"address":"127.0.0.1:1","weight":1},{"address":"127.0.0.1:2","weight":1}]},"b":{"endpoints":[{"address":"x:1"}]}}}"#;
        assert_eq!(skim(wire), (1_795_457_186_998, 3));
        assert_eq!(skim(b"not json"), (0, 0));
    }
}
