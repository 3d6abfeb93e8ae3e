//! Checks of `services.<name>.outbound_port`: the local port on which every
//! sidecar accepts the app's connections for a `tcp` service. Mirrors what a
//! proxy refuses in a snapshot (proxy `discovery::build`).

use std::collections::BTreeMap;

use tether_api::Protocol;

use super::validate::Problems;
use super::ServiceFile;

/// A tcp service needs a port from 1 to 65535, used by no other service;
/// other protocols have none.
pub(super) fn check(problems: &mut Problems<'_>, services: &BTreeMap<String, ServiceFile>) {
    let mut taken: BTreeMap<u64, &str> = BTreeMap::new();
    for (name, service) in services {
        let at = ["services", name.as_str(), "outbound_port"];
        match (service.protocol, service.outbound_port) {
            (Protocol::Tcp, None) => problems.at(
                &["services", name, "protocol"],
                "protocol tcp needs outbound_port: the local port every sidecar accepts the app's connections for it on (e.g. `outbound_port: 15306`)",
            ),
            (Protocol::Tcp, Some(port)) if !(1..=65535).contains(&port) => {
                problems.at(&at, format!("outbound_port {port}: expected 1 to 65535"));
            }
            (Protocol::Tcp, Some(port)) => {
                if let Some(other) = taken.insert(port, name) {
                    problems.at(
                        &at,
                        format!("outbound_port {port} is also `{other}`'s: expected one port per service"),
                    );
                }
            }
            (protocol, Some(_)) => problems.at(
                &at,
                format!(
                    "outbound_port is only for protocol tcp (this service is {}): remove it, or set `protocol: tcp`",
                    name_of(protocol)
                ),
            ),
            (_, None) => {}
        }
    }
}

/// The port to put in snapshots, once [`check`] found it valid.
pub(super) fn port(protocol: Protocol, port: Option<u64>) -> Option<u16> {
    let port = u16::try_from(port?).ok().filter(|p| *p != 0)?;
    (protocol == Protocol::Tcp).then_some(port)
}

fn name_of(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Http => "http",
        Protocol::Http2 => "http2",
        Protocol::Grpc => "grpc",
        Protocol::Tcp => "tcp",
    }
}
