//! One upstream endpoint's live state: requests in flight, peak-EWMA latency,
//! consecutive failures and ejection.
//!
//! Everything the request path reads is an atomic; the one mutex (ejection
//! deadline) is touched only while the endpoint is ejected.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::uri::Authority;
use tokio::time::Instant;

use crate::transport::{EndpointPool, PoolFactory};

/// Latency assumed for an endpoint that has not answered yet. Low enough that
/// new endpoints get tried promptly, high enough that a measured fast
/// endpoint is not abandoned for an unknown one (linkerd uses 30 ms; on a
/// loopback or LAN mesh 5 ms is closer to a real first answer).
const DEFAULT_RTT: Duration = Duration::from_millis(5);

/// How fast the peak-EWMA estimate forgets a slow answer. Ten seconds, as in
/// linkerd2-proxy and Finagle: slow endpoints stay penalised long enough to
/// matter, and recover within a minute once they are fast again.
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// An endpoint address that is not `host:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("endpoint address is not host:port")]
pub struct InvalidEndpoint;

/// Live state of one endpoint, shared by every subset it belongs to and
/// carried over from one snapshot to the next while its address stays.
#[derive(Debug)]
pub struct EndpointState {
    address: String,
    authority: Authority,
    weight: u32,
    in_flight: AtomicU32,
    /// Peak-EWMA round trip, nanoseconds as f64 bits; 0 until first answer.
    rtt_ns: AtomicU64,
    /// Nanoseconds since `created` of the last EWMA update.
    rtt_updated_ns: AtomicU64,
    created: Instant,
    consecutive_failures: AtomicU32,
    ejected: AtomicBool,
    ejection: Mutex<Ejection>,
    /// Connections to this endpoint, made by the service's current client.
    connections: ArcSwapOption<EndpointPool>,
}

#[derive(Debug, Default)]
struct Ejection {
    until: Option<Instant>,
    times: u32,
}

impl EndpointState {
    /// A fresh endpoint. `address` must be `host:port`.
    pub fn new(address: &str, weight: u32) -> Result<Self, InvalidEndpoint> {
        let authority: Authority = address.parse().map_err(|_| InvalidEndpoint)?;
        if authority.port_u16().is_none() {
            return Err(InvalidEndpoint);
        }
        Ok(Self {
            address: address.to_owned(),
            authority,
            weight,
            in_flight: AtomicU32::new(0),
            rtt_ns: AtomicU64::new(0),
            rtt_updated_ns: AtomicU64::new(0),
            created: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            ejection: Mutex::new(Ejection::default()),
            connections: ArcSwapOption::empty(),
        })
    }

    /// The connection pool to this endpoint for `client`: kept across
    /// snapshots while the service's client stays the same, replaced (and
    /// the old connections closed once idle) when it changes.
    pub fn connections(&self, client: &PoolFactory) -> Arc<EndpointPool> {
        if let Some(pool) = self.connections.load_full() {
            if pool.factory_id() == client.id() {
                return pool;
            }
        }
        let pool = client.pool_for(&self.authority);
        self.connections.store(Some(Arc::clone(&pool)));
        pool
    }

    /// `host:port` as configured.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The address as a URI authority, for building upstream URIs.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Relative weight for the weighted balancer.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Requests in flight to this endpoint.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Marks a request as started; the guard marks it finished when dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: Arc::clone(self),
            started: Instant::now(),
        }
    }

    /// The peak-EWMA round-trip estimate, decayed to now.
    pub fn rtt_estimate(&self) -> Duration {
        let bits = self.rtt_ns.load(Ordering::Relaxed);
        if bits == 0 {
            return DEFAULT_RTT;
        }
        let rtt = f64::from_bits(bits);
        let elapsed = self
            .since_created_ns()
            .saturating_sub(self.rtt_updated_ns.load(Ordering::Relaxed));
        Duration::from_nanos((rtt * decay_weight(elapsed)) as u64)
    }

    /// P2C + peak-EWMA cost: estimated latency scaled by outstanding work.
    /// An endpoint that has never answered and has nothing in flight costs
    /// nothing, so it gets the next request (as in Finagle): otherwise a
    /// measured endpoint faster than [`DEFAULT_RTT`] would take every
    /// request of a caller that sends one at a time, and a new instance
    /// would never be tried. With requests in flight and no answer yet it
    /// is assumed as slow as [`DEFAULT_RTT`], so a burst does not pile
    /// onto an unknown endpoint.
    pub fn ewma_cost(&self) -> f64 {
        let in_flight = self.in_flight();
        if in_flight == 0 && self.rtt_ns.load(Ordering::Relaxed) == 0 {
            return 0.0;
        }
        self.rtt_estimate().as_nanos() as f64 * f64::from(in_flight + 1)
    }

    fn since_created_ns(&self) -> u64 {
        self.since_created_ns_at(Instant::now())
    }

    fn since_created_ns_at(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.created).as_nanos() as u64
    }

    /// Folds one observed round trip into the peak-EWMA estimate. A slower
    /// answer than the estimate replaces it at once (the "peak"); a faster
    /// one pulls it down with exponential decay. Concurrent updates may
    /// overwrite each other, which only drops a sample.
    pub fn observe_rtt(&self, rtt: Duration) {
        self.observe_rtt_at(rtt, Instant::now());
    }

    /// [`observe_rtt`](Self::observe_rtt) with the clock already read.
    fn observe_rtt_at(&self, rtt: Duration, now: Instant) {
        let now = self.since_created_ns_at(now);
        let sample = rtt.as_nanos() as f64;
        let bits = self.rtt_ns.load(Ordering::Relaxed);
        let next = if bits == 0 {
            sample
        } else {
            let current = f64::from_bits(bits);
            if sample > current {
                sample
            } else {
                let w =
                    decay_weight(now.saturating_sub(self.rtt_updated_ns.load(Ordering::Relaxed)));
                current * w + sample * (1.0 - w)
            }
        };
        self.rtt_ns
            .store(next.max(1.0).to_bits(), Ordering::Relaxed);
        self.rtt_updated_ns.store(now, Ordering::Relaxed);
    }

    /// Records a success: the failure streak ends.
    pub fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Records a failure; returns the length of the failure streak.
    pub fn record_failure(&self) -> u32 {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether the endpoint may be picked now. An ejected endpoint whose
    /// ejection has run out is restored here (returns true, and `restored`
    /// is set so the caller can update its ejected count).
    pub fn is_available(&self, restored: &mut bool) -> bool {
        if !self.ejected.load(Ordering::Acquire) {
            return true;
        }
        let Ok(mut ejection) = self.ejection.lock() else {
            return false;
        };
        match ejection.until {
            Some(until) if Instant::now() >= until => {
                ejection.until = None;
                self.consecutive_failures.store(0, Ordering::Relaxed);
                self.ejected.store(false, Ordering::Release);
                *restored = true;
                true
            }
            _ => false,
        }
    }

    /// Whether the endpoint is ejected right now (without restoring it).
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// Ejects the endpoint for `base × n` (capped at `max`) where n counts
    /// its ejections. Returns false if it was already ejected.
    pub fn eject(&self, base: Duration, max: Duration) -> bool {
        let Ok(mut ejection) = self.ejection.lock() else {
            return false;
        };
        if self.ejected.load(Ordering::Acquire) {
            return false;
        }
        ejection.times = ejection.times.saturating_add(1);
        let length = base.saturating_mul(ejection.times).min(max);
        ejection.until = Some(Instant::now() + length);
        self.ejected.store(true, Ordering::Release);
        true
    }
}

/// `exp(-elapsed / decay)`: how much of the old estimate survives.
fn decay_weight(elapsed_ns: u64) -> f64 {
    (-(elapsed_ns as f64) / EWMA_DECAY.as_nanos() as f64).exp()
}

/// A request in flight to one endpoint.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<EndpointState>,
    started: Instant,
}

impl InFlight {
    /// The endpoint the request went to.
    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.endpoint
    }

    /// Time since the request started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Folds this request's round trip, until now, into its endpoint's
    /// estimate ([`EndpointState::observe_rtt`]): one clock read for the
    /// round trip and the estimate's decay, where `observe_rtt(elapsed())`
    /// reads it twice.
    pub fn observe_rtt(&self) {
        let now = Instant::now();
        self.endpoint
            .observe_rtt_at(now.saturating_duration_since(self.started), now);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Arc<EndpointState> {
        Arc::new(EndpointState::new("127.0.0.1:1", 1).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn rejects_bad_addresses() {
        assert!(EndpointState::new("not an address", 1).is_err());
        assert!(
            EndpointState::new("no-port", 1).is_err(),
            "a port is required"
        );
        assert!(EndpointState::new("10.0.0.1:8080", 1).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_jumps_up_and_decays_down() {
        let ep = endpoint();
        assert_eq!(ep.rtt_estimate(), DEFAULT_RTT);
        ep.observe_rtt(Duration::from_millis(100));
        assert_eq!(ep.rtt_estimate(), Duration::from_millis(100));
        tokio::time::advance(EWMA_DECAY).await;
        ep.observe_rtt(Duration::from_millis(1));
        let est = ep.rtt_estimate();
        // One decay period keeps e^-1 ≈ 37 % of the old estimate.
        assert!(
            est > Duration::from_millis(30) && est < Duration::from_millis(45),
            "{est:?}"
        );
        ep.observe_rtt(Duration::from_millis(200));
        assert_eq!(ep.rtt_estimate(), Duration::from_millis(200));
    }

    #[tokio::test]
    async fn in_flight_counts_and_weights_cost() {
        let ep = endpoint();
        let a = ep.start();
        let _b = ep.start();
        assert_eq!(ep.in_flight(), 2);
        assert_eq!(ep.ewma_cost(), DEFAULT_RTT.as_nanos() as f64 * 3.0);
        drop(a);
        assert_eq!(ep.in_flight(), 1);
    }

    #[tokio::test]
    async fn an_idle_endpoint_that_never_answered_is_tried_first() {
        // Found by the Consul-cluster test: a caller sending one request at
        // a time never tried an instance added later, because its assumed
        // 5 ms lost to the 0.3 ms measured on the first instance.
        let fast = endpoint();
        fast.observe_rtt(Duration::from_micros(300));
        let new = endpoint();
        assert_eq!(new.ewma_cost(), 0.0);
        assert!(new.ewma_cost() < fast.ewma_cost());
        let busy = new.start();
        assert!(
            new.ewma_cost() > fast.ewma_cost(),
            "unknown and busy: assumed slow"
        );
        drop(busy);
        new.observe_rtt(Duration::from_micros(400));
        assert!(
            new.ewma_cost() > fast.ewma_cost(),
            "measured: the faster wins"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_grows_and_expires() {
        let ep = endpoint();
        let mut restored = false;
        assert!(ep.eject(Duration::from_secs(10), Duration::from_secs(25)));
        assert!(
            !ep.eject(Duration::from_secs(10), Duration::from_secs(25)),
            "already ejected"
        );
        assert!(!ep.is_available(&mut restored));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(ep.is_available(&mut restored) && restored);
        // Second ejection lasts twice as long.
        assert!(ep.eject(Duration::from_secs(10), Duration::from_secs(25)));
        tokio::time::advance(Duration::from_secs(15)).await;
        assert!(!ep.is_available(&mut restored));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(ep.is_available(&mut restored));
        // Third would be 30 s, capped at 25 s.
        assert!(ep.eject(Duration::from_secs(10), Duration::from_secs(25)));
        tokio::time::advance(Duration::from_secs(25)).await;
        assert!(ep.is_available(&mut restored));
    }

    #[test]
    fn failure_streak_resets_on_success() {
        let ep = endpoint();
        assert_eq!(ep.record_failure(), 1);
        assert_eq!(ep.record_failure(), 2);
        ep.record_success();
        assert_eq!(ep.record_failure(), 1);
    }
}
