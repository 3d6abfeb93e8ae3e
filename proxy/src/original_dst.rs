//! The original destination of a connection that `tether-proxy init`'s nat
//! rules redirected (REDIRECT) to a listener: the address the app meant to
//! reach, read with `getsockopt(SOL_IP, SO_ORIGINAL_DST)` (socket2's safe
//! getter, so no `unsafe` here).
//!
//! A connection made to the listener itself (the explicit modes:
//! `127.0.0.1:15001` + `Host`) has no original destination other than the
//! listener's own address: without conntrack the kernel says `ENOENT`,
//! with it the original tuple is the listener's. Both read as "not
//! captured", so capture is detected per connection and needs no flag.

use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// The address a captured connection was sent to, carried in the
/// extensions of each request read from it (HTTP), so routing can pass an
/// unknown authority through to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginalDst(pub SocketAddr);

/// The original destination of `stream` when nat rules redirected it here,
/// `None` when the peer connected to this listener's address itself (or the
/// kernel cannot tell).
pub fn of(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let socket = SockRef::from(stream);
    let original = match local {
        SocketAddr::V4(_) => socket.original_dst_v4(),
        SocketAddr::V6(_) => socket.original_dst_v6(),
    };
    let original = original.ok()?.as_socket()?;
    captured(local, original).then_some(original)
}

/// Whether `original` is another address than the listener's `local` one
/// (an IPv4-mapped IPv6 address counts as its IPv4 address).
fn captured(local: SocketAddr, original: SocketAddr) -> bool {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    canonical(local) != canonical(original)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listeners_own_address_is_not_captured() {
        let local: SocketAddr = "127.0.0.1:15001".parse().unwrap();
        assert!(!captured(local, local));
        assert!(!captured(
            local,
            "[::ffff:127.0.0.1]:15001".parse().unwrap()
        ));
        assert!(captured(local, "10.0.0.2:8080".parse().unwrap()));
        assert!(captured(local, "127.0.0.1:8080".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_direct_connection_has_no_original_destination() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert_eq!(of(&accepted), None);
    }
}
