//! Rollouts: moves a service's default split from subset `from` to subset
//! `to` in steps, each judged by gates on the proxies' own statistics
//! ([`crate::stats`]); promotes when every step passes, rolls back to 0 %
//! at once when a gate fails. Blue-green is the one-step case (`100`).
//!
//! While a rollout is held (every phase but `superseded`) it overrides the
//! service's `split` from mesh.yaml in every snapshot ([`apply`]); route
//! rules with a split of their own are untouched. A finished rollout's
//! override (100 % `to` once promoted, 100 % `from` once rolled back or
//! aborted) stays until mesh.yaml's split of the service changes: then
//! mesh.yaml wins and the rollout is `superseded`. Every change is saved to
//! the state file ([`state_file`]); at start an active rollout resumes (its
//! current step restarts its interval), finished ones are reported.

pub mod gate;
mod overrides;
pub mod render;
pub mod state_file;
mod validate;
pub mod window;

pub use self::overrides::{apply, Overrides};
use self::validate::check;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use tether_api::{
    RolloutList, RolloutPhase, RolloutRequest, RolloutStatus, SplitTarget, SubsetFigures,
};
use tokio::sync::watch;

use self::gate::Verdict;
use self::state_file::StateFileError;
use self::window::Window;
use crate::config::MeshConfig;
use crate::metrics::ControlMetrics;
use crate::stats::StatsStore;

/// How often active rollouts are judged: well under any stats interval,
/// so a failing gate rolls back within one report of the failures.
const TICK: Duration = Duration::from_millis(200);

/// Why a rollout request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The request is not valid (every problem listed).
    #[error("{0}")]
    Invalid(String),
    /// It conflicts with the rollout in force.
    #[error("{0}")]
    Conflict(String),
    /// No rollout of that service.
    #[error("no rollout of `{0}`")]
    NotFound(String),
    /// The state could not be saved.
    #[error("{0}")]
    State(#[from] StateFileError),
}

impl RolloutError {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            RolloutError::Invalid(_) => StatusCode::BAD_REQUEST,
            RolloutError::Conflict(_) => StatusCode::CONFLICT,
            RolloutError::NotFound(_) => StatusCode::NOT_FOUND,
            RolloutError::State(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

struct Tracked {
    status: RolloutStatus,
    window: Window,
}

/// Every rollout, the engine that steps them and the overrides they impose.
pub struct Rollouts {
    book: Mutex<BTreeMap<String, Tracked>>,
    stats: Arc<StatsStore>,
    overrides: watch::Sender<Arc<Overrides>>,
    config: watch::Receiver<Arc<MeshConfig>>,
    state_file: Option<PathBuf>,
    metrics: ControlMetrics,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Rollouts {
    /// The engine over `stats` and the config in force, with the rollouts
    /// of `state_file` (none without one: rollouts then cannot start).
    pub fn load(
        stats: Arc<StatsStore>,
        config: watch::Receiver<Arc<MeshConfig>>,
        state_file: Option<PathBuf>,
        metrics: ControlMetrics,
    ) -> Result<Arc<Self>, StateFileError> {
        let list = match &state_file {
            Some(path) => state_file::load(path)?,
            None => RolloutList::default(),
        };
        let now = unix_ms();
        let mut book = BTreeMap::new();
        for mut status in list.rollouts {
            if status.phase == RolloutPhase::Active {
                status.step_started_unix_ms = now;
                tracing::info!(service = %status.request.service, step = status.step + 1, steps = status.request.steps.len(), percent = status.percent, "rollout resumed: its current step starts again");
            } else {
                tracing::info!(service = %status.request.service, phase = status.phase.as_str(), percent = status.percent, reason = ?status.reason, "rollout loaded");
            }
            book.insert(
                status.request.service.clone(),
                Tracked {
                    status,
                    window: Window::new(now),
                },
            );
        }
        let rollouts = Arc::new(Self {
            book: Mutex::new(book),
            stats,
            overrides: watch::channel(Arc::default()).0,
            config,
            state_file,
            metrics,
        });
        if let Ok(book) = rollouts.book.lock() {
            rollouts.publish(&book);
        }
        Ok(rollouts)
    }

    /// The statistics the gates read.
    pub fn stats(&self) -> Arc<StatsStore> {
        Arc::clone(&self.stats)
    }

    /// Wakes when the overrides change.
    pub fn overrides(&self) -> watch::Receiver<Arc<Overrides>> {
        self.overrides.subscribe()
    }

    /// Every rollout held.
    pub fn list(&self) -> RolloutList {
        RolloutList {
            rollouts: self
                .book
                .lock()
                .map(|b| b.values().map(|t| t.status.clone()).collect())
                .unwrap_or_default(),
        }
    }

    /// Starts a rollout: its first step's share goes to `to` at once.
    pub fn start(&self, request: RolloutRequest) -> Result<RolloutStatus, RolloutError> {
        if self.state_file.is_none() {
            return Err(RolloutError::Conflict(
                "rollouts need a state file, so a restart never loses one: start `tether-control serve` with --rollout-state FILE\n".into(),
            ));
        }
        let config = self.config.borrow().clone();
        let config_split = check(&request, &config)?;
        let mut book = self
            .book
            .lock()
            .map_err(|_| RolloutError::Conflict("internal: lock poisoned".into()))?;
        if let Some(held) = book.get(&request.service) {
            if held.status.phase == RolloutPhase::Active {
                return Err(RolloutError::Conflict(format!(
                    "a rollout of `{}` is active ({} → {}, {} %): abort it first\n",
                    request.service,
                    held.status.request.from,
                    held.status.request.to,
                    held.status.percent
                )));
            }
        }
        let now = unix_ms();
        let percent = request.steps.first().copied().unwrap_or(100);
        let status = RolloutStatus {
            phase: RolloutPhase::Active,
            step: 0,
            percent,
            step_started_unix_ms: now,
            started_unix_ms: now,
            finished_unix_ms: None,
            from_figures: SubsetFigures::default(),
            to_figures: SubsetFigures::default(),
            reason: None,
            config_split,
            request,
        };
        let service = status.request.service.clone();
        tracing::info!(%service, from = %status.request.from, to = %status.request.to, steps = ?status.request.steps, interval = ?status.request.interval, gates = ?status.request.gates, "rollout started");
        book.insert(
            service,
            Tracked {
                status: status.clone(),
                window: Window::new(now),
            },
        );
        self.log_step(&status);
        self.changed(&book)?;
        Ok(status)
    }

    /// Switches `service` back to 100 % `from` at once (an active or a
    /// promoted rollout).
    pub fn abort(&self, service: &str) -> Result<RolloutStatus, RolloutError> {
        let mut book = self
            .book
            .lock()
            .map_err(|_| RolloutError::Conflict("internal: lock poisoned".into()))?;
        let tracked = book
            .get_mut(service)
            .ok_or_else(|| RolloutError::NotFound(service.to_owned()))?;
        match tracked.status.phase {
            RolloutPhase::Active | RolloutPhase::Promoted => {}
            phase => {
                return Err(RolloutError::Conflict(format!(
                    "the rollout of `{service}` is {}: nothing to abort\n",
                    phase.as_str()
                )))
            }
        }
        let was = tracked.status.percent;
        finish(
            &mut tracked.status,
            RolloutPhase::Aborted,
            0,
            Some(format!("aborted by the operator at {was} %")),
        );
        let status = tracked.status.clone();
        self.metrics.rollouts.with_label_values(&["aborted"]).inc();
        self.log_step(&status);
        self.changed(&book)?;
        Ok(status)
    }

    /// Judges the active rollouts every [`TICK`], forever.
    pub async fn run(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.tick();
        }
    }

    /// One round: supersede what mesh.yaml took back, judge active steps.
    fn tick(&self) {
        let config = self.config.borrow().clone();
        let now = unix_ms();
        let Ok(mut book) = self.book.lock() else {
            return;
        };
        let active = book
            .values()
            .any(|t| t.status.phase == RolloutPhase::Active);
        let latest = if active {
            self.stats.latest()
        } else {
            Vec::new()
        };
        let mut changed = false;
        for tracked in book.values_mut() {
            let status = &mut tracked.status;
            if status.phase == RolloutPhase::Superseded {
                continue;
            }
            if let Some(why) = superseded(status, &config) {
                if status.phase == RolloutPhase::Active {
                    self.metrics.rollouts.with_label_values(&["aborted"]).inc();
                }
                let percent = status.percent;
                finish(status, RolloutPhase::Superseded, percent, Some(why));
                self.log_step(status);
                changed = true;
                continue;
            }
            if status.phase != RolloutPhase::Active {
                continue;
            }
            let service = status.request.service.clone();
            for report in &latest {
                tracked.window.observe(report, &service);
            }
            let status = &mut tracked.status;
            status.from_figures = tracked.window.totals(&status.request.from).figures();
            status.to_figures = tracked.window.totals(&status.request.to).figures();
            let elapsed = Duration::from_millis(now.saturating_sub(status.step_started_unix_ms));
            let gates = &status.request.gates;
            let step = format!(
                "step {}/{} ({} %)",
                status.step + 1,
                status.request.steps.len(),
                status.percent
            );
            match gate::judge(gates, &status.from_figures, &status.to_figures) {
                Verdict::Wait(why) if elapsed >= gates.max_wait => {
                    let why = format!(
                        "{step}: not judged within max_wait {:?}: {why}",
                        gates.max_wait
                    );
                    self.roll_back(status, why);
                    changed = true;
                }
                Verdict::Wait(why) => status.reason = Some(why),
                Verdict::Fail(why) => {
                    self.roll_back(status, format!("{step}: {why}"));
                    changed = true;
                }
                Verdict::Pass if elapsed >= status.request.interval => {
                    status.reason = None;
                    if status.step + 1 >= status.request.steps.len() {
                        finish(status, RolloutPhase::Promoted, 100, None);
                        self.metrics.rollouts.with_label_values(&["promoted"]).inc();
                    } else {
                        status.step += 1;
                        status.percent = status
                            .request
                            .steps
                            .get(status.step)
                            .copied()
                            .unwrap_or(100);
                        status.step_started_unix_ms = now;
                        tracked.window = Window::new(now);
                    }
                    self.log_step(&tracked.status);
                    changed = true;
                }
                Verdict::Pass => status.reason = None,
            }
        }
        if changed {
            if let Err(error) = self.changed(&book) {
                tracing::error!(%error, "cannot save the rollout state");
            }
        }
    }

    fn roll_back(&self, status: &mut RolloutStatus, why: String) {
        finish(status, RolloutPhase::RolledBack, 0, Some(why));
        self.metrics
            .rollouts
            .with_label_values(&["rolled-back"])
            .inc();
        self.log_step(status);
    }

    /// Logs a transition and sets the gauges.
    fn log_step(&self, status: &RolloutStatus) {
        let (a, b) = (&status.from_figures, &status.to_figures);
        let service = status.request.service.as_str();
        tracing::info!(
            service,
            phase = status.phase.as_str(),
            step = status.step + 1,
            steps = status.request.steps.len(),
            percent = status.percent,
            from = %status.request.from,
            from_requests = a.requests,
            from_success_rate = a.success_rate,
            from_p99_ms = ?a.p99_ms,
            to = %status.request.to,
            to_requests = b.requests,
            to_success_rate = b.success_rate,
            to_p99_ms = ?b.p99_ms,
            reason = ?status.reason,
            "rollout step"
        );
        let step = if status.phase == RolloutPhase::Active {
            status.step + 1
        } else {
            0
        };
        self.metrics
            .rollout_step
            .with_label_values(&[service])
            .set(i64::try_from(step).unwrap_or(i64::MAX));
        self.metrics
            .rollout_percent
            .with_label_values(&[service])
            .set(i64::from(status.percent));
    }

    /// Saves the state and publishes the overrides.
    fn changed(&self, book: &BTreeMap<String, Tracked>) -> Result<(), RolloutError> {
        self.publish(book);
        if let Some(path) = &self.state_file {
            let list = RolloutList {
                rollouts: book.values().map(|t| t.status.clone()).collect(),
            };
            state_file::save(path, &list)?;
        }
        Ok(())
    }

    fn publish(&self, book: &BTreeMap<String, Tracked>) {
        let overrides: Overrides = book
            .values()
            .filter(|t| t.status.phase != RolloutPhase::Superseded)
            .map(|t| {
                let s = &t.status;
                let split = vec![
                    SplitTarget {
                        subset: s.request.from.clone(),
                        weight: 100 - s.percent.min(100),
                    },
                    SplitTarget {
                        subset: s.request.to.clone(),
                        weight: s.percent.min(100),
                    },
                ];
                (s.request.service.clone(), split)
            })
            .collect();
        self.overrides.send_if_modified(|current| {
            if **current == overrides {
                return false;
            }
            *current = Arc::new(overrides);
            true
        });
    }
}

fn finish(status: &mut RolloutStatus, phase: RolloutPhase, percent: u32, reason: Option<String>) {
    status.phase = phase;
    status.percent = percent;
    status.reason = reason;
    status.finished_unix_ms = Some(unix_ms());
}

/// Why mesh.yaml has taken `status`'s service back, if it has.
fn superseded(status: &RolloutStatus, config: &MeshConfig) -> Option<String> {
    let r = &status.request;
    let Some(service) = config.services.get(&r.service) else {
        return Some(format!("`{}` is no longer in mesh.yaml", r.service));
    };
    for subset in [&r.from, &r.to] {
        if !service.subsets.contains_key(subset) {
            return Some(format!("subset `{subset}` is no longer in mesh.yaml"));
        }
    }
    if status.phase != RolloutPhase::Active && service.split != status.config_split {
        return Some("mesh.yaml's split of the service changed: mesh.yaml is in force".into());
    }
    None
}

#[cfg(test)]
mod tests;
