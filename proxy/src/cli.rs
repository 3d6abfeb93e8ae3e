//! Command line. Every flag can also be set as a `TETHER_*` environment
//! variable; flags win.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{ProxyConfig, SnapshotSource};
use crate::identity::{IdentityFiles, IdentitySource, IssuanceSettings};
use crate::registration::{resolve_access, AccessFlags, RegistrationSettings};
use crate::transport::ServerSettings;

/// Tether's sidecar proxy.
#[derive(Debug, Parser)]
#[command(
    name = "tether-proxy",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// A helper command instead of running the proxy.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Proxy flags.
    #[command(flatten)]
    pub proxy: ProxyArgs,
}

/// Helper commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Wait until the proxy's /ready answers 200 (run before the app starts).
    WaitReady(WaitReadyArgs),
    /// Write the transparent-capture nat rules into this network namespace
    /// (run once, as root with NET_ADMIN, in an init container).
    Init(InitArgs),
    /// Run the proxy and, once it is ready, an app beside it: signals go to
    /// the app; when it exits the proxy drains and the exit code is the app's
    /// (for batch jobs with a sidecar).
    Run(Box<RunArgs>),
    /// Follow a proxy's live, sampled requests (admin `GET /tap`): one
    /// line each.
    Tap(crate::tap_client::TapArgs),
}

/// `tether-proxy run [PROXY FLAGS] -- CMD ARGS...`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Proxy flags, as without `run`.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Give up on the proxy becoming ready after this long: the app is not
    /// started and the exit code is 1.
    #[arg(long, env = "TETHER_READY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub ready_timeout: Duration,
    /// The app: a program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `tether-proxy init`: see docs/deploy.md for the rules it writes.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Port of the proxy's outbound listener (the app's connections go there).
    #[arg(long, env = "TETHER_OUTBOUND_PORT", default_value_t = 15001)]
    pub outbound_port: u16,
    /// Port of the proxy's inbound listener (connections to the app's ports go there).
    #[arg(long, env = "TETHER_INBOUND_PORT", default_value_t = 15443)]
    pub inbound_port: u16,
    /// The proxy's admin port: never redirected.
    #[arg(long, env = "TETHER_ADMIN_PORT", default_value_t = 15000)]
    pub admin_port: u16,
    /// The uid the proxy runs as; its own traffic is never captured.
    #[arg(long, env = "TETHER_PROXY_UID", default_value_t = crate::capture::DEFAULT_PROXY_UID)]
    pub proxy_uid: u32,
    /// Capture inbound only to these ports (comma-separated); default: every
    /// port but the excluded ones.
    #[arg(long, env = "TETHER_INBOUND_PORTS", value_delimiter = ',')]
    pub inbound_ports: Vec<u16>,
    /// Destinations the app reaches directly (comma-separated IPv4 CIDRs or
    /// addresses), e.g. the Consul agent and the control plane.
    #[arg(long, env = "TETHER_EXCLUDE_OUTBOUND_CIDRS", value_delimiter = ',')]
    pub exclude_outbound_cidrs: Vec<crate::capture::Cidr>,
    /// Destination ports the app reaches directly (comma-separated).
    #[arg(long, env = "TETHER_EXCLUDE_OUTBOUND_PORTS", value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,
    /// Inbound ports that reach the app directly (comma-separated).
    #[arg(long, env = "TETHER_EXCLUDE_INBOUND_PORTS", value_delimiter = ',')]
    pub exclude_inbound_ports: Vec<u16>,
    /// iptables binary to use (`iptables-nft`, `iptables-legacy`, a path);
    /// default: the one the namespace already uses, else nft, else legacy.
    #[arg(long, env = "TETHER_IPTABLES_BINARY")]
    pub iptables_binary: Option<String>,
    /// TCP over IPv6, which is not redirected: `reject` refuses it (a TCP
    /// reset) except loopback, the proxy's own connections and exclusions,
    /// so nothing goes around the proxy; `leave` lets it pass untouched.
    /// Applied only where the namespace has IPv6.
    #[arg(long, env = "TETHER_IPV6", value_enum, default_value = "reject")]
    pub ipv6: Ipv6Mode,
    /// Print the rules (iptables-restore input, then ip6tables-restore
    /// input) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove Tether's rules instead of writing them.
    #[arg(long, conflicts_with = "dry_run")]
    pub cleanup: bool,
}

impl InitArgs {
    /// The capture settings these flags describe.
    pub fn settings(&self) -> crate::capture::CaptureSettings {
        crate::capture::CaptureSettings {
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            admin_port: self.admin_port,
            proxy_uid: self.proxy_uid,
            inbound_ports: self.inbound_ports.clone(),
            exclude_outbound_cidrs: self.exclude_outbound_cidrs.clone(),
            exclude_outbound_ports: self.exclude_outbound_ports.clone(),
            exclude_inbound_ports: self.exclude_inbound_ports.clone(),
        }
    }
}

/// What `tether-proxy init` does with TCP over IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Ipv6Mode {
    /// Refuse it (except loopback, the proxy, replies and exclusions).
    Reject,
    /// Let it pass: it goes around the proxy.
    Leave,
}

/// Whether this network namespace has IPv6 (an address, not disabled).
fn namespace_has_ipv6() -> bool {
    let disabled = std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
        .map_or(true, |v| v.trim() == "1");
    let addresses = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    !disabled && !addresses.trim().is_empty()
}

/// Runs `tether-proxy init`; the process exit code (0 on success, see
/// [`crate::capture::CaptureError::exit_code`]).
pub fn init(args: &InitArgs) -> u8 {
    use crate::capture::{Backend, CaptureError, Change, RuleSet};
    let settings = args.settings();
    let rules = RuleSet::new(&settings);
    let guard = RuleSet::ipv6_guard(&settings);
    if args.dry_run {
        print!("# iptables-restore --noflush\n{}", rules.restore_input());
        if args.ipv6 == Ipv6Mode::Reject {
            print!(
                "# ip6tables-restore --noflush (only where the namespace has IPv6)\n{}",
                guard.restore_input()
            );
        }
        return 0;
    }
    let describe = |change: Change, what: &str| -> String {
        match change {
            Change::Applied => format!("{what} applied"),
            Change::Unchanged => format!("{what} already in force; nothing changed"),
            Change::Replaced => format!("earlier {what} replaced"),
            Change::Removed => format!("{what} removed"),
            Change::NothingToRemove => format!("no {what} to remove"),
        }
    };
    let run = || -> Result<Vec<String>, CaptureError> {
        let backend = match &args.iptables_binary {
            Some(name) => Backend::named(name.clone()),
            None => Backend::detect()?,
        };
        let ipv6 = backend.ipv6();
        let mut said = Vec::new();
        if args.cleanup {
            let change = backend.cleanup(&rules)?;
            said.push(format!(
                "{} ({})",
                describe(change, "capture rules"),
                backend.iptables
            ));
            // An earlier guard is removed whatever --ipv6 says now; no
            // ip6tables (or no IPv6) means there is none.
            match ipv6.cleanup(&guard) {
                Ok(change) => said.push(format!(
                    "{} ({})",
                    describe(change, "IPv6 guard"),
                    ipv6.iptables
                )),
                Err(CaptureError::NotFound(_)) => {}
                Err(error) if !namespace_has_ipv6() => {
                    tracing::debug!(%error, "no IPv6 guard to remove");
                }
                Err(error) => return Err(error),
            }
            return Ok(said);
        }
        let change = backend.apply(&rules)?;
        said.push(format!(
            "{} ({})",
            describe(change, "capture rules"),
            backend.iptables
        ));
        match args.ipv6 {
            Ipv6Mode::Reject if namespace_has_ipv6() => {
                let change = ipv6.apply(&guard).map_err(|error| match error {
                    CaptureError::NotFound(tried) => CaptureError::NotFound(format!(
                        "{tried}; this namespace has IPv6, which is not captured: install ip6tables beside iptables, or pass --ipv6 leave to let IPv6 go around the proxy"
                    )),
                    other => other,
                })?;
                said.push(format!(
                    "{}: TCP over IPv6 is refused but for loopback, the proxy and exclusions ({})",
                    describe(change, "IPv6 guard"),
                    ipv6.iptables
                ));
            }
            Ipv6Mode::Reject => said.push("no IPv6 in this namespace: no IPv6 guard needed".into()),
            Ipv6Mode::Leave if namespace_has_ipv6() => {
                // An earlier run's guard goes: `leave` means none.
                match ipv6.cleanup(&guard) {
                    Ok(Change::Removed) => {
                        said.push(format!("earlier IPv6 guard removed ({})", ipv6.iptables))
                    }
                    Ok(_) | Err(CaptureError::NotFound(_)) => {}
                    Err(error) => return Err(error),
                }
                said.push(
                    "--ipv6 leave: TCP over IPv6 goes around the proxy (not captured, not refused)"
                        .into(),
                );
            }
            Ipv6Mode::Leave => {}
        }
        Ok(said)
    };
    match run() {
        Ok(said) => {
            for line in said {
                eprintln!("tether-proxy init: {line}");
            }
            0
        }
        Err(error) => {
            eprintln!("tether-proxy init: {error}");
            error.exit_code()
        }
    }
}

/// The registered metadata: the operator's `--consul-meta`, plus
/// `tether_admin_port` (where Prometheus scrapes `/metrics`; see
/// deploy/prometheus/) unless the operator set it.
fn registration_meta(
    given: &[(String, String)],
    admin_port: u16,
    zone: Option<&str>,
) -> BTreeMap<String, String> {
    let mut meta: BTreeMap<String, String> = given.iter().cloned().collect();
    meta.entry(ADMIN_PORT_META.to_owned())
        .or_insert_with(|| admin_port.to_string());
    if let Some(zone) = zone {
        meta.entry(ZONE_META.to_owned())
            .or_insert_with(|| zone.to_owned());
    }
    meta
}

/// The Consul service metadata key the sidecar registers its `--zone`
/// under: the control plane's default `zone_meta_key`.
pub const ZONE_META: &str = "zone";

/// `--zone`: a non-empty name.
fn parse_zone(text: &str) -> Result<String, String> {
    let zone = text.trim();
    if zone.is_empty() {
        return Err("expected a zone name".to_owned());
    }
    Ok(zone.to_owned())
}

/// The Consul service metadata key naming the sidecar's admin port.
pub const ADMIN_PORT_META: &str = "tether_admin_port";

/// `tether-proxy wait-ready`.
#[derive(Debug, Args)]
pub struct WaitReadyArgs {
    /// The proxy's admin address.
    #[arg(long, env = "TETHER_ADMIN", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Give up after this long (exit 1).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Protocol the local app speaks.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AppProtocol {
    /// HTTP/1.1.
    Http,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
    /// gRPC: HTTP/2 with prior knowledge (h2c), as `http2`.
    Grpc,
}

/// Shortest stats interval accepted: more often would only load the
/// control plane.
const MIN_STATS_INTERVAL: Duration = Duration::from_millis(100);

/// Flags of the proxy itself.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The service this proxy fronts (required with --control-plane).
    #[arg(long, env = "TETHER_SERVICE")]
    pub service: Option<String>,
    /// Control plane URL to subscribe to, e.g. http://127.0.0.1:15010; several
    /// replicas separated by commas (the proxy fails over between them).
    #[arg(long, env = "TETHER_CONTROL_PLANE", conflicts_with = "snapshot")]
    pub control_plane: Option<String>,
    /// Where the last good snapshot is kept, to serve from when the control
    /// plane is unreachable (also across restarts).
    #[arg(long, env = "TETHER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// This proxy's id in the control plane's status (default: SERVICE-PID-RANDOM).
    #[arg(long, env = "TETHER_PROXY_ID")]
    pub proxy_id: Option<String>,
    /// How often to report per-upstream request statistics to the control
    /// plane (`POST /v1/stats`; only with --control-plane).
    #[arg(long, env = "TETHER_STATS_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub stats_interval: Duration,
    /// How long a request for a service this proxy's snapshot does not hold
    /// waits for the control plane to send it (on-demand discovery; only
    /// with --control-plane; 0s: answer `unknown-service` at once).
    #[arg(long, env = "TETHER_DISCOVERY_WAIT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub discovery_wait: Duration,
    /// Snapshot file (YAML or JSON) to run from, without a control plane;
    /// edits are picked up.
    #[arg(long, env = "TETHER_SNAPSHOT")]
    pub snapshot: Option<PathBuf>,
    /// How often to check the snapshot file for edits.
    #[arg(long, env = "TETHER_SNAPSHOT_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub snapshot_poll_interval: Duration,
    /// Admin listener (/live /ready /metrics /config /endpoints, POST
    /// /shutdown); anyone who reaches it can stop the proxy.
    #[arg(long, env = "TETHER_ADMIN", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Outbound listener: the app sends its mesh requests here.
    #[arg(long, env = "TETHER_OUTBOUND", default_value = "127.0.0.1:15001")]
    pub outbound: SocketAddr,
    /// Inbound listener: other sidecars send here.
    #[arg(long, env = "TETHER_INBOUND", default_value = "0.0.0.0:15443")]
    pub inbound: SocketAddr,
    /// The local app behind the inbound listener.
    #[arg(long, env = "TETHER_APP", default_value = "127.0.0.1:8080")]
    pub app: http::uri::Authority,
    /// Protocol the local app speaks.
    #[arg(long, env = "TETHER_APP_PROTOCOL", value_enum, default_value = "http")]
    pub app_protocol: AppProtocol,
    /// HTTP/1 headers must arrive within this long; idle keep-alive
    /// connections close after it too.
    #[arg(long, env = "TETHER_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// Largest request head accepted, in bytes (HTTP/1 at least 8192).
    #[arg(long, env = "TETHER_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// Downstream connections served at once per listener.
    #[arg(long, env = "TETHER_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Requests in flight to the local app at once.
    #[arg(long, env = "TETHER_INBOUND_MAX_REQUESTS", default_value_t = 10_000)]
    pub inbound_max_requests: u32,
    /// Requests queued for the local app beyond that, before fast 503s.
    #[arg(long, env = "TETHER_INBOUND_MAX_PENDING", default_value_t = 1_024)]
    pub inbound_max_pending: u32,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, env = "TETHER_DRAIN_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// An upgraded connection (WebSocket and other HTTP/1.1 upgrades) that
    /// moves no byte either way for this long is closed.
    #[arg(long, env = "TETHER_UPGRADE_IDLE_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    pub upgrade_idle_timeout: Duration,
    /// The zone (locality) this proxy runs in: services whose policy has
    /// `locality.enabled` prefer endpoints in the same zone. With
    /// --consul-agent it is also registered as the `zone` service meta
    /// (unless --consul-meta sets `zone`).
    #[arg(long, env = "TETHER_ZONE", value_parser = parse_zone)]
    pub zone: Option<String>,
    /// Directory with this proxy's certificate chain (`identity.pem`) and
    /// key (`identity-key.pem`): turns on mTLS, inbound and outbound.
    #[arg(long, env = "TETHER_IDENTITY_DIR", requires = "trust_bundle")]
    pub identity_dir: Option<PathBuf>,
    /// PEM file with the mesh's trusted root certificate(s). With
    /// --identity-dir, or with an https:// control plane (which then issues
    /// this proxy's certificate).
    #[arg(long, env = "TETHER_TRUST_BUNDLE")]
    pub trust_bundle: Option<PathBuf>,
    /// Join token for the first certificate from an https:// control plane
    /// (`tether-control token create --service NAME`).
    #[arg(long, env = "TETHER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Trust domain (default: the one named by the trust bundle's roots).
    #[arg(long, env = "TETHER_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// Renew an issued certificate at this fraction of its life.
    #[arg(long, env = "TETHER_RENEW_FRACTION", default_value_t = crate::identity::issuance::DEFAULT_RENEW_FRACTION)]
    pub renew_fraction: f64,
    /// How often the identity files (or the bundle) are checked for changes.
    #[arg(long, env = "TETHER_IDENTITY_RELOAD_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub identity_reload_interval: Duration,
    /// With mTLS: also accept plaintext on the inbound listener. For
    /// migrating a service into the mesh only; counted in metrics.
    #[arg(long, env = "TETHER_INBOUND_PERMISSIVE")]
    pub inbound_permissive: bool,
    /// Write one JSON line per request to stdout (access log).
    #[arg(long, env = "TETHER_ACCESS_LOG")]
    pub access_log: bool,
    /// Log format.
    #[arg(long, env = "TETHER_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// The app's health path (e.g. /healthz), probed with GET (2xx is
    /// healthy) for /app-health and the Consul check; default: a TCP connect.
    #[arg(long, env = "TETHER_APP_HEALTH_PATH")]
    pub app_health_path: Option<http::uri::PathAndQuery>,
    /// Probe the app with a gRPC health check (grpc.health.v1.Health/Check
    /// over h2c; SERVING is healthy) of this service name; without a name,
    /// the server as a whole. Instead of --app-health-path.
    #[arg(
        long,
        env = "TETHER_APP_HEALTH_GRPC_SERVICE",
        num_args = 0..=1,
        default_missing_value = "",
        conflicts_with = "app_health_path",
        value_name = "SERVICE"
    )]
    pub app_health_grpc_service: Option<String>,
    /// Register this instance with the local Consul agent's HTTP API, e.g.
    /// http://127.0.0.1:8500 or https://127.0.0.1:8501 (needs --service).
    #[arg(long, env = "TETHER_CONSUL_AGENT")]
    pub consul_agent: Option<String>,
    /// Consul ACL token for the registration (X-Consul-Token); default:
    /// CONSUL_HTTP_TOKEN. Prefer --consul-token-file.
    #[arg(long, env = "TETHER_CONSUL_TOKEN", hide_env_values = true)]
    pub consul_token: Option<String>,
    /// File holding the Consul ACL token (read at start); default:
    /// CONSUL_HTTP_TOKEN_FILE. Wins over --consul-token.
    #[arg(long, env = "TETHER_CONSUL_TOKEN_FILE")]
    pub consul_token_file: Option<PathBuf>,
    /// PEM CA that signed the agent's HTTPS certificate (required for an
    /// https:// agent); default: CONSUL_CACERT.
    #[arg(long, env = "TETHER_CONSUL_CA_CERT")]
    pub consul_ca_cert: Option<PathBuf>,
    /// PEM client certificate for an agent with verify_incoming; default:
    /// CONSUL_CLIENT_CERT. Needs --consul-client-key.
    #[arg(long, env = "TETHER_CONSUL_CLIENT_CERT")]
    pub consul_client_cert: Option<PathBuf>,
    /// Its private key; default: CONSUL_CLIENT_KEY.
    #[arg(long, env = "TETHER_CONSUL_CLIENT_KEY")]
    pub consul_client_key: Option<PathBuf>,
    /// Name the agent's certificate must carry when it is not the URL's
    /// host (e.g. localhost); default: CONSUL_TLS_SERVER_NAME.
    #[arg(long, env = "TETHER_CONSUL_TLS_SERVER_NAME")]
    pub consul_tls_server_name: Option<String>,
    /// Instance id in Consul (default: --proxy-id when given, else SERVICE-HOSTNAME).
    #[arg(long, env = "TETHER_CONSUL_SERVICE_ID")]
    pub consul_service_id: Option<String>,
    /// Address registered in Consul (default: the inbound listener's
    /// address, or for 0.0.0.0 the host's first non-loopback IPv4).
    #[arg(long, env = "TETHER_CONSUL_SERVICE_ADDRESS")]
    pub consul_service_address: Option<String>,
    /// Tags registered in Consul (comma-separated).
    #[arg(long, env = "TETHER_CONSUL_TAGS", value_delimiter = ',')]
    pub consul_tags: Vec<String>,
    /// Metadata registered in Consul (comma-separated KEY=VALUE).
    #[arg(long, env = "TETHER_CONSUL_META", value_delimiter = ',', value_parser = parse_meta)]
    pub consul_meta: Vec<(String, String)>,
    /// How often the app is probed and the Consul TTL check updated (TTL:
    /// three times this).
    #[arg(long, env = "TETHER_CONSUL_CHECK_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub consul_check_interval: Duration,
    /// On SIGTERM with --consul-agent: deregister, then keep serving this
    /// long while the change reaches the other sidecars, then drain.
    #[arg(long, env = "TETHER_DEREGISTER_GRACE", default_value = "2s", value_parser = humantime::parse_duration)]
    pub deregister_grace: Duration,
    /// Threads that serve traffic (default: one per available CPU). `1`
    /// runs everything on one thread, with no cross-thread hand-offs: the
    /// cheapest setting for a sidecar with a small CPU limit.
    #[arg(long, env = "TETHER_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
}

/// `KEY=VALUE` of `--consul-meta`.
fn parse_meta(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}`: expected KEY=VALUE")),
    }
}

/// This host's name (a pod's name in Kubernetes), for default instance ids.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A flag combination that cannot run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl ProxyArgs {
    /// Where the identity comes from, if mTLS is on.
    fn identity_source(&self) -> Result<Option<IdentitySource>, UsageError> {
        let https = self
            .control_plane
            .as_deref()
            .is_some_and(|url| url.starts_with("https://"));
        if !(0.05..=0.95).contains(&self.renew_fraction) {
            return Err(UsageError(
                "--renew-fraction must be between 0.05 and 0.95".into(),
            ));
        }
        match (&self.identity_dir, &self.trust_bundle) {
            (Some(_), None) => Err(UsageError(
                "--identity-dir needs --trust-bundle FILE (the mesh's root certificates)".into(),
            )),
            (Some(dir), Some(bundle)) => {
                if self.token_file.is_some() {
                    return Err(UsageError(
                        "--token-file is for certificates issued by the control plane; with --identity-dir the certificate comes from files".into(),
                    ));
                }
                Ok(Some(IdentitySource::Files(IdentityFiles {
                    dir: dir.clone(),
                    bundle: bundle.clone(),
                    reload_interval: self.identity_reload_interval,
                })))
            }
            (None, bundle) if https => {
                let bundle = bundle.clone().ok_or_else(|| {
                    UsageError("an https:// control plane needs --trust-bundle FILE (the mesh CA's ca.pem) to verify it".into())
                })?;
                if self.token_file.is_none() && self.state_dir.is_none() {
                    return Err(UsageError(
                        "an https:// control plane issues this proxy's certificate: pass --token-file (first start) and --state-dir (to keep it across restarts)".into(),
                    ));
                }
                Ok(Some(IdentitySource::ControlPlane(IssuanceSettings {
                    url: self.control_plane.clone().unwrap_or_default(),
                    service: self.service.clone().unwrap_or_default(),
                    bundle,
                    trust_domain: self.trust_domain.clone(),
                    token_file: self.token_file.clone(),
                    state_dir: self.state_dir.clone(),
                    renew_fraction: self.renew_fraction,
                    bundle_reload_interval: self.identity_reload_interval,
                })))
            }
            (None, Some(_)) => Err(UsageError(
                "--trust-bundle needs --identity-dir, or an https:// control plane to issue the certificate".into(),
            )),
            (None, None) if self.token_file.is_some() => Err(UsageError(
                "--token-file needs an https:// control plane (tether-control serve --ca-dir) and --trust-bundle".into(),
            )),
            (None, None) => Ok(None),
        }
    }

    /// The Consul registration, with --consul-agent.
    fn registration(&self) -> Result<Option<RegistrationSettings>, UsageError> {
        let Some(agent_url) = &self.consul_agent else {
            return Ok(None);
        };
        let service = self.service.clone().ok_or_else(|| {
            UsageError("--consul-agent needs --service NAME (the name to register)".into())
        })?;
        let id = self
            .consul_service_id
            .clone()
            .or_else(|| self.proxy_id.clone())
            .unwrap_or_else(|| match hostname() {
                Some(host) => format!("{service}-{host}"),
                None => format!("{service}-{}", std::process::id()),
            });
        let flags = AccessFlags {
            token: self.consul_token.clone(),
            token_file: self.consul_token_file.clone(),
            ca_cert: self.consul_ca_cert.clone(),
            client_cert: self.consul_client_cert.clone(),
            client_key: self.consul_client_key.clone(),
            server_name: self.consul_tls_server_name.clone(),
        };
        let (token, tls) = resolve_access(agent_url, &flags, &|name| std::env::var(name).ok())
            .map_err(UsageError)?;
        Ok(Some(RegistrationSettings {
            agent_url: agent_url.clone(),
            token,
            tls,
            service,
            id,
            address: self.consul_service_address.clone(),
            inbound: self.inbound,
            tags: self.consul_tags.clone(),
            meta: registration_meta(&self.consul_meta, self.admin.port(), self.zone.as_deref()),
            check_interval: self.consul_check_interval,
            deregister_grace: self.deregister_grace,
        }))
    }

    /// The proxy configuration these flags describe.
    pub fn into_config(self) -> Result<ProxyConfig, UsageError> {
        let identity = self.identity_source()?;
        let registration = self.registration()?;
        let source = match (self.snapshot, self.control_plane) {
            (Some(path), _) => SnapshotSource::File {
                path,
                poll_interval: self.snapshot_poll_interval,
            },
            (None, Some(url)) => {
                let service = self.service.clone().ok_or_else(|| {
                    UsageError("--control-plane needs --service NAME (or TETHER_SERVICE)".into())
                })?;
                let proxy_id = self.proxy_id.unwrap_or_else(|| {
                    let suffix = rand::random::<u32>() & 0xff_ffff;
                    format!("{service}-{}-{suffix:06x}", std::process::id())
                });
                SnapshotSource::ControlPlane(crate::discovery::ControlPlaneSettings {
                    url,
                    service,
                    proxy_id,
                    state_dir: self.state_dir,
                    stats_interval: self.stats_interval.max(MIN_STATS_INTERVAL),
                    discovery_wait: self.discovery_wait,
                })
            }
            (None, None) => {
                return Err(UsageError(
                    "no snapshot source: pass --control-plane URL with --service NAME, or --snapshot FILE"
                        .into(),
                ))
            }
        };
        if self.max_header_bytes < 8192 {
            return Err(UsageError(
                "--max-header-bytes must be at least 8192".into(),
            ));
        }
        Ok(ProxyConfig {
            source,
            service: self.service,
            admin_addr: self.admin,
            outbound_addr: self.outbound,
            inbound_addr: self.inbound,
            app: self.app,
            app_http2: matches!(self.app_protocol, AppProtocol::Http2 | AppProtocol::Grpc),
            server: ServerSettings {
                header_read_timeout: self.header_read_timeout,
                max_header_bytes: self.max_header_bytes,
                max_connections: self.max_connections.max(1),
            },
            inbound_max_requests: self.inbound_max_requests.max(1),
            inbound_max_pending: self.inbound_max_pending,
            drain_timeout: self.drain_timeout,
            upgrade_idle_timeout: self.upgrade_idle_timeout,
            zone: self.zone,
            access_log: self.access_log,
            identity,
            inbound_permissive: self.inbound_permissive,
            app_health_path: self.app_health_path,
            app_health_grpc_service: self.app_health_grpc_service,
            registration,
        })
    }
}

/// `wait-ready`: polls the admin `/ready` until 200 or the timeout.
pub async fn wait_ready(args: &WaitReadyArgs) -> bool {
    let Ok(authority) = args.admin.to_string().parse::<http::uri::Authority>() else {
        return false;
    };
    let admin = crate::transport::PoolFactory::new(crate::transport::ConnectionSettings {
        http2: false,
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(5),
        expected_identity: None,
    })
    .pool_for(&authority);
    let deadline = tokio::time::Instant::now() + args.timeout;
    while tokio::time::Instant::now() < deadline {
        let request = http::Request::get("/ready")
            .header(http::header::HOST, authority.as_str())
            .body(crate::body::Body::Empty);
        if let Ok(request) = request {
            if let Ok(response) = admin.send(request).await {
                if response.status().is_success() {
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[cfg(test)]
mod zone_tests {
    use super::*;

    fn config(args: &[&str]) -> Result<ProxyConfig, String> {
        let base = ["tether-proxy", "--snapshot", "s.yaml", "--service", "api"];
        let cli = Cli::try_parse_from(base.iter().chain(args)).map_err(|e| e.to_string())?;
        cli.proxy.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn the_zone_reaches_the_config_and_the_consul_registration() {
        let agent = ["--consul-agent", "http://127.0.0.1:8500"];
        let zoned =
            config(&[&agent[..], &["--zone", "eu-1a"]].concat()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(zoned.zone.as_deref(), Some("eu-1a"));
        let meta = zoned.registration.map(|r| r.meta).unwrap_or_default();
        assert_eq!(meta.get(ZONE_META).map(String::as_str), Some("eu-1a"));
        let given = config(&[&agent[..], &["--zone", "a", "--consul-meta", "zone=x"]].concat())
            .unwrap_or_else(|e| panic!("{e}"));
        let meta = given.registration.map(|r| r.meta).unwrap_or_default();
        assert_eq!(meta[ZONE_META], "x", "--consul-meta wins");
        assert!(
            config(&["--zone", " "]).is_err(),
            "an empty zone is refused"
        );
        let plain = config(&agent).unwrap_or_else(|e| panic!("{e}"));
        assert!(plain.zone.is_none());
        assert!(!plain
            .registration
            .map(|r| r.meta)
            .unwrap_or_default()
            .contains_key(ZONE_META));
    }
}
