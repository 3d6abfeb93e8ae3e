//! On-demand discovery, the proxy's half: a request for a service this
//! proxy's snapshot does not hold (it holds only what it calls:
//! `upstreams`, `upstream_scope`) asks the control plane for it and waits,
//! briefly, for the snapshot that brings it, instead of failing.
//!
//! The name goes into the wanted set, sent with every long-poll
//! (`want=a,b`); asking wakes the subscription, which polls again at once.
//! The request waits for applied snapshots until the service is there,
//! `--discovery-wait` passes, or two snapshots came without it (the
//! control plane does not know it, or authorization does not let this
//! service call it). A name not found is not asked again for
//! [`MISSING_HOLD`]: requests for it fail at once meanwhile.
//!
//! Only the failure path of routing comes here: a request for a service
//! the snapshot holds never touches this module.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus::{IntCounterVec, Registry};
use tokio::sync::{watch, Notify};

use crate::state::MeshState;

/// Default of `--discovery-wait`: a control plane answers a want in
/// milliseconds; three seconds covers a slow one without holding a
/// mistyped name's caller long.
pub const DEFAULT_DISCOVERY_WAIT: Duration = Duration::from_secs(3);
/// Most names a proxy asks for (sent on every poll).
pub const MAX_WANTED: usize = 64;
/// How long a name that was not found fails at once before it is asked
/// for again (a new service may be registered meanwhile).
pub const MISSING_HOLD: Duration = Duration::from_secs(30);

/// Names asked for and the applied snapshots requests wait on.
#[derive(Debug)]
pub struct OnDemand {
    wait: Duration,
    wanted: Mutex<Names>,
    /// Wakes the subscription to poll again with the new wants.
    asked: Notify,
    /// Bumped on every applied snapshot.
    applied: watch::Sender<u64>,
    /// `tether_on_demand_total{outcome}`.
    outcomes: IntCounterVec,
}

#[derive(Debug, Default)]
struct Names {
    wanted: BTreeSet<String>,
    /// Not found, and until when requests for it fail at once.
    missing: BTreeMap<String, Instant>,
}

impl OnDemand {
    /// Waits up to `wait` per request; counts in `registry`.
    pub fn new(wait: Duration, registry: &Registry) -> Self {
        let outcomes = crate::request_metrics::counter_vec(
            registry,
            "tether_on_demand_total",
            "Requests for a service the snapshot did not hold, by outcome (found, not-found, held-missing).",
            &["outcome"],
        );
        Self {
            wait,
            wanted: Mutex::default(),
            asked: Notify::new(),
            applied: watch::channel(0).0,
            outcomes,
        }
    }

    /// The names to send with the next poll, comma-separated (`None`: none).
    pub fn wanted(&self) -> Option<String> {
        let names = self.wanted.lock().ok()?;
        (!names.wanted.is_empty()).then(|| {
            names
                .wanted
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
    }

    /// Resolves when a request asked for a new name.
    pub async fn asked(&self) {
        self.asked.notified().await;
    }

    /// A snapshot was applied: waiting requests look again.
    pub fn applied(&self) {
        self.applied.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Asks for `name` and waits until `state` holds it (`true`), or not
    /// (`false`, counted).
    pub async fn discover(&self, name: &str, state: &ArcSwap<MeshState>) -> bool {
        let name = name.to_ascii_lowercase();
        if !tether_api::is_service_name(&name) {
            return false;
        }
        let mut applied = self.applied.subscribe();
        match self.ask(&name) {
            Ask::Held => {
                self.outcomes.with_label_values(&["held-missing"]).inc();
                return false;
            }
            Ask::Full => {
                self.outcomes.with_label_values(&["not-found"]).inc();
                return false;
            }
            Ask::New => self.asked.notify_one(),
            Ask::Already => {}
        }
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut snapshots = 0;
        loop {
            if state.load().services.contains_key(&name) {
                self.outcomes.with_label_values(&["found"]).inc();
                return true;
            }
            // The first snapshot may have been on its way before the ask.
            let given_up = snapshots >= 2
                || !matches!(
                    tokio::time::timeout_at(deadline, applied.changed()).await,
                    Ok(Ok(()))
                );
            if given_up {
                if !state.load().services.contains_key(&name) {
                    self.not_found(&name);
                    return false;
                }
            } else {
                snapshots += 1;
            }
        }
    }

    fn ask(&self, name: &str) -> Ask {
        let Ok(mut names) = self.wanted.lock() else {
            return Ask::Full;
        };
        if names.wanted.contains(name) {
            return Ask::Already;
        }
        let now = Instant::now();
        names.missing.retain(|_, until| *until > now);
        if names.missing.contains_key(name) {
            return Ask::Held;
        }
        if names.wanted.len() >= MAX_WANTED {
            return Ask::Full;
        }
        names.wanted.insert(name.to_owned());
        Ask::New
    }

    fn not_found(&self, name: &str) {
        self.outcomes.with_label_values(&["not-found"]).inc();
        tracing::info!(
            service = name,
            "requested service not found in the mesh (or not allowed): not asked again for 30 s"
        );
        if let Ok(mut names) = self.wanted.lock() {
            names.wanted.remove(name);
            names
                .missing
                .insert(name.to_owned(), Instant::now() + MISSING_HOLD);
        }
    }
}

enum Ask {
    New,
    Already,
    Held,
    Full,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> std::sync::Arc<ArcSwap<MeshState>> {
        let requests = crate::request_metrics::RequestMetrics::new();
        let tcp = crate::tcp_metrics::TcpFamilies::register(requests.registry());
        let metrics = super::super::SnapshotMetrics::register(&requests, tcp);
        std::sync::Arc::new(ArcSwap::from_pointee(MeshState::empty(
            super::super::build::unknown_metrics(&metrics),
        )))
    }

    #[tokio::test]
    async fn a_name_never_brought_fails_after_two_snapshots_and_is_held() {
        let on_demand =
            std::sync::Arc::new(OnDemand::new(Duration::from_secs(30), &Registry::new()));
        let state = state();
        let waiter = {
            let (on_demand, state) = (on_demand.clone(), state.clone());
            tokio::spawn(async move { on_demand.discover("Billing", &state).await })
        };
        // The ask wakes the subscription, and the name is sent.
        tokio::time::timeout(Duration::from_secs(5), on_demand.asked())
            .await
            .unwrap_or_else(|_| panic!("not asked"));
        assert_eq!(on_demand.wanted().as_deref(), Some("billing"));
        on_demand.applied();
        tokio::task::yield_now().await;
        on_demand.applied();
        tokio::task::yield_now().await;
        on_demand.applied();
        let found = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap_or_else(|_| panic!("still waiting"))
            .unwrap_or(true);
        assert!(!found);
        assert_eq!(on_demand.wanted(), None);
        // Held: fails at once.
        assert!(!on_demand.discover("billing", &state).await);
        assert!(!on_demand.discover("not a name!", &state).await);
    }
}
