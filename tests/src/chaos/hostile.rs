//! Hostile clients, each against one listener (address as seen from the
//! attacking host): request smuggling attempts, invalid HTTP/2 frames,
//! slowloris, idle connections, a flood of connections that send nothing,
//! and slow readers of large responses. Each returns what it measured and
//! whether the proxy refused or bounded it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use super::raw::{closed_within, exchange, RawReply};
use super::topology::Host;

/// One attack's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// What was measured, for the result line.
    pub measured: String,
    /// Whether it stayed within its allowance.
    pub pass: bool,
}

/// The smuggling attempts: name, request bytes, and the statuses that
/// count as refused. Each carries a second request in what a lenient
/// parser would read as the first one's body: it must never be answered.
pub const SMUGGLING: &[(&str, &str)] = &[
    (
        "Content-Length and Transfer-Encoding",
        "POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: api\r\n\r\n",
    ),
    (
        "two different Content-Length",
        "POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 0\r\nContent-Length: 38\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: api\r\n\r\n",
    ),
    (
        "Transfer-Encoding not ending in chunked",
        "POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: api\r\n\r\n",
    ),
    (
        "obs-fold header",
        "GET / HTTP/1.1\r\nHost: api\r\nX-Folded: a\r\n b\r\n\r\n",
    ),
    (
        "obs-fold Transfer-Encoding",
        "POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 38\r\nTransfer-Encoding:\r\n chunked\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: api\r\n\r\n",
    ),
    (
        "space before the colon",
        "POST / HTTP/1.1\r\nHost: api\r\nContent-Length : 38\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: api\r\n\r\n",
    ),
    (
        "two Host headers",
        "GET / HTTP/1.1\r\nHost: api\r\nHost: evil\r\n\r\n",
    ),
];

/// Sends each smuggling attempt on a connection of its own. Refused: a
/// 4xx (or the connection closed without an answer). Bounded: for both
/// `Content-Length` and `Transfer-Encoding`, RFC 9112 §6.3 also allows
/// framing by `Transfer-Encoding`, dropping `Content-Length` before
/// forwarding and closing the connection after the answer; then exactly
/// one answer, with `connection: close`, and the connection closed. The
/// request carried in the body is never answered either way.
pub async fn smuggling(host: &Host, addr: SocketAddr) -> Outcome {
    let mut parts = Vec::new();
    let mut pass = true;
    for (name, request) in SMUGGLING {
        let reply = exchange(host, addr, request.as_bytes(), Duration::from_secs(3)).await;
        let text = String::from_utf8_lossy(&reply.bytes).to_ascii_lowercase();
        let closes = reply.closed && text.contains("\r\nconnection: close\r\n");
        let (ok, how) = match reply.status() {
            Some(status) if (400..500).contains(&status) || status == 501 => {
                (reply.responses() == 1, status.to_string())
            }
            Some(status) => (
                reply.responses() == 1 && closes && name.contains("Transfer-Encoding"),
                format!("{status} then closed: {closes}"),
            ),
            None => (reply.closed, "closed".to_owned()),
        };
        pass &= ok;
        let second = if reply.responses() > 1 {
            ", SECOND ANSWER"
        } else {
            ""
        };
        parts.push(format!(
            "{name}: {how}{second}{}",
            if ok { "" } else { " (NOT refused)" }
        ));
    }
    Outcome {
        measured: parts.join("; "),
        pass,
    }
}

/// An HTTP/2 frame: 9-byte header and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The types of the frames in `bytes` (stops at a partial one).
fn frame_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = (usize::from(bytes[at]) << 16)
            | (usize::from(bytes[at + 1]) << 8)
            | usize::from(bytes[at + 2]);
        types.push(bytes[at + 3]);
        at += 9 + len;
    }
    types
}

/// Invalid HTTP/2 after a valid preface: DATA on stream 0, HEADERS with a
/// broken HPACK block, a SETTINGS frame of bad length, a WINDOW_UPDATE of
/// 0. Each must end the connection with a GOAWAY within 3 s.
pub async fn invalid_h2(host: &Host, addr: SocketAddr) -> Outcome {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let cases: [(&str, Vec<u8>); 4] = [
        ("DATA on stream 0", frame(0, 0, 0, b"x")),
        (
            "bad HPACK",
            frame(1, 0x4 | 0x1, 1, &[0xff, 0xff, 0xff, 0xff, 0x7f]),
        ),
        ("SETTINGS of length 5", frame(4, 0, 0, &[0, 1, 0, 0, 0])),
        ("WINDOW_UPDATE of 0", frame(8, 0, 0, &[0, 0, 0, 0])),
    ];
    let mut parts = Vec::new();
    let mut pass = true;
    for (name, bad) in cases {
        let mut request = PREFACE.to_vec();
        request.extend(frame(4, 0, 0, &[]));
        request.extend(bad);
        let reply: RawReply = exchange(host, addr, &request, Duration::from_secs(3)).await;
        let goaway = frame_types(&reply.bytes).contains(&7);
        let ok = goaway && reply.closed;
        pass &= ok;
        parts.push(format!(
            "{name}: {}",
            match (goaway, reply.closed) {
                (true, true) => "GOAWAY, closed",
                (false, true) => "closed without GOAWAY",
                (true, false) => "GOAWAY, left open",
                (false, false) => "no answer, left open",
            }
        ));
    }
    Outcome {
        measured: parts.join(", "),
        pass,
    }
}

/// `n` slowloris connections: a request head dribbled one header line
/// every 500 ms, never finished. Each must be closed by the proxy within
/// `bound` (its `--header-read-timeout` plus slack).
pub async fn slowloris(host: &Host, addr: SocketAddr, n: usize, bound: Duration) -> Outcome {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let Ok(mut stream) = host.connect_async(addr).await else {
            continue;
        };
        tasks.spawn(async move {
            let opened = Instant::now();
            let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: api\r\n").await;
            // Dribble until closed or the bound (plus a margin) passes.
            while opened.elapsed() < bound + Duration::from_secs(2) {
                if closed_within(&mut stream, Duration::from_millis(500)).await {
                    return Some(opened.elapsed());
                }
                if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    return Some(opened.elapsed());
                }
            }
            None
        });
    }
    let mut closed = 0;
    let mut slowest = Duration::ZERO;
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some(after)) = done {
            closed += 1;
            slowest = slowest.max(after);
        }
    }
    Outcome {
        measured: format!(
            "{closed}/{n} closed by the proxy, the last after {:.1} s (run {:.1} s)",
            slowest.as_secs_f64(),
            started.elapsed().as_secs_f64()
        ),
        pass: closed == n && slowest <= bound,
    }
}

/// Opens `n` connections that send nothing and keeps them; returns them.
pub fn open_idle(host: &Host, addr: SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
    host.connect_many(addr, n)
        .into_iter()
        .filter_map(Result::ok)
        .collect()
}

/// How many of `streams` the peer has closed (a non-blocking read sees
/// EOF or an error).
pub fn count_closed(streams: &[std::net::TcpStream]) -> usize {
    use std::io::Read;
    streams
        .iter()
        .filter(|s| {
            let _ = s.set_nonblocking(true);
            let mut buf = [0u8; 1024];
            let mut reader: &std::net::TcpStream = s;
            match reader.read(&mut buf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            }
        })
        .count()
}

/// `n` connections opened and closed at once without a byte, from
/// `threads` threads in the host, as fast as they go; returns how many
/// connected and how long it took.
pub fn flood(host: &Host, addr: SocketAddr, n: usize, threads: usize) -> (usize, Duration) {
    let started = Instant::now();
    let per = n / threads.max(1);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let ns = host.ns.clone();
            std::thread::spawn(move || {
                super::topology::in_netns(&ns, move || {
                    (0..per)
                        .filter(|_| {
                            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                                .is_ok()
                        })
                        .count()
                })
            })
        })
        .collect();
    let connected = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    (connected, started.elapsed())
}

/// `n` connections each asking for `size` bytes and reading none of them.
pub async fn slow_readers(
    host: &Host,
    addr: SocketAddr,
    n: usize,
    size: u64,
) -> Vec<tokio::net::TcpStream> {
    let mut streams = Vec::new();
    for _ in 0..n {
        let Ok(mut stream) = host.connect_async(addr).await else {
            continue;
        };
        let request = format!("GET /bytes/{size} HTTP/1.1\r\nHost: api\r\n\r\n");
        if stream.write_all(request.as_bytes()).await.is_ok() {
            streams.push(stream);
        }
    }
    streams
}
