//! Is a captured connection HTTP? An app's connection redirected to the
//! outbound listener may carry any protocol; HTTP is served (routed by
//! `Host`), anything else is handed over as an opaque stream.
//!
//! HTTP clients speak first: an HTTP/1 method and a space, or the HTTP/2
//! preface. A server-first protocol (SMTP, MySQL) sends nothing until the
//! server greets it, so the wait for the first bytes is short and its end
//! means "not HTTP".

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a captured connection may stay silent before it is taken for a
/// server-first protocol and relayed (Linkerd's detection timeout). Not
/// shorter: an HTTP client pool may open a connection it then does not use
/// at once (hyper's pool races a connect against a connection coming back
/// idle and keeps the loser), and a silent HTTP connection taken for
/// opaque TCP loses the request it later carries. A server-first client
/// waits this long for its greeting, once per connection: declare such
/// destinations as `tcp` services (no wait) or exclude their port.
pub(super) const DETECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a plaintext connection on the inbound listener may stay silent
/// before it is relayed to the app as opaque TCP: every sidecar writes the
/// preamble or its request at once, and a connection taken for TCP by
/// mistake still reaches the app with its bytes.
pub(super) const INBOUND_DETECT_TIMEOUT: Duration = Duration::from_millis(500);

/// What starts an HTTP request: the methods of RFC 9110 and RFC 5789
/// followed by a space, and the HTTP/2 preface.
const HTTP_OPENINGS: &[&[u8]] = &[
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
];

/// What the first bytes of a captured connection say.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Sniffed {
    /// An HTTP request or the HTTP/2 preface: serve it as HTTP.
    Http(Bytes),
    /// Anything else: relay it as opaque bytes.
    Opaque(Bytes),
    /// Nothing within [`DETECT_TIMEOUT`] (a server-first protocol, or an
    /// HTTP client slower than that): relayed as opaque too, and counted.
    Silent(Bytes),
}

/// Whether `received` starts an HTTP request (`Some(true)`), cannot
/// (`Some(false)`), or may once more bytes arrive (`None`).
fn judge(received: &[u8]) -> Option<bool> {
    let mut undecided = false;
    for opening in HTTP_OPENINGS {
        if received.starts_with(opening) {
            return Some(true);
        }
        undecided |= opening.starts_with(received);
    }
    (!undecided).then_some(false)
}

/// Reads the first bytes of `stream` until they say HTTP or not, within
/// [`DETECT_TIMEOUT`]. Returns the bytes read, to replay; an error when the
/// connection failed or closed before sending anything.
pub(super) async fn sniff<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Sniffed> {
    let mut received = BytesMut::with_capacity(64);
    let read = async {
        loop {
            if let Some(http) = judge(&received) {
                return Ok::<bool, io::Error>(http);
            }
            if stream.read_buf(&mut received).await? == 0 {
                return if received.is_empty() {
                    Err(io::ErrorKind::UnexpectedEof.into())
                } else {
                    Ok(false)
                };
            }
        }
    };
    let judged = match tokio::time::timeout(DETECT_TIMEOUT, read).await {
        Ok(result) => Some(result?),
        Err(_) => None,
    };
    let received = received.freeze();
    Ok(match judged {
        Some(true) => Sniffed::Http(received),
        Some(false) => Sniffed::Opaque(received),
        None => Sniffed::Silent(received),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_the_preface_are_http() {
        assert_eq!(judge(b"GET / HTTP/1.1\r\n"), Some(true));
        assert_eq!(judge(b"OPTIONS *"), Some(true));
        assert_eq!(judge(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Some(true));
        assert_eq!(judge(b"P"), None);
        assert_eq!(judge(b"PO"), None);
        assert_eq!(judge(b""), None);
    }

    #[test]
    fn other_protocols_are_opaque_at_their_first_differing_byte() {
        assert_eq!(judge(b"\x16\x03\x01"), Some(false));
        assert_eq!(judge(b"GETX"), Some(false));
        assert_eq!(judge(b"get / HTTP/1.1"), Some(false));
        assert_eq!(judge(b"TETHER-TCP/1\r\n"), Some(false));
    }

    #[tokio::test]
    async fn silence_is_told_apart_after_the_timeout() {
        tokio::time::pause();
        let (mut client, _server) = tokio::io::duplex(64);
        let sniffed = sniff(&mut client).await.unwrap();
        assert_eq!(sniffed, Sniffed::Silent(Bytes::new()));
    }

    #[tokio::test]
    async fn a_request_split_across_writes_is_http() {
        let (mut ours, mut theirs) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            theirs.write_all(b"PO").await.unwrap();
            tokio::task::yield_now().await;
            theirs.write_all(b"ST /x HTTP/1.1\r\n").await.unwrap();
            theirs
        });
        let sniffed = sniff(&mut ours).await.unwrap();
        let _theirs = writer.await.unwrap();
        match sniffed {
            Sniffed::Http(bytes) => assert!(bytes.starts_with(b"POST ")),
            other => panic!("{other:?}"),
        }
    }
}
