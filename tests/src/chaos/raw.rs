//! Raw TCP clients and servers for the hostile scenarios: bytes written
//! as given (malformed on purpose), answers read until the peer closes or
//! a bound passes; and a peer that accepts connections and never answers.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::topology::Host;

/// What came back on one raw connection.
#[derive(Debug, Default)]
pub struct RawReply {
    /// Bytes read.
    pub bytes: Vec<u8>,
    /// Whether the peer closed (EOF or reset) within the bound.
    pub closed: bool,
}

impl RawReply {
    /// The status of the first HTTP/1 response, if any.
    pub fn status(&self) -> Option<u16> {
        let text = String::from_utf8_lossy(&self.bytes);
        text.strip_prefix("HTTP/1.1 ")
            .or_else(|| text.strip_prefix("HTTP/1.0 "))?
            .get(..3)?
            .parse()
            .ok()
    }

    /// How many HTTP/1 responses the bytes hold (status lines).
    pub fn responses(&self) -> usize {
        String::from_utf8_lossy(&self.bytes)
            .matches("HTTP/1.1 ")
            .count()
    }
}

/// Connects from `host`, writes `request`, and reads until the peer closes
/// or `within` passes.
pub async fn exchange(host: &Host, addr: SocketAddr, request: &[u8], within: Duration) -> RawReply {
    let mut reply = RawReply::default();
    let Ok(mut stream) = host.connect_async(addr).await else {
        reply.closed = true;
        return reply;
    };
    if stream.write_all(request).await.is_err() {
        reply.closed = true;
        return reply;
    }
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return reply,
            Ok(Ok(0)) | Ok(Err(_)) => {
                reply.closed = true;
                return reply;
            }
            Ok(Ok(n)) => reply.bytes.extend_from_slice(&buf[..n]),
        }
    }
}

/// Waits until `stream`'s peer closes it (EOF or error), up to `within`;
/// returns whether it did. Reads and discards what arrives.
pub async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Established TCP connections in `host` whose local port is `port`
/// (from `ss`).
pub fn established_on(host: &Host, port: u16) -> usize {
    let filter = format!("( sport = :{port} )");
    let out = host.run("ss", &["-Htn", "state", "established", &filter]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

impl Host {
    /// Starts a peer on `0.0.0.0:port` that accepts every connection and
    /// never reads or writes (a hung process behind a live kernel: the
    /// half-open peer). Returns once it listens.
    pub fn start_black_hole(&mut self, dir: &std::path::Path, port: u16) -> u32 {
        let script = format!(
            "import socket, time\n\
             s = socket.socket()\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('0.0.0.0', {port}))\ns.listen(4096)\n\
             held = []\nprint('ready', flush=True)\n\
             while True:\n    c, _ = s.accept()\n    held.append(c)\n"
        );
        let log = dir.join(format!("{}-black-hole.log", self.name));
        let args = ["-c".to_owned(), script];
        let pid = self.spawn(std::path::Path::new("/usr/bin/python3"), &args, &log);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ready")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "black hole on {} did not start",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        pid
    }
}
