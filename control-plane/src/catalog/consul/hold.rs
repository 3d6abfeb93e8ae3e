//! The resync hold: after Consul answers again following a failure, the
//! instances it no longer lists are kept for a while.
//!
//! Why: a Consul that restarts without its state (a dev server, a client
//! agent that lost its data dir, a server restored from an old snapshot)
//! answers at first with an empty or partial catalog, and the sidecars only
//! register again once their next check update fails, a second or two
//! later. Publishing that answer as it is would hand every proxy an empty
//! endpoint list for a service whose instances are all still serving. While
//! a hold runs, what Consul adds is published at once and what it removes
//! waits until the hold ends; a removed instance that really is gone is then
//! dropped, and until then the proxies' passive health ejects it.

use std::collections::BTreeMap;

use tether_api::Endpoint;
use tokio::time::Instant;

/// Instances per service.
pub type Services = BTreeMap<String, Vec<Endpoint>>;

/// A running hold: what was published when it started, and until when.
pub struct Hold {
    /// When removals are published again.
    pub until: Instant,
    /// The state published when the hold started.
    pub held: Services,
}

impl Hold {
    /// Whether the hold still runs at `now`.
    pub fn active(&self, now: Instant) -> bool {
        now < self.until
    }

    /// `current` plus whatever of the held state it lacks: held services it
    /// does not list, and held instances (by address) of services it does.
    /// Current entries win, so changed tags or weights show at once.
    pub fn merge(&self, current: &Services) -> Services {
        let mut merged = current.clone();
        for (name, held) in &self.held {
            let endpoints = merged.entry(name.clone()).or_default();
            for endpoint in held {
                if !endpoints.iter().any(|e| e.address == endpoint.address) {
                    endpoints.push(endpoint.clone());
                }
            }
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn endpoint(address: &str, weight: u32) -> Endpoint {
        Endpoint {
            address: address.to_owned(),
            weight,
            tags: vec![],
            meta: BTreeMap::new(),
            zone: None,
        }
    }

    #[test]
    fn removals_wait_additions_and_changes_do_not() {
        let now = Instant::now();
        let hold = Hold {
            until: now + Duration::from_secs(30),
            held: [
                (
                    "api".to_owned(),
                    vec![endpoint("10.0.0.1:80", 1), endpoint("10.0.0.2:80", 1)],
                ),
                ("web".to_owned(), vec![endpoint("10.0.0.3:80", 1)]),
            ]
            .into(),
        };
        // Consul came back with one api instance (re-weighted) and a new db.
        let current: Services = [
            ("api".to_owned(), vec![endpoint("10.0.0.2:80", 5)]),
            ("db".to_owned(), vec![endpoint("10.0.0.9:5432", 1)]),
        ]
        .into();
        let merged = hold.merge(&current);
        assert_eq!(
            merged["api"],
            vec![endpoint("10.0.0.2:80", 5), endpoint("10.0.0.1:80", 1)]
        );
        assert_eq!(merged["web"], vec![endpoint("10.0.0.3:80", 1)]);
        assert_eq!(merged["db"], vec![endpoint("10.0.0.9:5432", 1)]);
        assert!(hold.active(now));
        assert!(!hold.active(now + Duration::from_secs(30)));
    }
}
