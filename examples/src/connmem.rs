//! `tether-connmem`: what idle connections cost a server, in resident memory.
//!
//! Opens `--connections` connections to `--addr` and holds them, reading the
//! server's VmRSS (`/proc/PID/status` of `--pid`) three times: before, with
//! every connection open and never used, and after one keep-alive request
//! on each (answered in full; the connections stay open and idle). Prints
//! KiB per connection for both phases, one `key=value` line per figure, for
//! `deploy/scripts/bench/connmem.sh`.
//!
//! ```text
//! tether-connmem --addr 127.0.0.1:16904 --pid 1234 [--connections 10000] [--host api]
//!     [--proto h1|h2] [--identity-dir pki/web --trust-bundle pki/ca.pem --server api]
//! ```
//!
//! With `--identity-dir` it connects as a mesh peer: TLS 1.3 with that
//! identity's certificate, the server verified as `--server` (ALPN
//! `http/1.1`, or `h2` with `--proto h2`). HTTP/1.1 is written and read
//! by hand (one small buffer per read, dropped after the answer), so that
//! the client's own memory stays small at 10,000 connections.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tether_certs::{Identity, IdentityStore, SpiffeId, TrustBundle};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections opened (or requests sent) at once: enough to be quick, few
/// enough that a one-thread server's accept queue never overflows.
const CONCURRENCY: usize = 64;

/// Longest any one connect, handshake or request may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest response head read (the sample app's answers are far smaller).
const MAX_HEAD: usize = 16 * 1024;

#[derive(Parser)]
#[command(
    name = "tether-connmem",
    about = "Resident memory per idle connection of a server"
)]
struct Args {
    /// The server's listener.
    #[arg(long)]
    addr: SocketAddr,
    /// The server's process id (its VmRSS is read).
    #[arg(long)]
    pid: u32,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Host header / authority of the request.
    #[arg(long, default_value = "api")]
    host: String,
    /// Path of the request.
    #[arg(long, default_value = "/")]
    path: String,
    /// HTTP/1.1 (one keep-alive request per connection) or HTTP/2 (h2c
    /// prior knowledge, or ALPN h2 with TLS; one stream per connection).
    #[arg(long, value_enum, default_value = "h1")]
    proto: Proto,
    /// Mesh identity (identity.pem, identity-key.pem) to connect with over TLS.
    #[arg(long, requires = "trust_bundle")]
    identity_dir: Option<PathBuf>,
    /// CA bundle that verifies the server.
    #[arg(long)]
    trust_bundle: Option<PathBuf>,
    /// The service the server must prove it is.
    #[arg(long, default_value = "api")]
    server: String,
    /// Trust domain of the mesh.
    #[arg(long, default_value = "tether.local")]
    trust_domain: String,
    /// Wait after each phase before reading the server's memory (Tether
    /// gives an idle connection's buffers back after 1 to 2 s).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    settle: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Proto {
    H1,
    H2,
}

/// Plain TCP or a TLS client stream.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// One held connection.
enum Held {
    /// HTTP/1.1: the stream itself.
    H1(Box<dyn Io>),
    /// HTTP/2: the stream is inside the connection task; the sender keeps it.
    H2 {
        _sender: hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    },
    /// Before the HTTP/2 handshake.
    Raw(Box<dyn Io>),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tether-connmem: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let tls = match &args.identity_dir {
        Some(dir) => Some(tls_connector(&args, dir)?),
        None => None,
    };
    let args = Arc::new(args);
    let before = rss_kib(args.pid)?;

    let mut held = Vec::with_capacity(args.connections);
    let mut index = 0;
    while index < args.connections {
        let batch = CONCURRENCY.min(args.connections - index);
        let opened = futures_util::future::join_all(
            (0..batch).map(|_| open(Arc::clone(&args), tls.clone())),
        )
        .await;
        for connection in opened {
            held.push(connection?);
        }
        index += batch;
    }
    tokio::time::sleep(args.settle).await;
    let opened = rss_kib(args.pid)?;

    let mut used = Vec::with_capacity(held.len());
    let mut pending = held.into_iter();
    loop {
        let batch: Vec<Held> = pending.by_ref().take(CONCURRENCY).collect();
        if batch.is_empty() {
            break;
        }
        let answered =
            futures_util::future::join_all(batch.into_iter().map(|c| request(&args, c))).await;
        for connection in answered {
            used.push(connection?);
        }
    }
    tokio::time::sleep(args.settle).await;
    let after = rss_kib(args.pid)?;

    let n = args.connections as f64;
    println!("connections={}", args.connections);
    println!("rss_before_kib={before}");
    println!("rss_opened_kib={opened}");
    println!("rss_used_kib={after}");
    println!(
        "kib_per_idle_never_used={:.2}",
        (opened as f64 - before as f64) / n
    );
    println!(
        "kib_per_idle_after_one_request={:.2}",
        (after as f64 - before as f64) / n
    );
    drop(used);
    Ok(())
}

/// The server's resident set, in KiB.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn tls_connector(args: &Args, dir: &std::path::Path) -> Result<Arc<Connector>, String> {
    let bundle_path = args
        .trust_bundle
        .as_ref()
        .ok_or("--trust-bundle is required with --identity-dir")?;
    let pem = std::fs::read_to_string(bundle_path).map_err(|e| e.to_string())?;
    let bundle = TrustBundle::from_pem(&pem).map_err(|e| e.to_string())?;
    let identity = Identity::load_dir(dir).map_err(|e| e.to_string())?;
    let store = IdentityStore::with_identity(identity, bundle).map_err(|e| e.to_string())?;
    let expected =
        SpiffeId::service(&args.trust_domain, &args.server).map_err(|e| e.to_string())?;
    let mut config = (*tether_certs::client_config(&store, expected.clone())
        .map_err(|e| e.to_string())?)
    .clone();
    config.alpn_protocols = vec![match args.proto {
        Proto::H1 => b"http/1.1".to_vec(),
        Proto::H2 => b"h2".to_vec(),
    }];
    Ok(Arc::new(Connector {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        name: expected.server_name().map_err(|e| e.to_string())?,
    }))
}

/// TLS as a mesh peer.
struct Connector {
    connector: tokio_rustls::TlsConnector,
    name: rustls_pki_types::ServerName<'static>,
}

async fn open(args: Arc<Args>, tls: Option<Arc<Connector>>) -> Result<Held, String> {
    let connect = async {
        let tcp = TcpStream::connect(args.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", args.addr))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match tls {
            Some(tls) => Box::new(
                tls.connector
                    .connect(tls.name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?,
            ),
            None => Box::new(tcp),
        };
        Ok::<_, String>(match args.proto {
            Proto::H1 => Held::H1(io),
            Proto::H2 => Held::Raw(io),
        })
    };
    tokio::time::timeout(STEP_TIMEOUT, connect)
        .await
        .map_err(|_| "connect timed out".to_owned())?
}

async fn request(args: &Args, connection: Held) -> Result<Held, String> {
    let exchange = async {
        match connection {
            Held::H1(mut io) => {
                let head = format!("GET {} HTTP/1.1\r\nhost: {}\r\n\r\n", args.path, args.host);
                io.write_all(head.as_bytes())
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                read_response(&mut io).await?;
                Ok(Held::H1(io))
            }
            Held::Raw(io) => {
                let (mut sender, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                        .await
                        .map_err(|e| format!("h2 handshake: {e}"))?;
                tokio::spawn(connection);
                let request = http::Request::builder()
                    .uri(format!("http://{}{}", args.host, args.path))
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| e.to_string())?;
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|e| format!("h2 request: {e}"))?;
                if !response.status().is_success() {
                    return Err(format!("status {}", response.status()));
                }
                response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("h2 body: {e}"))?;
                Ok(Held::H2 { _sender: sender })
            }
            Held::H2 { .. } => Err("already used".to_owned()),
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, exchange)
        .await
        .map_err(|_| "request timed out".to_owned())?
}

/// Reads one HTTP/1.1 response with a `content-length` body, status 2xx.
async fn read_response(io: &mut Box<dyn Io>) -> Result<(), String> {
    let mut buf = Vec::with_capacity(4096);
    let (head_len, body_len) = loop {
        let mut chunk = [0u8; 4096];
        let n = io
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before the response".to_owned());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(|e| e.to_string())?;
            let status = head.split(' ').nth(1).unwrap_or("");
            if !status.starts_with('2') {
                return Err(format!("response: {}", head.lines().next().unwrap_or("")));
            }
            let length = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .ok_or("response without content-length")?;
            break (end + 4, length);
        }
        if buf.len() > MAX_HEAD {
            return Err("response head too long".to_owned());
        }
    };
    let mut remaining = (head_len + body_len).saturating_sub(buf.len());
    while remaining > 0 {
        let mut chunk = [0u8; 4096];
        let n = io
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed in the body".to_owned());
        }
        remaining = remaining.saturating_sub(n);
    }
    Ok(())
}
