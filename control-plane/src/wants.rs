//! On-demand discovery, the control plane's half: the services a proxy
//! asked for by name (`want=` on its long-poll) because its app called
//! one its snapshot does not hold. Kept per proxy service, bounded, and
//! added to that service's scope (`scope::with_wanted`) when
//! authorization lets the service call them. Held in memory only: proxies
//! send their wants with every poll, so a restarted or other replica
//! learns them at the first one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use tokio::sync::watch;

/// Most names taken from one long-poll; more are ignored.
pub const MAX_WANTS_PER_POLL: usize = 64;
/// Most names kept per proxy service: beyond this a service's proxies
/// hold what they asked for first (a typo storm cannot grow the scope
/// without bound).
pub const MAX_WANTS_PER_SERVICE: usize = 256;

/// Every proxy service's wanted names.
#[derive(Debug)]
pub struct Wants {
    by_service: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// Bumped when a name is added: the compute loop recomputes.
    changed: watch::Sender<u64>,
}

impl Default for Wants {
    fn default() -> Self {
        Self {
            by_service: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl Wants {
    /// Takes the comma-separated `names` a proxy of `service` asked for;
    /// wakes the compute loop when one is new. Invalid names are skipped.
    pub fn add(&self, service: &str, names: &str) {
        let mut added = false;
        if let Ok(mut by_service) = self.by_service.lock() {
            let wanted = by_service.entry(service.to_owned()).or_default();
            for name in names
                .split(',')
                .filter(|n| tether_api::is_service_name(n))
                .take(MAX_WANTS_PER_POLL)
            {
                if wanted.len() >= MAX_WANTS_PER_SERVICE {
                    break;
                }
                if name != service && wanted.insert(name.to_owned()) {
                    added = true;
                }
            }
        }
        if added {
            tracing::info!(
                service,
                names,
                "a proxy asked for services it does not hold"
            );
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// The names `service`'s proxies asked for.
    pub fn of(&self, service: &str) -> BTreeSet<String> {
        self.by_service
            .lock()
            .ok()
            .and_then(|m| m.get(service).cloned())
            .unwrap_or_default()
    }

    /// Wakes when a name is added.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_bounded_and_wake_only_when_new() {
        let wants = Wants::default();
        let mut changed = wants.subscribe();
        wants.add("web", "billing,Bad!,,web");
        assert_eq!(wants.of("web"), ["billing".to_owned()].into());
        assert!(changed.has_changed().unwrap_or(false));
        changed.borrow_and_update();
        wants.add("web", "billing");
        assert!(!changed.has_changed().unwrap_or(true));
        let many: Vec<String> = (0..1000).map(|i| format!("s{i}")).collect();
        for chunk in many.chunks(50) {
            wants.add("web", &chunk.join(","));
        }
        assert_eq!(wants.of("web").len(), MAX_WANTS_PER_SERVICE);
        assert!(wants.of("api").is_empty());
    }
}
