//! The address an instance is registered at when none is configured.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

/// Where the UDP socket "connects" to find the host's outgoing address:
/// TEST-NET-1 (RFC 5737), never routed to anything. Connecting a UDP
/// socket sends no packet; the kernel only picks the route and the source
/// address it would use.
const PROBE_DESTINATION: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 9);

/// The address other sidecars reach the inbound listener at: the one it is
/// bound to when that is a specific address, else the host's (or pod's)
/// first non-loopback IPv4 address, i.e. the source address of its default
/// route. `None` when the host has no such address (no default route).
pub fn default_address(inbound: IpAddr) -> Option<IpAddr> {
    if !inbound.is_unspecified() {
        return Some(inbound);
    }
    host_ipv4()
}

/// The source address of the host's default IPv4 route.
fn host_ipv4() -> Option<IpAddr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect(PROBE_DESTINATION).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_specific_inbound_address_is_used_as_is() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(default_address(ip), Some(ip));
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(default_address(loopback), Some(loopback));
    }

    #[test]
    fn a_wildcard_inbound_address_becomes_a_routable_ipv4_or_none() {
        if let Some(ip) = default_address(IpAddr::V4(Ipv4Addr::UNSPECIFIED)) {
            assert!(
                ip.is_ipv4() && !ip.is_loopback() && !ip.is_unspecified(),
                "{ip}"
            );
        }
    }
}
