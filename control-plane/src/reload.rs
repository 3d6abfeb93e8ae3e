//! mesh.yaml reloads: the file is re-read when its content changes (checked
//! every second) and on SIGHUP. A good file replaces the config in force; a
//! bad one is refused, logged with `FILE:LINE:COL` and counted, and the last
//! good config stays.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::Signal;
use tokio::sync::watch;

use crate::config::{self, MeshConfig};
use crate::metrics::ControlMetrics;

/// How often the file's content is compared: edits land within this.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What one check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Same content as last time; nothing done.
    Unchanged,
    /// A new config is in force.
    Applied,
    /// The file is invalid; the last good config stays.
    Refused,
    /// The file could not be read (e.g. mid-rename by an editor).
    Unreadable,
}

/// Watches one mesh.yaml and publishes each good version of it.
pub struct Reloader {
    path: PathBuf,
    last: String,
    unreadable: bool,
    tx: watch::Sender<Arc<MeshConfig>>,
    metrics: ControlMetrics,
}

impl Reloader {
    /// `loaded` is the text the config in force was parsed from.
    pub fn new(
        path: PathBuf,
        loaded: String,
        tx: watch::Sender<Arc<MeshConfig>>,
        metrics: ControlMetrics,
    ) -> Self {
        metrics.config_version.set(1);
        metrics.config_loaded.set(unix_now());
        Self {
            path,
            last: loaded,
            unreadable: false,
            tx,
            metrics,
        }
    }

    /// Re-reads the file and applies it if its content changed, or always
    /// when `forced` (SIGHUP).
    pub async fn check(&mut self, forced: bool) -> Outcome {
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => text,
            Err(error) => {
                if !std::mem::replace(&mut self.unreadable, true) {
                    tracing::warn!(path = %self.path.display(), %error, "cannot read mesh.yaml; keeping the config in force");
                }
                return Outcome::Unreadable;
            }
        };
        self.unreadable = false;
        if text == self.last && !forced {
            return Outcome::Unchanged;
        }
        let outcome = match config::parse(&self.path, &text) {
            Ok(config) => {
                self.metrics.config_version.inc();
                self.metrics.config_loaded.set(unix_now());
                tracing::info!(path = %self.path.display(), generation = self.metrics.config_version.get(), "mesh.yaml reloaded");
                self.tx.send_replace(Arc::new(config));
                Outcome::Applied
            }
            Err(errors) => {
                self.metrics.config_errors.inc();
                for error in &errors.0 {
                    tracing::error!(%error, "mesh.yaml refused; keeping the last good config");
                }
                Outcome::Refused
            }
        };
        self.last = text;
        outcome
    }

    /// Checks every [`POLL_INTERVAL`] and on each signal from `hup`.
    pub async fn run(mut self, mut hup: Option<Signal>) {
        loop {
            let forced = tokio::select! {
                _ = tokio::time::sleep(POLL_INTERVAL) => false,
                Some(()) = async { match hup.as_mut() { Some(s) => s.recv().await, None => None } } => true,
            };
            self.check(forced).await;
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "services:\n  api:\n    policy: { timeout: 1s }\n";

    #[tokio::test]
    async fn a_bad_edit_is_refused_once_and_the_last_good_config_stays() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, GOOD).unwrap_or_else(|e| panic!("{e}"));
        let first = config::parse(&path, GOOD).unwrap_or_else(|e| panic!("{e}"));
        let (tx, rx) = watch::channel(Arc::new(first));
        let metrics = ControlMetrics::new();
        let mut reloader = Reloader::new(path.clone(), GOOD.to_owned(), tx, metrics.clone());
        assert_eq!(reloader.check(false).await, Outcome::Unchanged);

        std::fs::write(&path, GOOD.replace("1s", "2s")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reloader.check(false).await, Outcome::Applied);
        let timeout =
            |rx: &watch::Receiver<Arc<MeshConfig>>| rx.borrow().services["api"].policy.timeout;
        assert_eq!(timeout(&rx), Duration::from_secs(2));
        assert_eq!(metrics.config_version.get(), 2);

        std::fs::write(&path, GOOD.replace("timeout", "timeot")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reloader.check(false).await, Outcome::Refused);
        assert_eq!(
            reloader.check(false).await,
            Outcome::Unchanged,
            "refused once, not every second"
        );
        assert_eq!(metrics.config_errors.get(), 1);
        assert_eq!(
            timeout(&rx),
            Duration::from_secs(2),
            "the last good config stays"
        );
        assert_eq!(metrics.config_version.get(), 2);

        assert_eq!(
            reloader.check(true).await,
            Outcome::Refused,
            "SIGHUP re-reads"
        );
        assert_eq!(metrics.config_errors.get(), 2);
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reloader.check(false).await, Outcome::Unreadable);
        assert_eq!(timeout(&rx), Duration::from_secs(2));
    }
}
