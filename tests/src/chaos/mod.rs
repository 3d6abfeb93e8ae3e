//! The chaos suite's harness (tests/tests/chaos.rs): hosts in network
//! namespaces on a bridge, faults on their links (`tc netem`, `iptables`),
//! the real binaries on them, a steady bounded load, resource sampling and
//! result lines. Needs root, iproute2 and iptables.

pub mod faults;
pub mod hostile;
pub mod mesh;
pub mod raw;
pub mod report;
pub mod topology;
pub mod usage;

pub use faults::Netem;
pub use mesh::{get_in, get_in_as, request_in, run_load, LoadReport, LoadSpec, Sidecar};
pub use report::verdict;
pub use topology::{in_netns, Host, Topology};
pub use usage::{usage, Series, Usage};

/// How long the suite runs: bounded (CI, the default) or full
/// (`TETHER_CHAOS=full`, the documented run with the 30-minute soak).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each scenario in about 20 s.
    Bounded,
    /// The documented durations.
    Full,
}

impl Mode {
    /// From `TETHER_CHAOS`.
    pub fn from_env() -> Self {
        match std::env::var("TETHER_CHAOS").as_deref() {
            Ok("full") => Mode::Full,
            _ => Mode::Bounded,
        }
    }

    /// `bounded` or `full`, for result lines.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Bounded => "bounded",
            Mode::Full => "full",
        }
    }
}

/// Scenarios run one at a time (they measure latency and memory on a
/// 2-core machine): each holds this for its whole run.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
