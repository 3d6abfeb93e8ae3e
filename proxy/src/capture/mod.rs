//! Transparent capture: the nat rules that `tether-proxy init` writes into a
//! pod's (or container group's) network namespace so that the app's TCP goes
//! through its sidecar without the app being told (the job of istio-init or
//! linkerd-init).
//!
//! - Outbound: every TCP connection the app opens is redirected to the
//!   outbound listener, except the proxy's own (by uid, so it never loops),
//!   traffic that stays on the loopback interface, and the excluded
//!   destination CIDRs and ports.
//! - Inbound: TCP arriving for the app's ports is redirected to the inbound
//!   listener, except the admin port, the inbound port itself and the
//!   excluded ports.
//!
//! [`rules`] turns [`CaptureSettings`] into `iptables-restore` input (pure,
//! tested here); [`iptables`] finds the back end and applies it atomically,
//! idempotently, or removes it.

pub mod cidr;
pub mod iptables;
pub mod rules;

pub use cidr::{Cidr, CidrError};
pub use iptables::{Backend, CaptureError, Change};
pub use rules::{CaptureSettings, RuleSet};

/// The uid (and gid) the proxy runs as in the images; traffic it originates
/// is never captured. 1337 is what Istio and Linkerd use, so operators know it.
pub const DEFAULT_PROXY_UID: u32 = 1337;
