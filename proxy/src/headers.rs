//! Header names Tether adds to requests, read by more than one layer.

use http::HeaderName;

/// The header every mirrored copy carries (`tether-mirror: 1`): the
/// shadow side, its span and its access log tell copies from real traffic.
pub const MIRROR_HEADER: HeaderName = HeaderName::from_static("tether-mirror");
