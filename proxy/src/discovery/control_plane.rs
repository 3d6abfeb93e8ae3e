//! Snapshots from the control plane: a long-poll subscription that applies
//! each new version, keeps the last good one on disk, and reports back what
//! it applied or refused.
//!
//! Start-up never waits for the control plane: a snapshot saved in the state
//! directory is served at once; without one the proxy is up but not ready
//! until the first snapshot arrives.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tether_api::{ProxyReport, Snapshot};

use super::delta::Held;
use super::{Applier, SnapshotError, SnapshotMetrics};
use crate::control_client::{ControlCallError, ControlPlaneClient};
use crate::identity::MeshIdentity;

use crate::resilience::Backoff;

/// How long one long-poll asks the control plane to hold the request.
const LONG_POLL_WAIT: Duration = Duration::from_secs(30);
/// How much longer than the wait a long-poll may take before it is given
/// up: the control plane's own lateness plus the transfer of a big snapshot.
const LONG_POLL_GRACE: Duration = Duration::from_secs(10);
/// Longest a report may take; a lost report is sent again with the next
/// snapshot.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// First reconnect delay; doubles up to [`MAX_BACKOFF`], with equal jitter
/// (a random time between half and all of the ceiling).
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest reconnect delay: a control plane that comes back is found within
/// a few seconds, and a thousand proxies do not hammer one that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Idle timeout of the pooled connection to the control plane: longer than
/// a long-poll, so the connection is reused from one poll to the next.
pub const CONTROL_PLANE_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// File name of the last good snapshot in the state directory.
const STATE_FILE: &str = "snapshot.json";

/// Settings of the subscription.
#[derive(Debug, Clone)]
pub struct ControlPlaneSettings {
    /// Base URL, e.g. `http://127.0.0.1:15010`.
    pub url: String,
    /// The service this proxy fronts.
    pub service: String,
    /// This proxy's id in reports and status.
    pub proxy_id: String,
    /// Where the last good snapshot is kept.
    pub state_dir: Option<PathBuf>,
    /// How often per-upstream statistics are posted (`--stats-interval`).
    pub stats_interval: std::time::Duration,
    /// How long a request waits for on-demand discovery (`--discovery-wait`;
    /// zero: off).
    pub discovery_wait: std::time::Duration,
}

/// Loads the snapshot saved in the state directory, if any, and applies it.
pub async fn restore(settings: &ControlPlaneSettings, applier: &Applier) -> Option<u64> {
    let path = settings.state_dir.as_deref()?.join(STATE_FILE);
    let bytes = tokio::fs::read(&path).await.ok()?;
    let result = parse_saved(&path, &bytes).and_then(|s| applier.apply(s));
    match result {
        Ok(version) => {
            tracing::info!(path = %path.display(), version, "serving the last good snapshot from the state directory");
            Some(version)
        }
        Err(error) => {
            applier.refused(&error);
            None
        }
    }
}

/// Subscribes forever: long-polls, applies, saves, reports, reconnects.
/// Over TLS it first waits for a certificate: the control plane serves a
/// snapshot only to a proxy that proves it is that service.
pub async fn subscribe(
    settings: ControlPlaneSettings,
    client: ControlPlaneClient,
    identity: Option<Arc<MeshIdentity>>,
    applier: Applier,
    metrics: SnapshotMetrics,
) {
    if let (true, Some(identity)) = (client.is_tls(), &identity) {
        if !identity.ready() {
            tracing::info!("waiting for a certificate before subscribing to snapshots");
            identity.wait_ready().await;
        }
    }
    let mut failures = 0u32;
    // The last version offered, applied or refused: polling with it means a
    // refused snapshot is not sent again until the control plane has a new one.
    let mut seen = applier.version();
    // The last full snapshot received: deltas are merged onto it.
    let mut held = Held::default();
    loop {
        let on_demand = applier.on_demand();
        let wanted = on_demand.and_then(|o| o.wanted());
        let poll = client.snapshot_update(
            &settings.service,
            &settings.proxy_id,
            held.poll_from(seen),
            LONG_POLL_WAIT,
            LONG_POLL_GRACE,
            wanted.as_deref(),
        );
        let polled = match on_demand {
            // A request asked for a service: poll again at once with it.
            Some(on_demand) => tokio::select! {
                polled = poll => polled,
                () = on_demand.asked() => continue,
            },
            None => poll.await,
        };
        match polled {
            Ok(Some(update)) => {
                failures = 0;
                metrics.control_plane_connected.set(1);
                let Some(snapshot) = held.resolve(update, &metrics.control_plane_deltas) else {
                    continue;
                };
                let offered = snapshot.version;
                seen = offered;
                let report = match applier.apply(snapshot.clone()) {
                    Ok(version) => {
                        save(&settings, snapshot).await;
                        ProxyReport {
                            applied_version: version,
                            ..report_base(&settings, version)
                        }
                    }
                    Err(error) => {
                        applier.refused(&error);
                        ProxyReport {
                            rejected_version: Some(offered),
                            error: Some(error.to_string()),
                            ..report_base(&settings, applier.version())
                        }
                    }
                };
                send_report(&client, &report).await;
            }
            Ok(None) => {
                failures = 0;
                metrics.control_plane_connected.set(1);
            }
            Err(error) => {
                metrics.control_plane_connected.set(0);
                failures = failures.saturating_add(1);
                let delay = reconnect_delay(failures);
                tracing::warn!(%error, retry_in = ?delay, "control plane unreachable; serving the last good snapshot");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn report_base(settings: &ControlPlaneSettings, applied: u64) -> ProxyReport {
    ProxyReport {
        proxy_id: settings.proxy_id.clone(),
        service: settings.service.clone(),
        applied_version: applied,
        rejected_version: None,
        error: None,
    }
}

fn reconnect_delay(failures: u32) -> Duration {
    Backoff::equal(MIN_BACKOFF, MAX_BACKOFF).delay(failures.saturating_add(1))
}

/// The snapshot saved in the state directory (JSON, as [`save`] writes it).
fn parse_saved(path: &Path, bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    serde_json::from_slice(bytes).map_err(|error| {
        super::file::parse_error(path, error.line(), error.column(), error.to_string())
    })
}

async fn send_report(client: &ControlPlaneClient, report: &ProxyReport) {
    match client.report(report, REPORT_TIMEOUT).await {
        Ok(()) => {}
        Err(ControlCallError::Status { status, message }) => {
            tracing::warn!(%status, %message, "control plane refused the report")
        }
        Err(error) => tracing::warn!(%error, "could not report to the control plane"),
    }
}

/// Writes the snapshot to the state directory atomically (write + rename).
async fn save(settings: &ControlPlaneSettings, snapshot: &Snapshot) {
    let Some(dir) = &settings.state_dir else {
        return;
    };
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let result = async {
        tokio::fs::create_dir_all(dir).await?;
        let bytes = serde_json::to_vec_pretty(snapshot).map_err(std::io::Error::other)?;
        tokio::fs::write(&tmp, bytes).await?;
        tokio::fs::rename(&tmp, &path).await
    }
    .await;
    if let Err(error) = result {
        tracing::warn!(path = %path.display(), %error, "could not save the snapshot to the state directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_grows_to_the_cap() {
        for _ in 0..50 {
            assert!(reconnect_delay(1) <= Duration::from_millis(200));
            assert!(reconnect_delay(30) <= MAX_BACKOFF);
            assert!(reconnect_delay(30) >= MAX_BACKOFF / 2);
        }
    }
}
