//! The plaintext preamble: what tells an inbound listener without TLS that a
//! connection carries an opaque TCP stream rather than HTTP.
//!
//! With mTLS the ALPN protocol `tether-tcp` says it; in a plaintext mesh the
//! outbound sidecar writes [`PREAMBLE`] first. No HTTP/1 request line
//! (`METHOD SP ...`) or HTTP/2 preface (`PRI * ...`) starts with it, so a
//! mismatch is always found within the first few bytes.

use std::io;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Written by the outbound sidecar before the app's bytes on a plaintext
/// TCP stream, consumed by the inbound sidecar.
pub const PREAMBLE: &[u8] = b"TETHER-TCP/1\r\n";

/// What the first bytes of a plaintext connection turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Detected {
    /// The preamble, now consumed: the rest is the TCP stream.
    Tcp,
    /// Anything else (HTTP): the bytes read so far, to replay.
    Other(Bytes),
}

/// Whether `received` (the first bytes of a connection) still agrees with
/// the preamble: `Some(true)` when complete, `Some(false)` while partial,
/// `None` at the first byte that differs.
pub fn matches(received: &[u8]) -> Option<bool> {
    let n = received.len().min(PREAMBLE.len());
    (received[..n] == PREAMBLE[..n]).then_some(n == PREAMBLE.len())
}

/// Reads the first bytes of `stream` as they arrive and compares them with
/// the preamble, stopping at the first mismatch, so HTTP (which never starts
/// with it) is not held back waiting for more. Reads at most the preamble's
/// length, so none of a TCP stream's own bytes are taken. The caller bounds
/// the wait with a timeout.
pub async fn detect<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Detected> {
    let mut received = [0u8; PREAMBLE.len()];
    let mut have = 0;
    loop {
        let n = stream.read(&mut received[have..]).await?;
        if n == 0 {
            // Closed before a decision: whatever came is not a TCP stream.
            return Ok(Detected::Other(Bytes::copy_from_slice(&received[..have])));
        }
        have += n;
        match matches(&received[..have]) {
            Some(true) => return Ok(Detected::Tcp),
            Some(false) => continue,
            None => return Ok(Detected::Other(Bytes::copy_from_slice(&received[..have]))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::poll_immediate;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn matching_stops_at_the_first_difference() {
        assert_eq!(matches(b""), Some(false));
        assert_eq!(matches(b"TETH"), Some(false));
        assert_eq!(matches(PREAMBLE), Some(true));
        assert_eq!(matches(b"TRACE / HTTP/1.1"), None, "differs at byte 2");
        assert_eq!(matches(b"G"), None);
        assert_eq!(matches(b"PRI * HTTP/2.0"), None);
        assert_eq!(matches(b"TETHER-TCP/2\r\n"), None);
    }

    #[tokio::test]
    async fn a_preamble_in_pieces_is_found_and_consumed_exactly() {
        let (mut near, mut far) = tokio::io::duplex(64);
        let mut detecting = Box::pin(async move {
            let detected = detect(&mut near).await;
            let mut rest = Vec::new();
            let _ = near.read_to_end(&mut rest).await;
            (detected.ok(), rest)
        });
        far.write_all(&PREAMBLE[..3])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            poll_immediate(&mut detecting).await.is_none(),
            "a partial preamble waits for more"
        );
        far.write_all(&PREAMBLE[3..9])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(poll_immediate(&mut detecting).await.is_none());
        // The rest of the preamble and the stream's first bytes together.
        far.write_all(&[&PREAMBLE[9..], b"hello"].concat())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop(far);
        let (detected, rest) = detecting.await;
        assert_eq!(detected, Some(Detected::Tcp));
        assert_eq!(rest, b"hello", "nothing past the preamble was taken");
    }

    #[tokio::test]
    async fn http_passes_through_at_its_first_byte() {
        for request in [
            &b"G"[..],
            b"GET / HTTP/1.1\r\nHost: api\r\n\r\n",
            b"PRI * HTTP/2.0",
        ] {
            let (mut near, mut far) = tokio::io::duplex(64);
            far.write_all(request)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            // The far side stays open: a decision must not wait for more bytes.
            let detected = poll_immediate(detect(&mut near)).await;
            match detected {
                Some(Ok(Detected::Other(read))) => assert!(request.starts_with(&read)),
                other => panic!("{request:?}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_near_miss_is_replayed_whole() {
        let (mut near, mut far) = tokio::io::duplex(64);
        far.write_all(b"TETHX")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let detected = detect(&mut near).await.ok();
        assert_eq!(
            detected,
            Some(Detected::Other(Bytes::from_static(b"TETHX")))
        );
        let (mut near, far) = tokio::io::duplex(64);
        drop(far);
        let detected = detect(&mut near).await.ok();
        assert_eq!(
            detected,
            Some(Detected::Other(Bytes::new())),
            "closed at once"
        );
    }
}
