//! The starvation guard: hands the rest of a stalled, pinned job to a normal-priority thread.
//!
//! An idle-priority thread that holds something others need (a pin: a segment retention must
//! keep, a file a writer waits for) turns the kernel's priorities upside down when it starves:
//! normal-priority work waits for idle-priority work. The classic cure, raising the holder's
//! priority, is not open to an unprivileged process: a thread cannot leave `SCHED_IDLE`. So the
//! guard moves the work instead of the thread.
//!
//! A guarded job is split into independent, idempotent units (each reads immutable data). The
//! offline thread claims units one by one; a unit is committed once, by whichever thread finishes
//! it first. A normal-priority watchdog looks at every guarded job each
//! [`WATCHDOG_TICK`](crate::limits::WATCHDOG_TICK); when a job holding a pin has finished no unit
//! for the bound, it starts a normal-priority *booster* thread that runs every unit not yet
//! committed, including the one the starved thread is stuck in (hence idempotent), and counts a
//! boost. The watchdog releases the pin once every unit is committed, so a starved thread never
//! delays the release, and nothing here takes a lock an offline thread could hold while starved.

use std::any::Any;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::limits::{JOB_UNITS_MAX, JOB_WAIT_POLL, WATCHDOG_TICK};
use crate::progress::{JobState, JobStatus, Progress};

/// An offline job made of independent units, which the starvation guard can hand over.
pub trait UnitJob: Send + Sync + 'static {
    /// How many units there are, at most [`JOB_UNITS_MAX`]; fixed for the job's life.
    fn units(&self) -> u64;

    /// Runs unit `index`. It may run more than once, even concurrently (a starved copy and the
    /// booster's), so it must be idempotent: read immutable data and hand results over by value.
    fn run(&self, index: u64) -> Result<(), String>;
}

/// A guarded job: wait for it and see how it went. Cheap to clone.
#[derive(Clone)]
pub struct UnitJobHandle {
    state: Arc<UnitState>,
}

struct UnitState {
    job: Arc<dyn UnitJob>,
    total: u64,
    /// The next unit the offline thread claims.
    next: AtomicU64,
    committed: Vec<AtomicBool>,
    committed_count: AtomicU64,
    handed_over: AtomicBool,
    /// The stall the watchdog measured when it handed the job over.
    handed_over_after: OnceLock<Duration>,
    /// The first error; a setter that finds it taken does not wait (the first error wins).
    error: Mutex<Option<String>>,
    finished: AtomicBool,
    progress: Progress,
}

/// The normal-priority thread that watches guarded jobs.
pub(crate) struct Watchdog {
    shared: Arc<WatchdogShared>,
    /// Started on first use; locked only by normal-priority threads.
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct WatchdogShared {
    bound: Duration,
    /// Locked by the watchdog and by callers of `spawn_units`, all normal-priority threads.
    guarded: Mutex<Vec<Guarded>>,
    boosts: AtomicU64,
    stop: AtomicBool,
}

struct Guarded {
    state: Arc<UnitState>,
    pin: Option<Box<dyn Any + Send>>,
}

impl UnitJobHandle {
    /// Waits until every unit is committed or one failed.
    pub fn wait(&self) -> Result<(), String> {
        while !self.state.finished.load(Ordering::Acquire) {
            std::thread::sleep(JOB_WAIT_POLL);
        }
        match self.state.error() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// The job's figures now.
    pub fn status(&self) -> JobStatus {
        self.state.progress.status()
    }

    /// How long the job had gone without progress when the guard handed it over; `None` if it
    /// was never handed over.
    pub fn handed_over_after(&self) -> Option<Duration> {
        self.state.handed_over_after.get().copied()
    }

    /// The offline thread's part: claim units until none is left or the job was handed over.
    pub(crate) fn work_offline(&self) {
        let state = &self.state;
        while !state.handed_over.load(Ordering::Acquire) && !state.finished.load(Ordering::Acquire)
        {
            let index = state.next.fetch_add(1, Ordering::AcqRel);
            if index >= state.total {
                return;
            }
            state.run_unit(index);
        }
    }
}

impl UnitState {
    /// The booster's part: every unit not committed yet, in order.
    fn work_boosted(&self) {
        for index in 0..self.total {
            if self.finished.load(Ordering::Acquire) {
                return;
            }
            if !self.committed[index as usize].load(Ordering::Acquire) {
                self.run_unit(index);
            }
        }
    }

    fn run_unit(&self, index: u64) {
        match self.job.run(index) {
            Ok(()) => {
                if self.committed[index as usize].swap(true, Ordering::AcqRel) {
                    return; // Another thread committed it first.
                }
                let count = self.committed_count.fetch_add(1, Ordering::AcqRel) + 1;
                self.progress.set_done(count);
                if count == self.total {
                    self.finish(JobState::Done);
                }
            }
            Err(error) => {
                if let Ok(mut first) = self.error.try_lock() {
                    first.get_or_insert(format!("unit {index}: {error}"));
                }
                self.finish(JobState::Failed);
            }
        }
    }

    fn finish(&self, state: JobState) {
        if !self.finished.swap(true, Ordering::AcqRel) {
            self.progress.set_state(state);
        }
    }

    fn error(&self) -> Option<String> {
        // The setter holds the lock only to write a string; once `finished` is seen, it is done
        // or it lost the race to another error, so a short wait here is bounded.
        loop {
            if let Ok(error) = self.error.try_lock() {
                return error.clone().or_else(|| {
                    (self.progress.state() == JobState::Failed).then(|| "the job failed".into())
                });
            }
            std::thread::sleep(JOB_WAIT_POLL);
        }
    }
}

impl Watchdog {
    pub(crate) fn new(bound: Duration) -> Watchdog {
        Watchdog {
            shared: Arc::new(WatchdogShared {
                bound,
                guarded: Mutex::new(Vec::new()),
                boosts: AtomicU64::new(0),
                stop: AtomicBool::new(false),
            }),
            thread: Mutex::new(None),
        }
    }

    pub(crate) fn boosts(&self) -> u64 {
        self.shared.boosts.load(Ordering::Relaxed)
    }

    /// Puts `job` under watch and returns its handle; starts the watchdog on first use.
    pub(crate) fn guard(
        &self,
        job: Arc<dyn UnitJob>,
        progress: Progress,
        pin: Option<Box<dyn Any + Send>>,
    ) -> io::Result<UnitJobHandle> {
        assert_ne!(
            crate::current_thread_policy(),
            libc::SCHED_IDLE,
            "spawn_units must be called from a normal-priority thread: the watchdog inherits its policy"
        );
        let total = job.units();
        if total > JOB_UNITS_MAX {
            return Err(io::Error::other(format!(
                "a unit job may have at most {JOB_UNITS_MAX} units, not {total}"
            )));
        }
        progress.set_total(total);
        let state = Arc::new(UnitState {
            job,
            total,
            next: AtomicU64::new(0),
            committed: (0..total).map(|_| AtomicBool::new(false)).collect(),
            committed_count: AtomicU64::new(0),
            handed_over: AtomicBool::new(false),
            handed_over_after: OnceLock::new(),
            error: Mutex::new(None),
            finished: AtomicBool::new(total == 0),
            progress,
        });
        if total == 0 {
            state.progress.set_state(JobState::Done);
        }
        {
            let mut thread = lock(&self.thread);
            if thread.is_none() {
                let shared = Arc::clone(&self.shared);
                *thread = Some(
                    std::thread::Builder::new()
                        .name("tally-offline-watchdog".into())
                        .spawn(move || shared.watch())?,
                );
            }
        }
        lock(&self.shared.guarded).push(Guarded {
            state: Arc::clone(&state),
            pin,
        });
        Ok(UnitJobHandle { state })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = lock(&self.thread).take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl WatchdogShared {
    fn watch(self: Arc<Self>) {
        while !self.stop.load(Ordering::Acquire) {
            std::thread::park_timeout(WATCHDOG_TICK);
            let mut guarded = lock(&self.guarded);
            // Finished jobs release their pins here, on a normal-priority thread.
            guarded.retain(|entry| !entry.state.finished.load(Ordering::Acquire));
            for entry in guarded.iter() {
                self.check(entry);
            }
        }
    }

    fn check(&self, entry: &Guarded) {
        let state = &entry.state;
        if entry.pin.is_none() || state.handed_over.load(Ordering::Acquire) {
            return;
        }
        let stalled = state.progress.since_progress();
        if stalled < self.bound {
            return;
        }
        // From here the offline thread claims no more units.
        state.handed_over.store(true, Ordering::Release);
        let _ = state.handed_over_after.set(stalled);
        self.boosts.fetch_add(1, Ordering::Relaxed);
        state.progress.set_state(JobState::Boosted);
        let name = state.progress.shared.name;
        let left = state.total - state.committed_count.load(Ordering::Acquire);
        tracing::warn!(
            job = name,
            id = state.progress.shared.id,
            stalled_ms = stalled.as_millis() as u64,
            units_left = left,
            "offline job holding a pin made no progress; handing its remaining units to a normal-priority thread"
        );
        let booster = Arc::clone(state);
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-boost"))
            .spawn(move || booster.work_boosted());
        if let Err(error) = spawned {
            // The offline thread has stopped claiming units: without a booster the job cannot end.
            tracing::error!(job = name, %error, "cannot start the booster thread; the job fails");
            if let Ok(mut first) = state.error.try_lock() {
                first.get_or_insert(format!("cannot start a booster thread: {error}"));
            }
            state.finish(JobState::Failed);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded list holds no invariant a panic could break.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
