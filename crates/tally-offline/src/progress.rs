//! Progress of offline jobs: what `/metrics`, the status page and the CLI's bars show.
//!
//! Everything here is atomics: an offline thread updates its progress without a lock, so that a
//! normal-priority reader (a scrape, the watchdog) never waits for a thread the kernel is
//! starving.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Running on its offline thread.
    Running,
    /// Handed over to a normal-priority thread by the starvation guard, still running.
    Boosted,
    /// Finished.
    Done,
    /// Stopped by an error (or a panic).
    Failed,
}

impl JobState {
    /// The name shown as the `state` label and on the status page.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Boosted => "boosted",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }

    /// Every state, for metrics that show each with 0 or 1.
    pub const ALL: [JobState; 4] = [
        JobState::Running,
        JobState::Boosted,
        JobState::Done,
        JobState::Failed,
    ];

    fn from_u8(value: u8) -> JobState {
        JobState::ALL[usize::from(value)]
    }

    fn as_u8(self) -> u8 {
        self as u8
    }

    /// Whether the job has stopped.
    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed)
    }
}

/// A job's figures at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct JobStatus {
    /// Unique within the executor, in start order.
    pub id: u64,
    /// What the job does (`snapshot`, `verify`, `read_model_rebuild`, ...): a fixed name from
    /// the code, never from a client.
    pub name: &'static str,
    /// What `done` and `total` count (`events`, `bytes`, `units`).
    pub unit: &'static str,
    /// Where it stands.
    pub state: JobState,
    /// Units done.
    pub done: u64,
    /// Units in all; 0 while unknown.
    pub total: u64,
    /// Time since it started, or its duration once finished.
    pub elapsed: Duration,
    /// Units per second since it started; `None` before any time has passed.
    pub rate_per_second: Option<f64>,
}

/// The handle a job reports its progress through. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Progress {
    pub(crate) shared: Arc<JobShared>,
}

#[derive(Debug)]
pub(crate) struct JobShared {
    pub(crate) id: u64,
    pub(crate) name: &'static str,
    pub(crate) unit: &'static str,
    started: Instant,
    done: AtomicU64,
    total: AtomicU64,
    state: AtomicU8,
    /// Nanoseconds after `started` of the last change of `done`, or of the start.
    last_progress_ns: AtomicU64,
    /// Nanoseconds after `started` when it finished; 0 while running.
    finished_ns: AtomicU64,
}

impl Progress {
    pub(crate) fn new(id: u64, name: &'static str, unit: &'static str) -> Progress {
        Progress {
            shared: Arc::new(JobShared {
                id,
                name,
                unit,
                started: Instant::now(),
                done: AtomicU64::new(0),
                total: AtomicU64::new(0),
                state: AtomicU8::new(JobState::Running.as_u8()),
                last_progress_ns: AtomicU64::new(0),
                finished_ns: AtomicU64::new(0),
            }),
        }
    }

    /// Sets the number of units in all, once known.
    pub fn set_total(&self, total: u64) {
        self.shared.total.store(total, Ordering::Relaxed);
    }

    /// Counts `units` more done.
    pub fn add(&self, units: u64) {
        if units > 0 {
            self.shared.done.fetch_add(units, Ordering::Relaxed);
            self.touch();
        }
    }

    /// Sets the units done (for jobs that know their position rather than count steps).
    pub fn set_done(&self, done: u64) {
        if self.shared.done.swap(done, Ordering::Relaxed) != done {
            self.touch();
        }
    }

    /// The job's figures now.
    pub fn status(&self) -> JobStatus {
        let shared = &self.shared;
        let state = self.state();
        let finished_ns = shared.finished_ns.load(Ordering::Acquire);
        let elapsed = if state.is_finished() && finished_ns > 0 {
            Duration::from_nanos(finished_ns)
        } else {
            shared.started.elapsed()
        };
        let done = shared.done.load(Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        JobStatus {
            id: shared.id,
            name: shared.name,
            unit: shared.unit,
            state,
            done,
            total: shared.total.load(Ordering::Relaxed),
            elapsed,
            rate_per_second: (seconds > 0.0).then(|| done as f64 / seconds),
        }
    }

    /// Where the job stands.
    pub fn state(&self) -> JobState {
        JobState::from_u8(self.shared.state.load(Ordering::Acquire))
    }

    /// How long ago `done` last changed (or the job started, if it never did).
    pub(crate) fn since_progress(&self) -> Duration {
        let last = Duration::from_nanos(self.shared.last_progress_ns.load(Ordering::Acquire));
        self.shared.started.elapsed().saturating_sub(last)
    }

    pub(crate) fn set_state(&self, state: JobState) {
        if state.is_finished() {
            let elapsed = self.shared.started.elapsed().as_nanos();
            let elapsed = u64::try_from(elapsed).unwrap_or(u64::MAX).max(1);
            self.shared.finished_ns.store(elapsed, Ordering::Release);
        }
        self.shared.state.store(state.as_u8(), Ordering::Release);
    }

    fn touch(&self) {
        let now = u64::try_from(self.shared.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.shared.last_progress_ns.store(now, Ordering::Release);
    }
}
