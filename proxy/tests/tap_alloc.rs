//! A proxy nobody taps pays nothing for tap: observing a request (what
//! both paths do around every request) allocates nothing more with the tap
//! hub in place, and the hub's only work per request is one relaxed load.
//! Counted with a global allocator, on this thread only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use tether_proxy::body::Body;
use tether_proxy::observe::Observer;
use tether_proxy::request_metrics::{Direction, RequestMetrics};
use tether_proxy::tap::{Tap, TapFilter};
use tether_proxy::telemetry::{ExportCounters, Identity, Telemetry};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Allocations made observing one request (begin + end) with `observer`.
fn observe_one(
    observer: &Observer,
    metrics: &tether_proxy::request_metrics::ServiceMetrics,
) -> u64 {
    let mut request = http::Request::builder()
        .uri("/v1/users")
        .header("host", "api")
        .body(Body::Empty)
        .unwrap();
    let mut response = http::Response::new(Body::Empty);
    let before = allocations();
    let observation = observer.begin(&mut request, "api", None);
    observer.end(observation, &mut response, metrics, "api", None);
    allocations() - before
}

#[test]
fn observing_a_request_allocates_nothing_while_nobody_taps() {
    let requests = RequestMetrics::new();
    let telemetry = Telemetry::new(
        Identity {
            service: "web".into(),
            instance: "web-1".into(),
        },
        ExportCounters::register(requests.registry()),
    );
    let metrics = requests.service(Direction::Outbound, "api");
    let tap = Tap::register(requests.registry());
    let observer = Observer::new(telemetry, None, Direction::Outbound).with_tap(tap.clone());
    // Warm up (metric children, thread-locals).
    observe_one(&observer, &metrics);
    assert_eq!(
        observe_one(&observer, &metrics),
        0,
        "nobody taps: no allocation"
    );

    // The counter counts: with a tap open the request is copied for it.
    let stream = tap.subscribe(TapFilter::parse("").unwrap()).unwrap();
    assert!(observe_one(&observer, &metrics) > 0);
    drop(stream);
    assert_eq!(
        observe_one(&observer, &metrics),
        0,
        "closed again: free again"
    );
}
