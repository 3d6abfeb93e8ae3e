//! The end-to-end suite as one test binary: every scenario file beside this
//! one is a module here, so the suite links once (15 binaries that each
//! linked every dependency made a cold target ~6 GB and CI once ran out of
//! disk). Run one scenario file with `cargo test -p tether-e2e -- routing::`.

mod balancing;
mod capture;
mod catalog_consul;
mod chaos;
mod consul;
mod consul_cluster;
mod consul_scale;
mod consul_secure;
mod containers;
mod control_deltas;
mod control_lifecycle;
mod control_plane;
mod control_reload;
mod control_replicas;
mod control_status;
mod explain_tap;
mod grpc;
mod h2spec;
mod issuance;
mod kubernetes;
mod lifecycle;
mod mtls;
mod observability;
mod on_demand;
mod prometheus;
mod registration;
mod resilience;
mod rollout;
mod routing;
mod run_mode;
mod tcp;
mod token_replicas;
mod tracing;
mod traffic_faults;
mod traffic_mirror;
mod transparent;
mod ui;
mod websocket;
