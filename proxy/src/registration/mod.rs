//! Automatic registration in Consul: the proxy registers its service
//! instance with the local Consul agent, keeps a TTL check up to date from
//! its own probe of the app, registers again when the agent forgets it,
//! and deregisters first on shutdown.
//!
//! Why a TTL check the proxy updates rather than an HTTP check the agent
//! runs: the admin listener binds loopback by default, which an agent in
//! another container or on the host cannot reach; a TTL check needs no
//! inbound path to the proxy at all, and it goes critical on its own when
//! the proxy dies (no update within the TTL). The same probe answers on
//! the admin `/app-health` endpoint.
//!
//! Registration never stops traffic: an unreachable agent is logged and
//! retried with backoff while the proxy serves.

mod access;
mod address;
mod agent;
mod probe;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::Instrument;

pub use self::access::{resolve as resolve_access, AccessFlags};
pub use self::address::default_address;
pub use self::agent::{
    AgentCallError, AgentClient, AgentTls, AgentUrlError, ServiceRegistration, TtlCheck,
};
pub use self::probe::{AppProbe, Health};
use crate::resilience::Backoff;

/// How often the app is probed and the TTL check updated: often enough
/// that an app going down is seen within a few seconds, seldom enough that
/// a thousand sidecars on one agent stay cheap. Consul's own HTTP checks
/// are commonly set to 2-10 s.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// The TTL is this many check intervals: two updates may be lost (a slow
/// agent, a paused process) before the instance goes critical.
const TTL_INTERVALS: u32 = 3;
/// Once critical this long (the proxy died without deregistering), the
/// agent removes the instance; one minute is the least Consul honours.
const DEREGISTER_CRITICAL_AFTER: &str = "1m";
/// On shutdown, how long the proxy keeps serving after deregistering: the
/// control plane's blocking query on the catalog wakes at once and its
/// long-poll pushes the new snapshot to every sidecar in about a second;
/// two leave room for a busy control plane.
pub const DEFAULT_DEREGISTER_GRACE: Duration = Duration::from_secs(2);
/// Between failed registrations or check updates: from ~0.25 s doubling to
/// 5 s (equal jitter, so a down agent is not hammered), short enough that
/// a restarted agent has the instance back within seconds.
const RETRY_BACKOFF: Backoff = Backoff::equal(Duration::from_millis(500), Duration::from_secs(5));
/// The check's name as Consul shows it.
const CHECK_NAME: &str = "Tether sidecar: app health";

/// What to register, and how to keep it registered.
#[derive(Debug, Clone)]
pub struct RegistrationSettings {
    /// The local agent, `http://HOST:PORT` or `https://HOST:PORT`.
    pub agent_url: String,
    /// Consul ACL token, sent as `X-Consul-Token`.
    pub token: Option<String>,
    /// TLS to an `https://` agent.
    pub tls: Option<AgentTls>,
    /// Service name.
    pub service: String,
    /// Instance id.
    pub id: String,
    /// Registered address; `None` picks [`default_address`] of the inbound
    /// listener.
    pub address: Option<String>,
    /// The inbound listener (its port is the registered port).
    pub inbound: SocketAddr,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
    /// How often the app is probed and the check updated.
    pub check_interval: Duration,
    /// On shutdown, how long to keep serving after deregistering.
    pub deregister_grace: Duration,
}

/// This proxy's registration with its Consul agent.
pub struct Registration {
    client: AgentClient,
    registration: ServiceRegistration,
    probe: AppProbe,
    interval: Duration,
    grace: Duration,
    task: Option<JoinHandle<()>>,
}

impl Registration {
    /// Prepares the registration (nothing is sent yet); fails only on an
    /// unusable agent URL.
    pub fn new(settings: &RegistrationSettings, probe: AppProbe) -> Result<Self, AgentUrlError> {
        let client = AgentClient::new(
            &settings.agent_url,
            settings.token.as_deref(),
            settings.tls.as_ref(),
        )?;
        let address = match &settings.address {
            Some(address) => address.clone(),
            None => match default_address(settings.inbound.ip()) {
                Some(ip) => ip.to_string(),
                None => {
                    tracing::warn!(
                        "no routable IPv4 address found (no default route); registering 127.0.0.1: set --consul-service-address"
                    );
                    "127.0.0.1".to_owned()
                }
            },
        };
        let interval = settings.check_interval.max(Duration::from_millis(100));
        let ttl = interval.saturating_mul(TTL_INTERVALS);
        let registration = ServiceRegistration {
            name: settings.service.clone(),
            id: settings.id.clone(),
            address,
            port: settings.inbound.port(),
            tags: settings.tags.clone(),
            meta: settings.meta.clone(),
            check: TtlCheck {
                check_id: format!("tether:{}", settings.id),
                name: CHECK_NAME.to_owned(),
                ttl: format!("{}ms", ttl.as_millis()),
                deregister_critical_service_after: DEREGISTER_CRITICAL_AFTER.to_owned(),
                status: "critical".to_owned(),
                notes: "Updated by the tether-proxy sidecar from its probe of the app (TCP connect or --app-health-path); critical when the proxy stops updating it.".to_owned(),
            },
        };
        Ok(Self {
            client,
            registration,
            probe,
            interval,
            grace: settings.deregister_grace,
            task: None,
        })
    }

    /// Starts registering and keeping the check updated, in the background.
    pub fn start(&mut self, sidecar_ready: SidecarReady) {
        let keeper = keep_registered(
            self.client.clone(),
            self.registration.clone(),
            self.probe.clone(),
            sidecar_ready,
            self.interval,
        );
        let span = tracing::info_span!(
            "consul_registration",
            service = %self.registration.name,
            id = %self.registration.id,
        );
        self.task = Some(tokio::spawn(keeper.instrument(span)));
    }

    /// How long to keep serving after [`Registration::deregister`].
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Stops the background task (so nothing registers again) and removes
    /// the instance from the agent; a failure is logged: the TTL check then
    /// goes critical on its own once the proxy stops updating it.
    pub async fn deregister(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        let id = &self.registration.id;
        match self.client.deregister(id).await {
            Ok(()) => tracing::info!(%id, "deregistered from the Consul agent"),
            Err(error) => tracing::warn!(
                %id,
                %error,
                "could not deregister from the Consul agent; the instance turns critical once its TTL passes"
            ),
        }
    }
}

/// Registers, then updates the TTL check every `interval` from a probe of
/// the app; any failed update (the agent restarted and answers 404 for the
/// unknown check, or is down) registers again, after a backoff.
/// Whether the sidecar can serve callers: `None` when ready, else why not
/// (the same conditions as `/ready`).
pub type SidecarReady = std::sync::Arc<dyn Fn() -> Option<&'static str> + Send + Sync>;

async fn keep_registered(
    client: AgentClient,
    template: ServiceRegistration,
    probe: AppProbe,
    sidecar_ready: SidecarReady,
    interval: Duration,
) {
    let check_id = template.check.check_id.clone();
    let mut registered = false;
    let mut failures = 0u32;
    let mut last_healthy: Option<bool> = None;
    loop {
        let mut health = probe.probe().await;
        // Callers reach the app through this sidecar: the instance passes
        // only once the sidecar can serve them (config and certificate).
        if let Some(why) = sidecar_ready() {
            health.healthy = false;
            health.note = format!("sidecar not ready: {why}");
        }
        if last_healthy != Some(health.healthy) {
            if health.healthy {
                tracing::info!(note = %health.note, "app healthy");
            } else {
                tracing::warn!(note = %health.note, "app unhealthy");
            }
            last_healthy = Some(health.healthy);
        }
        let result = if registered {
            client
                .update_check(&check_id, health.healthy, &health.note)
                .await
        } else {
            let mut registration = template.clone();
            registration.check.status = status(health.healthy).to_owned();
            match client.register(&registration).await {
                // The check's output: the probe's note.
                Ok(()) => {
                    client
                        .update_check(&check_id, health.healthy, &health.note)
                        .await
                }
                Err(error) => Err(error),
            }
        };
        let wait = match result {
            Ok(()) => {
                if !registered {
                    tracing::info!(
                        address = %template.address,
                        port = template.port,
                        check = status(health.healthy),
                        "registered with the Consul agent"
                    );
                }
                registered = true;
                failures = 0;
                interval
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let wait = RETRY_BACKOFF.delay(failures);
                if registered {
                    tracing::warn!(%error, retry_in = ?wait, "Consul check update failed; registering again");
                } else {
                    tracing::warn!(%error, attempt = failures, retry_in = ?wait, "Consul registration failed; serving on, retrying");
                }
                registered = false;
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

fn status(healthy: bool) -> &'static str {
    if healthy {
        "passing"
    } else {
        "critical"
    }
}
