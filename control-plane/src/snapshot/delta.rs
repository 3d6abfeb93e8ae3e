//! Deltas: a proxy holding version N of its service's snapshot gets what
//! changed since N instead of the whole snapshot (`tether_api::SnapshotDelta`).
//!
//! Two records make that cheap with thousands of proxies and services:
//!
//! - every new shared part (all services, [`super::Shared`]) is a
//!   *generation*, and the store remembers which service names each
//!   generation touched (changed, added or removed) in a ring of
//!   [`MAX_STEPS`] ([`Steps`]): one walk over the services per catalog
//!   change, done anyway to find out whether anything changed;
//! - every published version remembers the last [`HISTORY`] versions of
//!   the same service before it ([`Past`]: version, generation, scope —
//!   a few words each, never an old shared part).
//!
//! The delta from N to the current version is then the header (whole),
//! the services of the current view that a generation since N's touched
//! or that N's scope did not hold, and the names N may hold that the
//! current view does not: work in proportion to the change, not to the
//! mesh. It is encoded once per (version, base) and kept with the version
//! ([`DeltaCache`]), so every subscriber of a service shares it; the
//! services' members are the shared part's once-encoded bytes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tether_api::{Authorization, InboundRateLimit, MeshSettings, ServiceSnapshot};

use super::{Published, Snapshots};

/// How many earlier versions of each service a delta can start from. A
/// proxy is normally one version behind (it polls again right after each
/// answer); the rest cover proxies that were slow to come back while
/// changes went on: a proxy that holds the whole mesh gets a new version
/// per catalog change, so at 10 changes a second 64 versions are 6.4 s
/// (16 were too few on a loaded machine: slow proxies fell back to 1 MiB
/// full snapshots, which made them slower still). Each entry is a few
/// words (1,000 services: ~2.5 MB in all).
pub const HISTORY: usize = 64;

/// How many shared-part generations are remembered (the names each
/// touched). A version whose shared part is older gets a full snapshot. A
/// snapshot that holds only some services keeps its version (and its
/// generation) while changes elsewhere go on, so this is far longer than
/// [`HISTORY`]: at 10 catalog changes a second, ~100 s. Each step holds
/// only the names it touched.
pub const MAX_STEPS: usize = 1024;

/// What kind of snapshot answer was sent (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The whole snapshot.
    Full,
    /// What changed since the version the proxy holds.
    Delta,
}

impl Kind {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Delta => "delta",
        }
    }
}

/// An earlier version of one service's snapshot, as much as a delta from
/// it needs.
#[derive(Debug, Clone)]
pub(super) struct Past {
    version: u64,
    /// The generation of its shared part.
    generation: u64,
    /// The services it held (`None`: all).
    scope: Option<Arc<BTreeSet<String>>>,
}

impl Published {
    /// This version as an entry of a later version's history.
    fn past(&self) -> Past {
        Past {
            version: self.header.version,
            generation: self.shared.generation,
            scope: self.scope.clone(),
        }
    }
}

impl Published {
    /// The same version over `shared`, the latest shared part, whose
    /// services it holds are the same: a snapshot that holds only some
    /// services keeps no older shared part alive (with 1,000 services and
    /// changes every 100 ms, each kept part is megabytes). Its deltas are
    /// unchanged: the generations since its own touched none of its
    /// services.
    pub(super) fn rebased(self: &Arc<Self>, shared: &Arc<super::Shared>) -> Arc<Self> {
        if Arc::ptr_eq(&self.shared, shared) {
            return Arc::clone(self);
        }
        Arc::new(Published {
            header: self.header.clone(),
            shared: Arc::clone(shared),
            scope: self.scope.clone(),
            head: self.head.clone(),
            history: self.history.clone(),
            deltas: DeltaCache::default(),
        })
    }
}

/// The history of the version that follows `previous`: `previous`, then
/// its own history, newest first, at most [`HISTORY`] entries.
pub(super) fn history_after(previous: Option<&Published>) -> Vec<Past> {
    let Some(previous) = previous else {
        return Vec::new();
    };
    std::iter::once(previous.past())
        .chain(previous.history.iter().cloned())
        .take(HISTORY)
        .collect()
}

/// The names each recent generation touched, oldest first.
#[derive(Debug, Default)]
pub(super) struct Steps {
    ring: VecDeque<(u64, Vec<String>)>,
}

impl Steps {
    /// Records that `generation` touched `names` (relative to the one before).
    pub(super) fn push(&mut self, generation: u64, names: Vec<String>) {
        if self.ring.len() == MAX_STEPS {
            self.ring.pop_front();
        }
        self.ring.push_back((generation, names));
    }

    /// Every name touched by the generations after `from` up to `to`;
    /// `None` when some of them are no longer remembered.
    fn touched(&self, from: u64, to: u64) -> Option<BTreeSet<String>> {
        let oldest = self.ring.front()?.0;
        if from < oldest.saturating_sub(1) || to < from {
            return None;
        }
        let mut touched = BTreeSet::new();
        let mut last = from;
        for (generation, names) in &self.ring {
            if *generation <= from || *generation > to {
                continue;
            }
            if *generation != last + 1 {
                return None;
            }
            last = *generation;
            touched.extend(names.iter().cloned());
        }
        (last == to).then_some(touched)
    }
}

/// The names whose service differs between `old` and `new` (changed,
/// added or removed): one ordered walk over both.
pub(super) fn touched(
    old: &BTreeMap<String, ServiceSnapshot>,
    new: &BTreeMap<String, ServiceSnapshot>,
) -> Vec<String> {
    let mut names = Vec::new();
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return names,
            (Some((name, _)), None) => {
                names.push((*name).clone());
                a.next();
            }
            (None, Some((name, _))) => {
                names.push((*name).clone());
                b.next();
            }
            (Some((x, xs)), Some((y, ys))) => match x.cmp(y) {
                std::cmp::Ordering::Less => {
                    names.push((*x).clone());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    names.push((*y).clone());
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if xs != ys {
                        names.push((*x).clone());
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

/// The encoded deltas of one version, by base (`None`: no delta from that
/// base, a full snapshot is sent), computed by the first subscriber that
/// asks and shared by the others.
#[derive(Debug, Default)]
pub(super) struct DeltaCache(Mutex<Vec<(u64, Option<Encoded>)>>);

/// An encoded delta: its chunks, as [`Published::wire`]'s.
type Encoded = Arc<[Bytes]>;

/// What changes from one view of the mesh to another.
#[derive(Debug, PartialEq, Eq)]
struct Diff<'a> {
    /// Services of the new view to send (changed, or not held before).
    changed: Vec<&'a str>,
    /// Names the old view may hold that the new one does not.
    removed: Vec<String>,
}

/// The diff from a view holding `old_scope` (`None`: all) to one holding
/// `new_scope` of `current`, when the generations between them touched
/// `touched`. A scope only ever names services of its shared part.
fn diff<'a>(
    old_scope: Option<&BTreeSet<String>>,
    new_scope: Option<&'a BTreeSet<String>>,
    current: &'a BTreeMap<String, ServiceSnapshot>,
    touched: &'a BTreeSet<String>,
) -> Diff<'a> {
    let not_held_before = |name: &str| old_scope.is_some_and(|held| !held.contains(name));
    let changed: Vec<&str> = match (new_scope, old_scope) {
        (Some(scope), _) => scope
            .iter()
            .map(String::as_str)
            .filter(|n| touched.contains(*n) || not_held_before(n))
            .collect(),
        (None, None) => touched
            .iter()
            .map(String::as_str)
            .filter(|n| current.contains_key(*n))
            .collect(),
        (None, Some(_)) => current
            .keys()
            .map(String::as_str)
            .filter(|n| touched.contains(*n) || not_held_before(n))
            .collect(),
    };
    let removed = match (new_scope, old_scope) {
        (Some(scope), Some(held)) => held.difference(scope).cloned().collect(),
        // It held everything: whatever is not in the new scope, including
        // services removed since (all were touched).
        (Some(scope), None) => current
            .keys()
            .chain(touched.iter())
            .filter(|n| !scope.contains(*n))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .cloned()
            .collect(),
        (None, Some(held)) => held
            .iter()
            .filter(|n| !current.contains_key(*n))
            .cloned()
            .collect(),
        (None, None) => touched
            .iter()
            .filter(|n| !current.contains_key(*n))
            .cloned()
            .collect(),
    };
    Diff { changed, removed }
}

impl Snapshots {
    /// This replica's id: a delta is sent only to a proxy holding a version
    /// made here (another replica numbers its versions on its own).
    pub fn replica(&self) -> u64 {
        self.replica
    }

    /// The answer to a long-poll that merges deltas (`delta=<replica>`),
    /// a `tether_api::SnapshotUpdate`: a delta from `base` when `replica`
    /// is this one and `current`'s history still holds `base`, else the
    /// full snapshot. Chunks, as [`Published::wire`].
    pub fn update_wire(&self, current: &Published, base: u64, replica: u64) -> (Kind, Vec<Bytes>) {
        if replica == self.replica && base != 0 {
            if let Some(delta) = self.delta_wire(current, base) {
                return (Kind::Delta, delta.to_vec());
            }
        }
        let mut chunks = vec![Bytes::from(format!(
            "{{\"replica\":{},\"full\":",
            self.replica
        ))];
        chunks.extend(current.wire());
        chunks.push(Bytes::from_static(b"}"));
        (Kind::Full, chunks)
    }

    fn delta_wire(&self, current: &Published, base: u64) -> Option<Encoded> {
        let mut cache = current
            .deltas
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, delta)) = cache.iter().find(|(b, _)| *b == base) {
            return delta.clone();
        }
        let delta: Option<Encoded> = self.encode_delta(current, base).map(Arc::from);
        if cache.len() >= HISTORY {
            cache.remove(0);
        }
        cache.push((base, delta.clone()));
        delta
    }

    /// The delta from `base` to `current`, encoded; `None` when `base` is
    /// not in `current`'s history or its generation is forgotten.
    fn encode_delta(&self, current: &Published, base: u64) -> Option<Vec<Bytes>> {
        let past = current.history.iter().find(|p| p.version == base)?;
        let generation = current.shared.generation;
        let touched = if past.generation == generation {
            BTreeSet::new()
        } else {
            self.steps
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .touched(past.generation, generation)?
        };
        let services = &current.shared.services;
        let diff = diff(
            past.scope.as_deref(),
            current.scope.as_deref(),
            services,
            &touched,
        );
        Some(encode(self.replica, current, base, diff))
    }
}

/// `{"replica":R,"delta":{"version":…,"base":…,…,"services":{` members `}}}`.
fn encode(replica: u64, current: &Published, base: u64, diff: Diff<'_>) -> Vec<Bytes> {
    #[derive(serde::Serialize)]
    struct Head<'a> {
        version: u64,
        base: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        service: Option<&'a str>,
        mesh: &'a MeshSettings,
        #[serde(skip_serializing_if = "Option::is_none")]
        authorization: Option<&'a Authorization>,
        #[serde(skip_serializing_if = "Option::is_none")]
        inbound_rate_limit: Option<&'a InboundRateLimit>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        removed: Vec<String>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        partial: bool,
    }
    let h = &current.header;
    let head = Head {
        version: h.version,
        base,
        service: h.service.as_deref(),
        mesh: &h.mesh,
        authorization: h.authorization.as_ref(),
        inbound_rate_limit: h.inbound_rate_limit.as_ref(),
        removed: diff.removed,
        partial: current.scope.is_some(),
    };
    // An object with at least `version`, `base` and `mesh`: its closing
    // brace makes way for the services.
    let mut json = format!("{{\"replica\":{replica},\"delta\":").into_bytes();
    json.extend(serde_json::to_vec(&head).unwrap_or_else(|_| b"{}".to_vec()));
    json.pop();
    json.extend_from_slice(b",\"services\":{");
    let members = current.shared.members();
    let mut chunks = Vec::with_capacity(diff.changed.len() * 2 + 2);
    chunks.push(Bytes::from(json));
    let mut first = true;
    for member in diff.changed.iter().filter_map(|name| members.get(*name)) {
        if !first {
            chunks.push(Bytes::from_static(b","));
        }
        first = false;
        chunks.push(member.clone());
    }
    chunks.push(Bytes::from_static(b"}}}"));
    chunks
}

#[cfg(test)]
mod tests;
