//! The offline executor: starts offline threads isolated from the online path and keeps the
//! table of their jobs.
//!
//! Jobs are few and long (a snapshot, a verify, a rebuild), so each gets its own thread rather
//! than a slot in a pool: a pool would make a short job wait behind a long one for no gain, and a
//! thread per job keeps a job's priority its own. The number running at once is bounded.

use std::any::Any;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::courtesy::YieldTimer;
use crate::guard::{UnitJob, UnitJobHandle, Watchdog};
use crate::isolation::{self, IdleCgroup, Isolation, Priority};
use crate::limits::{GUARD_BOUND_DEFAULT, GUARD_BOUND_MIN, JOBS_FINISHED_KEPT, JOBS_RUNNING_MAX};
use crate::progress::{JobStatus, Progress};

/// How to run offline work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfflineConfig {
    /// The priority of offline threads.
    pub priority: Priority,
    /// How long a job holding a pin may go without finishing a unit before the starvation guard
    /// hands it over; at least [`GUARD_BOUND_MIN`].
    pub guard_bound: Duration,
}

impl Default for OfflineConfig {
    fn default() -> OfflineConfig {
        OfflineConfig {
            priority: Priority::Idle,
            guard_bound: GUARD_BOUND_DEFAULT,
        }
    }
}

impl OfflineConfig {
    /// The defaults with `priority`.
    pub fn with_priority(priority: Priority) -> OfflineConfig {
        OfflineConfig {
            priority,
            ..OfflineConfig::default()
        }
    }
}

/// Starts offline threads and tracks their jobs. Cheap to clone: clones share the threads'
/// cgroup, the job table and the watchdog.
///
/// Creating one costs nothing: the isolation is set up on first use (the first thread, or
/// [`OfflineExecutor::isolation`]) from the calling thread, which must run at normal priority.
#[derive(Clone)]
pub struct OfflineExecutor {
    inner: Arc<Inner>,
}

struct Inner {
    config: OfflineConfig,
    setup: OnceLock<Setup>,
    /// Locked only by normal-priority threads (spawners, scrapes): an offline thread never
    /// touches it, so it can never hold it while starved.
    jobs: Mutex<Vec<Progress>>,
    next_id: AtomicU64,
    watchdog: Watchdog,
}

struct Setup {
    isolation: Isolation,
    cgroup: Option<IdleCgroup>,
}

/// A running job on its own offline thread.
pub struct Job<T> {
    progress: Progress,
    thread: JoinHandle<Result<T, String>>,
}

impl<T> Job<T> {
    /// The job's progress.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Whether the job's thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the job and returns its outcome; a panic is an error.
    pub fn join(self) -> Result<T, String> {
        self.thread.join().unwrap_or_else(|_| {
            Err(format!(
                "the offline job {} panicked",
                self.progress.shared.name
            ))
        })
    }
}

impl fmt::Debug for OfflineExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OfflineExecutor")
            .field("config", &self.inner.config)
            .field("isolation", &self.inner.setup.get().map(|s| s.isolation))
            .finish_non_exhaustive()
    }
}

/// The process's default executor: one idle cgroup per process, however many engines and read
/// models a process (a test, say) opens with default settings.
static PROCESS_DEFAULT: OnceLock<OfflineExecutor> = OnceLock::new();

impl Default for OfflineExecutor {
    /// The process-wide executor with [`OfflineConfig::default`] (shared, not a new one).
    fn default() -> OfflineExecutor {
        PROCESS_DEFAULT
            .get_or_init(|| OfflineExecutor::new(OfflineConfig::default()))
            .clone()
    }
}

impl OfflineExecutor {
    /// An executor with `config`; the bound is raised to [`GUARD_BOUND_MIN`] if below it.
    pub fn new(config: OfflineConfig) -> OfflineExecutor {
        let config = OfflineConfig {
            guard_bound: config.guard_bound.max(GUARD_BOUND_MIN),
            ..config
        };
        OfflineExecutor {
            inner: Arc::new(Inner {
                config,
                setup: OnceLock::new(),
                jobs: Mutex::new(Vec::new()),
                next_id: AtomicU64::new(1),
                watchdog: Watchdog::new(config.guard_bound),
            }),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> OfflineConfig {
        self.inner.config
    }

    /// The isolation offline threads get, setting it up (and logging it) on the first call.
    pub fn isolation(&self) -> Isolation {
        self.setup().isolation
    }

    /// Jobs started by [`OfflineExecutor::spawn_units`] that the starvation guard handed over.
    pub fn boosts(&self) -> u64 {
        self.inner.watchdog.boosts()
    }

    /// Running jobs and the newest finished ones, in start order.
    pub fn jobs(&self) -> Vec<JobStatus> {
        self.lock_jobs().iter().map(Progress::status).collect()
    }

    /// Starts `work` on a new offline thread named `name`: for long-lived offline services (a
    /// periodic snapshotter, the read model's projector) that track their own jobs with
    /// [`OfflineExecutor::track`].
    pub fn spawn_thread<T: Send + 'static>(
        &self,
        name: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<JoinHandle<T>> {
        self.spawn_isolated(name, ThreadKind::Worker, work)
    }

    /// Like [`OfflineExecutor::spawn_thread`], for an offline thread that online requests wait
    /// for (the read model's projector, which read-your-writes queries wait for): it runs at
    /// nice 19 rather than at `SCHED_IDLE`, and outside the idle cgroup. Both of those starve a
    /// thread whenever other work keeps the CPUs busy, and the requests waiting for it with it.
    /// Measured: with two busy loops at normal priority on this 2-core machine, a projector at
    /// `SCHED_IDLE` fell 2,000 events behind and stayed there for 20 s, so lookups answered
    /// `503`; and one that caught up with 90,000 events within 5 s at `SCHED_IDLE` did not in
    /// the cgroup while a build ran next to it. At nice 19 it still yields to normal threads
    /// (a weight of 15 against their 1,024, and the same yield points) but keeps a share of a
    /// busy core, which is all its work, proportional to the writes, needs. Like the online
    /// threads, it asks for short scheduler slices and may be handed an idle thread's core
    /// ([`crate::online_thread_started`]), at any priority.
    pub fn spawn_follower<T: Send + 'static>(
        &self,
        name: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<JoinHandle<T>> {
        self.spawn_isolated(name, ThreadKind::Follower, work)
    }

    fn spawn_isolated<T: Send + 'static>(
        &self,
        name: &str,
        kind: ThreadKind,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<JoinHandle<T>> {
        let setup = self.setup();
        let isolate = Isolate {
            priority: self.inner.config.priority,
            kind,
            cgroup: setup
                .cgroup
                .as_ref()
                .filter(|_| kind == ThreadKind::Worker)
                .map(|_| self.clone()),
        };
        let name = name.to_string();
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                isolate.current_thread(&name);
                work()
            })
    }

    /// Registers a job that the calling offline thread runs itself, and returns its progress.
    /// The job counts as running until [`Progress`] is finished with `finish_job`.
    pub fn track(&self, name: &'static str, unit: &'static str) -> Result<Progress, String> {
        let mut jobs = self.lock_jobs();
        let running = jobs.iter().filter(|job| !job.state().is_finished()).count();
        if running >= JOBS_RUNNING_MAX {
            return Err(format!(
                "{running} offline jobs are already running, the most allowed; wait for one to finish"
            ));
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let progress = Progress::new(id, name, unit);
        jobs.push(progress.clone());
        prune(&mut jobs);
        Ok(progress)
    }

    /// Runs `work` as a job on its own offline thread; its outcome marks the job done or failed.
    pub fn spawn_job<T: Send + 'static>(
        &self,
        name: &'static str,
        unit: &'static str,
        work: impl FnOnce(&Progress) -> Result<T, String> + Send + 'static,
    ) -> io::Result<Job<T>> {
        let progress = self.track(name, unit).map_err(io::Error::other)?;
        let tracked = progress.clone();
        let thread = self.spawn_thread(name, move || {
            let _yield_timer = YieldTimer::start();
            let finish = FinishOnDrop(tracked.clone());
            let outcome = work(&tracked);
            finish.finish(outcome.is_ok());
            outcome
        });
        match thread {
            Ok(thread) => Ok(Job { progress, thread }),
            Err(error) => {
                progress.set_state(crate::JobState::Failed);
                Err(error)
            }
        }
    }

    /// Runs `job` under the starvation guard: an offline thread works through its units, and if
    /// `pin` is held and no unit finishes for the bound, the watchdog hands the remaining units
    /// to a normal-priority thread. `pin` is released (dropped) by the watchdog once every unit
    /// is done or the job failed.
    ///
    /// Must be called from a normal-priority thread: the watchdog starts from it on first use
    /// and inherits its scheduling policy.
    pub fn spawn_units(
        &self,
        name: &'static str,
        job: Arc<dyn UnitJob>,
        pin: Option<Box<dyn Any + Send>>,
    ) -> io::Result<UnitJobHandle> {
        let progress = self.track(name, "units").map_err(io::Error::other)?;
        let handle = self.inner.watchdog.guard(job, progress, pin)?;
        let worker = handle.clone();
        self.spawn_thread(name, move || {
            let _yield_timer = YieldTimer::start();
            worker.work_offline()
        })?;
        Ok(handle)
    }

    /// Marks a tracked job finished: done when `ok`, failed otherwise.
    pub fn finish_job(progress: &Progress, ok: bool) {
        progress.set_state(if ok {
            crate::JobState::Done
        } else {
            crate::JobState::Failed
        });
    }

    fn setup(&self) -> &Setup {
        self.inner
            .setup
            .get_or_init(|| setup(self.inner.config.priority))
    }

    fn lock_jobs(&self) -> std::sync::MutexGuard<'_, Vec<Progress>> {
        // Progress handles hold no invariant a panic could break.
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Keeps the running jobs and the newest [`JOBS_FINISHED_KEPT`] finished ones.
fn prune(jobs: &mut Vec<Progress>) {
    let finished = jobs.iter().filter(|job| job.state().is_finished()).count();
    let mut excess = finished.saturating_sub(JOBS_FINISHED_KEPT);
    jobs.retain(|job| {
        if excess > 0 && job.state().is_finished() {
            excess -= 1;
            false
        } else {
            true
        }
    });
}

/// Which isolation an offline thread gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ThreadKind {
    /// Work nothing online waits for: `SCHED_IDLE`, in the idle cgroup where there is one.
    Worker,
    /// Work online requests wait for: nice 19, outside the idle cgroup.
    Follower,
}

/// What a new offline thread does to itself before its work.
struct Isolate {
    priority: Priority,
    kind: ThreadKind,
    /// The executor, when there is an idle cgroup to join (it keeps the cgroup alive).
    cgroup: Option<OfflineExecutor>,
}

impl Isolate {
    fn current_thread(&self, name: &str) {
        if self.kind == ThreadKind::Follower {
            crate::slice::online_thread_started();
        }
        if self.priority == Priority::Normal {
            return;
        }
        if self.kind == ThreadKind::Follower {
            match isolation::set_nice_19() {
                Ok(()) => crate::courtesy::enable_for_current_thread(),
                Err(error) => {
                    tracing::warn!(thread = name, %error, "nice 19 refused; this offline thread competes with the online path")
                }
            }
            return;
        }
        match isolation::set_sched_idle() {
            Ok(()) => {
                crate::courtesy::enable_for_current_thread();
                crate::handover::enable_for_current_thread();
            }
            Err(error) => {
                let niced = isolation::set_nice_19().is_ok();
                tracing::warn!(thread = name, %error, niced, "SCHED_IDLE refused; this offline thread runs at nice 19 instead if niced");
            }
        }
        let cgroup = self
            .cgroup
            .as_ref()
            .and_then(|executor| executor.inner.setup.get())
            .and_then(|setup| setup.cgroup.as_ref());
        if let Some(cgroup) = cgroup {
            if let Err(reason) = cgroup.join_current_thread() {
                tracing::warn!(thread = name, %reason, "this offline thread stays out of the idle cgroup");
            }
        }
    }
}

/// Marks a job failed if its thread unwinds before finishing it.
struct FinishOnDrop(Progress);

impl FinishOnDrop {
    fn finish(self, ok: bool) {
        OfflineExecutor::finish_job(&self.0, ok);
        std::mem::forget(self);
    }
}

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        OfflineExecutor::finish_job(&self.0, false);
    }
}

/// Finds out what isolation the machine allows, with a probe thread that tries it, and logs it.
fn setup(priority: Priority) -> Setup {
    if priority == Priority::Normal {
        tracing::info!(
            isolation = Isolation::None.as_str(),
            "offline work runs at normal priority (--offline-priority normal)"
        );
        return Setup {
            isolation: Isolation::None,
            cgroup: None,
        };
    }
    let cgroup = IdleCgroup::create();
    // A scoped probe thread tries on itself what every offline thread will do.
    let probe = std::thread::scope(|scope| {
        let probe = std::thread::Builder::new()
            .name("tally-offline-probe".into())
            .spawn_scoped(scope, || {
                let idle = isolation::set_sched_idle().map_err(|error| error.to_string());
                let joined = cgroup.as_ref().ok().map(IdleCgroup::join_current_thread);
                (idle, joined)
            })
            .map_err(|error| error.to_string())?;
        probe
            .join()
            .map_err(|_| "the isolation probe thread panicked".to_string())
    });
    let (idle, joined) = match probe {
        Ok(outcome) => outcome,
        Err(reason) => (Err(reason), None),
    };
    let (isolation, cgroup) = match (idle, cgroup, joined) {
        (Err(reason), _, _) => {
            tracing::warn!(isolation = Isolation::None.as_str(), %reason, "SCHED_IDLE refused: offline threads run at nice 19 and compete with the online path");
            (Isolation::None, None)
        }
        (Ok(()), Ok(cgroup), Some(Ok(()))) => {
            tracing::info!(isolation = Isolation::SchedIdleIdleCgroup.as_str(), cgroup = %cgroup.dir().display(), "offline threads run at SCHED_IDLE in an idle cgroup (cpu.idle = 1)");
            (Isolation::SchedIdleIdleCgroup, Some(cgroup))
        }
        (Ok(()), Ok(_), Some(Err(reason))) | (Ok(()), Err(reason), _) => {
            tracing::info!(isolation = Isolation::SchedIdle.as_str(), %reason, "offline threads run at SCHED_IDLE, without an idle cgroup");
            (Isolation::SchedIdle, None)
        }
        (Ok(()), Ok(_), None) => unreachable!("a created cgroup is always probed"),
    };
    Setup { isolation, cgroup }
}
