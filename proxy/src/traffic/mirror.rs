//! Traffic mirroring's domain: where a service's (or route's) copies go,
//! what share is copied and how many may be in flight. Built by discovery,
//! held in the state, drawn and sent by `outbound::mirror`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{MirrorMetrics, Share};
use crate::balance::EndpointSet;

/// Where a mirror's copies go.
#[derive(Debug)]
pub enum MirrorTarget {
    /// A subset of the mirrored service itself.
    Subset(Arc<EndpointSet>),
    /// Another mesh service, by its (lowercase) name: found in the state
    /// in force when a request is drawn, so its endpoints and pool are
    /// always current and two services may mirror each other.
    Service(String),
}

/// One service's (or route's) mirror.
#[derive(Debug)]
pub struct Mirror {
    pub(crate) target: MirrorTarget,
    /// Share of requests copied.
    share: Share,
    pub(crate) max_in_flight: usize,
    /// Copies in flight, shared by every mirror of the service.
    pub(crate) in_flight: Arc<AtomicUsize>,
    /// The copy's timeout; `None`: the mirrored service's.
    pub(crate) timeout: Option<Duration>,
    pub(crate) metrics: MirrorMetrics,
}

impl Mirror {
    /// A mirror copying `percent` % of requests to `target`, at most
    /// `max_in_flight` (at least 1) of them at once, counted in `in_flight`
    /// (one counter per service).
    pub fn new(
        target: MirrorTarget,
        percent: f64,
        max_in_flight: u32,
        in_flight: Arc<AtomicUsize>,
        timeout: Option<Duration>,
        metrics: MirrorMetrics,
    ) -> Self {
        Self {
            target,
            share: Share::from_percent(percent),
            max_in_flight: (max_in_flight as usize).max(1),
            in_flight,
            timeout,
            metrics,
        }
    }

    /// The service's count of copies in flight (carried to the next
    /// snapshot's mirrors, so the bound holds across an update).
    pub fn in_flight(&self) -> &Arc<AtomicUsize> {
        &self.in_flight
    }
}

impl Mirror {
    /// One draw: whether this request is copied (its share of requests).
    pub fn sampled(&self) -> bool {
        self.share.sample()
    }
}

/// One of a service's in-flight copies; given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// A slot, if fewer than `max` are taken.
    pub(crate) fn take(in_flight: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(in_flight)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_slots_are_bounded_and_given_back() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let first = Slot::take(&in_flight, 2);
        let second = Slot::take(&in_flight, 2);
        assert!(first.is_some() && second.is_some());
        assert!(
            Slot::take(&in_flight, 2).is_none(),
            "the third is over the bound"
        );
        drop(first);
        assert_eq!(in_flight.load(Ordering::Acquire), 1);
        assert!(
            Slot::take(&in_flight, 2).is_some(),
            "a slot given back is taken again"
        );
    }
}
