//! The opening bytes of a connection served as HTTP/1.1 or HTTP/2 (prior
//! knowledge) on one port: an HTTP/1 request line or the HTTP/2 connection
//! preface. hyper's detection alone serves anything that is not exactly the
//! preface as HTTP/1 and answers it with `400`.
//!
//! A first line shaped like a request line (`A B C`, visible ASCII) whose
//! version is not `HTTP/1.0` or `HTTP/1.1` closes the connection instead:
//! the client speaks another protocol, most likely HTTP/2 with a broken
//! preface (`PRI * HTTP/2.0` then wrong bytes), and RFC 9113 §3.4 makes an
//! invalid preface a connection error; an HTTP/1 `400` is no answer such a
//! client can read. Any other malformed line is a malformed HTTP/1 request
//! and still gets hyper's `400`.

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How much more is asked of the socket per read while the first line is
/// incomplete; most first reads hold the whole request head.
const READ_CHUNK: usize = 1024;

/// What the opening bytes of a connection say.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Opening {
    /// HTTP: the HTTP/2 preface, an HTTP/1 request line, or too long or
    /// too short to tell (hyper then answers or closes as it always does).
    Http,
    /// A complete request line of another protocol version: close.
    Neither,
    /// Not enough bytes yet.
    Undecided,
}

/// Judges the bytes received so far. `limit` is the longest request head
/// the listener accepts: a first line longer than that is left to hyper,
/// which answers it.
pub(super) fn judge(received: &[u8], limit: usize) -> Opening {
    let n = received.len().min(H2_PREFACE.len());
    if received[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Opening::Http
        } else {
            Opening::Undecided
        };
    }
    // HTTP/1 servers skip empty lines before the request line (RFC 9112
    // §2.2); hyper does too.
    let start = received
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(received.len());
    let rest = &received[start..];
    let Some(end) = rest.iter().position(|&b| b == b'\n') else {
        return if received.len() >= limit {
            Opening::Http
        } else {
            Opening::Undecided
        };
    };
    let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
    let visible = line.iter().all(|&b| b == b' ' || b.is_ascii_graphic());
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    match parts[..] {
        [method, target, version]
            if visible
                && !method.is_empty()
                && !target.is_empty()
                && version != b"HTTP/1.1"
                && version != b"HTTP/1.0" =>
        {
            Opening::Neither
        }
        _ => Opening::Http,
    }
}

/// Reads into `received` (which may already hold the first bytes) until
/// [`judge`] decides or the peer stops sending. Returns whether the
/// connection is HTTP; a peer that closes first counts as HTTP, so hyper
/// sees the same end it would have seen. The caller bounds the wait with
/// a timeout and keeps `received` either way, to replay it to hyper.
pub(super) async fn read_opening<S: AsyncRead + Unpin>(
    stream: &mut S,
    received: &mut BytesMut,
    limit: usize,
) -> io::Result<bool> {
    loop {
        match judge(received, limit) {
            Opening::Http => return Ok(true),
            Opening::Neither => return Ok(false),
            Opening::Undecided => {}
        }
        received.reserve(READ_CHUNK);
        if stream.read_buf(received).await? == 0 {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const LIMIT: usize = 64;

    #[test]
    fn the_http2_preface_and_its_beginnings_are_http() {
        assert_eq!(judge(H2_PREFACE, LIMIT), Opening::Http);
        assert_eq!(judge(b"PRI * HTTP/2.0\r\n", LIMIT), Opening::Undecided);
        assert_eq!(judge(b"", LIMIT), Opening::Undecided);
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(judge(&more, LIMIT), Opening::Http);
    }

    #[test]
    fn http1_request_lines_are_http() {
        assert_eq!(
            judge(b"GET / HTTP/1.1\r\nhost: a\r\n", LIMIT),
            Opening::Http
        );
        assert_eq!(judge(b"POST /x HTTP/1.0\n", LIMIT), Opening::Http);
        assert_eq!(judge(b"\r\nGET / HTTP/1.1\r\n", LIMIT), Opening::Http);
        assert_eq!(judge(b"GET / HTTP/1.1", LIMIT), Opening::Undecided);
        // A bad method or target is still HTTP/1: hyper answers 400.
        assert_eq!(judge(b"G{T / HTTP/1.1\r\n", LIMIT), Opening::Http);
    }

    #[test]
    fn a_first_line_that_is_neither_closes() {
        assert_eq!(
            judge(b"INVALID CONNECTION PREFACE\r\n\r\n", LIMIT),
            Opening::Neither
        );
        assert_eq!(
            judge(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", LIMIT),
            Opening::Neither,
            "starts like the preface but is not it"
        );
        assert_eq!(judge(b"GET / HTTP/2.0\r\n", LIMIT), Opening::Neither);
    }

    #[test]
    fn other_malformed_lines_are_left_to_hyper() {
        // Not shaped like a request line: a malformed HTTP/1 request, 400.
        assert_eq!(judge(b"GET /\r\n", LIMIT), Opening::Http);
        assert_eq!(judge(b"\x16\x03\x01garbage\r\n", LIMIT), Opening::Http);
        assert_eq!(judge(b"GET  / HTTP/2.0\r\n", LIMIT), Opening::Http);
        assert_eq!(judge(b"A B C D\r\n", LIMIT), Opening::Http);
    }

    #[test]
    fn a_first_line_past_the_limit_is_left_to_hyper() {
        let long = format!("GET /{} HTTP/1.1", "a".repeat(LIMIT));
        assert_eq!(judge(long.as_bytes(), LIMIT), Opening::Http);
    }

    #[tokio::test]
    async fn a_line_in_pieces_is_read_to_its_end() {
        let (mut near, mut far) = tokio::io::duplex(64);
        let reading = tokio::spawn(async move {
            let mut received = BytesMut::from(&b"I"[..]);
            let http = read_opening(&mut near, &mut received, LIMIT).await;
            (http.ok(), received)
        });
        far.write_all(b"NVALID CONNECTION").await.ok();
        far.write_all(b" PREFACE\r\n\r\n").await.ok();
        let (http, received) = reading.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(http, Some(false));
        assert!(received.starts_with(b"INVALID CONNECTION PREFACE\r\n"));
    }

    #[tokio::test]
    async fn a_peer_that_closes_early_is_left_to_hyper() {
        let (mut near, far) = tokio::io::duplex(64);
        drop(far);
        let mut received = BytesMut::from(&b"GE"[..]);
        let http = read_opening(&mut near, &mut received, LIMIT).await;
        assert_eq!(http.ok(), Some(true));
        assert_eq!(&received[..], b"GE");
    }
}
