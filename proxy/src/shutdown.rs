//! What stops the proxy besides a signal: `POST /shutdown` on the admin
//! listener, and `tether-proxy run` once its app has exited.

use tokio::sync::watch;

/// A one-shot stop request that any number of holders can fire and await.
/// Firing twice keeps the first reason.
#[derive(Clone, Debug)]
pub struct Shutdown {
    requested: watch::Sender<Option<&'static str>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A request not fired yet.
    pub fn new() -> Self {
        Self {
            requested: watch::Sender::new(None),
        }
    }

    /// Fires the request; `reason` is logged by whoever acts on it.
    pub fn trigger(&self, reason: &'static str) {
        self.requested.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        });
    }

    /// Whether the request has been fired.
    pub fn is_triggered(&self) -> bool {
        self.requested.borrow().is_some()
    }

    /// Resolves with the reason once the request is fired (at once if it
    /// already was).
    pub async fn requested(&self) -> &'static str {
        let mut receiver = self.requested.subscribe();
        let reason = receiver.wait_for(Option::is_some).await.map(|r| *r);
        match reason {
            Ok(reason) => reason.unwrap_or("shutdown requested"),
            // Unreachable while `self` holds the sender; never resolve then.
            Err(_) => std::future::pending().await,
        }
    }
}

/// What stops a running proxy.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    /// Fired: the proxy drains and [`super::run_with`] returns.
    pub drain: Shutdown,
    /// What `POST /shutdown` fires; the same request as `drain` unless a
    /// supervisor (`tether-proxy run`) decides what a stop means.
    pub admin_shutdown: Shutdown,
    /// Whether SIGTERM and SIGINT drain the proxy (off under
    /// `tether-proxy run`, which forwards them to its app instead).
    pub signals: bool,
}

impl Lifecycle {
    /// A plain sidecar: a signal or `POST /shutdown` drains it.
    pub fn standalone() -> Self {
        let drain = Shutdown::new();
        Self {
            admin_shutdown: drain.clone(),
            drain,
            signals: true,
        }
    }

    /// A proxy under a supervisor: only `drain` stops it; signals and
    /// `POST /shutdown` are the supervisor's to act on.
    pub fn supervised() -> Self {
        Self {
            drain: Shutdown::new(),
            admin_shutdown: Shutdown::new(),
            signals: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_first_reason_wins_and_late_waiters_see_it() {
        let shutdown = Shutdown::new();
        assert!(!shutdown.is_triggered());
        let waiter = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.requested().await }
        });
        shutdown.trigger("POST /shutdown");
        shutdown.trigger("the app exited");
        let reason = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert_eq!(reason.ok().and_then(Result::ok), Some("POST /shutdown"));
        assert_eq!(shutdown.requested().await, "POST /shutdown");
        assert!(shutdown.is_triggered());
    }

    #[test]
    fn standalone_admin_shutdown_drains_and_supervised_does_not() {
        let standalone = Lifecycle::standalone();
        standalone.admin_shutdown.trigger("POST /shutdown");
        assert!(standalone.drain.is_triggered());
        let supervised = Lifecycle::supervised();
        supervised.admin_shutdown.trigger("POST /shutdown");
        assert!(!supervised.drain.is_triggered());
        assert!(!supervised.signals);
    }
}
