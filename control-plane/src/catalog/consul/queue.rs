//! The reads waiting for a reader, in two FIFO lanes: *changes* (a service
//! known to differ: its checks, a node of its, its tags changed) go before
//! the *sweep* (every node's service list, because Consul's service index
//! moved and its answers cannot say which service; or every service, at
//! start). A read is queued once: asked for again while it waits, it keeps
//! its place (or moves up to the change lane), so a sweep restarted while
//! one runs costs no duplicate reads and a busy mesh cannot starve any.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use prometheus::IntGauge;
use tokio::sync::Notify;

/// One read: a service's health, or the instances registered on a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Read {
    /// `/v1/health/service/<name>`.
    Service(String),
    /// `/v1/catalog/node-services/<node>`.
    Node(String),
}

impl Read {
    /// The `read` label of `tether_control_consul_reads_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Read::Service(_) => "service",
            Read::Node(_) => "node",
        }
    }
}

/// Why something is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Something of this service changed.
    Change,
    /// Every service is read again.
    Sweep,
}

#[derive(Default)]
struct Lanes {
    change: VecDeque<Read>,
    sweep: VecDeque<Read>,
    /// Each queued name and its lane; a deque entry whose name is not
    /// (or no longer) queued in that lane is stale and skipped.
    queued: HashMap<Read, Trigger>,
}

impl Lanes {
    fn pop(&mut self) -> Option<(Read, Trigger)> {
        for trigger in [Trigger::Change, Trigger::Sweep] {
            let lane = match trigger {
                Trigger::Change => &mut self.change,
                Trigger::Sweep => &mut self.sweep,
            };
            while let Some(name) = lane.pop_front() {
                if self.queued.get(&name) == Some(&trigger) {
                    self.queued.remove(&name);
                    return Some((name, trigger));
                }
            }
        }
        None
    }
}

/// Reads to make; any number of readers take from it.
pub struct ReadQueue {
    lanes: Mutex<Lanes>,
    ready: Notify,
    gauge: IntGauge,
}

impl ReadQueue {
    /// An empty queue whose length `gauge` follows.
    pub fn new(gauge: IntGauge) -> Self {
        gauge.set(0);
        Self {
            lanes: Mutex::default(),
            ready: Notify::new(),
            gauge,
        }
    }

    /// Queues `names` in `trigger`'s lane; a name already waiting keeps its
    /// place, unless it waits for a sweep and this is a change.
    pub fn push(&self, names: impl IntoIterator<Item = Read>, trigger: Trigger) {
        let Ok(mut lanes) = self.lanes.lock() else {
            return;
        };
        let mut added = false;
        for name in names {
            match lanes.queued.get(&name) {
                Some(Trigger::Change) => continue,
                Some(Trigger::Sweep) if trigger == Trigger::Sweep => continue,
                _ => {}
            }
            lanes.queued.insert(name.clone(), trigger);
            match trigger {
                Trigger::Change => lanes.change.push_back(name),
                Trigger::Sweep => lanes.sweep.push_back(name),
            }
            added = true;
        }
        self.gauge.set(lanes.queued.len() as i64);
        drop(lanes);
        if added {
            self.ready.notify_waiters();
        }
    }

    /// The next service to read, changes first; waits while none is queued.
    pub async fn next(&self) -> (Read, Trigger) {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            // Registered before looking, so a push in between is not missed.
            notified.as_mut().enable();
            if let Some(next) = self.try_next() {
                return next;
            }
            notified.await;
        }
    }

    fn try_next(&self) -> Option<(Read, Trigger)> {
        let mut lanes = self.lanes.lock().ok()?;
        let next = lanes.pop();
        self.gauge.set(lanes.queued.len() as i64);
        next
    }

    /// Reads waiting.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lanes.lock().map(|l| l.queued.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> ReadQueue {
        ReadQueue::new(IntGauge::new("q", "q").unwrap_or_else(|e| panic!("{e}")))
    }

    fn names(list: &[&str]) -> Vec<Read> {
        list.iter()
            .map(|n| Read::Service((*n).to_owned()))
            .collect()
    }

    fn service(name: &str) -> Read {
        Read::Service(name.to_owned())
    }

    #[test]
    fn changes_go_first_and_each_name_is_queued_once() {
        let q = queue();
        q.push(names(&["a", "b", "c"]), Trigger::Sweep);
        q.push(names(&["c", "d"]), Trigger::Change);
        // A sweep asked for again while one waits changes nothing.
        q.push(names(&["a", "b", "c", "d"]), Trigger::Sweep);
        assert_eq!(q.len(), 4);
        let order: Vec<(Read, Trigger)> = std::iter::from_fn(|| q.try_next()).collect();
        assert_eq!(
            order,
            vec![
                (service("c"), Trigger::Change),
                (service("d"), Trigger::Change),
                (service("a"), Trigger::Sweep),
                (service("b"), Trigger::Sweep),
            ]
        );
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_name_read_meanwhile_goes_to_the_back_so_none_starves() {
        let q = queue();
        q.push(names(&["a", "b", "c"]), Trigger::Sweep);
        assert_eq!(q.try_next().map(|n| n.0), Some(service("a")));
        // A new sweep while the first runs: b and c keep their places, a
        // (already read) joins the back.
        q.push(names(&["a", "b", "c"]), Trigger::Sweep);
        let order: Vec<Read> = std::iter::from_fn(|| q.try_next()).map(|n| n.0).collect();
        assert_eq!(order, names(&["b", "c", "a"]));
        // A node and a service of the same name are two reads.
        q.push([Read::Node("a".into()), service("a")], Trigger::Sweep);
        assert_eq!(q.len(), 2);
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_on_a_push() {
        let q = std::sync::Arc::new(queue());
        let reader = tokio::spawn({
            let q = std::sync::Arc::clone(&q);
            async move { q.next().await }
        });
        tokio::task::yield_now().await;
        q.push(names(&["x"]), Trigger::Change);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), reader).await;
        assert!(
            matches!(got, Ok(Ok((ref n, Trigger::Change))) if *n == service("x")),
            "{got:?}"
        );
    }
}
