//! `tether-cp-bench`: control-plane propagation benchmark (issue #16's scale).
//!
//! Registers SERVICES × INSTANCES instances in Consul, opens SUBSCRIBERS
//! long-polls spread over the control-plane replicas (lightweight: the
//! real protocol with deltas, `&delta=<replica>`, no proxy), then makes
//! RATE catalog changes a second for DURATION seconds (deregister or
//! re-register one instance of one service) and measures, for each, the
//! time from the Consul write returning to every subscriber that holds the
//! changed service holding its new instance count. Then prints
//! propagation p50/p99, bytes sent per change by kind (from the replicas'
//! metrics), each replica's CPU (cores over the change window), RSS and
//! Consul connections. Used by deploy/scripts/bench-control-plane.sh, which
//! also runs the Consul agent and the replicas.
//!
//! Subscriber `i` is a proxy of service `svc-(i % SERVICES)` on replica
//! `(i / SERVICES) % replicas`. What each service's proxies hold (its
//! `upstreams` in the mesh.yaml this tool writes with `--write-mesh`):
//! services whose index is a multiple of ALL_EVERY hold the whole mesh
//! (no `upstreams`); every other `svc-N` holds `svc-(N+1)` … `svc-(N+UPSTREAMS)`.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::de::IgnoredAny;
use tokio::sync::{mpsc, Semaphore};

#[derive(Parser, Clone)]
struct Args {
    #[arg(long)]
    consul: String,
    /// Control-plane replicas' base URLs, comma-separated.
    #[arg(long, value_delimiter = ',', required_unless_present_any = ["write_mesh", "register_only"])]
    control_planes: Vec<String>,
    /// Their PIDs, in the same order: CPU, RSS and Consul connections.
    #[arg(long, value_delimiter = ',')]
    control_pids: Vec<u32>,
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    instances: usize,
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// Catalog changes per second.
    #[arg(long, default_value_t = 10)]
    rate: u32,
    /// Seconds of changes.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Services whose index is a multiple of this hold the whole mesh.
    #[arg(long, default_value_t = 50)]
    all_every: usize,
    /// How many upstreams every other service holds.
    #[arg(long, default_value_t = 3)]
    upstreams: usize,
    /// Write the mesh.yaml for these settings to this file and exit.
    #[arg(long)]
    write_mesh: Option<std::path::PathBuf>,
    /// Register the instances in Consul and exit (before the replicas
    /// start: they would recompute snapshots on every registration).
    #[arg(long)]
    register_only: bool,
    /// The instances are registered already (`--register-only`).
    #[arg(long, conflicts_with = "register_only")]
    registered: bool,
}

/// How long subscribers may take to hold the initial snapshots.
const SYNC_TIMEOUT: Duration = Duration::from_secs(180);
/// How long after the last change its subscribers may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Concurrent Consul registrations.
const REGISTER_CONCURRENCY: usize = 32;

impl Args {
    /// The services `service`'s proxies hold (`None`: all).
    fn scope(&self, service: usize) -> Option<Vec<usize>> {
        if service.is_multiple_of(self.all_every.max(1)) {
            return None;
        }
        let n = self.upstreams.min(self.services.saturating_sub(1));
        Some((1..=n).map(|k| (service + k) % self.services).collect())
    }

    fn holds(&self, service: usize, other: usize) -> bool {
        self.scope(service).is_none_or(|s| s.contains(&other))
    }

    fn service_of(&self, subscriber: usize) -> usize {
        subscriber % self.services
    }

    fn replica_of(&self, subscriber: usize) -> usize {
        (subscriber / self.services) % self.control_planes.len().max(1)
    }

    /// How many subscribers hold `service`.
    fn holders(&self, service: usize) -> usize {
        (0..self.services)
            .filter(|s| self.holds(*s, service))
            .map(|s| {
                self.subscribers / self.services + usize::from(s < self.subscribers % self.services)
            })
            .sum()
    }

    fn mesh_yaml(&self) -> String {
        let mut yaml = format!(
            "mesh:\n  catalog:\n    consul: {{ address: \"{}\" }}\nservices:\n",
            self.consul
        );
        for s in 0..self.services {
            if let Some(scope) = self.scope(s) {
                let names: Vec<String> = scope.iter().map(|u| format!("svc-{u}")).collect();
                yaml.push_str(&format!(
                    "  svc-{s}: {{ upstreams: [{}] }}\n",
                    names.join(", ")
                ));
            }
        }
        yaml
    }
}

type Http = Client<HttpConnector, Full<Bytes>>;

async fn send(
    client: &Http,
    method: http::Method,
    uri: String,
    headers: &[(&str, &str)],
    body: String,
) -> Result<(u16, Bytes), String> {
    let mut request = http::Request::builder().method(method).uri(&uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
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

/// A `tether_api::SnapshotUpdate`, read as far as the benchmark needs:
/// version, replica, and each service's endpoint count.
#[derive(serde::Deserialize)]
struct Update {
    replica: u64,
    full: Option<Light>,
    delta: Option<Light>,
}

#[derive(serde::Deserialize)]
struct Light {
    version: u64,
    #[serde(default)]
    services: HashMap<String, LightService>,
}

#[derive(serde::Deserialize)]
struct LightService {
    #[serde(default)]
    endpoints: Vec<IgnoredAny>,
}

/// What a subscriber received: who, when, full or delta, and
/// (service index, endpoints) of every service in it.
struct Seen {
    subscriber: usize,
    at: Instant,
    full: bool,
    services: Vec<(usize, usize)>,
}

/// What one answer carried.
#[derive(Debug, PartialEq)]
struct Answer {
    version: u64,
    replica: u64,
    full: bool,
    /// (service index, endpoints) of every service in it.
    services: Vec<(usize, usize)>,
}

fn parse(body: &[u8]) -> Result<Answer, String> {
    let update: Update = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let (full, light) = match (update.full, update.delta) {
        (Some(full), _) => (true, full),
        (None, Some(delta)) => (false, delta),
        (None, None) => return Err("an empty update".into()),
    };
    let services = light
        .services
        .iter()
        .filter_map(|(name, s)| Some((name.strip_prefix("svc-")?.parse().ok()?, s.endpoints.len())))
        .collect();
    Ok(Answer {
        version: light.version,
        replica: update.replica,
        full,
        services,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
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

/// `VmRSS` and `VmHWM` of `pid` in MiB.
fn rss_mib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|kib| kib / 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Established TCP connections of `pid` to local port `port` (its sockets'
/// inodes matched against `/proc/net/tcp{,6}`).
fn connections_to(pid: u32, port: u16) -> Option<usize> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
            {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let mut count = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(state), Some(inode)) =
                (fields.get(2), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let remote_port = remote
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if remote_port == Some(port) && *state == "01" && inodes.contains(*inode) {
                count += 1;
            }
        }
    }
    Some(count)
}

/// A series' value in Prometheus text (0 when absent).
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Bytes and answers sent by every replica, by kind: (full bytes, delta
/// bytes, full answers, delta answers).
async fn sent(client: &Http, planes: &[String]) -> [f64; 4] {
    let mut total = [0.0; 4];
    for plane in planes {
        let Ok((200, body)) = send(
            client,
            http::Method::GET,
            format!("{plane}/metrics"),
            &[],
            String::new(),
        )
        .await
        else {
            continue;
        };
        let text = String::from_utf8_lossy(&body);
        let names = [
            "tether_control_snapshot_bytes_sent_total{kind=\"full\"}",
            "tether_control_snapshot_bytes_sent_total{kind=\"delta\"}",
            "tether_control_snapshot_responses_total{kind=\"full\"}",
            "tether_control_snapshot_responses_total{kind=\"delta\"}",
        ];
        for (sum, name) in total.iter_mut().zip(names) {
            *sum += series(&text, name);
        }
    }
    total
}

/// One catalog change under way.
struct Change {
    expected: usize,
    /// When the Consul write returned (`None` until then).
    written: Option<Instant>,
    /// Subscribers that hold it, and when (before `written`: kept until then).
    done: HashMap<usize, Instant>,
    holders: usize,
}

enum Event {
    /// A change to this service is about to be written; its instances become `expected`.
    Start(usize, usize),
    /// The write returned.
    Written(usize, Instant),
    /// All changes made.
    End(usize),
}

/// Registers every instance in Consul (the agent API, as sidecars do).
async fn register(client: &Http, args: &Args) -> Result<(), String> {
    eprintln!(
        "registering {} × {} instances in Consul…",
        args.services, args.instances
    );
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(REGISTER_CONCURRENCY));
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
                send(&client, http::Method::PUT, uri, &[], registration(s, i)).await
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

    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    if let Some(path) = &args.write_mesh {
        return std::fs::write(path, args.mesh_yaml())
            .map_err(|e| format!("{}: {e}", path.display()));
    }
    let args = Arc::new(args);
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Http = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build(connector);

    if !args.registered {
        register(&client, &args).await?;
    }
    if args.register_only {
        return Ok(());
    }

    // Subscribers: each long-polls its service's snapshot with deltas and
    // reports what every answer carried.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<Seen>();
    for sub in 0..args.subscribers {
        let (client, args, seen) = (client.clone(), Arc::clone(&args), seen_tx.clone());
        tokio::spawn(async move {
            let base = &args.control_planes[args.replica_of(sub)];
            let service = args.service_of(sub);
            let id = format!("bench-{sub}");
            let (mut version, mut replica) = (0u64, 0u64);
            loop {
                let uri = format!(
                    "{base}/v1/snapshot/svc-{service}?version={version}&wait=30s&delta={replica}"
                );
                match send(
                    &client,
                    http::Method::GET,
                    uri,
                    &[("tether-proxy-id", &id)],
                    String::new(),
                )
                .await
                {
                    Ok((200, body)) => {
                        let at = Instant::now();
                        match parse(&body) {
                            Ok(Answer {
                                version: v,
                                replica: r,
                                full,
                                services,
                            }) => {
                                (version, replica) = (v, r);
                                let _ = seen.send(Seen {
                                    subscriber: sub,
                                    at,
                                    full,
                                    services,
                                });
                            }
                            Err(error) => {
                                eprintln!("subscriber {sub}: {error}");
                                (version, replica) = (0, 0);
                            }
                        }
                    }
                    Ok((304, _)) => {}
                    // Not ready yet (503), or unreachable: as a proxy, back off.
                    Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
    }
    drop(seen_tx);
    eprintln!(
        "waiting for {} subscribers to hold their initial snapshots…",
        args.subscribers
    );
    let sync_started = Instant::now();
    // What each subscriber holds (service → endpoints), from its full
    // snapshot and the deltas since: the catalog may still be filling in
    // when its first snapshot is sent.
    let mut holding: Vec<HashMap<usize, usize>> = vec![HashMap::new(); args.subscribers];
    let mut synced = vec![false; args.subscribers];
    let mut left = args.subscribers;
    let deadline = Instant::now() + SYNC_TIMEOUT;
    while left > 0 {
        match tokio::time::timeout_at(deadline.into(), seen_rx.recv()).await {
            Ok(Some(seen)) => {
                let sub = seen.subscriber;
                let held = &mut holding[sub];
                if seen.full {
                    held.clear();
                }
                held.extend(seen.services);
                let want = args
                    .scope(args.service_of(sub))
                    .map_or(args.services, |s| s.len());
                let whole = held.len() == want && held.values().all(|n| *n == args.instances);
                if whole && !synced[sub] {
                    synced[sub] = true;
                    left -= 1;
                }
            }
            _ => {
                return Err(format!(
                    "{left} subscribers never held their initial snapshot"
                ))
            }
        }
    }
    drop(holding);
    eprintln!("synced in {:.1} s", sync_started.elapsed().as_secs_f64());
    let full_mesh = send(
        &client,
        http::Method::GET,
        format!("{}/v1/snapshot/svc-0?version=0", args.control_planes[0]),
        &[],
        String::new(),
    )
    .await
    .map(|(_, b)| b.len())
    .unwrap_or(0);
    let sizes = sent(&client, &args.control_planes).await;

    // Changes: a task writes them at RATE, the loop below matches answers.
    let (event_tx, mut event_rx) = mpsc::unbounded_channel::<Event>();
    let total_changes = args.rate as usize * args.duration as usize;
    {
        let (client, args) = (client.clone(), Arc::clone(&args));
        tokio::spawn(async move {
            let mut present = vec![args.instances; args.services];
            let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate.max(1));
            let mut made = 0;
            for k in 0..total_changes {
                tick.tick().await;
                let x = (k * 7919) % args.services;
                let instance = args.instances - 1;
                let deregister = present[x] == args.instances;
                present[x] = if deregister {
                    args.instances - 1
                } else {
                    args.instances
                };
                let _ = event_tx.send(Event::Start(x, present[x]));
                let (uri, body) = if deregister {
                    (
                        format!(
                            "{}/v1/agent/service/deregister/svc-{x}-{instance}",
                            args.consul
                        ),
                        String::new(),
                    )
                } else {
                    (
                        format!("{}/v1/agent/service/register", args.consul),
                        registration(x, instance),
                    )
                };
                match send(&client, http::Method::PUT, uri, &[], body).await {
                    Ok((200, _)) => made += 1,
                    other => eprintln!("change {k}: {:?}", other.map(|(s, _)| s)),
                }
                let _ = event_tx.send(Event::Written(x, Instant::now()));
            }
            let _ = event_tx.send(Event::End(made));
        });
    }
    let cpu_before: Vec<Option<f64>> = args.control_pids.iter().map(|p| cpu_seconds(*p)).collect();
    let window_started = Instant::now();
    let mut pending: HashMap<usize, Change> = HashMap::new();
    let mut samples: Vec<Duration> = Vec::new();
    let mut missed = 0usize;
    let mut made = None;
    let mut consul_conns: Vec<Option<usize>> = Vec::new();
    let consul_port: u16 = args
        .consul
        .rsplit_once(':')
        .and_then(|(_, p)| p.trim_end_matches('/').parse().ok())
        .unwrap_or(8500);
    let finish = |change: Change, samples: &mut Vec<Duration>, missed: &mut usize| {
        if let Some(written) = change.written {
            samples.extend(
                change
                    .done
                    .values()
                    .map(|at| at.saturating_duration_since(written)),
            );
        }
        *missed += change.holders.saturating_sub(change.done.len());
    };
    let mut drain_deadline: Option<Instant> = None;
    loop {
        if made.is_some() && pending.is_empty() {
            break;
        }
        let timeout = drain_deadline.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        tokio::select! {
            event = event_rx.recv(), if made.is_none() => match event {
                Some(Event::Start(x, expected)) => {
                    let change = Change { expected, written: None, done: HashMap::new(), holders: args.holders(x) };
                    if let Some(old) = pending.insert(x, change) {
                        finish(old, &mut samples, &mut missed);
                    }
                }
                Some(Event::Written(x, at)) => {
                    if let Some(change) = pending.get_mut(&x) {
                        change.written = Some(at);
                        if change.done.len() >= change.holders {
                            if let Some(change) = pending.remove(&x) {
                                finish(change, &mut samples, &mut missed);
                            }
                        }
                    }
                }
                Some(Event::End(n)) => {
                    made = Some(n);
                    consul_conns = args.control_pids.iter().map(|p| connections_to(*p, consul_port)).collect();
                    drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
                }
                None => return Err("the change writer stopped".into()),
            },
            seen = seen_rx.recv() => {
                let Some(seen) = seen else { return Err("subscribers stopped".into()) };
                let s = args.service_of(seen.subscriber);
                for (x, endpoints) in &seen.services {
                    let Some(change) = pending.get_mut(x) else { continue };
                    if *endpoints == change.expected && args.holds(s, *x) {
                        change.done.entry(seen.subscriber).or_insert(seen.at);
                    }
                    if change.done.len() >= change.holders && change.written.is_some() {
                        if let Some(change) = pending.remove(x) {
                            finish(change, &mut samples, &mut missed);
                        }
                    }
                }
            }
            _ = tokio::time::sleep(timeout) => {
                for (_, change) in pending.drain() {
                    finish(change, &mut samples, &mut missed);
                }
            }
        }
    }
    let window = window_started.elapsed();
    let cpu_after: Vec<Option<f64>> = args.control_pids.iter().map(|p| cpu_seconds(*p)).collect();
    let after = sent(&client, &args.control_planes).await;
    let made = made.unwrap_or(0);
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let scoped = (0..args.services)
        .filter(|s| args.scope(*s).is_some())
        .count();
    println!(
        "catalog: {} services × {} instances; {} subscribers over {} replicas; {} services' proxies hold {} upstreams each, {} hold the whole mesh (every {}th)",
        args.services,
        args.instances,
        args.subscribers,
        args.control_planes.len(),
        scoped,
        args.upstreams,
        args.services - scoped,
        args.all_every
    );
    println!(
        "changes: {made} made in {:.1} s (target {} a second for {} s); each reaches ~{} subscribers",
        window.as_secs_f64(),
        args.rate,
        args.duration,
        args.holders(1)
    );
    println!(
        "propagation, Consul write returned → a subscriber holding the service holds the change: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples, {missed} never arrived)",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        ms(samples.last().copied().unwrap_or_default()),
        samples.len()
    );
    let d = |i: usize| after[i] - sizes[i];
    println!(
        "sent over the change window (both replicas): delta {:.0} answers, {:.0} B ({:.0} B per change, {:.0} B per answer); full {:.0} answers, {:.0} B",
        d(3),
        d(1),
        d(1) / made.max(1) as f64,
        d(1) / d(3).max(1.0),
        d(2),
        d(0)
    );
    println!(
        "for scale: a full snapshot of a whole-mesh proxy is {full_mesh} B; initial sync sent {:.0} full answers, {:.1} MiB",
        sizes[2],
        sizes[0] / 1048576.0
    );
    for (i, pid) in args.control_pids.iter().enumerate() {
        let cpu = cpu_after
            .get(i)
            .copied()
            .flatten()
            .zip(cpu_before.get(i).copied().flatten())
            .map(|(a, b)| (a - b) / window.as_secs_f64());
        let (rss, peak) = rss_mib(*pid).unwrap_or_default();
        println!(
            "replica {} (pid {pid}): CPU {} cores over the window; RSS {rss} MiB now, peak {peak} MiB; Consul connections {}",
            i + 1,
            cpu.map_or("?".into(), |c| format!("{c:.2}")),
            consul_conns.get(i).copied().flatten().map_or("?".into(), |c| c.to_string())
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args::parse_from([
            "b",
            "--consul",
            "http://127.0.0.1:1",
            "--control-planes",
            "http://a,http://b",
            "--services",
            "100",
            "--subscribers",
            "1000",
            "--all-every",
            "50",
            "--upstreams",
            "3",
        ])
    }

    #[test]
    fn scopes_holders_and_replicas() {
        let a = args();
        assert_eq!(a.scope(0), None);
        assert_eq!(a.scope(1), Some(vec![2, 3, 4]));
        assert_eq!(a.scope(99), Some(vec![0, 1, 2]));
        // svc-5 is held by svc-2, 3, 4 and the two whole-mesh services (0, 50): 10 subscribers each.
        assert_eq!(a.holders(5), 50);
        assert_eq!((a.replica_of(5), a.replica_of(105)), (0, 1));
        let yaml = a.mesh_yaml();
        assert!(
            yaml.contains("  svc-1: { upstreams: [svc-2, svc-3, svc-4] }\n"),
            "{yaml}"
        );
        assert!(!yaml.contains("  svc-50:"), "{yaml}");
    }

    #[test]
    fn an_update_is_read_for_versions_and_endpoint_counts() {
        let delta = br#"{"replica":7,"delta":{"version":9,"base":8,"mesh":{},"services":{"svc-3":{"endpoints":[{"address":"a"},{"address":"b"}]}}}}"#;
        assert_eq!(
            parse(delta),
            Ok(Answer {
                version: 9,
                replica: 7,
                full: false,
                services: vec![(3, 2)]
            })
        );
        assert!(parse(b"{}").is_err());
    }
}
