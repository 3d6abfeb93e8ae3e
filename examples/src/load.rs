//! `tether-load`: an open-loop HTTP load generator with latency corrected
//! for coordinated omission (the wrk2 model), for the side-by-side benchmark
//! (`deploy/scripts/bench/run.sh`).
//!
//! Open loop (`--rate N`): a schedule of intended send times, one every
//! 1/N s, is dealt round robin to `--connections C` connections, so each
//! connection has its own fixed schedule at N/C. A request's latency runs
//! from its *intended* send time to the last byte of the answer: when the
//! system under test stalls, the requests queued behind the stall are
//! charged the time they waited, instead of being quietly sent later (the
//! coordinated-omission error of paced closed-loop tools such as fortio).
//! The schedule is kept by a dedicated timer thread (`nanosleep`, tens of
//! microseconds of slack) rather than tokio's 1 ms timer wheel, whose
//! rounding would add up to a millisecond to every sample.
//!
//! HTTP/1.1: keep-alive, one request in flight per connection (a late
//! answer delays that connection's next sends, and they are charged for
//! it). HTTP/2 (`--http2`, h2c with prior knowledge): every scheduled
//! request is sent on time as a new stream of its connection.
//!
//! Closed loop (`--rate 0`): every connection sends its next request as soon
//! as the previous one is answered; for maximum throughput, not latency.
//!
//! Every run is bounded: `--warmup` + `--duration`, then at most `--timeout`
//! more for answers in flight; requests still queued then are counted as
//! unsent. With `--pid P` (repeatable) it also reads each process's CPU time
//! (utime+stime in clock ticks) over exactly the recorded window and its
//! VmRSS/VmHWM at the end. Results go to `--out FILE` (JSON) and a one-line
//! summary to stderr.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

#[derive(Debug, Parser)]
#[command(
    name = "tether-load",
    about = "Open-loop HTTP load generator (wrk2 model, latency from the intended send time)"
)]
struct Args {
    /// Target, `http://HOST:PORT/PATH` (plaintext only).
    #[arg(long)]
    url: Uri,
    /// `Host` header (HTTP/1.1) or `:authority` (HTTP/2); default: the URL's.
    #[arg(long)]
    host: Option<String>,
    /// Requests per second over all connections; 0 = closed loop.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Connections to open (and keep).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Recorded window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Load before the recorded window, at the same rate, not recorded.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// Longest wait for one answer (counted as an error after it); also how
    /// long answers in flight may take after the schedule ends.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Process whose CPU time and memory to report (repeatable).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Write the results here as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A free-form label copied into the JSON.
    #[arg(long, default_value = "")]
    label: String,
}

/// What the connections record, shared between them.
struct Stats {
    /// Latency in microseconds of answered requests scheduled (open loop) or
    /// sent (closed loop) inside the recorded window.
    histogram: Histogram<u64>,
    /// 2xx answers completed inside the recorded window (throughput).
    ok_in_window: u64,
    /// Failures by kind (status code, timeout, transport error...), in the window.
    errors: BTreeMap<String, u64>,
    /// Response body bytes received in the window.
    bytes: u64,
}

/// Times every connection needs.
#[derive(Clone, Copy)]
struct Window {
    /// Start of the recorded window.
    start: Instant,
    /// End of the recorded window (and of the schedule).
    end: Instant,
    /// Nothing is sent after this; answers are not awaited past it.
    deadline: Instant,
}

impl Window {
    fn records(&self, at: Instant) -> bool {
        at >= self.start && at < self.end
    }
}

type Shared = Arc<Mutex<Stats>>;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tether-load: cannot start the runtime: {error}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tether-load: {error}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Where to connect and what to put in each request.
#[derive(Clone)]
struct Target {
    addr: String,
    /// HTTP/1.1: path only, with a Host header. HTTP/2: absolute, its
    /// authority becomes `:authority`.
    uri: Uri,
    host: String,
    http2: bool,
}

impl Target {
    fn request(&self) -> Result<Request<Empty<Bytes>>, http::Error> {
        let builder = Request::get(self.uri.clone());
        let builder = if self.http2 {
            builder
        } else {
            builder.header(http::header::HOST, &self.host)
        };
        builder.body(Empty::new())
    }
}

async fn run(args: Args) -> Result<(), String> {
    if args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if args.url.scheme_str() != Some("http") {
        return Err(format!("{}: only http:// URLs are supported", args.url));
    }
    let authority = args
        .url
        .authority()
        .ok_or_else(|| format!("{}: the URL needs host:port", args.url))?;
    let addr = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    let host = args
        .host
        .clone()
        .unwrap_or_else(|| authority.as_str().to_owned());
    let path = args
        .url
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri: Uri = if args.http2 {
        format!("http://{host}{path}")
            .parse()
            .map_err(|e| format!("--host {host}: {e}"))?
    } else {
        path.parse().map_err(|e| format!("path {path}: {e}"))?
    };
    let target = Target {
        addr,
        uri,
        host,
        http2: args.http2,
    };
    target
        .request()
        .map_err(|e| format!("cannot build a request: {e}"))?;

    // Open every connection before the clock starts.
    let mut senders = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        senders.push(Conn::open(&target).await?);
    }

    let begin = Instant::now() + Duration::from_millis(20);
    let window = Window {
        start: begin + args.warmup,
        end: begin + args.warmup + args.duration,
        deadline: begin + args.warmup + args.duration + args.timeout,
    };
    let stats: Shared = Arc::new(Mutex::new(Stats {
        histogram: Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .map_err(|e| format!("histogram: {e}"))?,
        ok_in_window: 0,
        errors: BTreeMap::new(),
        bytes: 0,
    }));
    let unsent = Arc::new(Mutex::new(0u64));

    let cpu = tokio::spawn(watch_processes(args.pids.clone(), window));
    let mut workers = JoinSet::new();
    let mut timer = None;
    if args.rate == 0 {
        for conn in senders {
            workers.spawn(closed_loop(
                conn,
                target.clone(),
                window,
                args.timeout,
                Arc::clone(&stats),
            ));
        }
    } else {
        let mut queues = Vec::with_capacity(senders.len());
        for conn in senders {
            let (tx, rx) = mpsc::unbounded_channel();
            queues.push(tx);
            workers.spawn(open_loop(
                conn,
                rx,
                target.clone(),
                window,
                args.timeout,
                Arc::clone(&stats),
                Arc::clone(&unsent),
            ));
        }
        let rate = args.rate;
        let total = args.warmup + args.duration;
        timer = Some(
            std::thread::Builder::new()
                .name("schedule".into())
                .spawn(move || schedule(begin, total, rate, queues))
                .map_err(|e| format!("cannot start the timer thread: {e}"))?,
        );
    }
    while let Some(done) = workers.join_next().await {
        done.map_err(|e| format!("a connection task failed: {e}"))?;
    }
    if let Some(timer) = timer {
        timer
            .join()
            .map_err(|_| "the timer thread panicked".to_owned())?;
    }
    let processes = cpu.await.map_err(|e| format!("process watcher: {e}"))?;

    let stats = stats.lock().map_err(|_| "stats poisoned".to_owned())?;
    let unsent = *unsent.lock().map_err(|_| "counter poisoned".to_owned())?;
    let h = &stats.histogram;
    let ms = |us: u64| us as f64 / 1000.0;
    let errors: u64 = stats.errors.values().sum::<u64>() + unsent;
    let seconds = args.duration.as_secs_f64();
    let achieved = stats.ok_in_window as f64 / seconds;
    let result = serde_json::json!({
        "label": args.label,
        "url": args.url.to_string(),
        "host": target.host,
        "protocol": if args.http2 { "h2c" } else { "http/1.1" },
        "mode": if args.rate == 0 { "closed" } else { "open" },
        "target_rate": args.rate,
        "connections": args.connections,
        "warmup_s": args.warmup.as_secs_f64(),
        "duration_s": seconds,
        "count": h.len(),
        "ok_in_window": stats.ok_in_window,
        "achieved_rps": achieved,
        "errors": errors,
        "error_kinds": stats.errors,
        "unsent": unsent,
        "mean_body_bytes": stats.bytes.checked_div(stats.ok_in_window).unwrap_or(0),
        "latency_ms": {
            "p50": ms(h.value_at_quantile(0.50)),
            "p90": ms(h.value_at_quantile(0.90)),
            "p99": ms(h.value_at_quantile(0.99)),
            "p99.9": ms(h.value_at_quantile(0.999)),
            "max": ms(h.max()),
            "min": ms(h.min()),
            "mean": h.mean() / 1000.0,
        },
        "processes": processes,
    });
    eprintln!(
        "tether-load {} {} rate {} c {}: {} ok, {:.0} rps, {} errors, p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms",
        result["protocol"].as_str().unwrap_or(""),
        args.url,
        args.rate,
        args.connections,
        h.len(),
        achieved,
        errors,
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
    );
    let text = serde_json::to_string_pretty(&result).map_err(|e| format!("json: {e}"))?;
    match &args.out {
        Some(path) => std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        None => println!("{text}"),
    }
    Ok(())
}

/// The timer thread: deals intended send times round robin to the
/// connections, each at its moment (never early). Dropping the senders at
/// the end tells the connections the schedule is over.
fn schedule(
    begin: Instant,
    total: Duration,
    rate: u32,
    queues: Vec<mpsc::UnboundedSender<Instant>>,
) {
    let count = (total.as_secs_f64() * f64::from(rate)).round() as u64;
    let period_ns = 1e9 / f64::from(rate);
    for i in 0..count {
        let at = begin + Duration::from_nanos((i as f64 * period_ns) as u64);
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        // A closed queue means its connection gave up; the rest go on.
        let _ = queues[(i % queues.len() as u64) as usize].send(at);
    }
}

/// One client connection, HTTP/1.1 or HTTP/2.
enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Conn {
    async fn open(target: &Target) -> Result<Conn, String> {
        let stream = TcpStream::connect(&target.addr)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", target.addr))?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        if target.http2 {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("h2c handshake with {}: {e}", target.addr))?;
            tokio::spawn(connection);
            Ok(Conn::H2(sender))
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1.1 handshake with {}: {e}", target.addr))?;
            tokio::spawn(connection);
            Ok(Conn::H1(sender))
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Conn::H1(s) => s.is_closed(),
            Conn::H2(s) => s.is_closed(),
        }
    }
}

/// Whether `conn` is open and can carry the next request.
fn usable(conn: &Option<Conn>) -> bool {
    matches!(conn, Some(c) if !c.is_closed())
}

/// How one request ended: body bytes, or a failure kind.
type Outcome = Result<u64, String>;

/// Sends one request on an HTTP/1.1 connection and reads the whole answer.
async fn send_h1(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    target: &Target,
) -> Outcome {
    sender.ready().await.map_err(|_| "transport".to_owned())?;
    let request = target.request().map_err(|_| "request".to_owned())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|_| "transport".to_owned())?;
    finish(response).await
}

/// Sends one request as a new HTTP/2 stream and reads the whole answer.
async fn send_h2(
    mut sender: hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    target: &Target,
) -> Outcome {
    sender.ready().await.map_err(|_| "transport".to_owned())?;
    let request = target.request().map_err(|_| "request".to_owned())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|_| "transport".to_owned())?;
    finish(response).await
}

async fn finish(response: http::Response<hyper::body::Incoming>) -> Outcome {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|_| "body".to_owned())?;
    if !status.is_success() {
        return Err(format!("status {}", status.as_u16()));
    }
    Ok(body.to_bytes().len() as u64)
}

/// Records one outcome. `from` is the intended (open loop) or actual
/// (closed loop) send time: it decides whether the sample is in the window
/// and where its latency starts.
fn record(stats: &Shared, window: &Window, from: Instant, outcome: Outcome) {
    let done = Instant::now();
    let Ok(mut stats) = stats.lock() else {
        return;
    };
    match outcome {
        Ok(bytes) => {
            if window.records(done) {
                stats.ok_in_window += 1;
                stats.bytes += bytes;
            }
            if window.records(from) {
                let us = done.saturating_duration_since(from).as_micros();
                stats
                    .histogram
                    .saturating_record(u64::try_from(us).unwrap_or(u64::MAX));
            }
        }
        Err(kind) => {
            if window.records(from) || window.records(done) {
                *stats.errors.entry(kind).or_insert(0) += 1;
            }
        }
    }
}

/// Sends `future` with a time limit that never passes the deadline.
async fn bounded<F: std::future::Future<Output = Outcome>>(
    future: F,
    timeout: Duration,
    deadline: Instant,
) -> Outcome {
    let limit = timeout.min(deadline.saturating_duration_since(Instant::now()));
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| Err("timeout".to_owned()))
}

/// Opens a fresh connection after a failure; `None` (after counting an
/// error) if that fails too, to retry on the next request.
async fn reopen(target: &Target, stats: &Shared, window: &Window) -> Option<Conn> {
    match Conn::open(target).await {
        Ok(conn) => Some(conn),
        Err(_) => {
            record(stats, window, Instant::now(), Err("connect".to_owned()));
            tokio::time::sleep(Duration::from_millis(10)).await;
            None
        }
    }
}

/// One connection of the open loop: sends each intended time it is dealt.
async fn open_loop(
    conn: Conn,
    mut queue: mpsc::UnboundedReceiver<Instant>,
    target: Target,
    window: Window,
    timeout: Duration,
    stats: Shared,
    unsent: Arc<Mutex<u64>>,
) {
    let mut conn = Some(conn);
    let mut streams = JoinSet::new();
    while let Some(intended) = queue.recv().await {
        if Instant::now() >= window.deadline {
            if window.records(intended) {
                if let Ok(mut n) = unsent.lock() {
                    *n += 1;
                }
            }
            continue;
        }
        if !usable(&conn) {
            conn = reopen(&target, &stats, &window).await;
        }
        match conn.as_mut() {
            None => record(&stats, &window, intended, Err("connect".to_owned())),
            Some(Conn::H1(sender)) => {
                let outcome = bounded(send_h1(sender, &target), timeout, window.deadline).await;
                if outcome.is_err() {
                    conn = None; // the answer may still arrive: never reuse this connection
                }
                record(&stats, &window, intended, outcome);
            }
            Some(Conn::H2(sender)) => {
                let sender = sender.clone();
                let (target, stats) = (target.clone(), Arc::clone(&stats));
                streams.spawn(async move {
                    let outcome = bounded(send_h2(sender, &target), timeout, window.deadline).await;
                    record(&stats, &window, intended, outcome);
                });
                while streams.try_join_next().is_some() {}
            }
        }
    }
    while streams.join_next().await.is_some() {}
}

/// One connection of the closed loop: the next request as soon as the last
/// one is answered, until the end of the window.
async fn closed_loop(conn: Conn, target: Target, window: Window, timeout: Duration, stats: Shared) {
    let mut conn = Some(conn);
    while Instant::now() < window.end {
        if !usable(&conn) {
            conn = reopen(&target, &stats, &window).await;
        }
        let sent = Instant::now();
        let outcome = match conn.as_mut() {
            None => continue,
            Some(Conn::H1(sender)) => {
                bounded(send_h1(sender, &target), timeout, window.deadline).await
            }
            Some(Conn::H2(sender)) => {
                bounded(send_h2(sender.clone(), &target), timeout, window.deadline).await
            }
        };
        if outcome.is_err() {
            conn = None;
        }
        record(&stats, &window, sent, outcome);
    }
}

/// CPU ticks (utime + stime) of `pid`, from /proc/PID/stat.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Vm*:` line of /proc/PID/status, in KiB.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// CPU ticks of each process over exactly the recorded window, and its
/// memory at the end of it.
async fn watch_processes(pids: Vec<u32>, window: Window) -> serde_json::Value {
    tokio::time::sleep_until(window.start.into()).await;
    let before: Vec<Option<u64>> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let started = Instant::now();
    tokio::time::sleep_until(window.end.into()).await;
    let after: Vec<Option<u64>> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let measured = started.elapsed().as_secs_f64();
    let list: Vec<serde_json::Value> = pids
        .iter()
        .zip(before.iter().zip(after.iter()))
        .map(|(&pid, (b, a))| {
            serde_json::json!({
                "pid": pid,
                "cpu_ticks": match (b, a) { (Some(b), Some(a)) => Some(a - b), _ => None },
                "vm_rss_kib": status_kib(pid, "VmRSS"),
                "vm_hwm_kib": status_kib(pid, "VmHWM"),
            })
        })
        .collect();
    serde_json::json!({ "measured_s": measured, "list": list })
}
